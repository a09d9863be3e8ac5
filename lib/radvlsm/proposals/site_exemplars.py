"""VESSA stage 1 in the text path: a site's own labelled exemplars help the text proposer find its lesions.

Why: at a site the shipped proposer never saw, the text path looks in the wrong place; the segmenter given a box
is fine (the cross-site benchmark). The exemplar bank (:mod:`radvlsm.proposals.template`) needs no training: on
BUS-UCLM held-back patients, 10 of the site's labelled lesions as exemplars gave text-free Dice 0.42 where the
cross-site text proposer gave 0.21-0.26 (``benchmarks/bench_site_exemplars.py``). But the bank cannot say
whether a lesion is there at all (every exemplar holds one: it proposed on every lesion-free image), and which
source finds the lesions better differs from site to site (in domain, putting the bank first cost 14.5 Dice
points). So:

* **presence** stays the text proposer's decision (its threshold, calibrated at the site by training);
* where it says present, **one source places the candidates** (below, which one); the text proposer's relevance
  map stays the aggregation's consistency term. (A pooled, reliability-scaled list, the rule before, mixed two
  score scales and did worse than either source alone at BUS-UCLM.)
* the record compares the two on the site's labelled lesions by what the clinician gets: the Dice of the mask
  the aggregation makes from each source's candidates (the served decoder). The text proposer is scored
  **prequentially** (when a label comes, by the version served then, where it looks: ``locate``, its presence
  decision off, since presence is not arbitrated here); the bank **leave-one-out** (each label by the bank as it
  is now, without that label's own exemplar; rescored when a new exemplar changes what it retrieves).
* which source places them (:func:`text_places`): a **prior** from whether the text proposer knows the site (its
  median presence probability on the scored labels >= ``RECOGNISED``), overturned only by a gain **with
  confidence**: the one-sided 90 % lower bound of the paired mean Dice gain of the other source on the last
  ``window`` labels above zero (:func:`radvlsm.paired.paired_bootstrap`, the trainer's publishing rule). Until
  ``min_scored`` labels are scored the text proposer answers alone.

Why this record and this rule (measured on BUS-UCLM curve states and BUS-BRA, README *A new site*): the rule
before scored each source by the top-1 box IoU, the bank prequentially, and took the higher mean. After 25
``random`` corrections at BUS-UCLM it chose the text proposer (0.48 vs 0.37) while the bank's candidates gave +10
text Dice points on the held-back patients. A source's best box is not what the clinician gets (the
fused mask is), and ten labels do not separate two sources a few points apart (there: fused-mask Dice 0.58 vs
0.49, lower bound -0.02), while in domain the text proposer's record leads by 15-27 points on 5-25 labels.
Only scores of the text proposer's **served weights** count: after a fine-tune is published its record starts
again; a version that only recalibrated the presence threshold serves the same weights and keeps the record
(``weights_of``).

The prior (2026-12-03, session 13): with the bank as the only default (the text proposer had to prove itself), 2
of 8 in-domain draws of 5 (and of 10) BUS-BRA labels handed the candidates to the bank and lost 11-24 points
(``bench_site_exemplars.py --draws``); in each the text proposer led on average, not with confidence. Its presence
probability tells the two cases apart where the means do not (:func:`text_places`).

The server runs it by default (``--conf site_exemplars false`` turns it off); the figures are in the README.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections import deque
from dataclasses import dataclass

import numpy as np

from radvlsm.aggregation import aggregate
from radvlsm.geometry import mask_dice
from radvlsm.io import Image2D
from radvlsm.paired import paired_bootstrap
from radvlsm.predictor import Encoded
from radvlsm.proposals.base import DEFAULT_TOP_K, BoxProposer, Candidate, Proposal
from radvlsm.proposals.phrases import DEFAULT_PHRASE
from radvlsm.proposals.template import TemplateProposer, patch_features

logger = logging.getLogger(__name__)


#: the median presence probability on the site's labelled lesions at or above which the text proposer counts as
#: knowing the site (see :func:`text_places`): a proposer trained on a site saturates on its lesions (1.00 at
#: BUS-BRA), one that only finds them plausible does not (0.59-0.91 at BUS-UCLM after 25 and 50 corrections)
RECOGNISED = 0.99


@dataclass(frozen=True)
class Reliability:
    """How well each source found the lesions of the site's last learned labels (mean Dice of the fused mask),
    whether the text proposer knows the site (its median presence probability on them) and so which source
    places the candidates (:func:`text_places`)."""

    text: float
    bank: float
    scored: int
    lower: float  # one-sided lower bound of the text proposer's mean gain over the bank
    match: float = 1.0  # the text proposer's median presence probability on the labels
    bank_lower: float = float("nan")  # one-sided lower bound of the bank's mean gain over the text proposer

    @property
    def text_leads(self) -> bool:
        """The text proposer places the candidates (:func:`text_places` on this record: derived, so it cannot
        disagree with the record it is read from)."""
        return text_places(self.match, self.lower, self.bank_lower)

    def to_json(self) -> dict[str, float | int | bool]:
        return {"text": round(self.text, 4), "bank": round(self.bank, 4), "scored": self.scored,
                "lower": round(self.lower, 4), "bank_lower": round(self.bank_lower, 4),
                "match": round(self.match, 4), "text_leads": self.text_leads}

    def describe(self) -> str:
        knows = "knows" if self.match >= RECOGNISED else "does not know"
        return (f"fused-mask Dice on the last {self.scored} labels: text {self.text:.2f}, exemplars {self.bank:.2f} "
                f"(text gain 90 % lower bound {self.lower:+.2f}, exemplars' {self.bank_lower:+.2f}); the text "
                f"proposer {knows} this site (median presence {self.match:.2f} on them)")


def text_places(match: float, text_lower: float, bank_lower: float) -> bool:
    """Which source places the candidates, from the record: the prior is set by whether the text proposer knows
    the site, and only a gain with confidence overturns it.

    Why a prior: ten labels do not separate two sources a few points apart, and the mean alone points the wrong way
    both in and out of domain (BUS-UCLM after 25 random corrections: text 0.58 vs bank 0.49 on the record, yet the
    bank's candidates gave +10 held-back points; BUS-BRA fold 5: draws of 5-10 labels where the text proposer led
    on average but not with confidence lost 11-24 points to the bank). What separates the two cases is how sure the
    proposer is that the site's lesions are there: its median presence probability on the labelled lesions is
    1.00 in domain (BUS-BRA, every draw), 0.90 and 0.59 at BUS-UCLM after 25 corrections (random, uncertainty;
    a proposer that never saw it), 0.91 and 0.65 after 50 (a replay). A
    threshold of 0.5 put both BUS-UCLM states on the text side, where the bank had given +10 points: hence
    ``RECOGNISED`` = 0.99 (``benchmarks/bench_exemplar_rules.py --record-only``, README *VESSA stage 1*)."""
    if match >= RECOGNISED:
        return not bank_lower > 0  # the proposer knows the site: the bank must be better with confidence
    return text_lower > 0  # a site the proposer does not know: it must be better with confidence


@dataclass
class _Scored:
    """One learned lesion label the sources are compared on: the text proposer's score (fixed: by the version that
    was served when the label came) and what rescoring the bank on it needs (encoding, text map, lesion)."""

    case_id: str
    text_version: str
    text_dice: float
    text_match: float  # its presence probability on the label (what says whether it knows the site)
    encoded: Encoded
    heatmap: np.ndarray | None
    mask: np.ndarray
    bank_dice: float = 0.0
    bank_ids: tuple[str, ...] = ()  # the exemplars the bank retrieved when last scored on it


class SiteExemplars:
    """The site's exemplar bank and the record of how each source did on its labels (thread-safe, in memory:
    the server rebuilds both from the datastore's final labels at start-up)."""

    def __init__(self, bank: TemplateProposer, window: int = 10, min_scored: int = 5, confidence: float = 0.9):
        if window < 1 or min_scored < 1:
            raise ValueError("window and min_scored must be >= 1")
        self.bank = bank
        self.min_scored = min_scored
        self.confidence = confidence
        self._scores: deque[_Scored] = deque(maxlen=window)  # the last learned lesion labels, oldest first
        self._learned: dict[str, str] = {}  # case id -> digest of the mask it was learned with
        self._learning = threading.Lock()  # learning is rare (a label save) and must not interleave with itself
        self._lock = threading.Lock()  # the record's list: held briefly, so proposing never waits for a learn

    def fused_dice(self, proposal: Proposal, enc: Encoded, mask: np.ndarray,
                   heatmap: np.ndarray | None = None) -> float:
        """Dice of the mask the aggregation (its defaults, the served decoder) fuses from ``proposal``'s
        candidates, with ``heatmap`` (default: the proposal's) as the consistency term."""
        if not proposal.candidates:
            return 0.0
        heat = None if proposal.ranked else (proposal.heatmap if heatmap is None else heatmap)
        lesions = aggregate(self.bank.predictor, enc, proposal.candidates[:DEFAULT_TOP_K], heatmap=heat)
        pred = np.zeros(mask.shape, bool)
        for lesion in lesions:
            pred |= lesion.mask
        return mask_dice(pred, mask)

    def learn(self, case_id: str, image: Image2D, mask: np.ndarray, text: BoxProposer | None = None,
              phrase: str = DEFAULT_PHRASE) -> bool:
        """:meth:`add` the label to the bank, then (when ``text`` is given and the bank changed) :meth:`score` it.
        Returns whether the bank changed."""
        changed = self.add(case_id, image, mask)
        if changed and text is not None:
            self.score(case_id, image, mask, text, phrase)
        elif changed:
            self.rescore()
        return changed

    def add(self, case_id: str, image: Image2D, mask: np.ndarray) -> bool:
        """The label joins the bank (one encode: cheap enough for a label save; the record is not rescored here, see
        :meth:`score` and :meth:`rescore`). A label already learned with the same mask is a no-op (several tasks
        hear of each save); a lesion-free label teaches the bank nothing and takes an emptied label out of it and
        the record. Returns whether the bank changed."""
        mask = _checked(image, mask)
        digest = _digest(mask)
        with self._learning:
            if self._learned.get(case_id) == digest:
                return False
            self._learned[case_id] = digest
            self._drop_score(case_id)  # a corrected label replaces its score (:meth:`score` makes the new one)
            if not mask.any():
                if case_id in self.bank.ids:
                    self.bank.remove_exemplar(case_id)  # the clinician emptied the label
                    return True
                return False
            if len(self.bank) >= self.bank.max_exemplars and case_id not in self.bank.ids:
                oldest = self.bank.ids[0]  # derived data: the label itself stays in the datastore
                logger.info(f"site exemplars: the bank is full ({self.bank.max_exemplars}); {oldest} makes room")
                self.bank.remove_exemplar(oldest)
            self.bank.add_exemplar(case_id, image, mask)
            return True

    def score(self, case_id: str, image: Image2D, mask: np.ndarray, text: BoxProposer,
              phrase: str = DEFAULT_PHRASE) -> None:
        """Record the text proposer's fused-mask Dice on this lesion label (the version served now, where it
        looks), then rescore the bank leave-one-out where what it retrieves changed. Seconds on a CPU: the server
        runs it after the save has answered. A label changed or emptied since it was added is not recorded (its
        newer version is scored in turn); the bank is rescored either way."""
        mask = _checked(image, mask)
        with self._learning:
            if self._learned.get(case_id) == _digest(mask) and mask.any():
                enc = self.bank.predictor.encode(image)
                # where the text proposer looks, whatever its presence decision (that one is not arbitrated)
                locate = getattr(text, "locate", text.propose)
                proposal = locate(image, phrase, top_k=DEFAULT_TOP_K, encoded=enc)
                scored = _Scored(case_id, weights_of(text, proposal.version), self.fused_dice(proposal, enc, mask),
                                 float(proposal.match_score), enc, proposal.heatmap, mask)
                self._drop_score(case_id)
                with self._lock:
                    self._scores.append(scored)
            self._rescore_bank()

    def rescore(self) -> None:
        """The bank rescored on the record's labels after it changed without a new score (an emptied label, a
        label learned with no text proposer to score)."""
        with self._learning:
            self._rescore_bank()

    def _drop_score(self, case_id: str) -> None:
        with self._lock:
            kept = [s for s in self._scores if s.case_id != case_id]
            self._scores.clear()
            self._scores.extend(kept)

    def _rescore_bank(self) -> None:
        """The bank as it is now, scored on each scored label without that label's exemplar. Why not once, on the
        bank the label found (as the text proposer is): the bank grows with every label, so its early scores
        (a few exemplars) would understate it. Only labels whose retrieved exemplars changed are decoded again
        (the bank's answer depends on nothing else), so a label save costs a few decodes."""
        with self._lock:
            entries = list(self._scores)
        for scored in entries:
            ids, _ = self.bank.retrieve(patch_features(scored.encoded, self.bank.img_size), (scored.case_id,))
            if tuple(ids) == scored.bank_ids:
                continue
            proposal = self.bank.propose_encoded(scored.encoded, DEFAULT_TOP_K, exclude=(scored.case_id,))
            # served with the text proposer's map as the consistency term: scored so
            scored.bank_dice = self.fused_dice(proposal, scored.encoded, scored.mask, scored.heatmap)
            scored.bank_ids = tuple(ids)

    def reliability(self, version: str | None = None) -> Reliability | None:
        """The sources' record over the last ``window`` scored labels whose text proposer was ``version`` (None:
        all); None until ``min_scored`` of them."""
        with self._lock:
            scores = [(s.text_dice, s.bank_dice, s.text_match) for s in self._scores
                      if version is None or s.text_version == version]
        if len(scores) < self.min_scored or len(self.bank) < 2:
            return None
        text, bank, match = np.array(scores).T
        text_gain = paired_bootstrap(bank, text, self.confidence, min_images=self.min_scored)
        bank_gain = paired_bootstrap(text, bank, self.confidence, min_images=self.min_scored)
        median = float(np.median(match))
        return Reliability(float(text.mean()), float(bank.mean()), len(scores), text_gain.lower, median,
                           bank_gain.lower)


