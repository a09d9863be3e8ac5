"""Helpers every benchmark shares: overlap scores, the per-image CSV, and a proposer that keeps its last answer."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / max(a.sum() + b.sum(), 1))


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def write_csv(rows: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


class Recording:
    """Wraps a proposer and keeps its last proposal (the pipeline refines those candidates in place)."""

    def __init__(self, proposer):
        self.proposer = proposer
        self.name = proposer.name
        self.refine_by_default = proposer.refine_by_default
        self.last = None

    def propose(self, image, text, top_k=3, encoded=None):
        self.last = self.proposer.propose(image, text, top_k=top_k, encoded=encoded)
        return self.last
