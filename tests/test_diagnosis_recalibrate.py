"""Site recalibration of the diagnosis head: the MAP fit, the gate, versioned publishing and live pickup."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from radvlsm.diagnosis import Diagnoser
from radvlsm.diagnosis.head import Linear
from radvlsm.diagnosis.recalibrate import HeadStore, LabelledLesion, fit_fusion, log_loss, recalibrate
from radvlsm.io import load_image
from radvlsm.training.data import split
from tests.conftest import SAMPLES, reference
from tests.test_diagnosis import MODEL_DIR

PRIOR = Linear(np.array([1.0, 1.0]), 0.0)


@pytest.fixture(scope="module")
def lite_predictor():
    from radvlsm.models import build_backbone
    from radvlsm.predictor import SegmentPredictor

    return SegmentPredictor(build_backbone("litemedsam"))


def site_lesions(n: int, seed: int = 0, shift: float = -2.0) -> list[LabelledLesion]:
    """A site where the shipped fusion is off by ``shift`` in the intercept (e.g. another case mix)."""
    rng = np.random.default_rng(seed)
    r, v = rng.normal(0, 2, n), rng.normal(0, 2, n)
    y = rng.random(n) < 1 / (1 + np.exp(-(shift + r + v)))
    rows = enumerate(zip(r, v, y, strict=True))
    return [LabelledLesion(f"img{i:03d}", float(a), float(b), bool(c)) for i, (a, b, c) in rows]


def test_map_fit_moves_towards_the_site_and_the_prior_holds_few_labels():
    many = fit_fusion(site_lesions(2000), PRIOR, strength=1.0)
    assert many.intercept == pytest.approx(-2.0, abs=0.3) and np.allclose(many.coef, 1.0, atol=0.2)
    few = fit_fusion(site_lesions(10), PRIOR, strength=5.0)
    assert abs(few.intercept) < abs(many.intercept)  # ten labels move it less than two thousand
    stiff = fit_fusion(site_lesions(2000), PRIOR, strength=1e6)
    assert stiff.intercept == pytest.approx(0.0, abs=0.01)  # a very strong prior keeps the shipped layer
    lesions = site_lesions(500, seed=1)
    assert log_loss(many, lesions) < log_loss(PRIOR, lesions)


def test_gate_publishes_only_when_not_worse_and_versions_restore(tmp_path):
    diag = Diagnoser.load(MODEL_DIR, store=HeadStore(tmp_path / "heads"))
    head = diag.head
    f = head.fusion  # a site where the shipped fusion is 3 log-odds too high
    rng = np.random.default_rng(2)
    r, v = rng.normal(0, 2, 300), rng.normal(0, 2, 300)
    y = rng.random(300) < 1 / (1 + np.exp(-(f.intercept - 3 + f.coef[0] * r + f.coef[1] * v)))
    shifted = [LabelledLesion(f"img{i:03d}", float(r[i]), float(v[i]), bool(y[i])) for i in range(300)]
    res = recalibrate(head, shifted, diag.store, strength=1.0)
    assert res.published == "v0001" and res.log_loss_after < res.log_loss_before
    assert diag.refresh() == "v0001" and diag.head.fusion.intercept < head.fusion.intercept - 1
    assert diag.head.rad_transform.names == head.rad_transform.names  # explanations keep their descriptors
    # held-back labels that contradict what the training split says: refused, the served head stays
    _, val = split([le.image_id for le in shifted])
    flipped = [LabelledLesion(le.image_id, le.radiomics_logit, le.visual_logit, le.malignant != (le.image_id in val))
               for le in shifted]
    refused = recalibrate(diag.head, flipped, diag.store, strength=1.0)
    assert refused.published is None and "not published" in refused.reason
    assert diag.refresh() == "v0001" and diag.store.versions() == ["v0001"]
    diag.store.restore("shipped")
    assert diag.refresh() == "shipped" and diag.head is diag.shipped


def test_one_class_is_a_clear_error(tmp_path):
    benign = [LabelledLesion(f"b{i}", 0.0, 0.0, False) for i in range(6)]
    with pytest.raises(ValueError, match="benign and malignant"):
        recalibrate(Diagnoser.load(MODEL_DIR).head, benign, HeadStore(tmp_path))


def test_branch_logits_on_real_samples_match_the_served_answer(lite_predictor):
    """The trainer's inputs are the served head's own branch log-odds: recombined by its fusion layer they give
    the probability /infer/diagnosis reports for the same mask."""
    from radvlsm.diagnosis.head import sigmoid
    from radvlsm.diagnosis.recalibrate import branch_logits

    diag = Diagnoser.load(MODEL_DIR)
    rows = {r["ID"]: r["Pathology"] for r in csv.DictReader((SAMPLES / "pathology.csv").open())}
    for case in ("bus_0075-r", "bus_1033-r"):
        image = load_image(SAMPLES / "images" / f"{case}.png")
        enc = lite_predictor.encode(image)
        r, v = branch_logits(diag, image, reference(case), enc)
        f = diag.head.fusion
        served = diag.diagnose(image, reference(case), embedding=enc)
        assert served.probability == pytest.approx(float(sigmoid(f.intercept + f.coef[0] * r + f.coef[1] * v)),
                                                   abs=1e-6)
        assert rows[case] in ("benign", "malignant")
