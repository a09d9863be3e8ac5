"""``blip2``: box proposals from Grad-CAM of BLIP-2's image-text matching (ITM) score.

The model is transformers' :class:`Blip2ForImageTextRetrieval` (e.g. a local copy of
``Salesforce/blip2-itm-vit-g``), loaded offline from ``model_path`` or the local Hugging Face cache. It is a
general-domain model: on ultrasound its maps are weak evidence, which is why it is one backend among several.

Grad-CAM as in ALBEF/BLIP: in one Q-Former layer's cross-attention (queries -> image patches) take the attention
probabilities ``A`` and the gradient ``dA`` of the ITM *match* logit, keep ``(A * dA).clamp(min=0)``, average
over heads and then over the query tokens (in BLIP-2 only the learned queries cross-attend to the image; the
phrase reaches them through the Q-Former's self-attention), drop the vision CLS token and reshape to the patch
grid. The default layer is the deepest cross-attention layer at or above mid-depth (layer 6 of 12 for
``blip2-itm-vit-g``, whose Q-Former cross-attends every 2nd layer); ``cam_layer`` overrides it.

BLIP-2's processor stretches the image to a square (224x224) without keeping the aspect ratio, so the square
patch grid maps back to the original ``(rows, cols)`` by an anisotropic resize of the whole grid (no padding or
crop to undo); :func:`cam_to_image` does that.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from radvlsm.errors import CheckpointError
from radvlsm.io import Image2D
from radvlsm.predictor import Encoded
from radvlsm.proposals.base import DEFAULT_TOP_K, Candidate, Proposal, register_proposer
from radvlsm.proposals.boxes import heatmap_boxes

DEFAULT_MODEL_ID = "Salesforce/blip2-itm-vit-g"
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_HOW_TO_GET = (
    "Put a local copy of the BLIP-2 ITM model (weights, config and processor files) there, e.g. on a connected "
    f"machine: `huggingface-cli download {DEFAULT_MODEL_ID} --local-dir <dir>`, then pass model_path=<dir>."
)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """``auto`` -> fp16 on CUDA, fp32 elsewhere; half precision is refused on CPU (slow, and unsupported ops)."""
    if dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be auto, {', '.join(_DTYPES)}; got '{dtype}'")
    if device.type != "cuda" and dtype != "float32":
        raise ValueError(f"dtype {dtype} needs a CUDA device; use float32 on {device.type}")
    return _DTYPES[dtype]


def load_blip2(model_path: str | Path | None, device: torch.device, dtype: torch.dtype) -> tuple[Any, Any]:
    """Model and processor from a local directory (or the offline HF cache when ``model_path`` is None)."""
    from transformers import Blip2ForImageTextRetrieval, Blip2Processor

    source = str(model_path) if model_path is not None else DEFAULT_MODEL_ID
    if model_path is not None and not Path(model_path).expanduser().is_dir():
        raise CheckpointError(f"BLIP-2 model directory not found: {model_path}. {_HOW_TO_GET}")
    if model_path is not None:
        source = str(Path(model_path).expanduser())
    try:
        # eager attention: the SDPA kernels do not return the attention probabilities Grad-CAM needs.
        model = Blip2ForImageTextRetrieval.from_pretrained(source, dtype=dtype, attn_implementation="eager",
                                                           local_files_only=True)
        processor = Blip2Processor.from_pretrained(source, local_files_only=True)
    except OSError as exc:
        where = source if model_path is not None else f"the local Hugging Face cache ({DEFAULT_MODEL_ID})"
        raise CheckpointError(f"BLIP-2 model could not be loaded from {where} ({exc}). {_HOW_TO_GET}") from exc
    # Everything after the ViT runs in fp32 (small: the Q-Former, its text embeddings, the ITM head), so the path
    # the Grad-CAM gradient takes is fp32 and small gradients do not underflow to zero under fp16; only the
    # vision tower, the bulk of the compute, uses the half dtype.
    for part in (model.qformer, model.embeddings, model.itm_head):
        part.float()
    model.query_tokens.data = model.query_tokens.data.float()
    model.requires_grad_(False)
    # Only the (tiny) query tokens carry requires_grad, so autograd records the Q-Former but not the ViT.
    model.query_tokens.requires_grad_(True)
    return model.to(device).eval(), processor


def default_cam_layer(num_layers: int, cross_attention_frequency: int) -> int:
    """Deepest cross-attention layer at or above mid-depth (``layer % frequency == 0`` cross-attends)."""
    cross = [i for i in range(num_layers) if i % cross_attention_frequency == 0]
    mid = [i for i in cross if i <= num_layers // 2]
    return max(mid) if mid else cross[0]


def cam_from_attention(attn: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """``(1, heads, queries, 1 + P)`` attention and gradient -> ``(g, g)`` Grad-CAM on the patch grid."""
    cam = (attn.float() * grad.float()).clamp(min=0).mean(dim=1)[0].mean(dim=0)  # heads, then queries
    patches = cam[1:]  # drop the vision CLS token
    g = int(round(patches.numel() ** 0.5))
    if g * g != patches.numel():
        raise ValueError(f"{patches.numel()} image tokens do not form a square patch grid")
    return patches.reshape(g, g)


def cam_to_image(cam: torch.Tensor | np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Square patch-grid map -> ``(rows, cols)`` in [0, 1] on the original image.

    The processor stretched the whole image to a square, so the whole grid is stretched back (bilinear, pixel
    centres aligned as in ``F.interpolate(align_corners=False)``), then min-max normalised.
    """
    x = torch.as_tensor(np.asarray(cam, np.float32))[None, None]
    x = F.interpolate(x, size=tuple(shape), mode="bilinear", align_corners=False)[0, 0].numpy()
    lo, hi = float(x.min()), float(x.max())
    if hi - lo < 1e-12:
        return np.zeros(shape, np.float32)
    return ((x - lo) / (hi - lo)).astype(np.float32)


