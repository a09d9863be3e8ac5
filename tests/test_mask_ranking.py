"""The ranking stage of text-guided localisation: contrast blobs (coordinates against a known lesion on a
non-square image), region features from the real LiteMedSAM decoder, the ranker file, and the served pipeline
with the shipped ranker over the cross-site proposer on a bundled BUS-BRA sample."""

from __future__ import annotations

import json

import numpy as np
import pytest

from radvlsm.errors import CheckpointError
from radvlsm.io import Image2D, load_image
from radvlsm.mask_ranking import FEATURES, MaskRanker, candidate_features
from radvlsm.proposals.boxes import box_iou
from radvlsm.proposals.regions import contrast_blobs
from radvlsm.stack import Settings, Stack
from tests.conftest import ROOT, SAMPLES, dice, reference, tight_box

SAMPLE = "bus_0075-r"
XSITE = ROOT / "model" / "qformer_lite_xsite" / "qformer_lite.pt"
RANKER = ROOT / "model" / "mask_ranker" / "ranker.json"


def synthetic(rows: int = 300, cols: int = 520, centre: tuple[int, int] = (380, 90), radius: int = 28,
              level: float = 30.0) -> tuple[Image2D, np.ndarray]:
    """Speckled mid-grey image with one dark disk centred at column ``centre[0]``, row ``centre[1]``."""
    rng = np.random.default_rng(0)
    img = 130 + 18 * rng.standard_normal((rows, cols))
    yy, xx = np.mgrid[:rows, :cols]
    disk = (xx - centre[0]) ** 2 + (yy - centre[1]) ** 2 <= radius ** 2
    img[disk] = level + 8 * rng.standard_normal(disk.sum())
    return Image2D(np.clip(img, 0, 255).astype(np.uint8)[..., None]), disk


def test_contrast_blob_boxes_the_dark_disk_in_sam_order():
    image, disk = synthetic()
    boxes, scores = contrast_blobs(image)
    assert len(boxes) and np.all(np.diff(scores) <= 0)
    ys, xs = np.nonzero(disk)
    truth = np.array([[xs.min(), ys.min(), xs.max(), ys.max()]], np.float32)
    best = box_iou(boxes, truth)[:, 0]
    assert best[0] == best.max() and best[0] >= 0.3, (boxes[:3], truth)  # the strongest blob is the disk
    x0, y0, x1, y1 = boxes[0]
    assert x0 <= 380 <= x1 and y0 <= 90 <= y1  # column 380, row 90: x and y not swapped


def test_contrast_blobs_on_a_flat_image_are_none():
    boxes, scores = contrast_blobs(Image2D(np.full((200, 240, 1), 90, np.uint8)))
    assert boxes.shape == (0, 4) and scores.shape == (0,)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    return Stack(Settings(device="cpu", runtime="eager", warm_up=False, diagnose=False,
                          disk_cache=str(tmp_path_factory.mktemp("emb")), qformer_checkpoint=str(XSITE)))


def test_region_features_prefer_the_disk_over_a_background_box(stack):
    image, disk = synthetic()
    enc = stack.predictor.encode(image)
    boxes = np.array([[340, 50, 420, 130], [40, 150, 160, 260]], np.float32)  # around the disk; plain speckle
    feats, iou, origin = candidate_features(stack.predictor, enc, image, boxes, None, disk)
    assert feats.shape[1] == len(FEATURES) and len(feats) >= 1
    on_disk = int(np.argmax(iou))
    assert iou[on_disk] >= 0.7 and origin[on_disk] == 0
    col = FEATURES.index
    assert feats[on_disk, col("contrast")] > 1.0  # the disk is darker than its ring, in grey-level spreads
    assert feats[on_disk, col("inside_z")] < -1.0
    assert feats[on_disk, col("cx")] == pytest.approx(380 / 520, abs=0.05)
    assert feats[on_disk, col("cy")] == pytest.approx(90 / 300, abs=0.05)


def test_ranker_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "ranker.json"
    bad.write_text("{not json")
    with pytest.raises(CheckpointError, match="ranker.json"):
        MaskRanker.load(bad)
    bad.write_text(json.dumps({"features": ["no_such_feature"], "mean": [0], "scale": [1], "layers": [[[[1]], [0]]]}))
    with pytest.raises(CheckpointError, match="no_such_feature"):
        MaskRanker.load(bad)
    with pytest.raises(CheckpointError, match="not found"):
        MaskRanker.load(tmp_path / "missing.json")


