"""The scanner/export augmentation keeps the lesion mask on the lesion through every geometric change."""

from __future__ import annotations

import numpy as np
import pytest

from radvlsm.training.scanner_augment import ScannerAugment, zoom_in, zoom_out


def phantom(rows: int = 120, cols: int = 160) -> tuple[np.ndarray, np.ndarray]:
    """Dark tissue with one bright rectangular lesion at a known place (rows 40-69, cols 90-129)."""
    img = np.full((rows, cols, 3), 60, np.uint8)
    mask = np.zeros((rows, cols), bool)
    mask[40:70, 90:130] = True
    img[mask] = 250
    return img, mask


GEOMETRY_ONLY = dict(p_curve=0, p_speckle=0, p_blur=0, p_lowres=0, p_tint=0, p_text=0, p_calipers=0, p_icon=0,
                     p_doppler=0)


@pytest.mark.parametrize("seed", range(12))
def test_geometric_changes_move_the_mask_with_the_lesion(seed):
    img, mask = phantom()
    aug = ScannerAugment(p_crop=0.5, p_canvas=0.5, p_flip=0.5, **GEOMETRY_ONLY)
    out, m = aug(img, mask, np.random.default_rng(seed))
    assert out.dtype == np.uint8 and out.shape[:2] == m.shape and out.shape[2] == 3
    assert m.sum() == mask.sum()  # crops keep the whole lesion; no resampling happens here
    assert (out[m] == 250).all() and not (out[~m] == 250).any()


def test_zoom_in_keeps_the_lesion_and_shrinks_the_frame():
    img, mask = phantom()
    rng = np.random.default_rng(3)
    out, m = zoom_in(img, mask, rng)
    assert out.shape[0] < img.shape[0] or out.shape[1] < img.shape[1]
    assert m.sum() == mask.sum() and (out[m] == 250).all()


def test_zoom_out_places_the_image_in_a_dark_screen():
    img, mask = phantom()
    out, m = zoom_out(img, mask, np.random.default_rng(0))
    assert out.shape[0] > img.shape[0]
    ys, xs = np.nonzero(m)
    assert (ys.max() - ys.min() + 1, xs.max() - xs.min() + 1) == (30, 40)
    assert out[~m].max() <= 60 and (out[m] == 250).all()


def test_appearance_changes_leave_the_mask_alone_and_change_the_pixels():
    img, mask = phantom()
    aug = ScannerAugment(p_crop=0, p_canvas=0, p_flip=0, p_curve=1, p_speckle=1, p_tint=1, p_text=1, p_calipers=1,
                         p_icon=1)
    out, m = aug(img, mask, np.random.default_rng(1))
    assert np.array_equal(m, mask) and out.shape == img.shape
    assert np.abs(out.astype(int) - img.astype(int)).mean() > 5
    assert not np.array_equal(out[..., 0], out[..., 2])  # tinted: no longer gray


def test_same_seed_same_result_and_empty_masks_work():
    img, _ = phantom()
    empty = np.zeros(img.shape[:2], bool)
    a = ScannerAugment()(img, empty, np.random.default_rng(7))
    b = ScannerAugment()(img, empty, np.random.default_rng(7))
    assert np.array_equal(a[0], b[0]) and not a[1].any()
