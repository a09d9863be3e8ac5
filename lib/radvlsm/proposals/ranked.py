"""A text proposer whose candidates are re-ranked by what SAM makes of them (:mod:`radvlsm.mask_ranking`).

The wrapped proposer still decides whether the phrase's object is in the image (its image-text match and presence
rule) and gives its relevance map; the candidates become its relevance components and box head plus class-agnostic
contrast blobs (:mod:`radvlsm.proposals.regions`), each decoded (and, for a ranker trained so, decoded again from
its mask's own box) and scored by the mask ranker. The answer's boxes are those the scored masks were decoded
from, best first, and carry where they came from.
"""

from __future__ import annotations

import time

import numpy as np

from radvlsm.defaults import DEFAULT_TOP_K
from radvlsm.io import Image2D
from radvlsm.mask_ranking import MaskRanker, decode_candidates, region_features
from radvlsm.predictor import Encoded, SegmentPredictor
from radvlsm.proposals.base import BoxProposer, Candidate, Proposal
from radvlsm.proposals.boxes import heatmap_boxes
from radvlsm.proposals.regions import contrast_blobs

#: relevance thresholds whose components are candidates, how many of them, and how many contrast blobs (on the
#: training sets, 3 and 6 ranked as well as 4 and 8 for a fifth fewer decodes: scripts/mask_ranker_train.py)
HEAT_THRESHOLDS = (0.5, 0.35, 0.2)
HEAT_CANDIDATES = 3
BLOB_CANDIDATES = 6


def ranking_boxes(image: Image2D, proposal: Proposal, max_heat: int = HEAT_CANDIDATES,
                  max_blobs: int = BLOB_CANDIDATES) -> tuple[np.ndarray, list[str]]:
    """The boxes the ranker chooses among and their sources: relevance components, the box head's box (when the
    proposer gave one) and contrast blobs."""
    boxes: list[np.ndarray] = []
    sources: list[str] = []
    if proposal.heatmap is not None:
        hb, _ = heatmap_boxes(proposal.heatmap, thresholds=HEAT_THRESHOLDS)
        boxes += list(hb[:max_heat])
        sources += ["heatmap"] * len(hb[:max_heat])
    head = [c for c in proposal.candidates if c.extra.get("source") == "box_head"]
    others = [c for c in proposal.candidates if c.extra.get("source") != "box_head"] if proposal.heatmap is None else []
    for c in head + others:
        boxes.append(np.asarray(c.box, np.float32))
        sources.append(c.extra.get("source", c.backend))
    blobs, _ = contrast_blobs(image, top=max_blobs)
    boxes += list(blobs)
    sources += ["contrast"] * len(blobs)
    return np.array(boxes, np.float32).reshape(-1, 4), sources


class RankedProposer:
    """``proposer``'s presence decision and relevance map, candidates chosen by ``ranker``."""

    refine_by_default = False

    def __init__(self, proposer: BoxProposer, predictor: SegmentPredictor, ranker: MaskRanker):
        self.proposer = proposer
        self.predictor = predictor
        self.ranker = ranker
        self.name = proposer.name

    def __getattr__(self, name: str):  # the wrapped proposer's version, thresholds, watcher ...
        return getattr(self.proposer, name)

    @property
    def unranked(self) -> BoxProposer:
        """The wrapped proposer: what a caller that reads only the match score (user boxes) asks instead."""
        return self.proposer

    def propose(self, image: Image2D, text: str, top_k: int = DEFAULT_TOP_K,
                encoded: Encoded | None = None) -> Proposal:
        enc = encoded or self.predictor.encode(image)
        proposal = self.proposer.propose(image, text, top_k=top_k, encoded=enc)
        if not proposal.candidates:
            return proposal
        t0 = time.perf_counter()
        boxes, sources = ranking_boxes(image, proposal, self.ranker.max_heat, self.ranker.max_blobs)
        logits, ious, decoded, origin = decode_candidates(self.predictor, enc, boxes, two_pass=self.ranker.two_pass)
        feats = region_features(logits, ious, decoded, enc, image, proposal.heatmap, proposal.match_score)
        scores = self.ranker.score(feats) if len(feats) else np.zeros(0, np.float32)
        order = np.argsort(-scores)[:top_k]
        notes = list(proposal.notes) + [f"candidate masks ranked by mask_ranker {self.ranker.version}"]
        candidates = [Candidate([float(v) for v in decoded[i]], float(scores[i]), proposal.backend,
                                {"source": sources[origin[i]], "ranker": round(float(scores[i]), 4),
                                 "predicted_iou": round(float(ious[i]), 4)}) for i in order]
        if not candidates or candidates[0].score < self.ranker.min_score:
            best = float(scores.max()) if len(scores) else 0.0
            notes.append(f"no candidate mask looks like a lesion (best ranker score {best:.2f} < "
                         f"{self.ranker.min_score:.2f})")
            candidates = []
        timings = dict(proposal.timings_ms)
        timings["rank"] = (time.perf_counter() - t0) * 1e3
        timings["total"] = timings.get("total", 0.0) + timings["rank"]
        return Proposal(candidates, proposal.match_score, proposal.heatmap, proposal.backend, timings, notes,
                        proposal.version, ranked=True)
