"""Publishing decisions that hold at small N: paired bootstrap of a per-image gain, and cross-validation folds.

With ten labelled images the hash split holds two back, and a mean over two images says little. The proposer's
gate therefore scores *every* labelled image out of fold (:func:`folds`: each image is scored by a model trained
without it) and compares, image by image, with the served model's score on the same image. A new version is
published only when it is **better with confidence**: the one-sided lower bound of the paired bootstrap
interval of the mean gain (:func:`paired_bootstrap`, confidence 0.9 by default) is above zero. The decoder's
gate (:mod:`radvlsm.training.decoder_gate`) does the same with the Dice of each image from its tight boxes.
"""

from __future__ import annotations

import numpy as np

from radvlsm.paired import GateResult as GateResult
from radvlsm.paired import paired_bootstrap as paired_bootstrap
from radvlsm.training.data import Item, id_hash


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
