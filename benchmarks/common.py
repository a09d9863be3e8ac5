"""Helpers every benchmark shares: the stack it measures, overlap scores, the per-image CSV, and a proposer that
keeps its last answer.

Every benchmark builds what it measures through :mod:`radvlsm.stack` (#17), from :data:`BENCH` with the settings it
compares (:func:`stack_for`); what the server does not serve but a benchmark compares (another proposer over the
same predictor, a pipeline over it) comes from the stack too (:meth:`Stack.proposer_over`,
:meth:`Stack.pipeline_over`).
"""

from __future__ import annotations

import csv
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from radvlsm.geometry import mask_dice
from radvlsm.stack import Settings, Stack

#: what the benchmarks measured before the stack: the backbone on the CPU, the eager encoder (unless a benchmark
#: asks for another), no start-up warm-up, no diagnosis head unless asked, the shipped weights only (no trained_dir)
BENCH = Settings(device="cpu", runtime="eager", warm_up=False, diagnose=False)


def stack_for(**fields: Any) -> Stack:
    """The stack a benchmark measures: :data:`BENCH` with ``fields`` (:class:`radvlsm.stack.Settings` fields)."""
    return Stack(replace(BENCH, **fields))


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return mask_dice(a, b)


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
