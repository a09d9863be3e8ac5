"""Encoder runtime registry: how the heavy image encoder is executed (torch eager, ONNX Runtime, ...).

Like the backbone registry, runtimes register themselves under a name and are chosen from config
(``--conf runtime onnx``), never from an if-chain. ``auto`` picks the fastest runtime whose Dice gate
(``gates.json``, written by ``benchmarks/bench_speed.py --dice``) passed for this backbone, checkpoint and device.

This module is a leaf (as timm's ``_registry``): it imports none of the runtime modules, which import it to
register. The built-in runtimes are registered by the package, :mod:`radvlsm.runtimes` imports them, so any import
of this module sees them (importing ``radvlsm.runtimes.registry`` runs the package first).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

from radvlsm.models.registry import Backbone

logger = logging.getLogger(__name__)
GATES = Path(__file__).with_name("gates.json")
DICE_TOLERANCE = 0.005  # a runtime may replace eager only if its Dice is within this of eager's
SPEED_MARGIN = 0.10  # runtimes within 10 % of the fastest gated one count as equally fast


class EncoderRuntime(Protocol):
    """Runs the image encoder: ``(1, 3, S, S)`` float tensor -> ``(1, C, h, w)`` embedding on the backbone's
    device. ``name`` is part of every embedding-cache key (runtimes differ in the last bits)."""

    name: str

    def encode(self, x: torch.Tensor) -> torch.Tensor: ...

    def describe(self) -> dict: ...


@dataclass(frozen=True)
class RuntimeSpec:
    name: str
    build: Callable[..., EncoderRuntime]  # (backbone, cache_dir=...) -> runtime
    supported: Callable[[Backbone], str | None]  # None if usable, else the reason it is not
    description: str
    #: why ``auto`` must never pick it even if its Dice gate passed (None: eligible)
    not_for_auto: str | None = None


_REGISTRY: dict[str, RuntimeSpec] = {}


def register_runtime(name: str, supported: Callable[[Backbone], str | None], description: str,
                     not_for_auto: str | None = None
                     ) -> Callable[[Callable[..., EncoderRuntime]], Callable[..., EncoderRuntime]]:
    def wrap(fn: Callable[..., EncoderRuntime]) -> Callable[..., EncoderRuntime]:
        _REGISTRY[name] = RuntimeSpec(name, fn, supported, description, not_for_auto)
        return fn

    return wrap


def available_runtimes() -> dict[str, RuntimeSpec]:
    return dict(_REGISTRY)


def load_gates(path: Path = GATES) -> list[dict]:
    """The measured Dice gates (empty when the file is missing or unreadable: ``auto`` then means eager)."""
    try:
        return json.loads(path.read_text())["measured"]
    except (OSError, ValueError, KeyError) as exc:
        logger.warning(f"radvlsm: no runtime gates read from {path} ({exc}); auto runtime = eager")
        return []


def choose_auto(backbone: Backbone, gates: list[dict] | None = None) -> tuple[str, str]:
    """``(runtime, why)``: the fastest gated runtime measured on this backbone, checkpoint and device type."""
    specs = available_runtimes()
    gates = load_gates() if gates is None else gates
    device = backbone.device.type
    passed = [g for g in gates if g["backbone"] == backbone.name and g["version"] == backbone.version
              and g["device"] == device and g["passed"] and g.get("complete", True) and g["runtime"] in specs
              and specs[g["runtime"]].supported(backbone) is None and specs[g["runtime"]].not_for_auto is None]
    if not passed:
        return "eager", f"no runtime passed the Dice gate for {backbone.name}@{backbone.version} on {device}"
    fastest = min(g["encode_ratio"] for g in passed)
    # Speed differences under SPEED_MARGIN are noise on a shared machine: among those, the most exact wins.
    near = [g for g in passed if g["encode_ratio"] <= fastest * (1 + SPEED_MARGIN)]
    best = min(near, key=lambda g: (abs(g["dice_delta"]), g["encode_ratio"]))
    if best["encode_ratio"] >= 1.0:
        return "eager", "no gated runtime was faster than eager"
    return best["runtime"], (f"passed the Dice gate (delta {best['dice_delta']:+.4f} on {best['dataset']}, "
                             f"{best['images']} images) and encodes in {best['encode_ratio']:.2f}x eager's time")


def build_runtime(name: str, backbone: Backbone, cache_dir: str | Path | None = None) -> EncoderRuntime:
    """Build runtime ``name`` (``auto`` resolves through the gates) for ``backbone``."""
    specs = available_runtimes()
    if name == "auto":
        name, why = choose_auto(backbone)
        logger.info(f"radvlsm: runtime auto -> {name}: {why}")
        if name != "eager":
            try:
                return specs[name].build(backbone, cache_dir=cache_dir)
            except Exception as exc:  # e.g. an unwritable cache dir: auto must still serve, with the reference
                logger.warning(f"radvlsm: runtime {name} could not be built ({type(exc).__name__}: {exc}); "
                               "auto falls back to eager")
                name = "eager"
    if name not in specs:
        raise ValueError(f"unknown runtime '{name}'; available: auto, {', '.join(sorted(specs))}")
    reason = specs[name].supported(backbone)
    if reason is not None:
        raise ValueError(f"runtime '{name}' cannot run {backbone.name} here: {reason}")
    return specs[name].build(backbone, cache_dir=cache_dir)
