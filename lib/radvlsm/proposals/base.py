"""Text -> candidate lesion boxes: one interface and a registry for every proposer backend.

A proposer turns an image (and its cached LiteMedSAM embedding, when it uses one) plus a phrase into ranked
candidate boxes in the image's own pixel grid (SAM order ``[x0, y0, x1, y1]``), an image-text match score, and
optionally a relevance heatmap on the same grid. Candidates carry their backend so the aggregation stage can
weight sources.

The registry here is a leaf: it imports none of the backends, which import it to register. The built-in backends
are registered by the package (:mod:`radvlsm.proposals` imports them), so any import of this module sees them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np

from radvlsm.defaults import DEFAULT_TOP_K
from radvlsm.io import Image2D
from radvlsm.predictor import Encoded


@dataclass
class Candidate:
    box: list[float]  # [x0, y0, x1, y1], pixel columns/rows of the input image
    score: float  # confidence in [0, 1]
    backend: str
    extra: dict[str, Any] = field(default_factory=dict)  # backend-specific evidence (e.g. CAM strength)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["box"] = [round(float(v), 2) for v in self.box]
        d["score"] = round(float(self.score), 4)
        if not d["extra"]:
            d.pop("extra")
        return d


@dataclass
class Proposal:
    candidates: list[Candidate]  # ranked, best first; only those above the backend's threshold
    match_score: float  # image-text match in [0, 1]: is the phrase's object in this image at all?
    heatmap: np.ndarray | None = None  # (rows, cols) float32 relevance in [0, 1], or None
    backend: str = ""
    timings_ms: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # e.g. "the exemplar bank is empty"
    version: str = ""  # which weights answered ("shipped", or a fine-tune's "v0001"), when the backend has versions
    #: candidates ranked by what the segmenter made of them (:mod:`radvlsm.proposals.ranked`): the aggregation then
    #: ranks and weights by that score alone, not again by the relevance map
    ranked: bool = False


class BoxProposer(Protocol):
    """What every backend implements. ``encoded`` is the shared backbone embedding (may be ignored)."""

    name: str
    #: whether the proposal service snaps this backend's boxes to the lesion with one decoder pass by default
    refine_by_default: bool

    def propose(self, image: Image2D, text: str, top_k: int = DEFAULT_TOP_K,
                encoded: Encoded | None = None) -> Proposal: ...


ProposerBuilder = Callable[..., BoxProposer]
_REGISTRY: dict[str, ProposerBuilder] = {}


def register_proposer(name: str) -> Callable[[ProposerBuilder], ProposerBuilder]:
    def wrap(fn: ProposerBuilder) -> ProposerBuilder:
        _REGISTRY[name] = fn
        return fn

    return wrap


def available_proposers() -> list[str]:
    return sorted(_REGISTRY)


def build_proposer(name: str, **kwargs) -> BoxProposer:
    if name not in _REGISTRY:
        raise ValueError(f"unknown proposer backend '{name}'; available: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name](**kwargs)
