"""VESSA stage 1 in the text path (``radvlsm.proposals.site_exemplars``) with the real LiteMedSAM backbone and
template bank on bundled BUS-BRA samples.

The text proposer here stands for the cross-site failure the module exists for: it answers "present" but puts its
box and relevance in the image's top-left corner, where no sample has its lesion (and "absent" when asked to).
Everything else (encoder, bank, aggregation, decoder) is the served code."""

from __future__ import annotations

import numpy as np
import pytest

from radvlsm.geometry import mask_to_box
from radvlsm.io import load_image
from radvlsm.models import build_backbone
from radvlsm.pipeline import PipelineOptions, RadVLSMPipeline
from radvlsm.predictor import SegmentPredictor
from radvlsm.proposals import build_proposer
from radvlsm.proposals.base import Candidate, Proposal
from radvlsm.proposals.boxes import box_iou
from radvlsm.proposals.site_exemplars import ExemplarAssistedProposer, SiteExemplars
from tests.conftest import SAMPLES, dice, reference

# the exemplars and queries of tests/test_proposals_template.py (not chosen here)
EXEMPLARS = ["bus_0130-l", "bus_0133-r", "bus_0164-l", "bus_0017-s"]
QUERIES = ["bus_0083-r", "bus_0263-l"]


def top1_iou(proposal: Proposal, mask: np.ndarray) -> float:
    """IoU of the first candidate box with the lesion's box; 0 when nothing is proposed."""
    if not proposal.candidates:
        return 0.0
    return float(box_iou(np.array(proposal.candidates[0].box), np.array(mask_to_box(mask)))[0, 0])


