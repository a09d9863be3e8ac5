"""Rad-VLSM end to end: phrase -> candidate boxes -> fused lesion masks -> diagnosis, on one image encode.

Library entry point (``RadVLSMPipeline.run``), used by the ``radvlsm`` infer task and the ``radvlsm segment`` CLI.
User boxes/points override the proposals (boxes) or refine them (points) when given.
"""

from __future__ import annotations

import time
from dataclasses import InitVar, dataclass, field, replace
from typing import Any

import numpy as np

from radvlsm.aggregation import AggregationConfig, FusedLesion, SelectionConfig, aggregate
from radvlsm.defaults import DEFAULT_PHRASE, DEFAULT_TOP_K
from radvlsm.geometry import Prompts
from radvlsm.io import Image2D
from radvlsm.predictor import SegmentPredictor
from radvlsm.proposals.base import BoxProposer, Candidate
from radvlsm.results import LesionResult, SegmentationResult
from radvlsm.text import validate_text


@dataclass
class PipelineOptions:
    """``max_lesions`` / ``relative_score`` (keywords kept for callers) set those fields of ``selection``, which
    holds the lesion-selection settings once (:class:`radvlsm.aggregation.SelectionConfig` and its defaults)."""

    text: str = DEFAULT_PHRASE
    top_k: int = DEFAULT_TOP_K
    diagnose: bool = True
    aggregation: AggregationConfig = field(default_factory=AggregationConfig)
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    max_lesions: InitVar[int | None] = None
    #: a further lesion is kept only if its reliability is at least this share of the best one's
    relative_score: InitVar[float | None] = None

    def __post_init__(self, max_lesions: int | None, relative_score: float | None) -> None:
        if max_lesions is not None:
            self.selection = replace(self.selection, max_lesions=max_lesions)
        if relative_score is not None:
            self.selection = replace(self.selection, relative=relative_score)


@dataclass
class PipelineResult:
    label: np.ndarray  # (rows, cols) uint8, lesion i labelled i+1 (0 background); all zero if nothing found
    lesions: list[FusedLesion]
    diagnoses: list[Any]
    result: dict[str, Any]  # ``summary.to_json()``: the served JSON (the request-level tasks add their keys)
    summary: SegmentationResult | None = None  # the same, typed (radvlsm.results)


class RadVLSMPipeline:
    def __init__(self, predictor: SegmentPredictor, proposer: BoxProposer, diagnoser: Any | None = None):
        self.predictor = predictor
        self.proposer = proposer
        self.diagnoser = diagnoser

    def run(self, image: Image2D, opts: PipelineOptions | None = None, prompts: Prompts | None = None
            ) -> PipelineResult:
        opts = opts or PipelineOptions()
        text = validate_text(opts.text)
        times: dict[str, float] = {}
        t = time.perf_counter()
        enc = self.predictor.encode(image)
        times["encode"] = enc.encode_ms
        t1 = time.perf_counter()
        user_boxes = prompts is not None and len(prompts.boxes) > 0
        # With the user's boxes only the match score and version are read: a ranked proposer's decodes would be wasted
        proposer = getattr(self.proposer, "unranked", self.proposer) if user_boxes else self.proposer
        proposal = proposer.propose(image, text, top_k=opts.top_k, encoded=enc)
        if user_boxes:
            candidates = [Candidate(b.tolist(), 1.0, "user") for b in prompts.boxes]
        else:
            # The proposers' own (coarse) boxes, not the snapped ones: LiteMedSAM was trained on loose boxes, and
            # on training images (scripts/tune_aggregation.py) snapped boxes lowered the mask Dice by ~3 points.
            candidates = proposal.candidates
        times["propose"] = (time.perf_counter() - t1) * 1e3
        t2 = time.perf_counter()
        # The user's boxes are all kept; proposals are ranked and filtered by reliability.
        sel = SelectionConfig(max_lesions=len(candidates), relative=0.0) if user_boxes else opts.selection
        lesions = aggregate(self.predictor, enc, candidates, opts.aggregation, sel,
                            None if user_boxes or proposal.ranked else proposal.heatmap)
        if prompts is not None and len(prompts.points) and lesions:
            lesions = self._apply_clicks(enc, lesions, prompts)
        times["aggregate"] = (time.perf_counter() - t2) * 1e3
        t3 = time.perf_counter()
        diagnoses = []
        if opts.diagnose and self.diagnoser is not None:
            diagnoses = [self.diagnoser.diagnose(image, lesion.mask, embedding=enc) for lesion in lesions]
        times["diagnose"] = (time.perf_counter() - t3) * 1e3
        times["total"] = (time.perf_counter() - t) * 1e3
        label = np.zeros(image.shape, np.uint8)
        for i, lesion in enumerate(lesions):
            label[lesion.mask] = i + 1
        summary = SegmentationResult(
            text=text,
            match_score=round(proposal.match_score, 4),
            prompt_source="user" if user_boxes else proposal.backend,
            proposer_version=proposal.version or None,
            lesions=[LesionResult.from_lesion(i, lesion, diagnoses[i] if diagnoses else None)
                     for i, lesion in enumerate(lesions)],
            cache_hit=enc.cache_hit,
            encodes=0 if enc.cache_hit else 1,
            latencies_ms={k: round(v, 1) for k, v in times.items()},
            image_shape=list(image.shape),
            notes=list(proposal.notes) if proposal.notes and not user_boxes else None,
            message=None if lesions else (f"no lesion found for '{text}' (image-text match "
                                          f"{proposal.match_score:.2f}); the label is empty"),
            diagnosis_note="no diagnosis head is loaded" if opts.diagnose and self.diagnoser is None else None,
        )
        return PipelineResult(label, lesions, diagnoses, summary.to_json(), summary)

    def _apply_clicks(self, enc, lesions: list[FusedLesion], prompts: Prompts) -> list[FusedLesion]:
        """Clicks refine the lesion whose box they fall in: box + clicks decoded once more, replacing its mask."""
        from radvlsm.predictor import assign_points_to_boxes

        boxes = np.array([lesion.box for lesion in lesions], np.float32)
        owner = assign_points_to_boxes(prompts.points, boxes)
        for i, lesion in enumerate(lesions):
            sel = owner == i
            if sel.any():
                masks, iou = self.predictor.decode(enc, boxes[i], prompts.points[sel], prompts.point_labels[sel])
                lesion.mask = masks[0]
                lesion.prompts.append({"kind": "clicks", "n": int(sel.sum()), "predicted_iou": round(float(iou[0]), 4)})
        return lesions
