"""The opt-in all-sites proposer (model/qformer_lite_allsites: BUS-BRA, Kvasir, DDTI and BUS-UCLM's training
patients) on real LiteMedSAM embeddings of a bundled BUS-BRA sample: it loads through the registry, carries its
sensitivity-first presence rule, finds the lesion with the organ phrase and nothing for another modality's."""

from __future__ import annotations

import numpy as np
import pytest

from radvlsm.geometry import mask_to_box
from radvlsm.io import load_image
from radvlsm.models import build_backbone
from radvlsm.predictor import SegmentPredictor
from radvlsm.proposals import build_proposer
from radvlsm.proposals.boxes import box_iou
from tests.conftest import ROOT, SAMPLES, reference

ALLSITES = ROOT / "model" / "qformer_lite_allsites" / "qformer_lite.pt"
SAMPLE = "bus_0075-r"


@pytest.fixture(scope="module")
def proposer(tmp_path_factory):
    predictor = SegmentPredictor(build_backbone("litemedsam"), disk_cache=str(tmp_path_factory.mktemp("emb")))
    return build_proposer("qformer_lite", predictor=predictor, checkpoint=str(ALLSITES))


def test_it_carries_a_sensitivity_first_presence_rule(proposer):
    assert proposer.presence_phrase == "lesion"
    assert 0.0 < proposer.mismatch_floor <= proposer.threshold < 0.8  # 0.8: the midpoint rule's bound


def test_organ_phrase_finds_the_lesion_and_another_modality_nothing(proposer):
    image = load_image(SAMPLES / "images" / f"{SAMPLE}.png")
    found = proposer.propose(image, "breast lesion")
    assert found.candidates
    best = np.array(found.candidates[0].box)[None]
    assert box_iou(best, np.array(mask_to_box(reference(SAMPLE)))[None])[0, 0] >= 0.5
    polyp = proposer.propose(image, "colon polyp")
    assert polyp.match_score < proposer.mismatch_floor and not polyp.candidates