class Blip2Proposer:
    """Text-guided candidates from BLIP-2 ITM Grad-CAM; ``match_score`` is the softmax ITM probability of a match.

    ``encoded`` (the LiteMedSAM embedding) is ignored: BLIP-2 has its own ViT.
    """

    name = "blip2"
    refine_by_default = False  # untested on real weights; keep its own boxes

    def __init__(self, model_path: str | Path | None = None, device: str = "cpu", dtype: str = "auto",
                 cam_layer: int | None = None, thresholds: tuple[float, ...] = (0.5,), min_area_frac: float = 0.002):
        self.device = torch.device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.model, self.processor = load_blip2(model_path, self.device, self.dtype)
        self._check_processor()
        qcfg = self.model.config.qformer_config
        self.cam_layer = cam_layer if cam_layer is not None else default_cam_layer(
            qcfg.num_hidden_layers, qcfg.cross_attention_frequency)
        if not getattr(self.model.qformer.encoder.layer[self.cam_layer], "has_cross_attention", False):
            raise ValueError(f"Q-Former layer {self.cam_layer} has no cross-attention; pick another cam_layer")
        self.thresholds = thresholds
        self.min_area_frac = min_area_frac
        self._lock = threading.Lock()

    def _check_processor(self) -> None:
        """The heatmap mapping assumes a whole-image square resize; refuse processors that crop."""
        ip = self.processor.image_processor
        if getattr(ip, "do_center_crop", False):
            raise ValueError("BLIP-2 image processor with center crop is not supported (heatmap mapping assumes a "
                             "whole-image resize)")

    def inputs(self, image: Image2D, text: str) -> dict[str, torch.Tensor]:
        """Processor outputs on the model's device; pixels in the vision tower's dtype."""
        from PIL import Image

        enc = self.processor(images=Image.fromarray(image.rgb_uint8()), text=text, return_tensors="pt")
        return {"pixel_values": enc["pixel_values"].to(self.device, self.dtype),
                "input_ids": enc["input_ids"].to(self.device),
                "attention_mask": enc["attention_mask"].to(self.device)}

    def gradcam(self, image: Image2D, text: str) -> tuple[torch.Tensor, float]:
        """``(g, g)`` Grad-CAM of the ITM match logit and the ITM match probability."""
        inputs = self.inputs(image, text)
        module = self.model.qformer.encoder.layer[self.cam_layer].crossattention.attention
        captured: list[torch.Tensor] = []
        handle = module.register_forward_hook(lambda _m, _a, out: captured.append(out[1]))
        try:
            with self._lock, torch.enable_grad():
                out = self.model(**inputs, use_image_text_matching_head=True)
                logits = out.logits_per_image.float()  # (1, 2): [no match, match]
                if not captured or captured[0] is None:
                    raise RuntimeError("cross-attention probabilities were not returned (eager attention needed)")
                (grad,) = torch.autograd.grad(logits[0, 1], captured[0])
        finally:
            handle.remove()
        cam = cam_from_attention(captured[0].detach(), grad.detach()).cpu()
        return cam, float(torch.softmax(logits.detach(), dim=1)[0, 1])

    def propose(self, image: Image2D, text: str, top_k: int = DEFAULT_TOP_K,
                encoded: Encoded | None = None) -> Proposal:
        t0 = time.perf_counter()
        cam, match = self.gradcam(image, text)
        t1 = time.perf_counter()
        heat = cam_to_image(cam, image.shape)
        boxes, scores = heatmap_boxes(heat, self.thresholds, self.min_area_frac)
        strength = float(cam.max())
        cands = [Candidate([float(v) for v in b], float(s), self.name, {"cam_strength": strength})
                 for b, s in zip(boxes[:top_k], scores[:top_k], strict=True)]
        t2 = time.perf_counter()
        return Proposal(cands, match, heat, self.name,
                        {"gradcam": (t1 - t0) * 1e3, "boxes": (t2 - t1) * 1e3, "total": (t2 - t0) * 1e3})


@register_proposer("blip2")
def build_blip2(model_path: str | Path | None = None, device: str = "cpu", dtype: str = "auto",
                **kwargs) -> Blip2Proposer:
    return Blip2Proposer(model_path=model_path, device=device, dtype=dtype, **kwargs)
