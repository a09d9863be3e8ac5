"""SAM ViT-B/L/H through segment-anything's own builders, with weights from a user-given local path.

``sam_vit_tiny`` is a random-weight, few-layer ViT with SAM's exact interface: it keeps the SAM path tested on a
machine with no SAM weights.
"""

from __future__ import annotations

from functools import partial

import torch

from radvlsm.errors import CheckpointError
from radvlsm.models.registry import Backbone, file_version, load_checkpoint_state, register_backbone

HINT = ("SAM weights are not downloaded at run time: get sam_vit_b_01ec64.pth / sam_vit_l_0b3195.pth / "
        "sam_vit_h_4b8939.pth from the segment-anything repository's model checkpoints and pass the local path "
        "with --conf checkpoint /path/to/file.pth")

VARIANTS = {  # embed_dim, depth, heads, global attention layer indexes
    "sam_vit_b": (768, 12, 12, (2, 5, 8, 11)),
    "sam_vit_l": (1024, 24, 16, (5, 11, 17, 23)),
    "sam_vit_h": (1280, 32, 16, (7, 15, 23, 31)),
    "sam_vit_tiny": (64, 2, 2, (1,)),
}


def _build(name: str, img_size: int = 1024) -> Backbone:
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, TwoWayTransformer

    embed_dim, depth, heads, global_idx = VARIANTS[name]
    prompt_dim, patch = 256, 16
    encoder = ImageEncoderViT(
        depth=depth, embed_dim=embed_dim, img_size=img_size, mlp_ratio=4,
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), num_heads=heads, patch_size=patch, qkv_bias=True,
        use_rel_pos=True, global_attn_indexes=global_idx, window_size=14, out_chans=prompt_dim,
    )
    grid = img_size // patch
    prompt_encoder = PromptEncoder(embed_dim=prompt_dim, image_embedding_size=(grid, grid),
                                   input_image_size=(img_size, img_size), mask_in_chans=16)
    mask_decoder = MaskDecoder(
        num_multimask_outputs=3,
        transformer=TwoWayTransformer(depth=2, embedding_dim=prompt_dim, mlp_dim=2048, num_heads=8),
        transformer_dim=prompt_dim, iou_head_depth=3, iou_head_hidden_dim=256,
    )
    return Backbone(name, encoder, prompt_encoder, mask_decoder, img_size=img_size, normalize="imagenet",
                    checkpoint=None, version="random")


def _register(name: str) -> None:
    @register_backbone(name)
    def builder(checkpoint: str | None = None, img_size: int = 1024) -> Backbone:
        if checkpoint is None:
            raise CheckpointError(f"backbone '{name}' needs a checkpoint path. {HINT}")
        backbone = _build(name, img_size)
        backbone.load_state_dict(load_checkpoint_state(checkpoint, HINT), strict=True)
        backbone.checkpoint, backbone.version = str(checkpoint), file_version(checkpoint)
        return backbone


for _name in ("sam_vit_b", "sam_vit_l", "sam_vit_h"):
    _register(_name)


@register_backbone("sam_vit_tiny")
def build_sam_vit_tiny(checkpoint: str | None = None, img_size: int = 256, seed: int = 0) -> Backbone:
    """Random-weight SAM ViT for tests (seeded, so its outputs are reproducible); loads a checkpoint if given."""
    torch.manual_seed(seed)
    backbone = _build("sam_vit_tiny", img_size)
    if checkpoint is not None:
        backbone.load_state_dict(load_checkpoint_state(checkpoint, HINT), strict=True)
        backbone.checkpoint, backbone.version = str(checkpoint), file_version(checkpoint)
    else:
        backbone.version = f"random-seed{seed}-{img_size}"
    return backbone
