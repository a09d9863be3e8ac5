"""A synthetic volume with a known lesion, for the slice-by-slice tests (no research data is bundled).

An ellipsoid of low intensity (as a hypoechoic lesion, or a dark lesion on MR) in a noisy brighter background; its
in-plane radii shrink towards the ends of its slice range as a ball's do. The volume has non-trivial geometry
(anisotropic spacing, an origin away from 0, flipped I and J axes as Slicer's RAS <-> LPS gives), so that every
conversion between slice index, pixel and physical point is exercised.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

SPACING = (0.5, 0.6, 2.0)
ORIGIN = (10.0, -20.0, 30.0)
DIRECTION = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)


def lesion_volume(slices: int = 11, rows: int = 120, cols: int = 160, centre: tuple[int, int] = (60, 84),
                  radii: tuple[float, float] = (24.0, 32.0), k_centre: int = 5, k_radius: float = 3.6,
                  seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(pixels uint8 [z, y, x], lesion bool [z, y, x])``."""
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[:slices, :rows, :cols]
    shrink = np.sqrt(np.clip(1 - ((z - k_centre) / k_radius) ** 2, 0, None))
    with np.errstate(divide="ignore", invalid="ignore"):
        inside = ((y - centre[0]) / (radii[0] * shrink)) ** 2 + ((x - centre[1]) / (radii[1] * shrink)) ** 2 <= 1
    inside &= shrink > 0
    pixels = 150 + 20 * rng.standard_normal((slices, rows, cols))
    pixels[inside] = 45 + 10 * rng.standard_normal(int(inside.sum()))
    return np.clip(pixels, 0, 255).astype(np.uint8), inside


def write_volume(path: Path, pixels: np.ndarray, spacing=SPACING, origin=ORIGIN, direction=DIRECTION) -> Path:
    img = sitk.GetImageFromArray(pixels)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    img.SetDirection(direction)
    sitk.WriteImage(img, str(path))
    return path


def ijk_roi(mask2d: np.ndarray, k: int) -> list[int]:
    """The roi Slicer sends around a lesion on slice ``k``: IJK, pairs max-first (flipped axes), z = k."""
    ys, xs = np.nonzero(mask2d)
    return [int(xs.max()), int(xs.min()), int(ys.max()), int(ys.min()), k, k]
