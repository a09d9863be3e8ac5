"""Heatmap -> boxes: threshold, connected components, score, non-maximum suppression. Shared by every backend."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of ``(N, 4)`` and ``(M, 4)`` boxes ``[x0, y0, x1, y1]`` (inclusive pixel indices)."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    x0 = np.maximum(a[:, None, 0], b[None, :, 0])
    y0 = np.maximum(a[:, None, 1], b[None, :, 1])
    x1 = np.minimum(a[:, None, 2], b[None, :, 2])
    y1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x1 - x0 + 1, 0, None) * np.clip(y1 - y0 + 1, 0, None)
    area = lambda z: (z[:, 2] - z[:, 0] + 1) * (z[:, 3] - z[:, 1] + 1)  # noqa: E731
    return inter / np.maximum(area(a)[:, None] + area(b)[None, :] - inter, 1e-9)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float = 0.5) -> list[int]:
    """Indices kept by greedy non-maximum suppression, best score first."""
    order = list(np.argsort(-np.asarray(scores)))
    keep: list[int] = []
    while order:
        i = order.pop(0)
        keep.append(int(i))
        if order:
            ious = box_iou(boxes[[i]], boxes[order])[0]
            order = [j for j, v in zip(order, ious, strict=True) if v < iou_threshold]
    return keep


def heatmap_boxes(heat: np.ndarray, thresholds: tuple[float, ...] = (0.5,), min_area_frac: float = 0.002,
                  iou_threshold: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Boxes of the connected components of ``heat >= t`` for each threshold, scored by peak x mean relevance.

    Several thresholds give nested candidates for one lesion (useful to the aggregation stage); NMS removes
    near-duplicates. Returns ``(boxes (K, 4), scores (K,))`` sorted by score.
    """
    heat = np.asarray(heat, np.float32)
    boxes, scores = [], []
    min_area = max(1, int(min_area_frac * heat.size))
    for t in thresholds:
        labels, n = ndimage.label(heat >= t)
        for sl, idx in zip(ndimage.find_objects(labels), range(1, n + 1), strict=True):
            region = labels[sl] == idx
            if region.sum() < min_area:
                continue
            vals = heat[sl][region]
            boxes.append([sl[1].start, sl[0].start, sl[1].stop - 1, sl[0].stop - 1])
            scores.append(float(np.sqrt(vals.max() * vals.mean())))
    if not boxes:
        return np.zeros((0, 4), np.float32), np.zeros(0, np.float32)
    boxes_a, scores_a = np.array(boxes, np.float32), np.array(scores, np.float32)
    keep = nms(boxes_a, scores_a, iou_threshold)
    return boxes_a[keep], scores_a[keep]
