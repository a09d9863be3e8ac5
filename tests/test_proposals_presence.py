"""The presence decision of qformer_lite (the real cross-site checkpoint model/qformer_lite_xsite, real LiteMedSAM
embedding of a bundled BUS-BRA sample): an organ phrase that matches less than the class-agnostic phrase still
finds the lesion unless it is a clear mismatch (below the checkpoint's floor), and a phrase naming another
modality still finds nothing."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from radvlsm.geometry import mask_to_box
from radvlsm.io import load_image
from radvlsm.models import build_backbone
from radvlsm.predictor import SegmentPredictor
from radvlsm.proposals import build_proposer
from radvlsm.proposals.boxes import box_iou
from radvlsm.proposals.qformer_lite import Calibration
from tests.conftest import ROOT, SAMPLES, reference

SAMPLE = "bus_0075-r"
XSITE = ROOT / "model" / "qformer_lite_xsite" / "qformer_lite.pt"


@pytest.fixture(scope="module")
def proposer(tmp_path_factory):
    predictor = SegmentPredictor(build_backbone("litemedsam"), disk_cache=str(tmp_path_factory.mktemp("emb")))
    return build_proposer("qformer_lite", predictor=predictor, checkpoint=str(XSITE))


@pytest.fixture(scope="module")
def image():
    return load_image(SAMPLES / "images" / f"{SAMPLE}.png")


def with_rule(proposer, threshold: float, floor: float | None, site_phrases: tuple[str, ...] = ()):
    clone = proposer.with_model(proposer.model, Calibration(threshold, proposer.heat_threshold))
    clone.mismatch_floor, clone.presence_phrase = floor, "lesion"
    clone.site_phrases = frozenset(site_phrases)
    return clone


def test_cross_site_checkpoint_carries_the_presence_rule(proposer):
    assert proposer.presence_phrase == "lesion"
    assert 0.0 < proposer.mismatch_floor <= proposer.threshold


def test_default_checkpoint_without_the_rule_keeps_its_own_decision():
    default = build_proposer("qformer_lite", predictor=SegmentPredictor(build_backbone("litemedsam")))
    assert default.mismatch_floor is None


def test_presence_from_the_class_agnostic_phrase_keeps_the_lesion(proposer, image):
    enc = proposer.predictor.encode(image)
    generic = proposer.score(enc, "lesion")[0]
    organs = {p: proposer.score(enc, p)[0] for p in ("breast mass", "breast lesion", "the breast nodule",
                                                     "breast tumor", "a mass in the breast ultrasound")}
    below = {p: m for p, m in organs.items() if m < generic}
    assert below, f"no organ phrase matches below 'lesion' ({generic!r}): {organs}"
    phrase, organ = min(below.items(), key=lambda kv: kv[1])
    # a threshold the organ phrase misses and the generic one passes: the case a new site produces
    threshold = (organ + generic) / 2
    found = with_rule(proposer, threshold, floor=organ / 2).propose(image, phrase, encoded=enc)
    assert found.candidates and "presence from 'lesion'" in found.notes[0]
    best = np.array(found.candidates[0].box)[None]
    assert box_iou(best, np.array(mask_to_box(reference(SAMPLE)))[None])[0, 0] > 0.3
    # the same phrase below the floor is a mismatch: nothing, however well "lesion" matches
    refused = with_rule(proposer, threshold, floor=min(1.0, organ * 1.5 + 1e-6)).propose(image, phrase, encoded=enc)
    assert not refused.candidates and not refused.notes
    # without a floor (an older checkpoint) the phrase's own match decides alone: below the threshold, nothing
    plain = with_rule(proposer, threshold, floor=None).propose(image, phrase, encoded=enc)
    assert not plain.candidates


def test_another_modality_phrase_still_finds_nothing(proposer, image):
    res = proposer.propose(image, "colon polyp")
    assert res.match_score < proposer.mismatch_floor and not res.candidates


def test_a_site_phrase_takes_the_presence_of_lesion_below_the_floor(proposer, image):
    """A new site's own words match less everywhere (BUS-UCLM: "breast lesion" fell below the floor): a phrase the
    site names (``--conf site_phrases``) borrows the presence of "lesion" whatever its match, another phrase
    below the floor still finds nothing."""
    enc = proposer.predictor.encode(image)
    generic = proposer.score(enc, "lesion")[0]
    organs = {p: proposer.score(enc, p)[0] for p in ("breast mass", "breast lesion", "the breast nodule",
                                                     "breast tumor", "a mass in the breast ultrasound")}
    phrase, organ = min(organs.items(), key=lambda kv: kv[1])
    polyp = proposer.score(enc, "colon polyp")[0]
    assert max(organ, polyp) < generic, (organs, polyp, generic)
    threshold = (max(organ, polyp) + generic) / 2  # only "lesion" is present on its own
    floor = threshold  # both other phrases are below the floor: clear mismatches by the checkpoint's rule
    site = with_rule(proposer, threshold, floor, site_phrases=(phrase,))
    found = site.propose(image, f" {phrase.upper()} ", encoded=enc)  # the site's phrase as a user types it
    assert found.candidates and "a site phrase" in found.notes[0]
    best = np.array(found.candidates[0].box)[None]
    assert box_iou(best, np.array(mask_to_box(reference(SAMPLE)))[None])[0, 0] > 0.3
    assert not site.propose(image, "colon polyp", encoded=enc).candidates  # not a site phrase: below the floor
    # the same server without the site phrase refuses it
    assert not with_rule(proposer, threshold, floor).propose(image, phrase, encoded=enc).candidates


def test_the_stack_gives_the_site_phrases_to_the_text_proposer(tmp_path):
    from radvlsm.stack import Settings, Stack

    settings = Settings.from_conf({"site_phrases": "breast lesion; Breast Mass", "qformer_checkpoint": str(XSITE)})
    stack = Stack(replace(settings, warm_up=False, diagnose=False, disk_cache=str(tmp_path)))
    assert stack.text_proposer.site_phrases == {"breast lesion", "breast mass"}
