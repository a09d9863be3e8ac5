"""Boxes as 3D Slicer markups: the ``.json`` file Slicer's MONAI Label plugin loads as ROI nodes.

Slicer's plugin turns a detection result into ROI markups when the result file ends in ``.json``
(``slicer.util.loadMarkups``). Markups live in physical space, so each pixel box ``[x0, y0, x1, y1]`` (columns,
rows; inclusive pixel indices) goes through the image's own geometry: LPS point = origin + direction @ (spacing *
index). A single-slice volume keeps its slice position, so the ROI sits on the plane the user sees.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from radvlsm.io import Image2D

SCHEMA = ("https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/Resources/Schema/"
          "markups-schema-v1.0.3.json#")


def image_geometry(image: Image2D) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(spacing[3], origin[3], direction[3x3])`` in LPS; a 2D image lies in the z = 0 plane."""
    if image.volume_geometry is not None:
        spacing, origin, direction = image.volume_geometry
        return np.array(spacing), np.array(origin), np.array(direction).reshape(3, 3)
    d = image.direction
    direction = np.array([[d[0], d[1], 0.0], [d[2], d[3], 0.0], [0.0, 0.0, 1.0]])
    return np.array([*image.spacing, 1.0]), np.array([*image.origin, 0.0]), direction


def index_to_lps(image: Image2D, index: Sequence[float]) -> np.ndarray:
    """Continuous pixel index ``(i (column), j (row), k)`` -> LPS millimetres."""
    spacing, origin, direction = image_geometry(image)
    return origin + direction @ (spacing * np.asarray(index, dtype=float))


def lps_to_index(image: Image2D, point: Sequence[float]) -> np.ndarray:
    """Inverse of :func:`index_to_lps`."""
    spacing, origin, direction = image_geometry(image)
    return np.linalg.solve(direction, np.asarray(point, dtype=float) - origin) / spacing


def box_to_roi_markup(box: Sequence[float], image: Image2D, name: str,
                      description: str = "") -> dict[str, Any]:
    """One ROI markup covering the pixels of ``box`` (their full extent, one slice thick)."""
    x0, y0, x1, y1 = (float(v) for v in box)
    spacing, _, direction = image_geometry(image)
    centre = index_to_lps(image, ((x0 + x1) / 2, (y0 + y1) / 2, 0.0))
    size = [(abs(x1 - x0) + 1) * spacing[0], (abs(y1 - y0) + 1) * spacing[1], spacing[2]]
    return {"type": "ROI", "name": name, "description": description, "coordinateSystem": "LPS",
            "coordinateUnits": "mm", "roiType": "Box", "locked": False,
            "center": [round(float(v), 4) for v in centre], "size": [round(float(v), 4) for v in size],
            "orientation": [round(float(v), 6) for v in direction.reshape(-1)], "controlPoints": []}


def roi_markups(boxes: Sequence[Sequence[float]], image: Image2D, names: Sequence[str],
                descriptions: Sequence[str] | None = None) -> dict[str, Any]:
    """A markups document (one ROI per box) for ``slicer.util.loadMarkups``."""
    descriptions = descriptions or [""] * len(boxes)
    return {"@schema": SCHEMA, "markups": [box_to_roi_markup(b, image, n, d)
                                           for b, n, d in zip(boxes, names, descriptions, strict=True)]}
