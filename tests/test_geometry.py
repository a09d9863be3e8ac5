"""Coordinate conventions, checked against a known lesion's box."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from radvlsm.errors import InputError
from radvlsm.geometry import (
    ResizeLongestSide,
    box_to_slicer_roi,
    mask_to_box,
    parse_prompts,
    slicer_roi_to_box,
    validate_boxes,
)


def lesion(shape=(100, 160), rows=(20, 40), cols=(50, 90)) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[rows[0]: rows[1] + 1, cols[0]: cols[1] + 1] = True
    return m


def test_mask_to_box_is_columns_then_rows():
    assert mask_to_box(lesion()) == [50.0, 20.0, 90.0, 40.0]
    assert mask_to_box(np.zeros((4, 4))) is None


def test_slicer_roi_round_trip_on_known_lesion():
    roi = [50, 90, 20, 40, 0, 0]  # Slicer: [x0, x1, y0, y1, z0, z1]
    assert slicer_roi_to_box(roi) == mask_to_box(lesion())
    assert box_to_slicer_roi(slicer_roi_to_box(roi)) == [50.0, 90.0, 20.0, 40.0, 0.0, 0.0]
    # Slicer maps the RAS min corner through a flipped IJK-to-RAS matrix: pairs may arrive max-first.
    assert slicer_roi_to_box([90, 50, 40, 20, 0, 0]) == mask_to_box(lesion())


def test_parse_prompts_accepts_every_convention():
    shape = (100, 160)
    p = parse_prompts({"roi": [50, 90, 20, 40, 0, 0], "boxes": [[1, 2, 3, 4]],
                       "foreground": [[60, 30, 0]], "background": [[5, 6]]}, shape)
    np.testing.assert_array_equal(p.boxes, [[1, 2, 3, 4], [50, 20, 90, 40]])
    np.testing.assert_array_equal(p.points, [[60, 30], [5, 6]])
    np.testing.assert_array_equal(p.point_labels, [1, 0])


@pytest.mark.parametrize(
    "params, field, words",
    [
        ({"boxes": [[10, 10, 5, 20]]}, "boxes", "inverted"),
        ({"boxes": [[10, 10, 10, 10]]}, "boxes", "empty"),
        ({"boxes": [[200, 10, 220, 20]]}, "boxes", "outside"),
        ({"boxes": [[1, 2, 3]]}, "boxes", "shape"),
        ({"boxes": "abc"}, "boxes", "numbers"),
        ({"boxes": [[1, 2, float("nan"), 4]]}, "boxes", "NaN"),
        ({"roi": [1, 2, 3]}, "roi", "6 numbers"),
        ({"foreground": [[500, 5, 0]]}, "foreground", "outside"),
        ({"background": [[-1, 5]]}, "background", "outside"),
    ],
)
def test_bad_prompts_name_the_field(params, field, words):
    with pytest.raises(InputError) as err:
        parse_prompts(params, (100, 160))
    assert err.value.field == field
    assert words in err.value.message


def test_boxes_partly_outside_are_clipped():
    np.testing.assert_array_equal(validate_boxes([[-5, -5, 500, 50]], (100, 160)), [[0, 0, 159, 50]])


def test_resize_longest_side_matches_segment_anything():
    from segment_anything.utils.transforms import ResizeLongestSide as SamResize

    ours, theirs = ResizeLongestSide(1024), SamResize(1024)
    for shape in [(352, 276), (305, 529), (100, 100)]:
        assert ours.new_size(shape) == theirs.get_preprocess_shape(shape[0], shape[1], 1024)
        pts = np.array([[10.0, 20.0], [275.0, 300.0]])
        np.testing.assert_allclose(ours.apply_coords(pts, shape), theirs.apply_coords(pts, shape), rtol=1e-5)


@given(
    h=st.integers(2, 2000), w=st.integers(2, 2000),
    x0=st.floats(0, 1), y0=st.floats(0, 1), dx=st.floats(0.01, 1), dy=st.floats(0.01, 1),
)
def test_box_scaling_round_trip(h, w, x0, y0, dx, dy):
    t = ResizeLongestSide(256)
    box = np.array([[x0 * (w - 1), y0 * (h - 1), min(x0 + dx, 1) * (w - 1), min(y0 + dy, 1) * (h - 1)]])
    scaled = t.apply_boxes(box, (h, w))
    new_h, new_w = t.new_size((h, w))
    assert max(new_h, new_w) == 256
    assert np.all(scaled[:, [0, 2]] <= new_w + 1e-3) and np.all(scaled[:, [1, 3]] <= new_h + 1e-3)
    sx, sy = t.scale_xy((h, w))
    np.testing.assert_allclose(scaled / [sx, sy, sx, sy], box, rtol=1e-4, atol=1e-3)
