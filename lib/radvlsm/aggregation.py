"""Multi-candidate region aggregation: many prompts per lesion, decoded on one embedding, fused into one mask.

Rule (documented in the README; settings chosen on training images with ``scripts/tune_aggregation.py``):

1. Candidate boxes are clustered per lesion (box IoU >= ``cluster_iou``), so two lesions stay two.
2. Each lesion's prompt set: its candidate boxes and widened (x1.1, x1.2; optional shifted) variants of the best
   one; every box gives SAM's single mask and its three multimask outputs (one decoder
   pass computes all four). All lesions' prompts are decoded in one batched call on the cached embedding.
3. Every prompt's mask gets a reliability weight = proposal strength (the backend's CAM/relevance score) x
   predicted IoU x stability (mask at logit +1 vs -1, as SAM's stability score) x consistency (its mean Dice with
   the other prompts' masks) x cross-modal consistency (the share of the text relevance mass inside its mask),
   raised to the power ``sharpness`` (3) so that the most reliable prompts dominate.
4. Fused mask = weighted mean of the prompts' probabilities > 0.5, computed on the decoder's grid and upsampled
   once. The lesion's agreement (pairwise Dice of the prompts' masks, weighted by both prompts' weights) is
   reported; ``1 - agreement`` is its uncertainty.
5. Lesions are ranked by reliability = proposal strength x the share of the text relevance mass that the fused
   mask holds; a further lesion is kept only when its reliability is at least ``relative`` x
   the best one's (at most ``max_lesions``); overlapping pixels go to the more reliable lesion.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from radvlsm.defaults import DEFAULT_MAX_LESIONS
from radvlsm.predictor import Encoded, SegmentPredictor
from radvlsm.proposals.base import Candidate
from radvlsm.proposals.boxes import box_iou

__all__ = ["AggregationConfig", "SelectionConfig", "PromptSet", "FusedLesion", "Candidate", "aggregate",
           "cluster_candidates", "decode_clusters", "decode_prompt_set", "fuse_prompts", "select_lesions", "to_grid"]


@dataclass
class AggregationConfig:
    cluster_iou: float = 0.3
    # Proposal boxes run tight (on training packs a x1.1 box alone beat the box by ~1 point): the variants widen.
    scales: tuple[float, ...] = (1.1, 1.2)
    shift: float = 0.0
    multimask: bool = True
    #: weight prompts (and rank lesions) by the text relevance inside their masks (needs the proposer's heatmap)
    heat_weight: bool = True
    #: how a prompt's mask is scored against the relevance map (see ``heat_consistency``)
    prompt_text_term: str = "coverage"
    #: fuse the prompts into the lesion's mask; off: the mask is the lesion's best box alone (SAM's single mask),
    #: and the other prompts still give its agreement (uncertainty) -- see the README for when each wins
    fuse: bool = True
    #: keep only the single most reliable prompt instead of the weighted vote (an ablation)
    best_only: bool = False
    #: weights are raised to this power before normalising (>1 trusts the most reliable prompts more)
    sharpness: float = 3.0


@dataclass
class SelectionConfig:
    max_lesions: int = DEFAULT_MAX_LESIONS
    #: a further lesion is kept only if its reliability is at least this share of the best one's
    relative: float = 0.85
    #: rank lesions by reliability (proposal x mask quality x text consistency); off: by proposal score alone
    use_quality: bool = True


@dataclass
class PromptSet:
    """Decoded prompts of one lesion on the decoder grid (cropped to the image).

    Kinds are ``"<box kind>/m<j>"``: the box kind (``box``, ``scale0.9``, ``shift+x``, ``candidate`` ...) and which
    of the decoder's four mask outputs (``m0`` SAM's single mask, ``m1``-``m3`` its multimask outputs).
    """

    logits: torch.Tensor  # (N, h, w)
    ious: np.ndarray  # (N,) predicted IoU
    kinds: list[str]
    strengths: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))  # (N,) proposal strength
    boxes: list[list[float]] = field(default_factory=list)

    def subset(self, keep: list[int]) -> PromptSet:
        return PromptSet(self.logits[keep], self.ious[keep], [self.kinds[i] for i in keep], self.strengths[keep],
                         [self.boxes[i] for i in keep] if self.boxes else [])

    @staticmethod
    def concat(per_candidate: list[PromptSet], scores: list[float], cfg: AggregationConfig) -> PromptSet:
        """A cluster's set from per-candidate sets (each decoded alone by ``decode_prompt_set``): the prompts
        ``decode_clusters`` would decode for that cluster, under ``cfg``."""
        parts = []
        for j, (ps, score) in enumerate(zip(per_candidate, scores, strict=True)):
            keep = [i for i, k in enumerate(ps.kinds) if _wanted(k, cfg, best=j == 0)]
            part = ps.subset(keep)
            part.strengths = np.full(len(keep), score, np.float32)
            if j:
                part.kinds = [k.replace("box/", "candidate/") for k in part.kinds]
            parts.append(part)
        return PromptSet(torch.cat([p.logits for p in parts]), np.concatenate([p.ious for p in parts]),
                         [k for p in parts for k in p.kinds], np.concatenate([p.strengths for p in parts]),
                         [b for p in parts for b in p.boxes])


def _wanted(kind: str, cfg: AggregationConfig, best: bool = True) -> bool:
    """Whether ``decode_clusters`` decodes this prompt under ``cfg`` (for the cluster's best box or another)."""
    box_kind, _, out = kind.partition("/")
    if out != "m0" and not cfg.multimask:
        return False
    if box_kind == "box":
        return True
    if not best:
        return False
    if box_kind.startswith("scale"):
        return float(box_kind[5:]) in cfg.scales
    return box_kind.startswith("shift") and cfg.shift > 0


@dataclass
class FusedLesion:
    logit: torch.Tensor  # (h, w) fused logit on the decoder grid
    box: list[float]  # the lesion's best candidate box
    score: float  # proposal strength of that box
    agreement: float  # weighted mean pairwise Dice between the prompts' masks
    reliability: float  # what lesions are ranked and kept by (rule 5)
    prompts: list[dict] = field(default_factory=list)  # what was decoded and each prompt's weight
    mask: np.ndarray | None = None  # (rows, cols) bool on the original grid, set by ``aggregate``

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


def variants(box: np.ndarray, shape: tuple[int, int], cfg: AggregationConfig) -> list[tuple[np.ndarray, str]]:
    """Scaled and shifted copies of ``box`` (clipped to the image), each with its kind."""
    x0, y0, x1, y1 = box
    cx, cy, w, h = (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0
    out = [(np.array([cx - s * w / 2, cy - s * h / 2, cx + s * w / 2, cy + s * h / 2]), f"scale{s}")
           for s in cfg.scales]
    if cfg.shift > 0:
        for dx, dy, name in ((1, 0, "+x"), (-1, 0, "-x"), (0, 1, "+y"), (0, -1, "-y")):
            d = np.array([dx * w, dy * h, dx * w, dy * h]) * cfg.shift
            out.append((box + d, f"shift{name}"))
    rows, cols = shape
    return [(np.clip(b, 0, [cols - 1, rows - 1, cols - 1, rows - 1]).astype(np.float32), k) for b, k in out]


def _crop(predictor: SegmentPredictor, enc: Encoded, low_res: torch.Tensor) -> torch.Tensor:
    h, w = predictor.lowres_valid(enc, low_res.shape[-1])
    return low_res[..., :h, :w]


def decode_clusters(predictor: SegmentPredictor, enc: Encoded, clusters: list[list[Candidate]],
                    cfg: AggregationConfig) -> list[PromptSet]:
    """Every cluster's prompt set in one batched decoder call (all four mask outputs of each box)."""
    if not clusters:
        return []
    prompts: list[tuple[np.ndarray, str, float, int]] = []  # box, kind, strength, cluster
    for ci, cl in enumerate(clusters):
        best = np.array(cl[0].box, np.float32)
        prompts.append((best, "box", cl[0].score, ci))
        prompts += [(b, k, cl[0].score, ci) for b, k in variants(best, enc.original_size, cfg)]
        prompts += [(np.array(c.box, np.float32), "candidate", c.score, ci) for c in cl[1:]]
    low, ious = predictor.decode_boxes_lowres(enc, np.stack([p[0] for p in prompts]))
    low = _crop(predictor, enc, low)
    outputs = range(low.shape[1]) if cfg.multimask else range(1)
    sets = []
    for ci in range(len(clusters)):
        idx = [i for i, p in enumerate(prompts) if p[3] == ci]
        sets.append(PromptSet(
            torch.cat([low[i, list(outputs)] for i in idx]),
            np.concatenate([ious[i, list(outputs)] for i in idx]),
            [f"{prompts[i][1]}/m{j}" for i in idx for j in outputs],
            np.array([prompts[i][2] for i in idx for _ in outputs], np.float32),
            [[round(float(v), 1) for v in prompts[i][0]] for i in idx for _ in outputs]))
    return sets


def decode_prompt_set(predictor: SegmentPredictor, enc: Encoded, box: np.ndarray, cfg: AggregationConfig
                      ) -> PromptSet:
    """One box's prompt set (box, variants, multimask): what ``scripts/tune_aggregation.py`` stores."""
    return decode_clusters(predictor, enc, [[Candidate(list(map(float, box)), 1.0, "")]], cfg)[0]


def to_grid(image_map: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """A ``(rows, cols)`` map of the original image onto the cropped decoder grid ``shape`` (e.g. the heatmap)."""
    return F.interpolate(image_map[None, None].float(), tuple(shape), mode="bilinear", align_corners=False,
                         antialias=True)[0, 0]


def stability(logits: torch.Tensor, offset: float = 1.0) -> torch.Tensor:
    """Per prompt: area at logit > +offset over area at logit > -offset (SAM's stability score)."""
    hi = (logits > offset).flatten(1).sum(1).float()
    lo = (logits > -offset).flatten(1).sum(1).float()
    return torch.where(lo > 0, hi / lo.clamp(min=1), torch.zeros_like(lo))


def pairwise_dice(masks: torch.Tensor) -> torch.Tensor:
    flat = masks.flatten(1).float()
    inter = flat @ flat.T
    sizes = flat.sum(1)
    return 2 * inter / (sizes[:, None] + sizes[None, :]).clamp(min=1)


def heat_consistency(masks: torch.Tensor, heat: torch.Tensor | None, how: str = "mean") -> torch.Tensor:
    """Cross-modal consistency of each mask with the text relevance map; 1 when there is no heatmap.

    ``mean``: mean relevance inside the mask (favours masks that stay on the lesion); ``coverage``: share of the
    relevance mass the mask holds (favours masks that hold the whole lesion); ``dice``: soft Dice of mask and map.
    """
    if heat is None or how == "none":
        return torch.ones(len(masks))
    flat, h = masks.flatten(1).float(), heat.flatten().float()
    inside = flat @ h
    if how == "mean":
        return inside / flat.sum(1).clamp(min=1)
    if how == "coverage":
        return inside / h.sum().clamp(min=1e-6)
    if how == "dice":
        return 2 * inside / (flat.sum(1) + h.sum()).clamp(min=1e-6)
    raise ValueError(f"unknown text consistency '{how}'")


def fuse_prompts(ps: PromptSet, heat: torch.Tensor | None, cluster: list[Candidate], cfg: AggregationConfig
                 ) -> FusedLesion:
    """Reliability-weighted vote of one lesion's prompts (rules 3-4) and the lesion's reliability (rule 5)."""
    binary = ps.logits > 0
    n = len(binary)
    dice = pairwise_dice(binary)
    consistency = (dice.sum(1) - 1) / max(n - 1, 1) if n > 1 else torch.ones(1)
    ious = torch.as_tensor(ps.ious, dtype=torch.float32)
    stab = stability(ps.logits)
    heat = heat if cfg.heat_weight else None
    cross = heat_consistency(binary, heat, cfg.prompt_text_term)
    strength = torch.as_tensor(ps.strengths, dtype=torch.float32)
    w = (strength * ious.clamp(min=0) * stab * consistency * cross) ** cfg.sharpness
    w = w / w.sum() if w.sum() > 0 else torch.full((n,), 1 / n)
    if not cfg.fuse:
        fused = ps.logits[0]  # the best box's single mask ("box/m0": decode_clusters puts it first)
    elif cfg.best_only:
        fused = ps.logits[int(w.argmax())]
    else:
        p = torch.tensordot(w, ps.logits.sigmoid(), dims=1).clamp(1e-6, 1 - 1e-6)
        fused = torch.log(p / (1 - p))
    # Agreement among the prompts that count: pairwise Dice weighted by both prompts' weights (untrained multimask
    # outputs with ~0 weight do not dilute it).
    pair = w[:, None] * w[None, :] * (1 - torch.eye(n))
    agreement = float((pair * dice).sum() / pair.sum()) if n > 1 and pair.sum() > 0 else 1.0
    # Lesions are told apart by how much of the text relevance they hold (training packs: ranking by mask quality
    # or agreement picked the wrong lesion more often than the proposal score; spurious extra lesions held < 20 %).
    reliability = cluster[0].score * float(heat_consistency((fused > 0)[None], heat, "coverage")[0])
    info = []
    for i, kind in enumerate(ps.kinds):
        entry = {"kind": kind, "weight": round(float(w[i]), 4), "predicted_iou": round(float(ious[i]), 4),
                 "stability": round(float(stab[i]), 4), "consistency": round(float(consistency[i]), 4),
                 "text_consistency": round(float(cross[i]), 4)}
        if ps.boxes:
            entry["box"] = ps.boxes[i]
        info.append(entry)
    return FusedLesion(fused, [float(v) for v in cluster[0].box], cluster[0].score, agreement, reliability, info)


def select_lesions(lesions: list[FusedLesion], sel: SelectionConfig) -> list[FusedLesion]:
    """Rule 5: rank, then keep the lesions whose reliability is close enough to the best one's."""
    lesions = [lesion for lesion in lesions if bool((lesion.logit > 0).any())]
    if not lesions:
        return []
    key = (lambda x: x.reliability) if sel.use_quality else (lambda x: x.score)
    lesions = sorted(lesions, key=key, reverse=True)
    top = key(lesions[0])
    return [lesion for lesion in lesions if key(lesion) >= sel.relative * top][: sel.max_lesions]


def aggregate(predictor: SegmentPredictor, enc: Encoded, candidates: list[Candidate],
              cfg: AggregationConfig | None = None, sel: SelectionConfig | None = None,
              heatmap: np.ndarray | None = None) -> list[FusedLesion]:
    """One fused mask per kept lesion (most reliable first); overlapping pixels go to the more reliable lesion.

    ``heatmap`` is the proposer's ``(rows, cols)`` text relevance (the cross-modal consistency term), if any.
    """
    cfg, sel = cfg or AggregationConfig(), sel or SelectionConfig()
    clusters = cluster_candidates(candidates, cfg.cluster_iou)
    if not clusters:
        return []
    sets = decode_clusters(predictor, enc, clusters, cfg)
    heat = None
    if heatmap is not None and cfg.heat_weight:
        heat = to_grid(torch.from_numpy(np.asarray(heatmap, np.float32)), sets[0].logits.shape[-2:])
    lesions = select_lesions([fuse_prompts(ps, heat, cl, cfg) for ps, cl in zip(sets, clusters, strict=True)], sel)
    if not lesions:
        return []
    full = predictor.lowres_to_image(torch.stack([lesion.logit for lesion in lesions]), enc) > 0
    taken = torch.zeros(enc.original_size, dtype=torch.bool)
    for lesion, mask in zip(lesions, full, strict=True):
        mask = mask & ~taken
        taken |= mask
        lesion.mask = mask.numpy()
    return [lesion for lesion in lesions if lesion.mask.any()]

