"""Coordinate conventions, in one place.

radvlsm arrays are indexed ``[row, col]`` = ``[y, x]``. Prompts arrive in three conventions:

* Slicer / OHIF (MONAI Label): ``roi = [x0, x1, y0, y1, z0, z1]`` in IJK (I = column, J = row), inclusive
  voxel indices; points ``[[x, y, z], ...]``.
* Plain REST / SAM: ``boxes = [[x0, y0, x1, y1], ...]`` in pixel columns/rows.
* Internally everything becomes SAM boxes ``[x0, y0, x1, y1]`` and points ``[x, y]``.

A SAM box spans pixel *edges*: a lesion occupying columns 10..20 inclusive has the tight box
``[10, 10, 20, 20]`` as MedSAM builds it from masks (max index, not max+1); we keep that convention.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from radvlsm.errors import InputError
from radvlsm.frame import Frame


@dataclass(frozen=True)
class Prompts:
    """Validated prompts in SAM convention for one image of shape (height, width)."""

    boxes: np.ndarray  # (N, 4) float32, [x0, y0, x1, y1]
    points: np.ndarray  # (M, 2) float32, [x, y]
    point_labels: np.ndarray  # (M,) int, 1 foreground / 0 background

    @property
    def empty(self) -> bool:
        return len(self.boxes) == 0 and len(self.points) == 0


def _as_float_array(value, field: str) -> np.ndarray:
    if isinstance(value, (str, bytes, dict)):
        raise InputError(field, f"expected numbers, got {type(value).__name__}")
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InputError(field, f"expected numbers, got {value!r:.80}") from exc
    if not np.all(np.isfinite(arr)):
        raise InputError(field, "contains NaN or infinite values")
    return arr


def slicer_roi_to_box(roi: Sequence[float], field: str = "roi") -> list[float]:
    """Slicer/OHIF ``roi`` ``[x0, x1, y0, y1(, z0, z1)]`` -> SAM box ``[x0, y0, x1, y1]``.

    Slicer computes the pairs by mapping the ROI's RAS min/max corners to IJK; with the usual flipped
    IJK-to-RAS axes the "min" corner lands on the larger index, so each pair is sorted here.
    """
    arr = _as_float_array(roi, field).reshape(-1)
    if arr.size not in (4, 6):
        raise InputError(field, f"expected [x0, x1, y0, y1, z0, z1] (4 or 6 numbers), got {arr.size}")
    x0, x1 = sorted(arr[0:2])
    y0, y1 = sorted(arr[2:4])
    return [float(x0), float(y0), float(x1), float(y1)]


def box_to_slicer_roi(box: Sequence[float]) -> list[float]:
    """SAM box ``[x0, y0, x1, y1]`` -> Slicer ``roi`` ``[x0, x1, y0, y1, 0, 0]``."""
    x0, y0, x1, y1 = (float(v) for v in box)
    return [x0, x1, y0, y1, 0.0, 0.0]


def mask_to_box(mask: np.ndarray) -> list[float] | None:
    """Tight SAM box ``[x0, y0, x1, y1]`` (inclusive max indices) of a 2D mask, or None if empty."""
    ys, xs = np.nonzero(np.asarray(mask))
    if len(xs) == 0:
        return None
    return [float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max())]


def mask_dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """Dice of two boolean masks of one grid (0 when both are empty)."""
    return float(2 * (pred & ref).sum() / max(pred.sum() + ref.sum(), 1))


def validate_boxes(boxes, shape: tuple[int, int], field: str = "boxes") -> np.ndarray:
    """Check boxes are ``[x0, y0, x1, y1]``, ordered, non-degenerate and overlap the image; clip to it."""
    height, width = shape
    arr = _as_float_array(boxes, field)
    if arr.size == 0:
        return np.zeros((0, 4), np.float32)
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise InputError(field, f"expected [[x0, y0, x1, y1], ...], got shape {list(arr.shape)}")
    for i, (x0, y0, x1, y1) in enumerate(arr):
        if x1 < x0 or y1 < y0:
            raise InputError(field, f"box {i} {arr[i].tolist()} is inverted (need x0<=x1 and y0<=y1)")
        if x1 - x0 < 1 and y1 - y0 < 1:
            raise InputError(field, f"box {i} {arr[i].tolist()} is empty (zero width and height)")
        if x1 < 0 or y1 < 0 or x0 > width - 1 or y0 > height - 1:
            raise InputError(field, f"box {i} {arr[i].tolist()} lies outside the image "
                                    f"(width {width}, height {height})")
    arr[:, [0, 2]] = np.clip(arr[:, [0, 2]], 0, width - 1)
    arr[:, [1, 3]] = np.clip(arr[:, [1, 3]], 0, height - 1)
    return arr.astype(np.float32)


def validate_points(points, shape: tuple[int, int], field: str) -> np.ndarray:
    """Points ``[[x, y(, z)], ...]`` -> (M, 2) ``[x, y]``; a point outside the image is an error."""
    height, width = shape
    arr = _as_float_array(points, field)
    if arr.size == 0:
        return np.zeros((0, 2), np.float32)
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[1] not in (2, 3):
        raise InputError(field, f"expected [[x, y, z], ...] or [[x, y], ...], got shape {list(arr.shape)}")
    xy = arr[:, :2]
    outside = (xy[:, 0] < 0) | (xy[:, 1] < 0) | (xy[:, 0] > width - 1) | (xy[:, 1] > height - 1)
    if outside.any():
        i = int(np.argmax(outside))
        raise InputError(field, f"point {xy[i].tolist()} lies outside the image (width {width}, height {height})")
    return xy.astype(np.float32)


def parse_prompts(params: dict, shape: tuple[int, int]) -> Prompts:
    """Collect prompts from MONAI Label request parameters in any supported convention.

    ``boxes`` (REST, SAM order) and ``roi`` (Slicer order) may both be given; they are concatenated.
    """
    boxes: list[np.ndarray] = []
    if params.get("boxes") is not None:
        boxes.append(validate_boxes(params["boxes"], shape, "boxes"))
    roi = params.get("roi")
    if roi is not None and len(roi) > 0:
        boxes.append(validate_boxes(slicer_roi_to_box(roi), shape, "roi"))
    fg = validate_points(params.get("foreground") or [], shape, "foreground")
    bg = validate_points(params.get("background") or [], shape, "background")
    all_boxes = np.concatenate(boxes) if boxes else np.zeros((0, 4), np.float32)
    points = np.concatenate([fg, bg]).astype(np.float32)
    labels = np.concatenate([np.ones(len(fg), int), np.zeros(len(bg), int)])
    return Prompts(all_boxes, points, labels)


class ResizeLongestSide:
    """Maps between original pixel coordinates and the model's resized, top-left padded frame.

    segment-anything's interface over :class:`radvlsm.frame.Frame`, which holds the one implementation."""

    def __init__(self, target_length: int):
        self.target_length = target_length

    def frame(self, shape: tuple[int, int]) -> Frame:
        return Frame(shape, self.target_length)

    def new_size(self, shape: tuple[int, int]) -> tuple[int, int]:
        return self.frame(shape).input_size

    def scale_xy(self, shape: tuple[int, int]) -> tuple[float, float]:
        return self.frame(shape).scale_xy

    def apply_coords(self, coords: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
        """Scale ``[..., (x, y)]`` pixel coordinates from ``shape`` to the resized frame."""
        return self.frame(shape).points_to_model(coords)

    def apply_boxes(self, boxes: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
        return self.frame(shape).boxes_to_model(boxes)
