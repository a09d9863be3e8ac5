"""Diagnosis library: real pyradiomics on synthetic lesions and the shipped head (no dataset, no encoder)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from radvlsm.diagnosis import Diagnoser, NotEnoughLesion, extract
from radvlsm.diagnosis.visual import mask_grids, pool_embedding, visual_features
from radvlsm.io import Image2D
from radvlsm.predictor import Encoded

MODEL_DIR = Path(__file__).resolve().parents[1] / "model" / "diagnosis"


def disc(shape: tuple[int, int], center: tuple[float, float], r: float) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (((yy - center[0]) ** 2 + (xx - center[1]) ** 2) <= r**2).astype(np.uint8)


def speckle(shape: tuple[int, int], seed: int = 0) -> Image2D:
    rng = np.random.default_rng(seed)
    px = np.clip(rng.rayleigh(40.0, shape), 0, 255).astype(np.float32)
    return Image2D(px[..., None])


@pytest.fixture(scope="module")
def diagnoser() -> Diagnoser:
    return Diagnoser.load(MODEL_DIR)


def fake_encoded(image: Image2D, seed: int = 1) -> Encoded:
    """A deterministic smooth 'embedding' (the real encoder is too slow for a unit test)."""
    g = torch.Generator().manual_seed(seed)
    emb = torch.nn.functional.avg_pool2d(torch.randn(1, 256, 64, 64, generator=g), 5, 1, 2)
    rows, cols = image.shape
    scale = 256 / max(rows, cols)
    return Encoded(emb, image.shape, (round(rows * scale), round(cols * scale)))


@pytest.mark.parametrize("r", [20.0, 40.0])
def test_disc_area_and_perimeter_match_analytic(r: float) -> None:
    mask = disc((200, 220), (101.3, 110.6), r)
    feats = extract(speckle((200, 220)), mask)
    area, perimeter = np.pi * r**2, 2 * np.pi * r
    assert feats["original_shape2D_PixelSurface"] == pytest.approx(area, rel=0.02)
    assert feats["original_shape2D_MeshSurface"] == pytest.approx(area, rel=0.02)
    assert feats["radvlsm_shape2D_SmoothPerimeter"] == pytest.approx(perimeter, rel=0.02)
    assert feats["radvlsm_shape2D_SmoothCircularity"] == pytest.approx(1.0, abs=0.03)
    assert feats["original_shape2D_MaximumDiameter"] == pytest.approx(2 * r, abs=1.5)  # pixel-centre distances
    # pyradiomics' marching-squares perimeter is biased high on digitised curves (documented in radiomics.py)
    assert 1.0 < feats["original_shape2D_Perimeter"] / perimeter < 1.09


@pytest.mark.parametrize("mask_kind", ["empty", "one_pixel", "thin_line", "wrong_shape"])
def test_too_little_lesion_is_a_clear_result(diagnoser: Diagnoser, mask_kind: str) -> None:
    image = speckle((120, 140))
    mask = np.zeros(image.shape, np.uint8)
    if mask_kind == "one_pixel":
        mask[60, 70] = 1
    elif mask_kind == "thin_line":
        mask[60, 20:100] = 1
    elif mask_kind == "wrong_shape":
        mask = np.ones((10, 10), np.uint8)
    with pytest.raises(NotEnoughLesion, match="not enough lesion"):
        extract(image, mask)
    for emb in (None, fake_encoded(image)):
        res = diagnoser.diagnose(image, mask, emb)
        assert res.status == "not_enough_lesion" and res.probability is None
        assert "not enough lesion" in res.to_text()
        json.dumps(res.to_json())


def test_shipped_head_answers_and_depends_on_the_mask(diagnoser: Diagnoser) -> None:
    image = speckle((200, 240), seed=3)
    yy, xx = np.mgrid[:200, :240]
    image.pixels[..., 0] += 60.0 * (np.abs(yy - 100) + np.abs(xx - 120) < 60)  # a bright blob to describe
    round_mask = disc(image.shape, (100, 120), 35)
    spiky = round_mask.copy()
    spiky[(np.abs(np.sin(np.arctan2(yy - 100, xx - 120) * 7)) > 0.6) & (np.hypot(yy - 100, xx - 120) < 55)] = 1
    emb = fake_encoded(image)
    results = {}
    for name, m in (("round", round_mask), ("spiky", spiky)):
        for mode, e in (("fused", emb), ("radiomics-only", None)):
            res = diagnoser.diagnose(image, m, e)
            assert res.ok and res.mode == mode and 0.0 < res.probability < 1.0
            assert res.label in ("benign", "malignant")
            total = res.baseline_logit + sum(c.logit for c in res.contributions)
            assert total == pytest.approx(np.log(res.probability / (1 - res.probability)), abs=1e-6)
            doc = json.loads(json.dumps(res.to_json()))
            assert doc["summary"].startswith(res.label.capitalize()) and doc["mask"]["area_px"] == int(m.sum())
            results[name, mode] = total  # log-odds: probabilities of synthetic lesions may saturate
    assert results["round", "fused"] != pytest.approx(results["spiky", "fused"], abs=0.1)
    assert results["round", "radiomics-only"] != pytest.approx(results["spiky", "radiomics-only"], abs=0.1)


def test_visual_pooling_respects_padding_and_mask() -> None:
    mask = np.zeros((100, 200), np.uint8)
    mask[40:60, 90:110] = 1
    inside, ring, valid = mask_grids(mask, (128, 256))
    assert float(valid[:32].mean()) == 1.0 and float(valid[32:].sum()) == 0.0  # rows 128..255 are padding
    assert float(inside.sum()) == pytest.approx(mask.mean() * 128 * 256 / 16, rel=0.05)
    assert float((inside * ring).max()) < 1.0 and float(ring[32:].sum()) == 0.0
    emb = torch.zeros(1, 256, 64, 64)
    emb[:, :, 12:20, 28:36] = 1.0  # the cells the lesion covers (rows 12.8-19.2, cols 28.8-35.2)
    vec = pool_embedding(emb, inside, ring, valid)
    np.testing.assert_allclose(vec[:512], 1.0)  # in_mean, in_max
    assert 0.0 < vec[512:768].mean() < 0.9 and 0.0 < vec[768:].mean() < 0.1  # ring, global
    enc = Encoded(emb, (100, 200), (128, 256))
    np.testing.assert_allclose(visual_features(enc, mask), vec)


def test_roi_crop_contains_the_lesion_and_stays_inside_the_image() -> None:
    from radvlsm.diagnosis.visual import roi_box, roi_crop

    mask = np.zeros((120, 300), np.uint8)
    mask[5:45, 250:298] = 1  # near the top-right corner
    y0, y1, x0, x1 = roi_box(mask)
    assert 0 <= y0 < y1 <= 120 and 0 <= x0 < x1 <= 300 and y1 - y0 == x1 - x0 == 72  # 48 * 1.5, moved inside
    pixels, crop_mask = roi_crop(np.zeros((120, 300, 1), np.float32), mask)
    assert crop_mask.sum() == mask.sum() and pixels.shape[:2] == crop_mask.shape
    assert roi_box(np.zeros((10, 10))) is None
