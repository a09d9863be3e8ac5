"""The decoder trainer on real LiteMedSAM embeddings of the bundled samples: loss, gate, atomic publishing,
interrupted runs, live pickup by a predictor, active-learning scores, and the 2-process gloo run."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from PIL import Image

from radvlsm.io import load_image
from radvlsm.models import build_backbone
from radvlsm.predictor import SegmentPredictor
from radvlsm.training import SHIPPED, DecoderStore, DecoderWatcher, TrainConfig, TrainingBusy, TrainSample, fine_tune
from radvlsm.training.data import prepare, split
from radvlsm.training.loop import build_model, evaluate, train
from radvlsm.training.store import decoder_state
from radvlsm.training.uncertainty import pick_uncertain, uncertainty_from_result
from tests.conftest import SAMPLES, tight_box

IDS = ["bus_0017-s", "bus_0075-r", "bus_0083-r", "bus_0130-l"]  # bus_0017-s is the held-back one


def sample(i: str, mask_path=None) -> TrainSample:
    return TrainSample(i, SAMPLES / "images" / f"{i}.png", mask_path or SAMPLES / "reference" / f"{i}.png")


def wrong_corrections(folder) -> list[TrainSample]:
    """IDS[0] (the held-back one) with its reference mask; the others 'corrected' to a 40 px corner square."""
    samples = [sample(IDS[0])]
    for i in IDS[1:]:
        mask = np.zeros(load_image(SAMPLES / "images" / f"{i}.png").shape, np.uint8)
        mask[:40, :40] = 255
        Image.fromarray(mask).save(folder / f"{i}.png")
        samples.append(sample(i, folder / f"{i}.png"))
    return samples


@pytest.fixture(scope="module")
def predictor(tmp_path_factory) -> SegmentPredictor:
    """LiteMedSAM with a disk cache shared by this module's runs (and the 2-process run)."""
    return SegmentPredictor(build_backbone("litemedsam"), disk_cache=str(tmp_path_factory.mktemp("emb")))


@pytest.fixture
def fresh(predictor):
    """The predictor with its shipped decoder back (tests below change it through watchers)."""
    state = decoder_state(predictor.backbone)
    yield predictor
    predictor.decoder_watcher = None
    predictor.backbone.load_state_dict(state, strict=False)


def test_split_rule_is_stable_and_holds_back_at_least_one():
    ids = [f"img_{i:03d}" for i in range(200)]
    train_ids, val_ids = split(ids)
    assert 0.1 < len(val_ids) / len(ids) < 0.3 and not set(train_ids) & set(val_ids)
    assert split(ids[::-1]) == (train_ids, val_ids)
    more_train, more_val = split(ids + [f"new_{i}" for i in range(50)])
    assert set(val_ids) <= set(more_val)  # an image never moves out of validation as labels accumulate
    assert split(IDS) == (IDS[1:], IDS[:1])
    assert len(split(["a", "b"])[1]) == 1
    with pytest.raises(ValueError, match="at least 2"):
        split(["only"])


@pytest.mark.parametrize("bad", [{"epochs": -1}, {"epochs": "3"}, {"lr": "fast"}, {"clicks": 1},
                                 {"batch_size": 0}, {"tolerance": float("nan")}])
