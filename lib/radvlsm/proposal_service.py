"""The ``box_proposal`` task at request level: phrase -> ranked candidate boxes from one or more backends."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from radvlsm.defaults import DEFAULT_PHRASE, LESION
from radvlsm.errors import InputError
from radvlsm.geometry import box_to_slicer_roi
from radvlsm.io import Image2D
from radvlsm.markups import roi_markups
from radvlsm.predictor import SegmentPredictor
from radvlsm.proposals.base import BoxProposer, Proposal
from radvlsm.proposals.refine import refine_candidates
from radvlsm.service import LabelResult, load_request_image, run_on_input
from radvlsm.task_specs import BOX_PROPOSAL
from radvlsm.text import validate_text
from radvlsm.volume import Volume
from radvlsm.volume_tasks import on_slice, required_slice


def requested_backends(request: dict[str, Any], available: dict[str, BoxProposer], default: str) -> list[str]:
    """``backend`` may be one name, a comma-separated string, or a list of names."""
    value = request.get("backend") or default
    names = value.split(",") if isinstance(value, str) else value
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise InputError("backend", f"expected a backend name or a list of names, got {value!r:.60}")
    names = [n.strip() for n in names if n.strip()]
    unknown = [n for n in names if n not in available]
    if unknown or not names:
        raise InputError("backend", f"unknown backend {unknown or names}; available: {sorted(available)}")
    return names


def with_roi(candidate: dict[str, Any]) -> dict[str, Any]:
    """Add the Slicer-order ``roi`` beside the SAM-order ``box``."""
    return {**candidate, "roi": box_to_slicer_roi(candidate["box"])}


class ProposalService:
    def __init__(self, predictor: SegmentPredictor, proposers: dict[str, BoxProposer],
                 default_backend: str = "qformer_lite", default_text: str = DEFAULT_PHRASE):
        self.predictor = predictor
        self.proposers = proposers
        self.default_backend = default_backend
        self.default_text = default_text

    def propose(self, request: dict[str, Any], image: Image2D | None = None
                ) -> tuple[Any, list[Proposal], dict[str, Any]]:
        """The image (the request's, when not given), each backend's proposal, and the JSON result (candidates
        merged, best first)."""
        t0 = time.perf_counter()
        text = validate_text(request.get("text", self.default_text))
        top_k = BOX_PROPOSAL.read(request, "top_k")
        refine = None if request.get("refine") is None else BOX_PROPOSAL.read(request, "refine")
        backends = requested_backends(request, self.proposers, self.default_backend)
        image = load_request_image(request) if image is None else image
        enc = self.predictor.encode(image)
        proposals = [self.proposers[b].propose(image, text, top_k=top_k, encoded=enc) for b in backends]
        for b, p in zip(backends, proposals, strict=True):
            if self.proposers[b].refine_by_default if refine is None else refine:
                refine_candidates(self.predictor, enc, p.candidates)
        merged = sorted((c for p in proposals for c in p.candidates), key=lambda c: -c.score)[:top_k]
        match = max(p.match_score for p in proposals)
        result = {
            "text": text,
            "found": bool(merged),
            "match_score": round(match, 4),
            "candidates": [with_roi(c.to_json()) for c in merged],
            "backends": {p.backend: {"match_score": round(p.match_score, 4), "n_candidates": len(p.candidates),
                                     "latencies_ms": {k: round(v, 1) for k, v in p.timings_ms.items()},
                                     **({"version": p.version} if p.version else {})}
                         for p in proposals},
            "cache_hit": enc.cache_hit,
            "latencies_ms": {"encode": round(enc.encode_ms, 1), "total": round((time.perf_counter() - t0) * 1e3, 1)},
            "image_shape": list(image.shape),
        }
        notes = [n for p in proposals for n in p.notes]
        if notes:
            result["notes"] = notes
        if not merged:
            result["message"] = (f"no confident '{text}' in this image (image-text match {match:.2f}); "
                                 "nothing proposed")
        return image, proposals, result

    def run(self, request: dict[str, Any]) -> LabelResult:
        return run_on_input(request, self.run_image, self.run_volume)

    def run_volume(self, volume: Volume, request: dict[str, Any]) -> LabelResult:
        return on_slice(self.run_image, volume, request, required_slice(request, volume, "box_proposal"))

    def run_image(self, image: Image2D, request: dict[str, Any]) -> LabelResult:
        image, proposals, result = self.propose(request, image)
        label = None
        if BOX_PROPOSAL.read(request, "heatmap"):
            heats = [p.heatmap for p in proposals if p.heatmap is not None]
            if heats:
                label = np.rint(np.max(heats, axis=0) * 255).astype(np.uint8)
        cands = result["candidates"]
        markups = roi_markups([c["box"] for c in cands], image, [f"{LESION} {i + 1}" for i in range(len(cands))],
                              [f"'{result['text']}' score {c['score']:.2f}" for c in cands])
        return LabelResult(label, image, result, markups=markups)
