"""Helpers every benchmark shares: the stack it measures, overlap scores, the per-image CSV, and a proposer that
keeps its last answer.

Every benchmark builds what it measures through :mod:`radvlsm.stack` (#17), from :data:`BENCH` with the settings it
compares (:func:`stack_for`). The few parts a stack does not build (a proposer over the stack's predictor with
another checkpoint, store or bank size, another backend; a pipeline over another proposer; a diagnoser with an
encoder) are built here, once: :func:`extra_proposer`, :func:`pipeline_over`, :func:`encoding_diagnoser`.
"""

from __future__ import annotations

import csv
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from radvlsm.stack import Settings, Stack

if TYPE_CHECKING:
    from radvlsm.diagnosis import Diagnoser
    from radvlsm.pipeline import RadVLSMPipeline
    from radvlsm.proposals.base import BoxProposer

#: what the benchmarks measured before the stack: the backbone on the CPU, the eager encoder (unless a benchmark
#: asks for another), no start-up warm-up, no diagnosis head unless asked, the shipped weights only (no trained_dir)
BENCH = Settings(device="cpu", runtime="eager", warm_up=False, diagnose=False)


def stack_for(**fields: Any) -> Stack:
    """The stack a benchmark measures: :data:`BENCH` with ``fields`` (:class:`radvlsm.stack.Settings` fields)."""
    return Stack(replace(BENCH, **fields))


def extra_proposer(stack: Stack, name: str, **kwargs: Any) -> BoxProposer:
    """A proposer the stack does not build, over its predictor: ``qformer_lite`` from another checkpoint or following
    another store, a fresh ``template`` bank, another backend (``build_proposer(name, predictor=..., **kwargs)``)."""
    from radvlsm.proposals import build_proposer

    return build_proposer(name, predictor=stack.predictor, **kwargs)


def pipeline_over(stack: Stack, proposer: Any) -> RadVLSMPipeline:
    """The stack's pipeline (its predictor and diagnoser) over another proposer: a rule compared with the served
    one, or the served proposer wrapped in a :class:`Recording`."""
    from radvlsm.pipeline import RadVLSMPipeline

    return RadVLSMPipeline(stack.predictor, proposer, stack.diagnoser)


def encoding_diagnoser(stack: Stack) -> Diagnoser | None:
    """The stack's diagnoser with the stack's predictor as its encoder (a head with the ``roi`` view encodes the
    lesion crop; the stack builds the diagnoser without one, so such a head would answer from radiomics only)."""
    diagnoser = stack.diagnoser
    if diagnoser is not None and diagnoser.encoder is None:
        diagnoser.encoder = stack.predictor.encode
    return diagnoser


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
