"""Backbone registry: every promptable segmentation network behind one interface, chosen by name.

Like segment-anything's ``sam_model_registry`` and timm's ``create_model``: builders register themselves under
a name and are looked up from config (``--conf backbone litemedsam``), never from an if-chain.

This module is a leaf, as timm's ``_registry``: it imports none of the builder modules (they import it to
register). The built-in builders are registered by the package, :mod:`radvlsm.models` imports them, so lookups
through any import of this module see them (importing ``radvlsm.models.registry`` runs the package first).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from radvlsm.errors import CheckpointError


@dataclass
class Backbone:
    """A SAM-family model split into its parts, plus what its preprocessing needs.

    ``normalize`` is ``"unit"`` (x/255, LiteMedSAM) or ``"imagenet"`` (SAM's pixel mean/std); images are resized
    so the longest side is ``img_size`` and padded bottom-right to a square.
    """

    name: str
    image_encoder: nn.Module
    prompt_encoder: nn.Module
    mask_decoder: nn.Module
    img_size: int
    normalize: str
    checkpoint: str | None
    version: str
    pixel_mean: tuple[float, float, float] = (123.675, 116.28, 103.53)
    pixel_std: tuple[float, float, float] = (58.395, 57.12, 57.375)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    def modules(self) -> dict[str, nn.Module]:
        return {"image_encoder": self.image_encoder, "prompt_encoder": self.prompt_encoder,
                "mask_decoder": self.mask_decoder}

    def to(self, device: str | torch.device) -> Backbone:
        self.device = torch.device(device)
        for m in self.modules().values():
            m.to(self.device)
        return self

    def eval(self) -> Backbone:
        for m in self.modules().values():
            m.eval()
        return self

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {f"{part}.{k}": v for part, m in self.modules().items() for k, v in m.state_dict().items()}

    def load_state_dict(self, state: dict[str, torch.Tensor], strict: bool = True) -> None:
        """Load a ``{image_encoder.*, prompt_encoder.*, mask_decoder.*}`` state dict; parts may be absent if not
        strict (extra top-level keys such as SAM's ``pixel_mean`` are ignored)."""
        for part, module in self.modules().items():
            sub = {k[len(part) + 1:]: v for k, v in state.items() if k.startswith(part + ".")}
            if sub or strict:
                module.load_state_dict(sub, strict=strict)


BackboneBuilder = Callable[..., Backbone]
_REGISTRY: dict[str, BackboneBuilder] = {}


def register_backbone(name: str) -> Callable[[BackboneBuilder], BackboneBuilder]:
    def wrap(fn: BackboneBuilder) -> BackboneBuilder:
        _REGISTRY[name] = fn
        return fn

    return wrap


def available_backbones() -> list[str]:
    return sorted(_REGISTRY)


def build_backbone(name: str, checkpoint: str | None = None, device: str = "cpu", **kwargs) -> Backbone:
    """Build a registered backbone on ``device`` in eval mode; ``checkpoint`` overrides the default weights."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown backbone '{name}'; available: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name](checkpoint=checkpoint, **kwargs).to(device).eval()


def file_version(path: str | Path) -> str:
    """Short content hash of a checkpoint: part of every embedding-cache key, so new weights never reuse old ones."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def load_checkpoint_state(path: str | Path, hint: str) -> dict[str, torch.Tensor]:
    """``torch.load`` a state dict (bare, or under ``model``/``state_dict``) with a clear error when missing."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}. {hint}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt or truncated files raise many different types
        raise CheckpointError(f"checkpoint {path} could not be read ({type(exc).__name__}: {exc}). {hint}") from exc
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} does not hold a state dict. {hint}")
    return state
