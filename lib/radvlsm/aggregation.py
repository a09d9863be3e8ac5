"""Multi-candidate region aggregation: many prompts per lesion, decoded on one embedding, fused into one mask.

Rule (documented in the README):

1. Candidate boxes are clustered per lesion (box IoU >= ``cluster_iou``), so two lesions stay two.
2. Each lesion's prompt set: its candidate boxes, scaled (x0.9, x1.1) and shifted (+-5 % of the box size)
   variants of the best one, and SAM's three multimask outputs for the best box.
3. Every prompt's mask gets a reliability weight = proposal strength (the backend's CAM/relevance score) x
   predicted IoU x stability (IoU of the mask thresholded at logit +1 and -1, as SAM's stability score) x
   consistency (its mean Dice with the other prompts' masks).
4. Fused mask = weighted mean of the prompts' probabilities > 0.5. The lesion's agreement (mean pairwise Dice
   of the prompts' masks) is reported; ``1 - agreement`` is its uncertainty.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from radvlsm.predictor import Encoded, SegmentPredictor
from radvlsm.proposals.base import Candidate
from radvlsm.proposals.boxes import box_iou


@dataclass
class AggregationConfig:
    cluster_iou: float = 0.3
    scales: tuple[float, ...] = (0.9, 1.1)
    shift: float = 0.05
    multimask: bool = True


@dataclass
class FusedLesion:
    mask: np.ndarray  # (rows, cols) bool
    box: list[float]  # the lesion's best candidate box
    score: float
    agreement: float  # mean pairwise Dice between the prompts' masks
    prompts: list[dict] = field(default_factory=list)  # what was decoded and each prompt's weight

    @property
    def uncertainty(self) -> float:
        return 1.0 - self.agreement


def cluster_candidates(candidates: list[Candidate], iou: float) -> list[list[Candidate]]:
    """Greedy clustering by box IoU with the cluster's best (first) box; candidates sorted best first."""
    clusters: list[list[Candidate]] = []
    for c in sorted(candidates, key=lambda c: -c.score):
        for cl in clusters:
            if box_iou(np.array(c.box), np.array(cl[0].box))[0, 0] >= iou:
                cl.append(c)
                break
        else:
            clusters.append([c])
    return clusters


def variants(box: np.ndarray, shape: tuple[int, int], cfg: AggregationConfig) -> list[np.ndarray]:
    """Scaled and shifted copies of ``box`` (clipped to the image)."""
    x0, y0, x1, y1 = box
    cx, cy, w, h = (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0
    out = [np.array([cx - s * w / 2, cy - s * h / 2, cx + s * w / 2, cy + s * h / 2]) for s in cfg.scales]
    for dx, dy in ((cfg.shift, 0), (-cfg.shift, 0), (0, cfg.shift), (0, -cfg.shift)):
        out.append(box + np.array([dx * w, dy * h, dx * w, dy * h]))
    rows, cols = shape
    return [np.clip(b, 0, [cols - 1, rows - 1, cols - 1, rows - 1]).astype(np.float32) for b in out]


def stability(logits: torch.Tensor, offset: float = 1.0) -> float:
    hi, lo = (logits > offset).sum().item(), (logits > -offset).sum().item()
    return float(hi / lo) if lo else 0.0


def pairwise_dice(masks: np.ndarray) -> np.ndarray:
    flat = masks.reshape(len(masks), -1).astype(np.float32)
    inter = flat @ flat.T
    sizes = flat.sum(1)
    return 2 * inter / np.maximum(sizes[:, None] + sizes[None, :], 1)


def fuse_lesion(predictor: SegmentPredictor, enc: Encoded, cluster: list[Candidate],
                cfg: AggregationConfig) -> FusedLesion:
    best = np.array(cluster[0].box, np.float32)
    prompts: list[tuple[np.ndarray, str, float]] = [(np.array(c.box, np.float32), f"{c.backend}", c.score)
                                                    for c in cluster]
    prompts += [(b, "variant", cluster[0].score) for b in variants(best, enc.original_size, cfg)]
    boxes = np.stack([b for b, _, _ in prompts])
    logits, ious = predictor.decode_boxes(enc, boxes)  # one decoder pass for every box prompt
    probs = [logits[i, 0].sigmoid() for i in range(len(prompts))]
    weights = [[strength, float(ious[i, 0]), stability(logits[i, 0])] for i, (_, _, strength) in enumerate(prompts)]
    info = [{"kind": kind, "box": [round(float(v), 1) for v in box]} for box, kind, _ in prompts]
    if cfg.multimask:
        logits, iou = predictor.decode_boxes(enc, best[None], multimask=True)
        for k in range(logits.shape[1]):
            probs.append(logits[0, k].sigmoid())
            weights.append([cluster[0].score, float(iou[0, k]), stability(logits[0, k])])
            info.append({"kind": f"multimask{k}", "box": [round(float(v), 1) for v in best]})
    stack = torch.stack(probs).numpy()
    binary = stack > 0.5
    dice = pairwise_dice(binary)
    n = len(binary)
    consistency = (dice.sum(1) - 1) / max(n - 1, 1)
    w = np.prod(np.array(weights), axis=1) * consistency
    w = w / w.sum() if w.sum() > 0 else np.full(n, 1 / n)
    fused = np.tensordot(w, stack, axes=1) > 0.5
    for i, entry in enumerate(info):
        entry.update(weight=round(float(w[i]), 4), predicted_iou=round(weights[i][1], 4),
                     stability=round(weights[i][2], 4), consistency=round(float(consistency[i]), 4))
    agreement = float((dice.sum() - n) / max(n * (n - 1), 1))
    return FusedLesion(fused, best.tolist(), cluster[0].score, agreement, info)


def aggregate(predictor: SegmentPredictor, enc: Encoded, candidates: list[Candidate],
              cfg: AggregationConfig | None = None, max_lesions: int = 3) -> list[FusedLesion]:
    """One fused mask per lesion cluster (best first); overlapping pixels go to the stronger lesion."""
    cfg = cfg or AggregationConfig()
    lesions = [fuse_lesion(predictor, enc, cl, cfg) for cl in cluster_candidates(candidates, cfg.cluster_iou)]
    lesions = lesions[:max_lesions]
    taken = np.zeros(enc.original_size, bool)
    for lesion in lesions:
        lesion.mask &= ~taken
        taken |= lesion.mask
    return [lesion for lesion in lesions if lesion.mask.any()]
