"""Multi-candidate region aggregation on real LiteMedSAM decodes of bundled samples with known lesions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from radvlsm import aggregation as agg
from radvlsm.io import load_image
from radvlsm.models import build_backbone
from radvlsm.predictor import SegmentPredictor
from tests.conftest import SAMPLES, dice, reference, tight_box

CASE = "bus_0075-r"


@pytest.fixture(scope="module")
def lite() -> SegmentPredictor:
    return SegmentPredictor(build_backbone("litemedsam"))


@pytest.fixture(scope="module")
def encoded(lite):
    return lite.encode(load_image(SAMPLES / "images" / f"{CASE}.png"))


def loose(box: list[float], shape: tuple[int, int], margin: float = 0.08) -> list[float]:
    x0, y0, x1, y1 = box
    dx, dy = margin * (x1 - x0), margin * (y1 - y0)
    rows, cols = shape
    return [max(0, x0 - dx), max(0, y0 - dy), min(cols - 1, x1 + dx), min(rows - 1, y1 + dy)]


def test_fused_mask_matches_the_known_lesion(lite, encoded):
    box = loose(tight_box(CASE), encoded.original_size)
    lesions = agg.aggregate(lite, encoded, [agg.Candidate(box, 0.9, "test")])
    assert len(lesions) == 1
    lesion = lesions[0]
    assert lesion.mask.shape == reference(CASE).shape
    assert dice(lesion.mask, reference(CASE)) >= 0.8
    kinds = {p["kind"] for p in lesion.prompts}
    assert {"box/m0", "box/m1", "scale1.1/m0", "scale1.2/m0"} <= kinds
    assert abs(sum(p["weight"] for p in lesion.prompts) - 1) < 1e-3
    assert 0.5 < lesion.agreement <= 1 and 0 < lesion.reliability <= 1


def test_all_prompts_of_all_lesions_in_one_decoder_call(lite, encoded, monkeypatch):
    calls = []
    real = lite.decode_boxes_lowres

    def counting(enc, boxes, multimask=None):
        calls.append(len(boxes))
        return real(enc, boxes, multimask)

    monkeypatch.setattr(lite, "decode_boxes_lowres", counting)
    box = loose(tight_box(CASE), encoded.original_size)
    far = [5.0, 5.0, 40.0, 40.0]
    agg.aggregate(lite, encoded, [agg.Candidate(box, 0.9, "t"), agg.Candidate(far, 0.8, "t")],
                  sel=agg.SelectionConfig(relative=0.0))
    assert calls == [2 * 3]  # two clusters x (box + 2 widened copies), four mask outputs each


def test_two_separate_lesions_stay_two_and_do_not_overlap(lite, encoded):
    box = loose(tight_box(CASE), encoded.original_size)
    rows, cols = encoded.original_size
    other = [cols - 80.0, rows - 80.0, cols - 20.0, rows - 20.0]
    lesions = agg.aggregate(lite, encoded, [agg.Candidate(box, 0.9, "t"), agg.Candidate(other, 0.9, "t")],
                            sel=agg.SelectionConfig(relative=0.0))
    assert len(lesions) == 2
    assert not (lesions[0].mask & lesions[1].mask).any()
    assert max(dice(le.mask, reference(CASE)) for le in lesions) >= 0.8


def test_replayed_prompt_sets_equal_the_pipelines(lite, encoded):
    """What scripts/tune_aggregation.py tunes on (per-candidate decodes, concatenated) is what the pipeline fuses."""
    box = loose(tight_box(CASE), encoded.original_size)
    inner = loose(tight_box(CASE), encoded.original_size, margin=0.0)
    cluster = [agg.Candidate(box, 0.9, "t"), agg.Candidate(inner, 0.7, "t")]
    cfg = agg.AggregationConfig()
    direct = agg.decode_clusters(lite, encoded, [cluster], cfg)[0]
    per_candidate = [agg.decode_prompt_set(lite, encoded, np.array(c.box, np.float32), cfg) for c in cluster]
    replayed = agg.PromptSet.concat(per_candidate, [c.score for c in cluster], cfg)
    assert replayed.kinds == direct.kinds
    assert np.allclose(replayed.strengths, direct.strengths)
    assert torch.allclose(replayed.logits, direct.logits, atol=1e-3)
    a = agg.fuse_prompts(direct, None, cluster, cfg)
    b = agg.fuse_prompts(replayed, None, cluster, cfg)
    assert torch.equal(a.logit > 0, b.logit > 0) and abs(a.reliability - b.reliability) < 1e-4


def _lesion(reliability: float, score: float) -> agg.FusedLesion:
    logit = torch.full((4, 4), -5.0)
    logit[1:3, 1:3] = 5.0
    return agg.FusedLesion(logit, [0, 0, 3, 3], score, 1.0, reliability)


def test_selection_keeps_only_lesions_close_to_the_best():
    lesions = [_lesion(0.5, 0.9), _lesion(0.8, 0.6), _lesion(0.7, 0.95)]
    kept = agg.select_lesions(lesions, agg.SelectionConfig(relative=0.85))
    assert [le.reliability for le in kept] == [0.8, 0.7]
    by_score = agg.select_lesions(lesions, agg.SelectionConfig(relative=0.85, use_quality=False))
    assert [le.score for le in by_score] == [0.95, 0.9]
    assert len(agg.select_lesions(lesions, agg.SelectionConfig(relative=0.0, max_lesions=2))) == 2
    empty = _lesion(0.99, 0.99)
    empty.logit[:] = -1
    assert agg.select_lesions([empty], agg.SelectionConfig()) == []


def test_text_relevance_steers_the_weights(lite, encoded):
    """A heatmap that lights only the lesion moves weight onto the prompts whose masks hold it."""
    box = loose(tight_box(CASE), encoded.original_size, margin=-0.12)  # too tight: its copies hold more of it
    cluster = [agg.Candidate(box, 0.9, "t")]
    cfg = agg.AggregationConfig()
    ps = agg.decode_clusters(lite, encoded, [cluster], cfg)[0]
    heat = agg.to_grid(torch.from_numpy(reference(CASE).astype(np.float32)), ps.logits.shape[-2:])
    with_heat = agg.fuse_prompts(ps, heat, cluster, cfg)
    without = agg.fuse_prompts(ps, None, cluster, cfg)
    assert all(0 <= p["text_consistency"] <= 1 for p in with_heat.prompts)
    assert all(p["text_consistency"] == 1 for p in without.prompts)
    on = np.array([p["text_consistency"] for p in with_heat.prompts])
    w_with = np.array([p["weight"] for p in with_heat.prompts])
    w_without = np.array([p["weight"] for p in without.prompts])
    assert on.max() - on.min() > 0.05  # the prompts differ in how much of the lesion they hold
    assert (w_with * on).sum() > (w_without * on).sum() + 1e-3  # weight moved onto the prompts on the lesion
    assert dice((with_heat.logit > 0).numpy(), heat.numpy() > 0.5) >= dice((without.logit > 0).numpy(),
                                                                           heat.numpy() > 0.5) - 0.01
