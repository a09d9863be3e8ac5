"""Second stage of text-guided localisation: rank SAM's candidate *masks* by region features.

The relevance map of a proposer trained on a few sites fires on dark structures of a new site (shadowing, fat,
burnt-in text). What a lesion looks like to the segmenter travels better: a mask SAM is sure of (predicted IoU,
stability), compact and filling its box, darker or brighter than a ring around it, distinct from its ring in
the embedding, away from the image's edges. Candidates are the proposer's relevance components plus contrast
blobs from the image alone (:mod:`radvlsm.proposals.regions`, so a lesion the map missed can still be found); each
is decoded (optionally once more from its mask's own box: LiteMedSAM answers best to a box around the object) and
described by :data:`FEATURES`. A grid of boxes instead of blobs was tried first: every box costs a decoder pass,
and a grid dense enough for small lesions took seconds per image on a CPU, so the candidates stay few.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from radvlsm.aggregation import stability
from radvlsm.errors import CheckpointError
from radvlsm.io import Image2D
from radvlsm.predictor import Encoded, SegmentPredictor
from radvlsm.proposals.boxes import box_iou

FEATURES = ("predicted_iou", "stability", "area", "fill", "compactness", "cx", "cy", "border", "largest_part",
            "inside_z", "contrast", "inside_spread", "posterior", "heat_mean", "heat_coverage", "heat_peak",
            "embedding_ring_cos", "box_fit", "log_aspect", "heat_ring", "match")

def _mask_boxes(masks: torch.Tensor) -> torch.Tensor:
    """Tight ``[x0, y0, x1, y1]`` of each ``(N, h, w)`` mask on its grid (zeros for an empty mask)."""
    rows, cols = masks.any(2), masks.any(1)
    n, h, w = masks.shape
    ar_y, ar_x = torch.arange(h), torch.arange(w)
    big = 10 ** 6
    y0 = torch.where(rows, ar_y, big).min(1).values
    y1 = torch.where(rows, ar_y, -1).max(1).values
    x0 = torch.where(cols, ar_x, big).min(1).values
    x1 = torch.where(cols, ar_x, -1).max(1).values
    box = torch.stack([x0, y0, x1, y1], 1).float()
    return torch.where(masks.flatten(1).any(1)[:, None], box, torch.zeros_like(box))


def first_pass(predictor: SegmentPredictor, enc: Encoded, boxes: np.ndarray, keep: int = 40, nms_iou: float = 0.7
               ) -> tuple[torch.Tensor, np.ndarray, np.ndarray, np.ndarray]:
    """Decode ``boxes`` (SAM's single mask each) and drop near-duplicate masks (mask IoU >= ``nms_iou``, the one
    with the higher predicted IoU stays). Returns the cropped decoder-grid logits ``(K, h, w)``, predicted IoUs
    ``(K,)``, the boxes that made them and the index of each in ``boxes``."""
    low, ious = predictor.decode_boxes_lowres(enc, boxes, multimask=False)
    h, w = predictor.lowres_valid(enc, low.shape[-1])
    logits, ious = low[:, 0, :h, :w], ious[:, 0]
    order = np.array(_mask_nms(logits > 0, ious, nms_iou)[:keep], int)
    return logits[order], ious[order], boxes[order], order


def mask_boxes_in_image(masks: torch.Tensor, enc: Encoded, grow: float = 1.1) -> np.ndarray:
    """Each cropped decoder-grid mask's tight box in image pixels, grown by ``grow`` about its centre (LiteMedSAM
    was trained on boxes a little looser than the lesion)."""
    h, w = masks.shape[-2:]
    rows, cols = enc.original_size
    sx, sy = cols / w, rows / h
    tight = _mask_boxes(masks).numpy() * np.array([sx, sy, sx, sy]) + np.array([0, 0, sx - 1, sy - 1])
    cx, cy = (tight[:, 0] + tight[:, 2]) / 2, (tight[:, 1] + tight[:, 3]) / 2
    bw, bh = (tight[:, 2] - tight[:, 0]) * grow, (tight[:, 3] - tight[:, 1]) * grow
    tight = np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], 1)
    return np.clip(tight, 0, [cols - 1, rows - 1, cols - 1, rows - 1]).astype(np.float32)


def tighten(predictor: SegmentPredictor, enc: Encoded, logits: torch.Tensor, boxes: np.ndarray
            ) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """Decode each mask's own (grown) tight box once more: a loose blob box gives a rough mask, its box a better one
    (an empty mask keeps its box)."""
    masks = logits > 0
    tight = mask_boxes_in_image(masks, enc)
    empty = ~masks.flatten(1).any(1).numpy()
    tight[empty] = boxes[empty]
    low, ious = predictor.decode_boxes_lowres(enc, tight, multimask=False)
    h, w = logits.shape[-2:]
    return low[:, 0, :h, :w], ious[:, 0], tight


def decode_candidates(predictor: SegmentPredictor, enc: Encoded, boxes: np.ndarray, keep: int = 40,
                      nms_iou: float = 0.7, two_pass: bool = True
                      ) -> tuple[torch.Tensor, np.ndarray, np.ndarray, np.ndarray]:
    """:func:`first_pass`, then (``two_pass``) :func:`tighten`: logits ``(K, h, w)``, predicted IoUs, the boxes
    decoded last (image pixels) and the index of the input box each came from."""
    logits, ious, kept, order = first_pass(predictor, enc, boxes, keep, nms_iou)
    if two_pass and len(order):
        logits, ious, kept = tighten(predictor, enc, logits, kept)
    return logits, ious, kept, order


def _mask_nms(masks: torch.Tensor, scores: np.ndarray, iou: float) -> list[int]:
    flat = masks.flatten(1).float()
    area = flat.sum(1)
    inter = flat @ flat.T
    union = area[:, None] + area[None, :] - inter
    m_iou = (inter / union.clamp(min=1)).numpy()
    order = [int(i) for i in np.argsort(-scores) if area[i] > 4]
    keep: list[int] = []
    for i in order:
        if all(m_iou[i, j] < iou for j in keep):
            keep.append(i)
    return keep


def _dilate(mask: torch.Tensor, r: int) -> torch.Tensor:
    """Square dilation by ``r`` pixels as two 1D max filters (a (2r+1)^2 window costs 2(2r+1) per pixel)."""
    x = mask[None, None].float()
    x = F.max_pool2d(x, (2 * r + 1, 1), 1, (r, 0))
    return F.max_pool2d(x, (1, 2 * r + 1), 1, (0, r))[0, 0] > 0


def _gray_on_grid(image: Image2D, shape: tuple[int, int]) -> torch.Tensor:
    rgb = torch.from_numpy(np.ascontiguousarray(image.rgb_uint8())).float().mean(-1)
    return F.interpolate(rgb[None, None], shape, mode="area")[0, 0]


def region_features(logits: torch.Tensor, ious: np.ndarray, boxes: np.ndarray, enc: Encoded, image: Image2D,
                    heat: np.ndarray | None, match: float) -> np.ndarray:
    """:data:`FEATURES` of each cropped decoder-grid mask ``(K, h, w)``."""
    k, h, w = logits.shape
    masks = logits > 0
    gray = _gray_on_grid(image, (h, w))
    g_mean, g_std = gray.mean(), gray.std().clamp(min=1.0)
    heat_g = (F.interpolate(torch.from_numpy(np.asarray(heat, np.float32))[None, None], (h, w), mode="area")[0, 0]
              if heat is not None else torch.zeros(h, w))
    emb = enc.embedding[0].float().cpu()
    gh, gw = enc.frame.grid_valid(emb.shape[-1])
    emb = emb[:, :gh, :gw]
    stab = stability(logits)
    mboxes = _mask_boxes(masks)
    rows, cols = enc.original_size
    scale = np.array([cols / w, rows / h, cols / w, rows / h])
    out = np.zeros((k, len(FEATURES)), np.float32)
    from scipy import ndimage

    for i in range(k):
        m = masks[i]
        area = float(m.sum())
        if area < 1:
            continue
        x0, y0, x1, y1 = (int(v) for v in mboxes[i])
        bw, bh = x1 - x0 + 1, y1 - y0 + 1
        perim = float((m & _dilate(~m, 1)).sum()) or 1.0  # mask pixels with a background neighbour
        r = max(2, int(round(0.3 * np.sqrt(area))))
        dil = _dilate(m, r)
        ring = dil & ~m
        inside = gray[m]
        ring_v = gray[ring] if ring.any() else gray.flatten()
        below = gray[y1 + 1: min(h, y1 + 1 + bh // 2), x0: x1 + 1]
        sides = torch.cat([gray[y0: y1 + 1, max(0, x0 - bw // 2): x0].flatten(),
                           gray[y0: y1 + 1, x1 + 1: x1 + 1 + bw // 2].flatten()])
        posterior = float((below.mean() - sides.mean()) / g_std) if below.numel() and sides.numel() else 0.0
        lab, n = ndimage.label(m.numpy())
        largest = float(np.bincount(lab.ravel())[1:].max() / area) if n else 0.0
        hm = heat_g[m]
        mg = F.interpolate(m[None, None].float(), (gh, gw), mode="area")[0, 0]
        rg = F.interpolate(ring[None, None].float(), (gh, gw), mode="area")[0, 0]
        v_in = (emb * mg).sum((1, 2)) / mg.sum().clamp(min=1e-6)
        v_ring = (emb * rg).sum((1, 2)) / rg.sum().clamp(min=1e-6)
        fit = float(box_iou(boxes[i][None], (mboxes[i].numpy() * scale)[None])[0, 0])
        out[i] = [float(ious[i]), float(stab[i]), area / (h * w), area / (bw * bh), 4 * np.pi * area / perim ** 2,
                  (x0 + x1) / 2 / w, (y0 + y1) / 2 / h,
                  (x0 <= 1) + (y0 <= 1) + (x1 >= w - 2) + (y1 >= h - 2),
                  largest, float((inside.mean() - g_mean) / g_std), float((ring_v.mean() - inside.mean()) / g_std),
                  float(inside.std() / g_std) if inside.numel() > 1 else 0.0, posterior,
                  float(hm.mean()), float(hm.sum() / heat_g.sum().clamp(min=1e-6)), float(hm.max()),
                  float(F.cosine_similarity(v_in, v_ring, 0)), fit, float(np.log(bw / bh)),
                  float(heat_g[ring].mean()) if ring.any() else 0.0, match]
    return out


def candidate_features(predictor: SegmentPredictor, enc: Encoded, image: Image2D, boxes: np.ndarray,
                       heat: np.ndarray | None, gt: np.ndarray | None = None, match: float = 0.0,
                       two_pass: bool = True) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Features of the candidate masks from ``boxes``, with a reference mask ``gt`` each mask's IoU with it (on
    the decoder grid), and which input box each mask came from."""
    logits, ious, tight, origin = decode_candidates(predictor, enc, boxes, two_pass=two_pass)
    feats = region_features(logits, ious, tight, enc, image, heat, match)
    return feats, None if gt is None else mask_iou(logits, gt), origin


