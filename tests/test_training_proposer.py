"""Teaching the qformer_lite proposer a site from corrected masks (real shipped proposer, real LiteMedSAM
embeddings of the bundled BUS-BRA samples and lesion-free crops of them): trains, is gated out of fold on the
per-image score, learns presence from lesion-free labels and publishes its threshold with its weights into its own
store, and is served live by any proposer following that store."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from radvlsm.io import load_image
from radvlsm.models import build_backbone
from radvlsm.predictor import Encoded, SegmentPredictor
from radvlsm.proposals import build_proposer
from radvlsm.proposals.qformer_model import QFormerLite
from radvlsm.training import SHIPPED, DecoderStore, TrainConfig, fine_tune
from radvlsm.training.data import TrainSample, prepare
from radvlsm.training.proposer import (
    MIN_THRESHOLD,
    ProposerConfig,
    box_target,
    fine_tune_proposer,
    heat_target,
    outcome,
    top1_iou,
)
from radvlsm.training.store import ProposerStore
from tests.conftest import SAMPLES
from tests.test_training import IDS, sample

HEAD_KEYS = ("map_patch.weight", "map_text.weight", "box_head.0.weight")
FROZEN_KEYS = ("itm_head.0.weight", "image_proj.weight", "queries")


@pytest.fixture(scope="module")
def predictor(tmp_path_factory) -> SegmentPredictor:
    return SegmentPredictor(build_backbone("litemedsam"), disk_cache=str(tmp_path_factory.mktemp("emb")))


@pytest.fixture(scope="module")
def items(predictor):
    return prepare([sample(i) for i in IDS], predictor)


@pytest.fixture(scope="module")
def proposer(predictor):
    return build_proposer("qformer_lite", predictor=predictor)


def test_targets_match_the_label(items):
    """The box target is the label's tight box in image fractions, the map target its patch coverage."""
    it = items[1]
    ys, xs = np.nonzero(it.mask)
    rows, cols = it.mask.shape
    cx, cy, w, h = box_target(it.mask).tolist()
    assert cx - w / 2 == pytest.approx(xs.min() / cols) and cx + w / 2 == pytest.approx((xs.max() + 1) / cols)
    assert cy - h / 2 == pytest.approx(ys.min() / rows) and cy + h / 2 == pytest.approx((ys.max() + 1) / rows)
    heat = heat_target(it, 256, 64)
    assert heat.shape == (64, 64) and 0 <= heat.min() and heat.max() == 1
    # the covered share matches the label's share of the (padded) frame
    frame_share = it.mask.mean() * it.input_size[0] * it.input_size[1] / 256**2
    assert heat.mean().item() == pytest.approx(frame_share, rel=0.05)


def test_fine_tune_trains_only_the_heads_publishes_and_is_served_live(tmp_path, predictor, items, proposer):
    store = ProposerStore(tmp_path / "qformer_lite")
    served = build_proposer("qformer_lite", predictor=predictor, store=store)
    image = load_image(SAMPLES / "images" / "bus_0075-r.png")
    before = served.propose(image, "lesion")
    assert served.version == SHIPPED and before.version == SHIPPED
    # tolerance 1: the gate itself is tested below; here the mechanics of publishing and pick-up
    run = fine_tune_proposer(proposer, items, store, ProposerConfig(epochs=15, lr=1e-3, scope="heads", tolerance=1.0))
    assert run.published and run.version == "v0001" and store.current() == "v0001", run
    assert run.images == 4 and run.lesion_free == 0 and run.gate["n"] == 4 and run.gate["folds"] == 3
    assert run.losses[-1] < run.losses[0] * 0.95, run.losses
    assert np.isfinite(run.iou_before) and np.isfinite(run.iou_after)
    assert store.load("v0001")["proposer_base"] == proposer.base_id

    after = served.propose(image, "lesion")  # same object, no reload call: picked up on the next request
    assert served.version == "v0001" and after.version == "v0001"
    new, old = served.model.state_dict(), proposer.model.state_dict()  # ``proposer`` itself was not trained
    assert all(not torch.equal(new[k], old[k]) for k in HEAD_KEYS)
    assert all(torch.equal(new[k], old[k]) for k in FROZEN_KEYS)
    # without lesion-free labels the match head is frozen and the presence threshold kept
    assert after.match_score == pytest.approx(before.match_score, abs=1e-6)
    assert served.threshold == proposer.threshold == run.match_threshold

    from radvlsm.training.__main__ import main

    assert main(["list", str(store.root)]) == 0
    assert main(["restore", str(store.root), SHIPPED]) == 0  # the roll-back command a site would run
    assert served.propose(image, "lesion").version == SHIPPED
    assert all(torch.equal(served.model.state_dict()[k], old[k]) for k in HEAD_KEYS)


