"""The small-N publishing rule: paired bootstrap of per-image gains, cross-validation folds, and the
sensitivity-first presence calibration on out-of-fold outcomes."""

from __future__ import annotations

import numpy as np
import pytest

from radvlsm.training.gate import folds, paired_bootstrap
from radvlsm.training.proposer import Outcome, calibrate, refused


def test_a_consistent_gain_passes_and_noise_does_not():
    rng = np.random.default_rng(0)
    before = rng.uniform(0.2, 0.6, 10)
    gain = paired_bootstrap(before, before + 0.1 + rng.normal(0, 0.02, 10))
    assert gain.passed and gain.lower > 0.05 and gain.gain == pytest.approx(0.1, abs=0.02)
    noise = paired_bootstrap(before, before + rng.normal(0, 0.2, 10))
    assert not noise.passed and noise.lower < 0 < noise.lower + 0.4
    worse = paired_bootstrap(before, before - 0.05)
    assert not worse.passed and worse.gain == pytest.approx(-0.05)


def test_two_images_never_give_confidence():
    """Even a large gain on fewer than three images is not evidence enough."""
    assert not paired_bootstrap(np.array([0.1, 0.2]), np.array([0.9, 0.9])).passed
    assert paired_bootstrap(np.zeros(3), np.full(3, 0.8)).passed
    assert not paired_bootstrap(np.array([]), np.array([])).passed


def test_bootstrap_refuses_unpaired_scores():
    with pytest.raises(ValueError):
        paired_bootstrap(np.zeros(3), np.zeros(4))


def test_folds_partition_the_images_evenly_whatever_their_order():
    ids = [f"img{i}" for i in range(10)]
    parts = folds(ids, 3)
    assert sorted(sum(parts, [])) == sorted(ids) and sorted(len(p) for p in parts) == [3, 3, 4]
    assert folds(list(reversed(ids)), 3) == parts
    assert len(folds(ids[:2], 3)) == 2  # never an empty fold


def test_calibration_is_sensitivity_first():
    """The highest threshold that still finds 95 % of the lesion images; lesion-free images do not move it."""
    lesions = [Outcome(m, 0.7) for m in np.linspace(0.3, 0.9, 20)]
    free = [Outcome(m, None) for m in (0.5, 0.6, 0.95)]
    t = calibrate(lesions + free, floor=0.1)
    found = np.mean([o.match >= t for o in lesions])
    assert found == pytest.approx(0.95) and t == pytest.approx(lesions[1].match)
    assert calibrate(lesions, floor=0.1) == t
    assert calibrate(lesions, floor=0.1, recall=1.0) == pytest.approx(0.3)
    # the floor holds (a wrong organ's phrase must still find nothing), and no lesion image: the floor
    assert calibrate([Outcome(0.02, 0.9), Outcome(0.05, 0.9)], floor=0.1) == 0.1
    assert calibrate(free, floor=0.2) == 0.2


def test_refused_share_counts_lesion_free_images_only():
    outs = [Outcome(0.9, 0.8), Outcome(0.2, None), Outcome(0.7, None)]
    assert refused(outs, 0.5) == 0.5 and refused(outs[:1], 0.5) is None
