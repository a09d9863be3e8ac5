"""Snap a coarse proposal box to the lesion: one mask-decoder pass on the cached embedding, then the decoded
mask's tight box. Backends localise on coarse grids (4-16 px); the decoder follows the lesion's edges."""

from __future__ import annotations

import numpy as np

from radvlsm.geometry import mask_to_box
from radvlsm.predictor import Encoded, SegmentPredictor
from radvlsm.proposals.base import Candidate
from radvlsm.proposals.boxes import box_iou


def refine_box(predictor: SegmentPredictor, enc: Encoded, box: np.ndarray, min_agreement: float = 0.3
               ) -> tuple[np.ndarray, float]:
    """The decoded mask's tight box (if it agrees with ``box`` at IoU >= ``min_agreement``) and its predicted IoU."""
    masks, iou = predictor.decode(enc, np.asarray(box, np.float32))
    tight = mask_to_box(masks[0])
    if tight is None:
        return np.asarray(box, np.float32), 0.0
    tight_a = np.array(tight, np.float32)
    agree = box_iou(np.asarray(box), tight_a)[0, 0] >= min_agreement
    return (tight_a if agree else np.asarray(box, np.float32)), float(iou[0])


def refine_candidates(predictor: SegmentPredictor, enc: Encoded, candidates: list[Candidate]) -> list[Candidate]:
    """Refine each candidate in place, keeping the backend's own box as ``extra['coarse_box']``."""
    for c in candidates:
        box, pred_iou = refine_box(predictor, enc, np.array(c.box, np.float32))
        c.extra.update(coarse_box=[round(float(v), 1) for v in c.box], predicted_iou=round(pred_iou, 4))
        c.box = box.tolist()
    return candidates