def scattered_corrections(folder) -> list[TrainSample]:
    """Labels with nothing to learn: each image 'corrected' to a 40 px square in a different corner."""
    samples = []
    for n, i in enumerate(IDS):
        image = load_image(SAMPLES / "images" / f"{i}.png")
        mask = np.zeros(image.shape, np.uint8)
        rows, cols = image.shape
        r0, c0 = (0 if n % 2 else rows - 40), (0 if n // 2 else cols - 40)
        mask[r0: r0 + 40, c0: c0 + 40] = 255
        Image.fromarray(mask).save(folder / f"{i}.png")
        samples.append(sample(i, folder / f"{i}.png"))
    return samples


def test_gate_refuses_what_is_not_better_with_confidence(tmp_path, predictor, proposer):
    """Out of fold, a model cannot predict a corner it never saw: no confident gain, nothing published."""
    items = prepare(scattered_corrections(tmp_path), predictor)
    store = ProposerStore(tmp_path / "qformer_lite")
    run = fine_tune_proposer(proposer, items, store, ProposerConfig(epochs=20, lr=1e-3, scope="heads"))
    assert not run.published and not run.gate["passed"] and run.gate["lower"] <= 0, run
    assert "not published" in run.reason and store.current() == SHIPPED and store.versions() == []


def lesion_free_crops(folder) -> list[TrainSample]:
    """Real breast-US tissue without a lesion: the widest strip of each sample beside its lesion's box, with an
    empty label (what a clinician saves for a lesion-free image)."""
    from radvlsm.geometry import mask_to_box
    from radvlsm.io import load_mask

    out = []
    for i in IDS:
        image = load_image(SAMPLES / "images" / f"{i}.png")
        x0, y0, x1, y1 = (int(v) for v in mask_to_box(load_mask(SAMPLES / "reference" / f"{i}.png", image.shape) > 0))
        rows, cols = image.shape
        rgb = image.rgb_uint8()
        strips = {"left": rgb[:, : max(x0 - 10, 0)], "right": rgb[:, x1 + 10:], "top": rgb[: max(y0 - 10, 0)],
                  "bottom": rgb[y1 + 10:]}
        crop = max(strips.values(), key=lambda a: min(a.shape[:2]))
        assert min(crop.shape[:2]) >= 48, (i, crop.shape)
        Image.fromarray(crop).save(folder / f"free_{i}.png")
        Image.fromarray(np.zeros(crop.shape[:2], np.uint8)).save(folder / f"free_{i}_label.png")
        out.append(TrainSample(f"free_{i}", folder / f"free_{i}.png", folder / f"free_{i}_label.png"))
    return out


def test_lesion_free_labels_teach_presence_and_publish_the_threshold(tmp_path, predictor, items, proposer):
    negatives = prepare(lesion_free_crops(tmp_path), predictor, keep_empty=True)
    assert len(negatives) == 4 and all(not it.lesions and not it.mask.any() for it in negatives)
    store = ProposerStore(tmp_path / "qformer_lite")
    matches = lambda p, its: [p.propose(None, "lesion", encoded=Encoded(it.embedding, it.original_size,  # noqa: E731
                                                                       it.input_size)).match_score for it in its]
    free_before = matches(proposer, negatives)
    run = fine_tune_proposer(proposer, items + negatives, store,
                             ProposerConfig(epochs=20, lr=1e-3, scope="heads", tolerance=1.0))
    assert run.published and run.lesion_free == 4 and run.images == 8, run
    state = store.load(run.version)["state"]
    assert float(state["calibration.match_threshold"]) == pytest.approx(run.match_threshold)
    served = build_proposer("qformer_lite", predictor=predictor, store=store)
    assert served.version == run.version and served.threshold == pytest.approx(run.match_threshold)
    assert not torch.equal(served.model.state_dict()["itm_head.0.weight"],
                           proposer.model.state_dict()["itm_head.0.weight"])  # the match head learned
    # the lesion-free images it saw now match less; the lesion images keep their presence (sensitivity first)
    free_after, lesion_after = matches(served, negatives), matches(served, items)
    assert np.mean(free_after) < np.mean(free_before), (free_before, free_after)
    assert min(lesion_after) >= served.threshold >= MIN_THRESHOLD, lesion_after
    assert run.lesion_free_refused_before is not None and run.lesion_free_refused_after is not None
    # a version published without a calibration (an older one) is served with the checkpoint's thresholds
    store.publish_state({f"qformer.{k}": v for k, v in proposer.model.state_dict().items()},
                        {"proposer_base": proposer.base_id}, {})
    assert served.version == "v0002" and served.threshold == proposer.threshold


def test_a_site_threshold_alone_is_published_when_the_fine_tune_does_no_better(tmp_path, predictor, items, proposer):
    """A served threshold set at other sites refuses this site's lesions: the served weights with the threshold
    calibrated out of fold on the site's labels find them again and pass the gate; a fine-tune that moved nothing
    (lr 1e-9) scores the same, and the tie goes to the candidate without new weights."""
    from radvlsm.proposals.qformer_lite import Calibration

    top = max(outcome(proposer, it, "lesion").match for it in items)
    strict = proposer.with_model(proposer.model, Calibration((top + 1) / 2, proposer.heat_threshold))
    assert all(top1_iou(strict, it, "lesion") == 0.0 for it in items)  # every lesion a "no lesion" answer
    store = ProposerStore(tmp_path / "qformer_lite")
    run = fine_tune_proposer(strict, items, store, ProposerConfig(epochs=1, lr=1e-9, scope="heads"))
    assert run.published and run.candidate == "recalibrated" and run.version == "v0001", run
    rec = run.recalibration
    assert rec["gate"]["passed"] and rec["gate"]["before"] == 0.0 and rec["gate"]["after"] > 0.5, rec
    # (the shipped proposer's in-domain matches are within 1e-6 of 1: thresholds compared to that precision)
    assert MIN_THRESHOLD <= run.match_threshold < top and run.match_threshold == pytest.approx(rec["match_threshold"])
    assert run.losses == [] and run.iou_after > run.iou_before == 0.0
    state = store.load("v0001")["state"]
    old = proposer.model.state_dict()
    assert all(torch.equal(state[f"qformer.{k}"], v) for k, v in old.items())  # the served weights, unchanged
    assert float(state["calibration.match_threshold"]) == pytest.approx(run.match_threshold)
    served = build_proposer("qformer_lite", predictor=predictor, store=store)
    assert served.version == "v0001" and served.threshold == pytest.approx(run.match_threshold)
    assert sum(top1_iou(served, it, "lesion") > 0.5 for it in items) >= 3  # 95 % of 4, less float32 rounding
    # a threshold-only version serves the shipped weights: the site's exemplar record keeps its scores
    assert served.weights_of("v0001") == SHIPPED and served.weights_of(SHIPPED) == SHIPPED
    # where the strict proposer would look, whatever its presence decision (what that record scores)
    from radvlsm.predictor import Encoded

    enc = Encoded(items[0].embedding, items[0].original_size, items[0].input_size)
    assert not strict.propose(None, "lesion", encoded=enc).candidates
    assert strict.locate(None, "lesion", encoded=enc).candidates

    off = fine_tune_proposer(strict, items, ProposerStore(tmp_path / "off"),
                             ProposerConfig(epochs=1, lr=1e-9, scope="heads", recalibrate=False))
    assert off.candidate == "fine_tuned" and off.recalibration == {}, off  # the fine-tune, at its own threshold


def test_fine_tune_of_another_base_checkpoint_is_not_served(tmp_path, predictor, proposer):
    store = ProposerStore(tmp_path / "qformer_lite")
    state = {f"qformer.{k}": v + 1 for k, v in proposer.model.state_dict().items()}
    store.publish_state(state, {"proposer_base": "0123456789ab"}, {})
    served = build_proposer("qformer_lite", predictor=predictor, store=store)
    assert served.version == SHIPPED
    assert torch.equal(served.model.state_dict()["map_bias"], proposer.model.state_dict()["map_bias"])


def test_train_run_does_proposer_only_when_decoder_is_switched_off(tmp_path, predictor, proposer):
    """One /train/radvlsm run: the decoder part switched off publishes no decoder; the proposer part reports its
    own gate in the result and the stats."""
    decoders, proposers = DecoderStore(tmp_path / "sam_decoder"), ProposerStore(tmp_path / "qformer_lite")
    cfg = TrainConfig(train_decoder=False, train_prompt_encoder=False, train_proposer=True, proposer_epochs=2,
                      tolerance=1.0)
    res = fine_tune(predictor, [sample(i) for i in IDS], decoders, cfg, proposer=proposer, proposer_store=proposers)
    assert not res.published and decoders.versions() == [] and "decoder not trained" in res.reason
    assert res.proposer["published"] and proposers.current() == "v0001" and len(res.proposer["losses"]) == 2
    assert decoders.read_stats()["proposer"]["version"] == "v0001"
    # the default scope trains the Q-Former too, not only the heads
    published = proposers.load("v0001")["state"]
    shipped = proposer.model.state_dict()
    assert not torch.equal(published["qformer.image_proj.weight"], shipped["image_proj.weight"])
    assert not torch.equal(published["qformer.map_text.weight"], shipped["map_text.weight"])
    assert TrainConfig().train_proposer  # on by default: a site is taught with its first corrections
    off = TrainConfig(train_decoder=False, train_prompt_encoder=False, train_proposer=False)
    off = fine_tune(predictor, [sample(i) for i in IDS], decoders, off, proposer=proposer, proposer_store=proposers)
    assert off.proposer is None and proposers.versions() == ["v0001"]


def test_heads_are_what_the_trainer_unfreezes():
    from radvlsm.proposals.qformer_model import QFormerLiteConfig
    from radvlsm.training.proposer import trainable

    model = QFormerLite(QFormerLiteConfig(context_channels=8))
    names = {n.split(".")[0] for n, _ in model.named_parameters()}
    assert set(QFormerLite.HEADS) < names and {"qformer", "itm_head"} <= names - set(QFormerLite.HEADS)
    assert {id(p) for p in trainable(model, "heads", False)} == {
        id(p) for n, p in model.named_parameters() if n.split(".")[0] in QFormerLite.HEADS}
    # a checkpoint without the context head trains the others
    plain = QFormerLite()
    assert {id(p) for p in trainable(plain, "heads", False)} == {
        id(p) for n, p in plain.named_parameters() if n.split(".")[0] in QFormerLite.HEADS}


def test_top1_iou_is_one_for_a_perfect_box(items, proposer, monkeypatch):
    from radvlsm.geometry import mask_to_box
    from radvlsm.proposals.base import Candidate, Proposal

    it = items[1]
    monkeypatch.setattr(proposer, "propose", lambda *a, **k: Proposal(
        [Candidate(mask_to_box(it.mask), 1.0, "t")], 1.0))
    assert top1_iou(proposer, it, "lesion") == pytest.approx(1.0)
    monkeypatch.setattr(proposer, "propose", lambda *a, **k: Proposal([], 0.1))
    assert top1_iou(proposer, it, "lesion") == 0.0


def test_no_epochs_trains_nothing_and_publishes_nothing(tmp_path, items, proposer):
    store = ProposerStore(tmp_path / "qformer_lite")
    run = fine_tune_proposer(proposer, items, store, ProposerConfig(epochs=0, tolerance=1.0))
    assert not run.published and run.losses == [] and "not trained" in run.reason
    assert (run.iou_after, run.hit_after) == (run.iou_before, run.hit_before) and store.versions() == []


def test_anchors_keep_what_other_phrases_mean(items, proposer):
    """Two lesion images saved as lesion-free (the site says "nothing here"): trained on "lesion" alone the
    Q-Former loses its text conditioning and "colon polyp" comes to match the breast lesions; with the anchor
    term (the served match of every other phrase on lesion images, a mismatch on lesion-free ones) it does not,
    while "lesion" still learns the site's answer. The teacher is what the served proposer's inference scores."""
    import dataclasses

    from radvlsm.proposals.phrases import anchor_vocabulary
    from radvlsm.training.proposer import Phrases, SiteData, train_copy

    empty = [dataclasses.replace(it, image_id=f"{it.image_id}-empty", mask=np.zeros_like(it.mask), lesions=[])
             for it in items[:2]]
    site = items[2:] + empty + items[2:]
    phrases = Phrases(proposer.text_encoder, ["lesion", "breast lesion"], anchor_vocabulary())
    assert phrases.positives == ["lesion", "breast lesion"] and phrases.names[:2] == phrases.positives
    assert "colon polyp" in phrases.anchors and not set(phrases.positives) & set(phrases.anchors)
    data = SiteData(proposer.model, site, phrases, proposer.predictor.backbone.img_size, "qformer")
    enc = [Encoded(it.embedding, it.original_size, it.input_size) for it in items]
    k = phrases.anchors.index("colon polyp")
    assert torch.sigmoid(phrases.teacher[0, k]).item() == pytest.approx(proposer.score(enc[2], "colon polyp")[0],
                                                                        abs=1e-4)

    def matches(weight: float) -> dict[str, np.ndarray]:
        cfg = ProposerConfig(epochs=10, lr=1e-3, anchor_weight=weight)
        model, _ = train_copy(proposer.model, data, list(range(len(site))), cfg, learn_match=True)
        served = proposer.with_model(model)
        return {t: np.array([served.score(e, t)[0] for e in enc]) for t in ("colon polyp", "lesion")}

    without, with_ = matches(0.0), matches(1.0)
    threshold = proposer.threshold
    # the failure the anchors are for: "colon polyp" finds the breast lesions
    assert (without["colon polyp"][2:] > threshold).all(), without
    assert (with_["colon polyp"] < threshold).all(), with_
    # "lesion" learns the site's answers either way
    for m in (without, with_):
        assert (m["lesion"][:2] < threshold).all() and (m["lesion"][2:] > threshold).all(), m


def test_site_phrases_option_is_checked():
    cfg = TrainConfig.from_request({"proposer_phrases": ["breast  lesion"], "proposer_anchor_weight": 0})
    assert cfg.proposer_config().phrases == ("breast lesion",) and cfg.proposer_config().anchor_weight == 0
    for bad, field in (({"proposer_phrases": "breast lesion"}, "proposer_phrases"),
                       ({"proposer_phrases": [""]}, "proposer_phrases"),
                       ({"proposer_phrases": ["a"] * 9}, "proposer_phrases"),
                       ({"proposer_anchor_weight": -1}, "proposer_anchor_weight")):
        with pytest.raises(ValueError, match=field):
            TrainConfig.from_request(bad)