def _checked(image: Image2D, mask: np.ndarray) -> np.ndarray:
    mask = np.asarray(mask) > 0
    if mask.shape != image.shape:
        raise ValueError(f"mask {mask.shape} does not match image {image.shape}")
    return mask


def _digest(mask: np.ndarray) -> str:
    return hashlib.sha1(np.packbits(mask).tobytes() + str(mask.shape).encode()).hexdigest()


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
        record = rel.describe()
        if rel.text_leads:  # the text proposer finds this site's lesions better with confidence
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
        # the text proposer's relevance map stays the aggregation's consistency term: at BUS-UCLM after 25
        # corrections, text Dice 0.39 with it, 0.36 with the bank's (README, *VESSA stage 1*)
        return Proposal(candidates, proposal.match_score, proposal.heatmap, f"{proposal.backend}+template", timings,
                        notes, proposal.version)

    def reliability(self) -> Reliability | None:
        """The record of the text proposer's served weights (what :meth:`propose` reads now)."""
        return self.site.reliability(weights_of(self.text, getattr(self.text, "version", "shipped")))


def weights_of(text: BoxProposer, version: str) -> str:
    """The version whose weights ``text`` serves as ``version`` (a threshold-only version serves its base's)."""
    resolve = getattr(text, "weights_of", None)
    return resolve(version) if resolve is not None else version
