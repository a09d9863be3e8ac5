"""Class-agnostic region proposals: compact blobs that stand out from their surroundings, in milliseconds.

A text proposer trained on a few sites learns their lesions' size and place (BUS-BRA's are large and central) and
on a new site spreads its relevance over the middle of the image while a small cyst sits darker than everything
around it. These boxes come from the image alone (a multi-scale centre-surround contrast of the grey levels), so
they do not depend on what the proposer learned; which of them is a lesion is left to the mask ranker
(:mod:`radvlsm.mask_ranking`), which decodes each and reads its region.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from radvlsm.io import Image2D

#: blob radii as fractions of the image's longer side (the work grid is 256 pixels on that side)
SCALES = (0.025, 0.045, 0.08, 0.13)
WORK = 256


def contrast_blobs(image: Image2D, top: int = 8, scales: tuple[float, ...] = SCALES
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``top`` boxes ``[x0, y0, x1, y1]`` (image pixels) of dark or bright blobs and their contrast (in
    units of the image's grey-level spread), strongest first; overlapping ones are suppressed."""
    rgb = np.asarray(image.rgb_uint8(), np.float32)
    gray = rgb.mean(-1)
    rows, cols = gray.shape
    f = WORK / max(rows, cols)
    small = ndimage.zoom(gray, (max(8, round(rows * f)) / rows, max(8, round(cols * f)) / cols), order=1)
    spread = max(float(small.std()), 1.0)
    found: list[tuple[float, float, float, float]] = []  # response, cy, cx, radius (work grid)
    for s in scales:
        r = s * WORK
        centre = ndimage.gaussian_filter(small, r / 2)
        surround = ndimage.gaussian_filter(small, r * 1.5)
        for sign in (1.0, -1.0):  # dark blobs (surround brighter), then bright ones
            resp = sign * (surround - centre) / spread
            peaks = (resp == ndimage.maximum_filter(resp, size=max(3, int(2 * r) | 1))) & (resp > 0.15)
            for y, x in zip(*np.nonzero(peaks), strict=True):
                found.append((float(resp[y, x]) * (1.0 if sign > 0 else 0.8), float(y), float(x), r))
    found.sort(key=lambda t: -t[0])
    boxes, scores = [], []
    for resp, y, x, r in found:
        b = np.array([x - 1.6 * r, y - 1.6 * r, x + 1.6 * r, y + 1.6 * r]) / f
        b = np.clip(b, 0, [cols - 1, rows - 1, cols - 1, rows - 1])
        if b[2] - b[0] < 4 or b[3] - b[1] < 4:
            continue
        if boxes and _max_iou(b, np.array(boxes)) >= 0.4:
            continue
        boxes.append(b)
        scores.append(resp)
        if len(boxes) == top:
            break
    if not boxes:
        return np.zeros((0, 4), np.float32), np.zeros(0, np.float32)
    return np.array(boxes, np.float32), np.array(scores, np.float32)


def _max_iou(b: np.ndarray, others: np.ndarray) -> float:
    from radvlsm.proposals.boxes import box_iou

    return float(box_iou(b[None], others).max())
