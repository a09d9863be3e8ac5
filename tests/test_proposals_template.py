"""``template`` backend with the real LiteMedSAM backbone on bundled BUS-BRA samples (6 images encoded)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from radvlsm.io import Image2D, load_image
from radvlsm.models import build_backbone
from radvlsm.predictor import SegmentPredictor
from radvlsm.proposals import build_proposer
from radvlsm.proposals.boxes import box_iou
from radvlsm.proposals.template import TemplateProposer, grid_to_image, valid_grid
from tests.conftest import SAMPLES, reference, tight_box

EXEMPLARS = ["bus_0130-l", "bus_0133-r", "bus_0164-l"]
# Queries are not cherry-picked to all pass: over the 11 other samples these exemplars give 7/11 hits (see the
# report); the test asks for at least 2 of these 3.
QUERIES = ["bus_0017-s", "bus_0083-r", "bus_0263-l"]


@pytest.fixture(scope="module")
def predictor() -> SegmentPredictor:
    return SegmentPredictor(build_backbone("litemedsam"))


@pytest.fixture(scope="module")
def images():
    return {i: load_image(SAMPLES / "images" / f"{i}.png") for i in EXEMPLARS + QUERIES}


@pytest.fixture(scope="module")
def bank(predictor, images) -> TemplateProposer:
    tp = build_proposer("template", predictor=predictor, max_exemplars=20, k=5)
    for i in EXEMPLARS:
        tp.add_exemplar(i, images[i], reference(i))
    return tp


def _top1_iou(proposal, case: str) -> float:
    if not proposal.candidates:
        return 0.0
    return float(box_iou(np.array(proposal.candidates[0].box), np.array(tight_box(case)))[0, 0])


def test_top1_box_finds_the_lesion(bank, images):
    ious = {q: _top1_iou(bank.propose(images[q], "breast lesion"), q) for q in QUERIES}
    assert sum(v >= 0.5 for v in ious.values()) >= 2, ious


def test_proposal_contents(bank, images):
    q = QUERIES[0]
    p = bank.propose(images[q], "breast lesion", top_k=2)
    assert p.backend == "template" and 1 <= len(p.candidates) <= 2
    assert p.heatmap.shape == images[q].shape and p.heatmap.min() >= 0 and p.heatmap.max() <= 1
    assert 0 < p.match_score <= 1
    rows, cols = images[q].shape
    for c in p.candidates:
        x0, y0, x1, y1 = c.box
        assert 0 <= x0 <= x1 <= cols - 1 and 0 <= y0 <= y1 <= rows - 1
        assert c.backend == "template" and set(c.extra["exemplars"]) == set(EXEMPLARS)
        assert len(c.extra["similarity"]) == 3 and c.extra["similarity"] == sorted(c.extra["similarity"], reverse=True)
    # the heatmap is hotter inside the reference lesion than outside it
    ref = reference(q)
    assert p.heatmap[ref].mean() > p.heatmap[~ref].mean() + 0.2


def test_match_score_is_low_for_an_unrelated_image(bank, images):
    rows, cols = 300, 400
    yy, xx = np.mgrid[0:rows, 0:cols].astype(np.float32)
    pattern = np.stack([xx / cols * 255, yy / rows * 255, (np.sin(xx / 9) * np.cos(yy / 13) + 1) * 127], -1)
    unrelated = bank.propose(Image2D(pattern), "breast lesion").match_score
    ultrasound = bank.propose(images[QUERIES[0]], "breast lesion").match_score
    assert ultrasound > 0.5 > unrelated, (ultrasound, unrelated)


def test_reuses_the_predictor_cache(bank, images, predictor):
    enc = predictor.encode(images[QUERIES[1]])
    assert enc.cache_hit
    a = bank.propose(images[QUERIES[1]], "x", encoded=enc)
    b = bank.propose(images[QUERIES[1]], "a different phrase")  # text is not used to localise
    assert [c.box for c in a.candidates] == [c.box for c in b.candidates]


def test_empty_bank_returns_nothing(predictor, images, caplog):
    tp = TemplateProposer(predictor)
    assert len(tp) == 0
    with caplog.at_level(logging.WARNING, logger="radvlsm.proposals.template"):
        p = tp.propose(images[QUERIES[0]], "lesion")
    assert p.candidates == [] and p.match_score == 0.0 and p.heatmap is None and p.backend == "template"
    assert "bank is empty" in caplog.text


def test_replace_and_remove_exemplar(predictor, images):
    tp = TemplateProposer(predictor, max_exemplars=2)
    a, b = EXEMPLARS[0], EXEMPLARS[1]
    tp.add_exemplar("x", images[a], reference(a))
    before = tp._bank["x"].fg.copy()
    tp.add_exemplar("x", images[b], reference(b))  # same id: replaced, not added
    assert len(tp) == 1 and not np.allclose(before, tp._bank["x"].fg)
    tp.add_exemplar("y", images[a], reference(a))
    with pytest.raises(ValueError, match="full"):
        tp.add_exemplar("z", images[a], reference(a))
    tp.remove_exemplar("x")
    assert tp.ids == ["y"]
    with pytest.raises(KeyError):
        tp.remove_exemplar("x")
    with pytest.raises(ValueError, match="empty"):
        tp.add_exemplar("e", images[a], np.zeros(images[a].shape, bool))


def test_single_exemplar(predictor, images):
    tp = TemplateProposer(predictor, k=5)
    tp.add_exemplar(EXEMPLARS[2], images[EXEMPLARS[2]], reference(EXEMPLARS[2]))
    ious = [_top1_iou(tp.propose(images[q], "lesion"), q) for q in QUERIES]
    assert all(p is not None for p in ious) and max(ious) >= 0.5, ious


def test_save_load_roundtrip(bank, predictor, images, tmp_path):
    path = bank.save(tmp_path / "sub" / "bank.prototypes")
    assert path.is_file() and path.name == "bank.prototypes"
    other = TemplateProposer(predictor)
    other.load(path)
    assert other.ids == bank.ids
    q = images[QUERIES[2]]
    np.testing.assert_allclose(other.propose(q, "").heatmap, bank.propose(q, "").heatmap)
    other._backbone_tag = lambda: "sam_vit_b-other"  # prototypes of another backbone version are refused
    with pytest.raises(ValueError, match="backbone"):
        other.load(path)


def test_load_folder_pairs_bus_bra_names(predictor, images, tmp_path):
    from PIL import Image

    (tmp_path / "Images").mkdir()
    (tmp_path / "Masks").mkdir()
    case = EXEMPLARS[0]
    Image.open(SAMPLES / "images" / f"{case}.png").save(tmp_path / "Images" / f"{case}.png")
    Image.fromarray(reference(case).astype(np.uint8) * 255).save(tmp_path / "Masks" / f"mask_{case[4:]}.png")
    (tmp_path / "Images" / "bus_9999-x.png").write_bytes(b"")  # no mask: skipped, not read
    tp = TemplateProposer(predictor)
    assert tp.load_folder(tmp_path / "Images", tmp_path / "Masks") == [case]


def test_grid_to_image_crops_padding(predictor, images):
    """A map that is 1 on the valid (unpadded) cells covers the whole image: the padding is cropped, not stretched."""
    enc = predictor.encode(images[EXEMPLARS[0]])
    assert enc.input_size[0] != enc.input_size[1]  # not square, so the grid has padded rows or columns
    gh, gw = valid_grid(enc, predictor.backbone.img_size)
    assert (gh, gw) != (64, 64)
    out = grid_to_image(torch.ones(gh, gw), enc, predictor.backbone.img_size)
    rows, cols = images[EXEMPLARS[0]].shape
    assert out.shape == (rows, cols)
    assert out[: rows - rows // 50, : cols - cols // 50].min() > 0.95