class CornerProposer:
    """A text proposer that looks in the wrong place (top-left eighth of the image), or finds nothing."""

    name = "corner"
    refine_by_default = False
    version = "shipped"

    def __init__(self):
        self.present = True
        self.recalibrated: dict[str, str] = {}  # version -> the version whose weights it serves

    def weights_of(self, version: str) -> str:
        return self.recalibrated.get(version, version)

    def locate(self, image, text, top_k=3, encoded=None) -> Proposal:
        """Where it looks whatever its presence decision: the corner."""
        present, self.present = self.present, True
        try:
            return self.propose(image, text, top_k, encoded)
        finally:
            self.present = present

    def propose(self, image, text, top_k=3, encoded=None) -> Proposal:
        rows, cols = image.shape
        heat = np.zeros(image.shape, np.float32)
        heat[: rows // 8, : cols // 8] = 1.0
        if not self.present:
            return Proposal([], 0.01, heat, self.name, version=self.version)
        box = [0.0, 0.0, cols / 8 - 1, rows / 8 - 1]
        return Proposal([Candidate(box, 0.9, self.name)], 0.9, heat, self.name, version=self.version)


@pytest.fixture(scope="module")
def predictor() -> SegmentPredictor:
    return SegmentPredictor(build_backbone("litemedsam"))


@pytest.fixture(scope="module")
def images():
    return {i: load_image(SAMPLES / "images" / f"{i}.png") for i in EXEMPLARS + QUERIES}


def learned(predictor, images) -> ExemplarAssistedProposer:
    """The corner-looking text proposer assisted by a site that learned the 4 exemplars (each scored)."""
    site = SiteExemplars(build_proposer("template", predictor=predictor, max_exemplars=20), min_scored=3)
    proposer = ExemplarAssistedProposer(CornerProposer(), site, "breast lesion")
    for i in EXEMPLARS:
        assert proposer.learn(i, images[i], reference(i))
    return proposer


@pytest.fixture(scope="module")
def learned_site(predictor, images) -> SiteExemplars:
    """Learned once for the tests that do not learn more (scoring 4 labels is ~15 s of decodes on this CPU)."""
    return learned(predictor, images).site


@pytest.fixture()
def assisted(learned_site) -> ExemplarAssistedProposer:
    """A fresh text proposer (its version, presence and recalibrations are the test's) over the learned site."""
    return ExemplarAssistedProposer(CornerProposer(), learned_site, "breast lesion")


def test_the_bank_is_scored_leave_one_out_and_the_text_proposer_as_served(predictor, images):
    site = SiteExemplars(build_proposer("template", predictor=predictor, max_exemplars=20), min_scored=3)
    text = CornerProposer()
    for n, i in enumerate(EXEMPLARS[:2]):
        assert site.learn(i, images[i], reference(i), text, "lesion")
        assert len(site.bank) == n + 1
    assert site.reliability() is None  # 2 scored, 3 needed
    for i in EXEMPLARS[2:]:
        assert site.learn(i, images[i], reference(i), text, "lesion")
    assert not site.learn(EXEMPLARS[2], images[EXEMPLARS[2]], reference(EXEMPLARS[2]), text)  # same label again
    rel = site.reliability()
    assert rel is not None and rel.scored == 4
    assert rel.text < 0.05 < rel.bank and not rel.text_leads  # the corner never overlaps a lesion; the bank does
    # each label's bank score is the fused mask of the bank as it is now without that label's exemplar: the same
    # as a fresh bank of the other three exemplars (so the first label's score grew with the bank)
    for n, i in enumerate(EXEMPLARS):
        others = build_proposer("template", predictor=predictor, max_exemplars=20)
        for j in EXEMPLARS:
            if j != i:
                others.add_exemplar(j, images[j], reference(j))
        enc = predictor.encode(images[i])
        expected = site.fused_dice(others.propose(images[i], "lesion", encoded=enc), enc, reference(i),
                                   text.propose(images[i], "lesion").heatmap)
        assert site._scores[n].bank_dice == pytest.approx(expected, abs=1e-6), i
    assert np.mean([site._scores[n].bank_dice for n in range(4)]) == pytest.approx(rel.bank)
    # a label emptied by the clinician leaves the bank and the record
    assert site.learn(EXEMPLARS[0], images[EXEMPLARS[0]], np.zeros(images[EXEMPLARS[0]].shape, bool), text)
    assert EXEMPLARS[0] not in site.bank.ids and site.reliability().scored == 3
    with pytest.raises(ValueError, match="does not match"):
        site.learn("x", images[EXEMPLARS[1]], np.zeros((3, 3), bool), text)


def test_full_bank_makes_room_for_the_newest_label(predictor, images):
    site = SiteExemplars(build_proposer("template", predictor=predictor, max_exemplars=2))
    for i in EXEMPLARS[:3]:
        site.learn(i, images[i], reference(i))
    assert site.bank.ids == EXEMPLARS[1:3]


def test_without_a_record_the_text_proposer_answers_alone(predictor, images):
    site = SiteExemplars(build_proposer("template", predictor=predictor, max_exemplars=20), min_scored=3)
    text = CornerProposer()
    proposer = ExemplarAssistedProposer(text, site)
    site.learn(EXEMPLARS[0], images[EXEMPLARS[0]], reference(EXEMPLARS[0]), text)
    p = proposer.propose(images[QUERIES[0]], "lesion")
    assert p.backend == "corner" and len(p.candidates) == 1


def test_exemplars_find_the_lesion_the_text_proposer_misses(assisted, images):
    rel = assisted.reliability()
    assert rel.bank > rel.text
    hits = 0
    for q in QUERIES:
        p = assisted.propose(images[q], "breast lesion", top_k=3)
        text = assisted.text.propose(images[q], "breast lesion")
        assert p.backend == "corner+template" and p.candidates
        assert all(c.backend == "template" and c.extra["source"] == "site_exemplars" for c in p.candidates)
        assert any("the exemplars placed the candidates; fused-mask Dice on the last 4 labels" in n for n in p.notes)
        assert np.array_equal(p.heatmap, text.heatmap)  # the text relevance stays the consistency term
        hits += top1_iou(p, reference(q)) >= 0.5
    assert hits >= 1


def test_the_more_reliable_text_proposer_answers_alone(predictor, images):
    """In domain the text proposer finds the lesions better than the bank: the bank changes nothing."""

    class Truth(CornerProposer):
        def propose(self, image, text, top_k=3, encoded=None) -> Proposal:
            box = [float(v) for v in mask_to_box(self.mask)]
            return Proposal([Candidate(box, 0.9, "truth")], 0.9, None, "truth", version=self.version)

        locate = propose

    text = Truth()
    site = SiteExemplars(build_proposer("template", predictor=predictor, max_exemplars=20), min_scored=3)
    proposer = ExemplarAssistedProposer(text, site)
    for i in EXEMPLARS:
        text.mask = reference(i)
        proposer.learn(i, images[i], reference(i))
    rel = proposer.reliability()
    assert rel.text > 0.8 and rel.bank < rel.text and rel.lower > 0 and rel.text_leads
    text.mask = reference(QUERIES[0])
    p = proposer.propose(images[QUERIES[0]], "lesion")
    assert p.backend == "truth" and [c.backend for c in p.candidates] == ["truth"]


def test_the_record_scores_where_the_text_proposer_looks_not_its_presence(predictor, images):
    """A text proposer that answers "no lesion" is scored by where it would look (``locate``): presence is not what
    the record arbitrates."""
    class Blind(CornerProposer):
        def locate(self, image, text, top_k=3, encoded=None) -> Proposal:
            box = [float(v) for v in mask_to_box(self.mask)]
            return Proposal([Candidate(box, 0.9, "blind")], 0.9, None, "blind")

    site = SiteExemplars(build_proposer("template", predictor=predictor, max_exemplars=20), min_scored=3)
    text = Blind()
    text.present = False
    for i in EXEMPLARS:
        text.mask = reference(i)
        site.learn(i, images[i], reference(i), text)
    assert site.reliability().text > 0.8  # the lesion's own box; "no lesion" would score 0


def test_a_new_text_version_restarts_the_record(predictor, images):
    """Scores of the version before a fine-tune do not weigh the new one (the bank's record would be stale)."""
    assisted = learned(predictor, images)  # its own site: this test learns more labels
    assert assisted.site.reliability("shipped") is not None
    assisted.text.version = "v0001"
    p = assisted.propose(images[QUERIES[0]], "breast lesion")
    assert p.backend == "corner" and p.version == "v0001"  # the text proposer alone until 3 labels are scored
    for i in QUERIES:  # labels saved after the publish are scored against v0001
        assisted.learn(i, images[i], reference(i))
    assert assisted.site.reliability("v0001") is None  # 2 of 3
    assert assisted.site.reliability("shipped").scored == 4


def test_a_threshold_only_version_keeps_the_record_of_its_weights(assisted, images):
    """A version that only recalibrated the presence threshold serves the same weights: the record, which scores
    where the proposer looks, still holds."""
    assisted.text.version = "v0001"
    assisted.text.recalibrated["v0001"] = "shipped"
    assert assisted.reliability() == assisted.site.reliability("shipped") is not None
    p = assisted.propose(images[QUERIES[0]], "breast lesion")
    assert p.backend == "corner+template" and p.version == "v0001"


def test_presence_stays_the_text_proposers_decision(assisted, images):
    assisted.text.present = False
    p = assisted.propose(images[QUERIES[0]], "breast lesion")
    assert p.candidates == [] and p.backend == "corner"


def test_pipeline_mask_improves_with_the_sites_exemplars(assisted, predictor, images):
    alone = RadVLSMPipeline(predictor, assisted.text)
    helped = RadVLSMPipeline(predictor, assisted)
    opts = PipelineOptions(text="breast lesion", diagnose=False)
    d_alone = [dice(alone.run(images[q], opts).label > 0, reference(q)) for q in QUERIES]
    res = [helped.run(images[q], opts) for q in QUERIES]
    d_helped = [dice(r.label > 0, reference(q)) for r, q in zip(res, QUERIES, strict=True)]
    assert max(d_alone) < 0.05 and np.mean(d_helped) > np.mean(d_alone) + 0.3, (d_alone, d_helped)
    assert res[0].result["prompt_source"] == "corner+template"


def test_at_a_site_the_text_proposer_does_not_know_it_must_be_better_with_confidence(assisted, images,
                                                                                     monkeypatch):
    """BUS-UCLM after 25 random corrections: text 0.58, bank 0.49 on the last 10 labels, lower bound -0.02, the
    cross-site proposer's median presence on them 0.90 (not saturated); the bank's candidates gave +10 points on the
    held-back patients."""
    from radvlsm.proposals.site_exemplars import Reliability, text_places

    assert not text_places(0.904, -0.016, -0.229)  # the replayed state's record (bench_exemplar_rules.py)
    assert not text_places(0.594, -0.12, -0.065)  # the uncertainty curve's, after 25
    record = Reliability(text=0.58, bank=0.49, scored=10, lower=-0.02, match=0.90, bank_lower=-0.15)
    assert not record.text_leads
    monkeypatch.setattr(assisted.site, "reliability", lambda version=None: record)
    p = assisted.propose(images[QUERIES[0]], "breast lesion")
    assert p.backend == "corner+template" and all(c.extra["source"] == "site_exemplars" for c in p.candidates)
    assert "text 0.58, exemplars 0.49 (text gain 90 % lower bound -0.02" in p.notes[-1]
    assert "does not know this site (median presence 0.90" in p.notes[-1]


def test_at_a_site_the_text_proposer_knows_the_bank_must_be_better_with_confidence():
    """BUS-BRA fold 5 (in domain, presence ~1.0 on its lesions): draws of 5 labels where the text proposer led on
    average (0.58 vs 0.34, 0.72 vs 0.65) but not with confidence lost 11-24 points when the bank placed."""
    from radvlsm.proposals.site_exemplars import text_places

    assert text_places(1.0, -0.04, -0.3)  # text leads on average, not with confidence: it keeps the candidates
    assert text_places(1.0, -0.2, -0.01)  # the bank leads on average, not with confidence: still the text proposer
    assert not text_places(1.0, -0.4, 0.05)  # the bank better with confidence overturns the prior
    assert text_places(0.2, 0.01, -0.5)  # and the text proposer better with confidence overturns the other prior


def test_the_record_reads_whether_the_text_proposer_knows_the_site(learned_site):
    """The corner proposer answers "present" with 0.9 on every label: not the saturated presence of a proposer
    that knows the site (BUS-UCLM's labels gave medians 0.59-0.91), and the bank is better with confidence on the
    4 labels (the corner never overlaps a lesion): the bank places the candidates."""
    rel = learned_site.reliability()
    assert rel.match == pytest.approx(0.9) and rel.bank_lower > 0 and not rel.text_leads
    assert rel.to_json()["match"] == 0.9


def test_the_sites_exemplars_help_by_default_and_a_bad_switch_is_refused_by_name():
    """On by default (measured neutral in domain, +5-10 points at BUS-UCLM); ``false`` turns them off; a value that
    is neither is an error naming the key, never silently off."""
    from radvlsm.stack import Settings

    assert Settings.from_conf({}).site_exemplars and Settings.from_conf({"site_exemplars": "TRUE"}).site_exemplars
    assert not Settings.from_conf({"site_exemplars": "false"}).site_exemplars
    with pytest.raises(ValueError, match="--conf site_exemplars: expected true or false, got 'yes'"):
        Settings.from_conf({"site_exemplars": "yes"})