def test_request_options_are_checked(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        TrainConfig.from_request(bad)


def test_request_options_switch_parts(predictor):
    cfg = TrainConfig.from_request({"epochs": 1, "train_prompt_encoder": False, "model": "radvlsm", "gpus": "all"})
    model = build_model(predictor.backbone, None, cfg)
    assert cfg.epochs == 1
    assert not any(p.requires_grad for p in model.prompt_encoder.parameters())
    assert all(p.requires_grad for p in model.mask_decoder.parameters())


def test_loss_falls_on_a_few_samples(predictor):
    items = prepare([sample(i) for i in IDS], predictor)
    cfg = TrainConfig(epochs=4, lr=1e-4, box_jitter=0.0, clicks=False, batch_size=4)
    model = build_model(predictor.backbone, None, cfg)
    before = np.mean(evaluate(model, items, 256))
    losses = [e.loss for e in train(model, items, 256, cfg).logs]
    assert losses[-1] < losses[0] * 0.9, losses
    assert np.mean(evaluate(model, items, 256)) > before  # fitted the training images better
    # the served modules were never trained in place
    assert all(torch.equal(v, predictor.backbone.mask_decoder.state_dict()[k[len("mask_decoder."):]])
               for k, v in decoder_state(predictor.backbone).items() if k.startswith("mask_decoder."))


def test_click_simulation_runs_and_trains(predictor):
    items = prepare([sample(i) for i in IDS[1:3]], predictor)
    cfg = TrainConfig(epochs=1, clicks=True, batch_size=2)
    logs = train(build_model(predictor.backbone, None, cfg), items, 256, cfg).logs
    assert len(logs) == 1 and np.isfinite(logs[0].loss)


def test_publish_is_atomic_versioned_and_restorable(tmp_path, predictor, monkeypatch):
    store = DecoderStore(tmp_path / "sam_decoder")
    assert store.current() == SHIPPED and store.versions() == []
    state = decoder_state(predictor.backbone)
    v1 = store.publish(state, "litemedsam", predictor.backbone.version, {"note": 1})
    v2 = store.publish(state, "litemedsam", predictor.backbone.version, {"note": 2})
    assert (v1, v2) == ("v0001", "v0002") and store.current() == "v0002"
    assert store.metadata("v0001")["note"] == 1
    store.restore("v0001")
    assert store.current() == "v0001"
    store.restore(SHIPPED)
    assert store.current() == SHIPPED
    with pytest.raises(ValueError, match="no decoder version"):
        store.restore("v0042")

    def broken_save(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError):
        store.publish(state, "litemedsam", predictor.backbone.version, {})
    assert store.current() == SHIPPED and store.versions() == ["v0001", "v0002"]
    assert not [p for p in store.root.iterdir() if p.name.endswith(".partial")]


def test_gate_refuses_a_worse_model(tmp_path, fresh):
    """Wrong 'corrections' (a corner square instead of the lesion) at a high learning rate: the validation
    image's Dice falls, so nothing is published and the shipped decoder stays served."""
    samples = wrong_corrections(tmp_path)
    store = DecoderStore(tmp_path / "store")
    res = fine_tune(fresh, samples, store, TrainConfig(epochs=2, lr=1e-3, batch_size=3, clicks=False))
    assert not res.published and res.dice_after < res.dice_before
    assert store.current() == SHIPPED and store.versions() == []
    assert store.read_stats()["status"] == "done" and store.read_stats()["published"] is False


def test_interrupted_run_leaves_the_served_model(tmp_path, fresh):
    store = DecoderStore(tmp_path / "store")
    served = store.publish(decoder_state(fresh.backbone), "litemedsam", fresh.backbone.version, {})
    with pytest.raises(KeyboardInterrupt):
        fine_tune(fresh, [sample(i) for i in IDS], store, TrainConfig(epochs=2), should_stop=lambda: True)
    assert store.current() == served and store.versions() == [served]
    assert store.read_stats()["status"] == "stopped"


def test_second_concurrent_run_is_refused(tmp_path, fresh):
    store = DecoderStore(tmp_path / "store")
    with store.training_lock(), pytest.raises(TrainingBusy, match="in progress"):
        fine_tune(fresh, [sample(i) for i in IDS], store, TrainConfig(epochs=1))


def test_published_decoder_is_picked_up_live_and_restorable(tmp_path, fresh):
    """A predictor serving from a store uses a newly published decoder on its next decode, without restart."""
    store = DecoderStore(tmp_path / "store")
    fresh.decoder_watcher = DecoderWatcher(store, fresh.backbone, fresh.lock)
    image = load_image(SAMPLES / "images" / "bus_0075-r.png")
    enc = fresh.encode(image)
    box = np.array(tight_box("bus_0075-r"))
    shipped_logits, _ = fresh.decode_logits(enc, box)
    assert fresh.decoder_version == SHIPPED
    res = fine_tune(fresh, [sample(i) for i in IDS], store, TrainConfig(epochs=1, lr=1e-4, tolerance=1.0))
    assert res.published and store.current() == res.version
    new_logits, _ = fresh.decode_logits(enc, box)
    assert fresh.decoder_version == res.version
    assert not torch.allclose(new_logits, shipped_logits)
    ckpt = store.load(res.version)
    assert ckpt["backbone_version"] == fresh.backbone.version
    store.restore(SHIPPED)
    back, _ = fresh.decode_logits(enc, box)
    assert fresh.decoder_version == SHIPPED and torch.equal(back, shipped_logits)


def test_checkpoint_of_another_backbone_is_not_loaded(tmp_path, fresh):
    store = DecoderStore(tmp_path / "store")
    state = {k: v + 1 for k, v in decoder_state(fresh.backbone).items()}
    store.publish(state, "litemedsam", "some-other-encoder", {})
    watcher = DecoderWatcher(store, fresh.backbone, fresh.lock)
    assert watcher.refresh() == SHIPPED
    assert torch.equal(decoder_state(fresh.backbone)["mask_decoder.iou_token.weight"],
                       watcher.shipped["mask_decoder.iou_token.weight"])


def test_uncertainty_score_and_ranking():
    sure = uncertainty_from_result({"match_score": 0.9, "lesions": [
        {"agreement": 0.95, "prompts": [{"predicted_iou": 0.9}, {"predicted_iou": 0.8}]}]})
    unsure = uncertainty_from_result({"match_score": 0.5, "lesions": [
        {"agreement": 0.6, "prompts": [{"predicted_iou": 0.7}]}]})
    nothing = uncertainty_from_result({"match_score": 0.1, "lesions": []})
    assert sure.score == pytest.approx((0.1 + 0.05 + 0.1) / 3)
    assert sure.score < unsure.score < nothing.score == 1.0
    scores = {"a": 0.2, "b": 0.7, "c": None, "d": 0.7}
    assert pick_uncertain(list(scores), scores.get) == ("b", 0.7)
    assert pick_uncertain(["z", "y"], lambda i: None) == ("y", None)


def test_stored_scores_go_stale_when_the_decoder_or_the_proposer_changes():
    from radvlsm.training.uncertainty import SCORE_KEY, Uncertainty, needs_scoring

    info = {SCORE_KEY: Uncertainty(0.4, 0.9, 0.8, 0.95).to_info("v0002", 0.0, "v0001")}
    assert not needs_scoring(info, "v0002", "v0001")
    assert needs_scoring(info, "v0003", "v0001") and needs_scoring(info, "v0002", "v0002")
    assert needs_scoring({}, "shipped")
    old = {SCORE_KEY: {"score": 0.3, "decoder_version": "shipped"}}  # stored before proposer versions existed
    assert not needs_scoring(old, "shipped") and needs_scoring(old, "shipped", "v0001")


def test_two_process_gloo_run_lowers_the_loss_and_publishes_once(tmp_path, predictor):
    from radvlsm.training.distributed import launch

    store = DecoderStore(tmp_path / "store")
    cfg = TrainConfig(epochs=3, lr=1e-4, box_jitter=0.0, clicks=False, batch_size=2, tolerance=1.0,
                      decoder_gate="mean")  # one held-back image: the publishing mechanics, not the gate
    res = launch(predictor, [sample(i) for i in IDS], store, cfg, world_size=2, backend="gloo")
    losses = [e["loss"] for e in res["epochs"]]
    assert losses[-1] < losses[0], losses
    assert res["published"] and store.versions() == ["v0001"] and store.current() == "v0001"
    assert json.loads((store.root / "v0001.json").read_text())["train_images"] == 3
    assert copy.deepcopy(res["train_ids"]) == IDS[1:]


def test_restore_command(tmp_path, predictor, capsys):
    from radvlsm.training.__main__ import main

    store = DecoderStore(tmp_path / "store")
    store.publish(decoder_state(predictor.backbone), "litemedsam", predictor.backbone.version, {"dice_after": 0.9})
    assert main(["restore", str(store.root), SHIPPED]) == 0 and store.current() == SHIPPED
    assert main(["list", str(store.root)]) == 0 and "v0001" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        main(["restore", str(store.root), "v0009"])
    assert exc.value.code == 2 and store.current() == SHIPPED


def test_small_n_run_is_cross_validated_and_trains_on_every_image(tmp_path, fresh):
    """Four corrections hold one image back: the default gate scores all four out of fold (three copies trained
    without their fold) and the published decoder learns from all four."""
    store = DecoderStore(tmp_path / "store")
    res = fine_tune(fresh, [sample(i) for i in IDS], store, TrainConfig(epochs=1, lr=1e-4, tolerance=1.0))
    assert res.gate["method"] == "cv" and res.gate["n"] == 4 and res.val_ids == IDS[:1]
    assert 0.5 < res.dice_before <= 1 and 0.5 < res.dice_after <= 1 and "out of fold (3 folds)" in res.reason
    assert res.published and json.loads((store.root / f"{res.version}.json").read_text())["train_images"] == 4
    assert json.loads((store.root / f"{res.version}.json").read_text())["gate"]["method"] == "cv"
    # the held-back split alone has one image: no confidence, nothing published
    held = fine_tune(fresh, [sample(i) for i in IDS], DecoderStore(tmp_path / "held"),
                     TrainConfig(epochs=1, lr=1e-4, decoder_gate="holdout"))
    assert not held.published and held.gate["n"] == 1 and "never pass" in held.reason
