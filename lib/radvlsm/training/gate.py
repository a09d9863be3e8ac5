"""Publishing decisions that hold at small N: paired bootstrap of a per-image gain, and cross-validation folds.

With ten labelled images the hash split holds two back, and a mean over two images says little. The proposer's
gate therefore scores *every* labelled image out of fold (:func:`folds`: each image is scored by a model trained
without it) and compares, image by image, with the served model's score on the same image. A new version is
published only when it is **better with confidence**: the one-sided lower bound of the paired bootstrap
interval of the mean gain (:func:`paired_bootstrap`, confidence 0.9 by default) is above zero. The decoder's
gate (:mod:`radvlsm.training.decoder_gate`) does the same with the Dice of each image from its tight boxes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from radvlsm.training.data import Item, id_hash


@dataclass
class GateResult:
    n: int  # paired images
    before: float  # mean score of the served model
    after: float  # mean score of the candidate (out of fold)
    gain: float  # mean paired gain
    lower: float  # one-sided lower bound of the mean gain at ``confidence``
    confidence: float
    passed: bool

    def to_json(self) -> dict[str, Any]:
        return {k: (round(v, 5) if isinstance(v, float) else v) for k, v in asdict(self).items()}

    def describe(self) -> str:
        return (f"{self.before:.4f} -> {self.after:.4f} on {self.n} images (mean gain {self.gain:+.4f}, "
                f"{self.confidence:.0%} lower bound {self.lower:+.4f})")


def paired_bootstrap(before: np.ndarray, after: np.ndarray, confidence: float = 0.9, resamples: int = 2000,
                     seed: int = 0, min_images: int = 3, tolerance: float = 0.0) -> GateResult:
    """Whether ``after`` beats ``before`` (per-image scores of the same images) with ``confidence``: the lower
    bound of the mean gain is above ``-tolerance`` (0: strictly better).

    Fewer than ``min_images`` pairs never pass: there is no confidence to be had."""
    before, after = np.asarray(before, np.float64), np.asarray(after, np.float64)
    if before.shape != after.shape:
        raise ValueError("paired scores must have the same shape")
    n = len(before)
    if n == 0:
        return GateResult(0, float("nan"), float("nan"), float("nan"), float("nan"), confidence, False)
    diff = after - before
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, n, size=(resamples, n))].mean(1)
    lower = float(np.quantile(means, 1 - confidence))
    passed = bool(n >= min_images and lower > -tolerance)
    return GateResult(n, float(before.mean()), float(after.mean()), float(diff.mean()), lower, confidence, passed)


def folds(ids: list[str], k: int) -> list[list[str]]:
    """``k`` folds of ``ids`` of (nearly) equal size, dealt in id-hash order: deterministic for a given set of
    labelled images, whatever order the datastore lists them in."""
    ids = sorted(set(ids), key=id_hash)
    k = max(1, min(k, len(ids)))
    return [ids[i::k] for i in range(k)]


def item_folds(items: list[Item], k: int) -> list[set[int]]:
    """``k`` folds of item indexes, by :attr:`Item.group_id`: the slices of one volume (one patient) are held out
    together, so no fold is scored by a model that trained on the same volume's other slices."""
    groups = sorted({it.group_id for it in items})
    return [{i for i, it in enumerate(items) if it.group_id in set(fold)} for fold in folds(groups, k)]


def by_group(items: list[Item], scores: list[float]) -> dict[str, float]:
    """Per-item scores averaged per :attr:`Item.group_id` (a volume's slices are one paired observation)."""
    sums: dict[str, list[float]] = {}
    for it, s in zip(items, scores, strict=True):
        sums.setdefault(it.group_id, []).append(s)
    return {g: float(np.mean(v)) for g, v in sorted(sums.items())}
