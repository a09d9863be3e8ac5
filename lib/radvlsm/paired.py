"""Better with confidence at small N: the paired bootstrap of a per-image gain.

A leaf that serving and training both decide with: the trainer publishes a version only when it beats the served
one with confidence (:mod:`radvlsm.training.gate`), and the text path lets the text proposer place a site's
candidates over the site's exemplars only when it finds that site's lesions better with confidence
(:mod:`radvlsm.proposals.site_exemplars`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


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
