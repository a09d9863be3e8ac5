"""Torch runtimes: ``eager`` (the fp32 reference) and reduced-precision autocast (``bf16``, ``fp16``).

Reduced precision is offered only where the hardware does it natively: on a CPU without avx512_bf16/AMX, bf16
is emulated and slower than fp32, so it is refused rather than silently made slow.
"""

from __future__ import annotations

from functools import lru_cache

import torch

from radvlsm.models.registry import Backbone
from radvlsm.runtimes.registry import register_runtime


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


class TorchRuntime:
    """The backbone's own encoder module, optionally under autocast to ``dtype``."""

    def __init__(self, backbone: Backbone, name: str = "eager", dtype: torch.dtype | None = None):
        self.backbone, self.name, self.dtype = backbone, name, dtype

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.backbone.device)
        with torch.inference_mode():
            if self.dtype is None:
                return self.backbone.image_encoder(x)
            with torch.autocast(self.backbone.device.type, dtype=self.dtype):
                return self.backbone.image_encoder(x).float()

    def describe(self) -> dict:
        return {"runtime": self.name, "dtype": str(self.dtype or torch.float32).removeprefix("torch."),
                "device": str(self.backbone.device)}


def _always(_: Backbone) -> str | None:
    return None


def _bf16_supported(backbone: Backbone) -> str | None:
    if backbone.device.type == "cuda":
        return None if torch.cuda.is_bf16_supported() else "this GPU has no bf16"
    if {"avx512_bf16", "amx_bf16"} & cpu_flags():
        return None
    return "this CPU has no native bf16 (avx512_bf16 or amx_bf16); emulated bf16 is slower than fp32"


def _fp16_supported(backbone: Backbone) -> str | None:
    return None if backbone.device.type == "cuda" else "fp16 autocast is for CUDA devices"


@register_runtime("eager", _always, "torch fp32, the reference")
def build_eager(backbone: Backbone, cache_dir=None) -> TorchRuntime:
    return TorchRuntime(backbone)


@register_runtime("bf16", _bf16_supported, "torch autocast bfloat16 (CUDA, or CPUs with avx512_bf16/AMX)")
def build_bf16(backbone: Backbone, cache_dir=None) -> TorchRuntime:
    return TorchRuntime(backbone, "bf16", torch.bfloat16)


@register_runtime("fp16", _fp16_supported, "torch autocast float16 on CUDA")
def build_fp16(backbone: Backbone, cache_dir=None) -> TorchRuntime:
    return TorchRuntime(backbone, "fp16", torch.float16)
