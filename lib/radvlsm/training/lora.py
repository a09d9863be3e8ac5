"""Low-rank adapters (LoRA) in the image encoder's last stage, trained on cached features of the stages before it.

Why the last stage only: a full encoder backward costs ~12 s per image on this 2-core CPU; the features entering
the last stage are computed once per image (as the embeddings are for decoder-only training), so a step runs the
last stage and the neck only. For publishing, the adapters are merged into the weights (``W + scale * B @ A``):
the served segmentation encoder is the plain module with new weights for those layers, as fast as the original.

The adapted encoder feeds the mask decoder only; the proposer and the diagnosis head keep reading the shipped
encoder's embedding they were trained on (:class:`radvlsm.predictor.Encoded` carries both).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

#: the linear layers of the last stage that get adapters (attention and MLP of every block)
TARGETS = ("qkv", "proj", "fc1", "fc2")


class LoRALinear(nn.Module):
    """``base(x) + scale * B(A(x))`` with ``base`` frozen; ``B`` starts at zero, so training starts at ``base``."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        super().__init__()
        self.base = base.requires_grad_(False)
        self.A = nn.Parameter(torch.empty(rank, base.in_features))
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))
        self.B = nn.Parameter(torch.zeros(base.out_features, rank))
        self.scale = alpha / rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + F.linear(F.linear(x, self.A), self.B) * self.scale

    def merged_weight(self) -> torch.Tensor:
        return (self.base.weight + self.scale * self.B @ self.A).detach()


class EncoderTail(nn.Module):
    """A trainable copy of an encoder's last stage + neck, on the features its earlier stages produce."""

    def __init__(self, stage: nn.Module, neck: nn.Module, stage_key: str, grid: int):
        super().__init__()
        self.stage, self.neck, self.stage_key, self.grid = stage, neck, stage_key, grid

    def train(self, mode: bool = True) -> EncoderTail:
        """Always in eval mode: the stage's batch norms keep their statistics (a training-mode pass would replace
        them with those of a few images, and they are not part of what is published) and nothing is dropped."""
        return super().train(False)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = self.stage(features.float())
        b, _, c = x.shape
        return self.neck(x.view(b, self.grid, self.grid, c).permute(0, 3, 1, 2))

    def adapters(self) -> dict[str, LoRALinear]:
        return {n: m for n, m in self.stage.named_modules() if isinstance(m, LoRALinear)}

    def merged_state(self) -> dict[str, torch.Tensor]:
        """The adapted weights as ``image_encoder.<key>`` entries (what a checkpoint stores)."""
        return {f"image_encoder.{self.stage_key}.{name}.weight": m.merged_weight().cpu()
                for name, m in self.adapters().items()}


def _tinyvit_split(encoder: nn.Module) -> tuple[Callable[[torch.Tensor], torch.Tensor], EncoderTail]:
    """TinyViT (LiteMedSAM): patch embedding + all stages but the last are frozen; the last stage + neck train."""
    last = len(encoder.layers) - 1

    @torch.no_grad()
    def head(x: torch.Tensor) -> torch.Tensor:
        h = encoder.patch_embed(x)
        for layer in encoder.layers[:last]:
            h = layer(h)
        return h

    tail = EncoderTail(copy.deepcopy(encoder.layers[last]), copy.deepcopy(encoder.neck), f"layers.{last}", 64)
    return head, tail


#: backbone name -> how its encoder splits into a frozen head and a trainable tail (a registry, as for backbones)
SPLITS: dict[str, Callable[[nn.Module], tuple[Callable[[torch.Tensor], torch.Tensor], EncoderTail]]] = {
    "litemedsam": _tinyvit_split,
}


def split_encoder(backbone_name: str, encoder: nn.Module, rank: int, alpha: float | None = None
                  ) -> tuple[Callable[[torch.Tensor], torch.Tensor], EncoderTail]:
    """``(head, tail)``: ``head(x)`` the frozen features, ``tail`` their trainable continuation with rank-``rank``
    adapters on :data:`TARGETS` (only the adapters require grad)."""
    if backbone_name not in SPLITS:
        raise ValueError(f"encoder_lora_rank: adapters are available for {sorted(SPLITS)}, not '{backbone_name}'")
    head, tail = SPLITS[backbone_name](encoder)
    tail.requires_grad_(False)
    for parent in list(tail.stage.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear) and name in TARGETS:
                setattr(parent, name, LoRALinear(child, rank, float(alpha or 2 * rank)))
    if not tail.adapters():
        raise ValueError("encoder_lora_rank: no adaptable linear layer in the encoder's last stage")
    return head, tail