def test_ranker_scores_by_its_layers():
    spec = {"features": ["contrast", "predicted_iou"], "mean": [0, 0], "scale": [1, 1],
            "layers": [[[[2.0], [1.0]], [-1.0]]]}
    feats = np.zeros((2, len(FEATURES)), np.float32)
    feats[0, FEATURES.index("contrast")] = 1.0
    feats[1, FEATURES.index("predicted_iou")] = 1.0
    s = MaskRanker(spec).score(feats)
    assert s == pytest.approx(1 / (1 + np.exp(-np.array([1.0, 0.0]))))


def test_settings_choose_the_ranker(tmp_path):
    assert Settings(mask_ranker="off").ranker_path is None
    assert Settings(mask_ranker=str(tmp_path / "r.json")).ranker_path == str(tmp_path / "r.json")
    assert Settings.from_conf({"mask_ranker": "off"}).mask_ranker == "off"
    assert Settings(model_dir=str(tmp_path)).ranker_path is None  # auto without a shipped ranker


@pytest.mark.skipif(not RANKER.exists(), reason="no shipped mask ranker")
def test_auto_uses_the_ranker_only_over_its_proposer(tmp_path):
    spec = json.loads(RANKER.read_text())
    assert spec["proposer"]
    over_default = Stack(Settings(device="cpu", runtime="eager", warm_up=False, diagnose=False))
    assert over_default.mask_ranker is None or over_default.settings.qformer_path.endswith("xsite/qformer_lite.pt")
    other = tmp_path / "ranker.json"
    other.write_text(json.dumps({**spec, "proposer": "0" * 16}))
    assert Stack(Settings(mask_ranker="auto", model_dir=str(tmp_path), qformer_checkpoint=str(XSITE))
                 ).mask_ranker is None


@pytest.mark.skipif(not RANKER.exists(), reason="no shipped mask ranker")
def test_pipeline_with_the_ranker_finds_the_sample_lesion(stack):
    assert stack.mask_ranker is not None
    image = load_image(SAMPLES / "images" / f"{SAMPLE}.png")
    proposal = stack.proposer.propose(image, "lesion")
    assert proposal.ranked and proposal.candidates
    scores = [c.score for c in proposal.candidates]
    assert scores == sorted(scores, reverse=True)
    assert {c.extra["source"] for c in proposal.candidates} <= {"heatmap", "box_head", "contrast"}
    top = np.array(proposal.candidates[0].box)[None]
    assert box_iou(top, np.array(tight_box(SAMPLE))[None])[0, 0] >= 0.5
    res = stack.pipeline.run(image)
    assert res.lesions and dice(res.label > 0, reference(SAMPLE)) >= 0.8
    assert "rank" in proposal.timings_ms


@pytest.mark.skipif(not RANKER.exists(), reason="no shipped mask ranker")
def test_no_candidate_above_the_ranker_presence_score_means_no_lesion(stack):
    from radvlsm.proposals.ranked import RankedProposer

    spec = {**json.loads(RANKER.read_text()), "min_score": 1.01}  # no mask can score above 1
    strict = RankedProposer(stack.text_proposer, stack.predictor, MaskRanker(spec))
    image = load_image(SAMPLES / "images" / f"{SAMPLE}.png")
    proposal = strict.propose(image, "lesion")
    assert proposal.candidates == [] and proposal.ranked
    assert any("ranker score" in note for note in proposal.notes)
    assert proposal.match_score == pytest.approx(stack.text_proposer.propose(image, "lesion").match_score)


def test_a_phrase_the_proposer_refuses_is_not_ranked(stack):
    from radvlsm.proposals.ranked import RankedProposer

    spec = {"features": ["contrast"], "mean": [0], "scale": [1], "layers": [[[[1.0]], [0.0]]]}
    ranked = RankedProposer(stack.text_proposer, stack.predictor, MaskRanker(spec))
    image = load_image(SAMPLES / "images" / f"{SAMPLE}.png")
    proposal = ranked.propose(image, "colon polyp")  # another modality's phrase on a breast scan
    assert proposal.candidates == [] and not proposal.ranked


@pytest.mark.skipif(not RANKER.exists(), reason="no shipped mask ranker")
def test_user_boxes_skip_the_ranking_stage(stack, monkeypatch):
    from radvlsm.geometry import parse_prompts

    image = load_image(SAMPLES / "images" / f"{SAMPLE}.png")
    calls = []
    monkeypatch.setattr(stack.mask_ranker, "score", lambda *a, **k: calls.append(1) or np.zeros(0))
    res = stack.pipeline.run(image, prompts=parse_prompts({"boxes": [tight_box(SAMPLE)]}, image.shape))
    assert calls == [] and res.result["prompt_source"] == "user"
    assert dice(res.label > 0, reference(SAMPLE)) >= 0.8
