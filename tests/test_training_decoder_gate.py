"""The decoder's publishing gate at small N (radvlsm.training.decoder_gate): which method a run uses, and the
paired decision per image, with a volume's slices as one image."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from radvlsm.training import TrainConfig
from radvlsm.training.decoder_gate import MIN_HELD_BACK, decide, gate_method


def items(*groups: str) -> list:
    return [SimpleNamespace(group_id=g) for g in groups]


def test_auto_cross_validates_while_few_images_are_held_back():
    cfg = TrainConfig()
    assert cfg.decoder_gate == "auto" and MIN_HELD_BACK == 3
    assert gate_method(cfg, items("a", "b"), distributed=False) == "cv"
    assert gate_method(cfg, items("v", "v", "v", "w"), distributed=False) == "cv"  # 4 slices of 2 volumes
    assert gate_method(cfg, items("a", "b", "c"), distributed=False) == "holdout"
    assert gate_method(cfg, items("a"), distributed=True) == "holdout"  # the folds would train on one rank
    assert gate_method(TrainConfig(decoder_gate="cv"), items("a", "b", "c"), distributed=False) == "cv"
    assert gate_method(TrainConfig(decoder_gate="mean"), items(), distributed=False) == "mean"
    with pytest.raises(ValueError, match="decoder_gate"):
        gate_method(TrainConfig(decoder_gate="majority"), items("a"), distributed=False)


def test_a_consistent_gain_publishes_and_one_lucky_image_does_not():
    cfg = TrainConfig()
    five = items("a", "b", "c", "d", "e")
    ok, gate, rule = decide("cv", five, [0.80, 0.70, 0.85, 0.60, 0.75], [0.86, 0.78, 0.90, 0.67, 0.80], cfg)
    assert ok and gate["method"] == "cv" and gate["n"] == 5 and gate["lower"] > 0 and "out of fold" in rule
    mixed = decide("cv", five, [0.80, 0.70, 0.85, 0.60, 0.75], [0.95, 0.60, 0.80, 0.65, 0.70], cfg)
    assert not mixed[0] and mixed[1]["lower"] < 0
    one = decide("holdout", items("a"), [0.5], [0.9], cfg)  # the old rule would have published this
    assert not one[0] and "never pass" in one[2]
    assert decide("mean", items("a"), [0.5], [0.9], cfg)[0]  # the earlier rule, on request
    assert not decide("mean", items("a"), [0.9], [0.5], cfg)[0]
    assert not decide("mean", [], [], [], cfg)[0]  # nothing held back: NaN never passes
    # the tolerance lets a version that is not worse with confidence through
    flat = decide("cv", five, [0.8] * 5, [0.8, 0.81, 0.79, 0.8, 0.8], TrainConfig(tolerance=0.05))
    assert flat[0] and flat[1]["tolerance"] == 0.05


def test_a_volumes_slices_are_one_paired_image():
    """Ten slices of one volume improving are one observation, not ten: no confidence from one patient."""
    slices = items(*["vol"] * 10)
    ok, gate, _ = decide("cv", slices, [0.5] * 10, [0.9] * 10, TrainConfig())
    assert not ok and gate["n"] == 1


def test_bad_gate_option_names_the_field():
    with pytest.raises(ValueError, match="decoder_gate: must be one of auto, cv, holdout, mean"):
        TrainConfig.from_request({"decoder_gate": "bootstrap"})
    with pytest.raises(ValueError, match="decoder_gate: must be a string"):
        TrainConfig.from_request({"decoder_gate": 3})
    assert TrainConfig.from_request({"decoder_gate": "cv", "decoder_folds": 4}).decoder_folds == 4