def mask_iou(logits: torch.Tensor, gt: np.ndarray) -> np.ndarray:
    """IoU of each cropped decoder-grid mask with the reference mask ``gt`` (image grid), on the decoder grid."""
    h, w = logits.shape[-2:]
    g = F.interpolate(torch.from_numpy(gt.astype(np.float32))[None, None], (h, w), mode="area")[0, 0] > 0.5
    m = (logits > 0).flatten(1).float()
    inter = m @ g.flatten().float()
    return (inter / (m.sum(1) + g.sum() - inter).clamp(min=1)).numpy()


def design(x: np.ndarray, relative: bool, image: np.ndarray) -> np.ndarray:
    """The ranker's inputs: the features, and with ``relative`` each minus the mean of its image's candidates."""
    if not relative or not len(x):
        return x
    centred = np.empty_like(x)
    for k in np.unique(image):
        rows = image == k
        centred[rows] = x[rows] - x[rows].mean(0)
    return np.concatenate([x, centred], 1)


class MaskRanker:
    """Scores candidate masks from their :data:`FEATURES`: standardisation, then a small perceptron (one layer =
    logistic regression), stored as JSON (no pickle) with what it was trained on."""

    def __init__(self, spec: dict):
        self.spec = spec
        self.features = list(spec["features"])
        unknown = [f for f in self.features if f not in FEATURES]
        if unknown:
            raise ValueError(f"mask ranker uses unknown features {unknown}")
        self.index = [FEATURES.index(f) for f in self.features]
        #: also each feature minus its image's mean over the candidates: a new site shifts every candidate's
        #: contrast or predicted IoU alike, and what ranks them is how each differs from the others
        self.relative = bool(spec.get("relative", False))
        self.mean = np.asarray(spec["mean"], np.float32)
        self.scale = np.asarray(spec["scale"], np.float32)
        self.layers = [(np.asarray(w, np.float32), np.asarray(b, np.float32)) for w, b in spec["layers"]]
        #: a lesion is returned only if its best mask scores at least this (0: the proposer alone decides presence)
        self.min_score = float(spec.get("min_score", 0.0))
        self.version = str(spec.get("version", "unversioned"))
        #: rank the masks after the tightening decode (as the ranker was trained) or straight from the first
        self.two_pass = bool(spec.get("two_pass", True))
        #: how many relevance components and contrast blobs it ranks (as it was trained)
        self.max_heat = int(spec.get("max_heat", 3))
        self.max_blobs = int(spec.get("max_blobs", 6))
        #: the proposer checkpoint (``file_version``) whose relevance maps it was trained on, if recorded
        self.proposer = spec.get("proposer")

    @classmethod
    def load(cls, path: str | Path) -> MaskRanker:
        path = Path(path)
        try:
            return cls(json.loads(path.read_text()))
        except FileNotFoundError as exc:
            raise CheckpointError(f"mask ranker not found: {path}") from exc
        except (ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"mask ranker {path} could not be loaded ({type(exc).__name__}: {exc})") from exc

    def score(self, feats: np.ndarray, image: np.ndarray | None = None) -> np.ndarray:
        """Probability that each candidate mask is a lesion (IoU >= 0.5 with it), ``(K,)``. ``feats`` are one
        image's candidates, or several images' with ``image`` saying whose each row is (the relative features
        compare a candidate with the others of its image)."""
        x = design(np.asarray(feats, np.float32)[:, self.index], self.relative,
                   np.zeros(len(feats), int) if image is None else image)
        x = (x - self.mean) / self.scale
        for i, (w, b) in enumerate(self.layers):
            x = x @ w + b
            if i < len(self.layers) - 1:
                x = np.maximum(x, 0)
        return 1 / (1 + np.exp(-x[:, 0]))
