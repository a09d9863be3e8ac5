"""Pixel boxes <-> Slicer ROI markups in physical LPS space, through each image's own geometry."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from radvlsm.io import Image2D
from radvlsm.markups import box_to_roi_markup, index_to_lps, lps_to_index

FLIPPED = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)


def slice_volume(spacing=(0.1, 0.2, 1.5), origin=(5.0, -3.0, 12.0), direction=FLIPPED) -> Image2D:
    return Image2D(np.zeros((40, 60, 1), np.float32), spacing[:2], origin[:2],
                   (direction[0], direction[1], direction[3], direction[4]),
                   volume_geometry=(spacing, origin, direction))


def test_known_lesion_on_a_flipped_slice():
    """Lesion pixels columns 10..29, rows 4..13 on a slice at z = 12 mm, x and y axes flipped."""
    roi = box_to_roi_markup([10, 4, 29, 13], slice_volume(), "lesion")
    # centre index (19.5, 8.5, 0) -> LPS (5 - 1.95, -3 - 1.7, 12)
    assert np.allclose(roi["center"], [3.05, -4.7, 12.0])
    assert np.allclose(roi["size"], [2.0, 2.0, 1.5])  # 20 columns x 0.1 mm, 10 rows x 0.2 mm, one slice
    assert roi["orientation"] == list(FLIPPED)


def test_png_geometry_is_pixels_in_the_z0_plane():
    png = Image2D(np.zeros((40, 60, 1), np.float32))
    assert np.allclose(index_to_lps(png, (7, 3, 0)), [7, 3, 0])
    assert np.allclose(box_to_roi_markup([0, 0, 59, 39], png, "all")["size"], [60, 40, 1])


@given(st.floats(0, 59), st.floats(0, 39), st.floats(0.05, 3), st.floats(0.05, 3),
       st.sampled_from([FLIPPED, (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0), (0, 1.0, 0, 1.0, 0, 0, 0, 0, -1.0)]))
def test_index_lps_round_trip(i, j, sx, sy, direction):
    img = slice_volume(spacing=(sx, sy, 2.0), direction=direction)
    assert np.allclose(lps_to_index(img, index_to_lps(img, (i, j, 0))), (i, j, 0), atol=1e-6)
