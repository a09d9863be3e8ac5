"""VESSA stage 1 in the text path: a site's own labelled exemplars help the text proposer find its lesions.

Why: at a site the shipped proposer never saw, the text path looks in the wrong place; the segmenter given a box
is fine (the cross-site benchmark). The exemplar bank (:mod:`radvlsm.proposals.template`) needs no training: on
BUS-UCLM held-back patients, 10 of the site's labelled lesions as exemplars gave text-free Dice 0.42 where the
cross-site text proposer gave 0.21-0.26 (``benchmarks/bench_site_exemplars.py``). But the bank cannot say
whether a lesion is there at all (every exemplar holds one: it proposed on every lesion-free image), and how much
each source is worth differs from site to site (in domain, putting the bank first cost 14.5 Dice points) and
changes as the text proposer learns the site. So:

* **presence** stays the text proposer's decision (its threshold, calibrated at the site by training);
* where it says present, **the more reliable source at this site places the candidates**: the bank's candidates
  replace the text proposer's only when the bank's record is better; the text proposer's relevance map stays the
  aggregation's consistency term. Why not a pooled, reliability-scaled list (the rule before): candidate scores of
  the two sources are on different scales, and at BUS-UCLM after 25 corrections (record: bank 0.37, text 0.29
  top-1 IoU) pooling gave text Dice 0.30 where the text proposer alone gave 0.33 and the bank's candidates alone
  0.39 (0.36 with the bank's map as the consistency term); in domain the record favours the text proposer
  (0.83 vs 0.49), so nothing changes there;
* a source's reliability is measured **prequentially** on the site's labels: when a final label is learned, before
  it joins the bank, both sources propose on its image and the top-1 box IoU with its lesion is recorded (the
  bank without that exemplar, the text proposer as served at that time: both are scored on what they had not
  seen). The text proposer is scored where it **looks** (``locate``: its presence decision off), since presence is
  not what the record arbitrates. The mean over the last ``window`` learned labels is the reliability; until
  ``min_scored`` labels are scored the text proposer answers alone. Only scores of the text proposer's **served
  weights** count: after a fine-tune is published the record starts again (rescoring the old labels would score
  the new version on its own training labels); a version that only recalibrated the presence threshold serves the
  same weights and keeps the record (``weights_of``).

Measured: README, *A new site* (``benchmarks/bench_site_adaptation.py --exemplars --site-phrase``,
``benchmarks/bench_exemplar_rules.py``). Known gap: after 25 ``random`` corrections at BUS-UCLM the record chose
the text proposer (0.48 vs 0.37) while the bank's candidates gave 0.39 text Dice on the held-back patients against
its 0.28. The server runs it only with ``--conf site_exemplars true``.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections import deque
from dataclasses import dataclass

import numpy as np

from radvlsm.geometry import mask_to_box
from radvlsm.io import Image2D
from radvlsm.predictor import Encoded
from radvlsm.proposals.base import DEFAULT_TOP_K, BoxProposer, Candidate, Proposal
from radvlsm.proposals.boxes import box_iou
from radvlsm.proposals.phrases import DEFAULT_PHRASE
from radvlsm.proposals.template import TemplateProposer

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Reliability:
    """How well each source found the lesions of the site's last learned labels (mean top-1 box IoU)."""

    text: float
    bank: float
    scored: int

    def to_json(self) -> dict[str, float | int]:
        return {"text": round(self.text, 4), "bank": round(self.bank, 4), "scored": self.scored}


def top1_iou(proposal: Proposal, mask: np.ndarray) -> float:
    """IoU of the first candidate box with the labelled lesion's box; 0 when nothing is proposed."""
    if not proposal.candidates:
        return 0.0
    return float(box_iou(np.array(proposal.candidates[0].box), np.array(mask_to_box(mask)))[0, 0])


