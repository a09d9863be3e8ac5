"""Typed results of the text pipeline and of the request-level tasks, turned into the served JSON in one place.

The values are held as the JSON reports them (rounded as served), so that what reads a result in Python (active
learning: :mod:`radvlsm.training.uncertainty`) sees the same numbers a client of the server sees; ``to_json``
is the only place the keys are spelled.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from radvlsm.geometry import box_to_slicer_roi
from radvlsm.io import Image2D


def best_predicted_iou(prompts: list[dict[str, Any]]) -> float | None:
    """SAM's highest predicted IoU among a lesion's prompts (None when no prompt has one)."""
    ious = [p.get("predicted_iou") for p in prompts if p.get("predicted_iou") is not None]
    return float(max(ious)) if ious else None


@dataclass
class LesionResult:
    """One lesion of a pipeline result (lesion i is labelled ``i + 1`` in the label map)."""

    label: int
    box: list[float]  # [x0, y0, x1, y1] of the mask's pixels
    area_px: int
    proposal_score: float
    reliability: float
    agreement: float
    uncertainty: float
    prompts: list[dict[str, Any]]  # the decoded prompts (radvlsm.aggregation), ``predicted_iou`` each
    diagnosis: Any | None = None  # a radvlsm.diagnosis DiagnosisResult, when one was asked and a head is loaded

    @classmethod
    def from_lesion(cls, i: int, lesion: Any, diagnosis: Any | None = None) -> LesionResult:
        """From a :class:`radvlsm.aggregation.FusedLesion` (its mask gives the box and area)."""
        ys, xs = np.nonzero(lesion.mask)
        box = [float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max())]
        return cls(i + 1, box, int(lesion.mask.sum()), round(lesion.score, 4), round(lesion.reliability, 4),
                   round(lesion.agreement, 4), round(lesion.uncertainty, 4), lesion.prompts, diagnosis)

    @property
    def best_predicted_iou(self) -> float | None:
        """SAM's highest predicted IoU among the lesion's prompts (None when no prompt has one)."""
        return best_predicted_iou(self.prompts)

    def to_json(self) -> dict[str, Any]:
        out = {"label": self.label, "box": self.box, "roi": box_to_slicer_roi(self.box), "area_px": self.area_px,
               "proposal_score": self.proposal_score, "reliability": self.reliability, "agreement": self.agreement,
               "uncertainty": self.uncertainty, "n_prompts": len(self.prompts), "prompts": self.prompts}
        if self.diagnosis is not None:
            out["diagnosis"] = self.diagnosis.to_json()
        return out


@dataclass
class SegmentationResult:
    """What one run of :class:`radvlsm.pipeline.RadVLSMPipeline` reports."""

    text: str
    match_score: float  # image-text match of the proposer, rounded as served
    prompt_source: str  # "user" (the request's boxes) or the proposer backend's name
    proposer_version: str | None
    lesions: list[LesionResult]
    cache_hit: bool
    encodes: int
    latencies_ms: dict[str, float]
    image_shape: list[int]
    notes: list[str] | None = None  # the proposer's notes (not when user boxes replaced its proposals)
    message: str | None = None  # why the label is empty
    diagnosis_note: str | None = None  # a diagnosis was asked but no head is loaded

    @property
    def found(self) -> bool:
        return bool(self.lesions)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "text": self.text,
            "found": self.found,
            "match_score": self.match_score,
            "prompt_source": self.prompt_source,
            "proposer_version": self.proposer_version,
            "lesions": [lesion.to_json() for lesion in self.lesions],
            "cache_hit": self.cache_hit,
            "encodes": self.encodes,
            "latencies_ms": self.latencies_ms,
            "image_shape": self.image_shape,
        }
        if self.notes is not None:
            out["notes"] = list(self.notes)
        if self.message is not None:
            out["message"] = self.message
        if self.diagnosis_note is not None:
            out["diagnosis_note"] = self.diagnosis_note
        return out


@dataclass
class PromptedLesion:
    """One lesion of the ``sam`` task: what its prompt box (and clicks) decoded to."""

    label: int
    area_px: int
    predicted_iou: float
    clicks: int
    box: Any  # the prompt box [x0, y0, x1, y1] as decoded, None for clicks alone

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"label": self.label, "area_px": self.area_px, "predicted_iou": self.predicted_iou,
                               "clicks": self.clicks}
        if self.box is not None:
            out["box"] = [round(v, 2) for v in self.box]
            out["roi"] = [round(v, 2) for v in box_to_slicer_roi(self.box)]
        return out


@dataclass
class SamResult:
    """What the ``sam`` task reports for one 2D image (a volume's slice adds its keys to the JSON)."""

    lesions: list[PromptedLesion]
    multilabel: bool
    cache_hit: bool
    latencies_ms: dict[str, float]
    backbone: str
    runtime: str
    model_version: str
    image_shape: list[int]

    @classmethod
    def from_segmentation(cls, seg: Any, multilabel: bool, predictor: Any, image_shape: tuple[int, ...],
                          latencies_ms: dict[str, float]) -> SamResult:
        """From a :class:`radvlsm.predictor.Segmentation`: lesion *i* is labelled *i* + 1 with ``multilabel``."""
        lesions = [PromptedLesion(i + 1 if multilabel else 1, int(lesion.mask.sum()), round(lesion.score, 4),
                                  lesion.n_points, lesion.box)
                   for i, lesion in enumerate(seg.lesions)]
        return cls(lesions, multilabel, seg.cache_hit, latencies_ms, predictor.backbone.name, seg.runtime,
                   predictor.backbone.version, list(image_shape))

    def to_json(self) -> dict[str, Any]:
        return {"lesions": [lesion.to_json() for lesion in self.lesions], "multilabel": self.multilabel,
                "cache_hit": self.cache_hit, "latencies_ms": self.latencies_ms, "backbone": self.backbone,
                "runtime": self.runtime, "model_version": self.model_version, "image_shape": self.image_shape}


@dataclass
class LabelResult:
    """A request-level task's answer: the label array, the loaded image (for its geometry) and the result JSON."""

    label: np.ndarray | None  # (rows, cols) integer labels; None when the task returns JSON only
    image: Image2D
    result: dict[str, Any]
    markups: dict[str, Any] | None = None  # boxes as Slicer markups (the file a detection task returns)