class SiteExemplars:
    """The site's exemplar bank and the record of how each source did on its labels (thread-safe, in memory:
    the server rebuilds both from the datastore's final labels at start-up)."""

    def __init__(self, bank: TemplateProposer, window: int = 10, min_scored: int = 3):
        if window < 1 or min_scored < 1:
            raise ValueError("window and min_scored must be >= 1")
        self.bank = bank
        self.min_scored = min_scored
        self._scores: deque[tuple[str, float, float]] = deque(maxlen=window)  # text version, text IoU, bank IoU
        self._learned: dict[str, str] = {}  # case id -> digest of the mask it was learned with
        self._lock = threading.Lock()

    def learn(self, case_id: str, image: Image2D, mask: np.ndarray, text: BoxProposer | None = None,
              phrase: str = DEFAULT_PHRASE) -> bool:
        """Score both sources on this label (when ``text`` is given and the bank holds exemplars), then add it to
        the bank. A label already learned with the same mask is a no-op (several tasks hear of each save); a
        lesion-free label teaches the bank nothing. Returns whether the bank changed."""
        mask = np.asarray(mask) > 0
        if mask.shape != image.shape:
            raise ValueError(f"mask {mask.shape} does not match image {image.shape}")
        digest = hashlib.sha1(np.packbits(mask).tobytes() + str(mask.shape).encode()).hexdigest()
        with self._lock:  # learning is rare (a label save) and must not interleave with itself
            if self._learned.get(case_id) == digest:
                return False
            self._learned[case_id] = digest
            if not mask.any():
                if case_id in self.bank.ids:
                    self.bank.remove_exemplar(case_id)  # the clinician emptied the label
                    return True
                return False
            if text is not None:
                if case_id in self.bank.ids:
                    self.bank.remove_exemplar(case_id)  # re-learning a corrected label: score without it
                if len(self.bank):
                    enc = self.bank.predictor.encode(image)
                    bank_iou = top1_iou(self.bank.propose(image, phrase, top_k=1, encoded=enc), mask)
                    # where the text proposer looks, whatever its presence decision (that one is not arbitrated)
                    locate = getattr(text, "locate", text.propose)
                    proposal = locate(image, phrase, top_k=1, encoded=enc)
                    self._scores.append((weights_of(text, proposal.version), top1_iou(proposal, mask), bank_iou))
            if len(self.bank) >= self.bank.max_exemplars and case_id not in self.bank.ids:
                oldest = self.bank.ids[0]  # derived data: the label itself stays in the datastore
                logger.info(f"site exemplars: the bank is full ({self.bank.max_exemplars}); {oldest} makes room")
                self.bank.remove_exemplar(oldest)
            self.bank.add_exemplar(case_id, image, mask)
            return True

    def reliability(self, version: str | None = None) -> Reliability | None:
        """The sources' mean top-1 IoU over the last ``window`` scored labels whose text proposer was ``version``
        (None: all); None until ``min_scored`` of them."""
        with self._lock:
            scores = [(t, b) for v, t, b in self._scores if version is None or v == version]
        if len(scores) < self.min_scored or not len(self.bank):
            return None
        text, bank = np.mean(scores, axis=0)
        return Reliability(float(text), float(bank), len(scores))


class ExemplarAssistedProposer:
    """A text proposer helped by the site's exemplars (see the module docstring); with no reliability record yet
    it is the text proposer itself."""

    def __init__(self, text: BoxProposer, site: SiteExemplars, phrase: str = DEFAULT_PHRASE):
        self.text = text
        self.site = site
        self.phrase = phrase

    @property
    def name(self) -> str:
        return self.text.name

    @property
    def refine_by_default(self) -> bool:
        return self.text.refine_by_default

    @property
    def version(self) -> str:
        """The text proposer's served version (the bank has none: it changes with every saved label)."""
        return getattr(self.text, "version", "shipped")

    def learn(self, case_id: str, image: Image2D, mask: np.ndarray) -> bool:
        """A final label of the site: scored against both sources, then an exemplar."""
        return self.site.learn(case_id, image, mask, self.text, self.phrase)

    def propose(self, image: Image2D, text: str, top_k: int = DEFAULT_TOP_K,
                encoded: Encoded | None = None) -> Proposal:
        proposal = self.text.propose(image, text, top_k=top_k, encoded=encoded)
        rel = self.site.reliability(weights_of(self.text, proposal.version))  # of the weights that answered
        if rel is None or not proposal.candidates:
            return proposal  # presence is the text proposer's decision
        record = (f"source reliability text {rel.text:.2f}, exemplars {rel.bank:.2f} (last {rel.scored} labels)")
        if rel.bank <= rel.text:  # where to look: the more reliable source's say
            proposal.notes = [*proposal.notes, f"site exemplars: {len(self.site.bank)} in the bank; the text "
                                               f"proposer placed the candidates; {record}"]
            return proposal
        enc = encoded or self.site.bank.predictor.encode(image)
        exemplar = self.site.bank.propose(image, text, top_k=top_k, encoded=enc)
        if not exemplar.candidates:
            return proposal
        timings = {**proposal.timings_ms, "exemplars": exemplar.timings_ms.get("match", 0.0)}
        notes = [*proposal.notes, f"site exemplars: {len(self.site.bank)} in the bank; the exemplars placed the "
                                  f"candidates; {record}"]
        candidates = [Candidate(c.box, c.score, c.backend, {**c.extra, "source": "site_exemplars"})
                      for c in exemplar.candidates[:top_k]]
        # the text proposer's relevance map stays the aggregation's consistency term: measured better than the
        # bank's at BUS-UCLM (module docstring)
        return Proposal(candidates, proposal.match_score, proposal.heatmap, f"{proposal.backend}+template", timings,
                        notes, proposal.version)

    def reliability(self) -> Reliability | None:
        """The record of the text proposer's served weights (what :meth:`propose` reads now)."""
        return self.site.reliability(weights_of(self.text, getattr(self.text, "version", "shipped")))


def weights_of(text: BoxProposer, version: str) -> str:
    """The version whose weights ``text`` serves as ``version`` (a threshold-only version serves its base's)."""
    resolve = getattr(text, "weights_of", None)
    return resolve(version) if resolve is not None else version
