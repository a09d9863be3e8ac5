"""Teaching the ``qformer_lite`` proposer a site from its corrected labels: where the lesion is (relevance map,
box head, and with ``scope="qformer"`` the Q-Former itself) and, when the site has labelled lesion-free images,
whether there is one (the image-text match head and the presence threshold).

Why this shape: at a new site the text path fails because the proposer looks in the wrong place or answers "no
lesion" (the cross-site benchmark), while the segmenter given a box is fine. The site's own corrections are the
only evidence of what its lesions and its lesion-free images look like, and there are few of them, so:

* Training reads the frozen LiteMedSAM embeddings the decoder training cached (no image is encoded twice).
* A lesion-free image (a final label with no lesion) is a negative: the match head learns it, its relevance map
  learns "nothing here". Without such images the match head stays frozen (all positives would teach "there is
  always a lesion") and the presence threshold is kept.
* The gate scores every labelled lesion image **out of fold** (``folds`` models, each trained without the fold
  it scores), image by image against the served proposer: the IoU of the top-1 box with the nearest lesion, 0
  when nothing is proposed. It publishes only if the mean gain is above zero with ``confidence`` (a paired
  bootstrap, :mod:`radvlsm.training.gate`). Lesion-free images are reported (share refused, before and after),
  not gated on.
* The presence threshold is **sensitivity first**: the highest threshold at which the out-of-fold match still finds
  ``recall`` (95 %) of the labelled lesion images, never below the checkpoint's mismatch floor and never above the
  served threshold. In the gate each fold is scored at the threshold calibrated on the other folds, so no threshold is
  chosen on the images it is scored on. Measured at BUS-UCLM (``benchmarks/bench_site_adaptation.py``): the match
  head, even trained on the site's lesion-free images, tells its lesion images from its normal ones poorly, and
  choosing the threshold for lesion-free images as well turned a third of the lesions into "no lesion" answers; a
  clinician dismisses a false candidate in a glance, a missed lesion is the failure that matters. It is published with
  the weights (:class:`~radvlsm.proposals.qformer_lite.Calibration`).
* **Two candidates, one gate.** Besides the fine-tuned weights, the served weights with the site's presence
  threshold alone (``recalibrate``: no training, the threshold of each fold chosen on the other folds) are scored
  the same way, out of fold. Why: at BUS-UCLM the fine-tuned weights did not beat the served ones with confidence
  before 50 corrections, while a quarter to two fifths of the site's lesions were "no lesion" answers of a
  threshold calibrated at other sites. Of the candidates that pass the gate, the one with the larger mean gain is
  published (``candidate`` in the run's JSON; on a tie the recalibrated one: it costs no training).
* **Phrases.** The labels teach the app's phrase (``lesion``) and the site's own (``phrases``, e.g. "breast
  lesion"). Every other phrase of :func:`~radvlsm.proposals.phrases.anchor_vocabulary` is an **anchor**: on the
  site's lesion images its image-text match is distilled from the served model, on its lesion-free images it is
  a mismatch (``anchor_weight``). Trained on one phrase without anchors, the Q-Former lost some of its text
  conditioning: "colon polyp" came to match breast lesions (``tests/test_training_proposer.py``). The anchors do not
  keep an organ phrase's presence at a site (BUS-UCLM, ``benchmarks/bench_site_adaptation.py``: "breast lesion"
  answered "no lesion" more often after the anchored fine-tune); a site names its phrases to have them learned.

The published model is trained on all labelled images. Validation runs the inference code itself
(:meth:`QFormerLiteProposer.with_model`), and a published version is served live by every proposer that follows
the store.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from radvlsm.defaults import DEFAULT_PHRASE
from radvlsm.geometry import mask_to_box
from radvlsm.predictor import Encoded
from radvlsm.proposals.boxes import box_iou
from radvlsm.proposals.phrases import anchor_vocabulary
from radvlsm.proposals.qformer_model import QFormerLite, losses
from radvlsm.text import TextEncoder, pad_batch, validate_text
from radvlsm.training.data import Item
from radvlsm.training.gate import GateResult, item_folds, paired_bootstrap
from radvlsm.versions import ProposerStore

logger = logging.getLogger(__name__)
SCOPES = ("heads", "qformer")
#: the presence threshold is never calibrated below this (nor below the checkpoint's mismatch floor)
MIN_THRESHOLD = 0.1
#: lesion-free labelled images needed before the presence decision is learned and recalibrated
MIN_NEGATIVES = 2
#: the site's own phrases a fine-tune learns besides the app's
MAX_PHRASES = 8


@dataclass
class ProposerConfig:
    epochs: int = 10
    lr: float = 1e-4
    #: ``qformer``: the Q-Former and every head (a minute per 25 images on a 2-core CPU); ``heads``: the relevance
    #: map, box head (and match head) only, on Q-Former outputs computed once (seconds)
    scope: str = "qformer"
    folds: int = 3
    #: share of the labelled lesion images the calibrated presence threshold must still find (out of fold)
    recall: float = 0.95
    confidence: float = 0.9
    #: publish when the bootstrap lower bound of the mean gain is > -tolerance (0: better with confidence)
    tolerance: float = 0.0
    batch_size: int = 8
    seed: int = 0
    #: the site's own phrases ("breast lesion"), trained on its labels like the app's phrase
    phrases: tuple[str, ...] = ()
    #: weight of the anchor term: every other phrase of :func:`anchor_vocabulary` keeps the served model's
    #: image-text match on the site's images (0: off, the phrase-blind fine-tune measured before)
    anchor_weight: float = 1.0
    #: also offer the served weights with the site's presence threshold (out of fold) to the gate
    recalibrate: bool = True

    def __post_init__(self) -> None:
        self.phrases = tuple(validate_text(p, "proposer_phrases") for p in self.phrases)
        if len(self.phrases) > MAX_PHRASES:
            raise ValueError(f"proposer_phrases: at most {MAX_PHRASES} phrases, got {len(self.phrases)}")
        if self.anchor_weight < 0:
            raise ValueError(f"proposer_anchor_weight: must be >= 0, got {self.anchor_weight!r}")
        if self.scope not in SCOPES:
            raise ValueError(f"proposer_scope: must be one of {list(SCOPES)}, got {self.scope!r}")
        if not 0.0 < self.recall <= 1.0:
            raise ValueError(f"proposer recall: must be in (0, 1], got {self.recall!r}")
        if not 0.0 < self.confidence < 1.0:
            raise ValueError(f"gate_confidence: must be between 0 and 1, got {self.confidence!r}")


@dataclass
class ProposerRun:
    published: bool
    version: str  # served after the run
    base_version: str
    iou_before: float  # mean top-1 box IoU on the labelled lesion images (served proposer)
    iou_after: float  # the same, out of fold
    hit_before: float  # share of those whose top-1 box has IoU >= 0.5
    hit_after: float
    images: int = 0
    lesion_free: int = 0
    pseudo_labels: int = 0  # extra lesion images that only trained (never scored)
    lesion_free_refused_before: float | None = None  # share of lesion-free images given no lesion (served)
    lesion_free_refused_after: float | None = None  # the same, out of fold, at the calibrated threshold
    gate: dict[str, Any] = field(default_factory=dict)  # the fine-tuned candidate's GateResult
    match_threshold: float | None = None  # the calibrated presence threshold (published with the version)
    phrases: list[str] = field(default_factory=list)  # trained on the labels (the app's phrase first)
    anchors: int = 0  # phrases whose served match was kept
    #: what was published: ``fine_tuned`` (new weights and threshold) or ``recalibrated`` (the served weights with
    #: the site's presence threshold); empty when nothing was
    candidate: str = ""
    recalibration: dict[str, Any] = field(default_factory=dict)  # the recalibrated candidate (:class:`Candidate`)
    losses: list[float] = field(default_factory=list)  # per epoch, of the model trained on all images
    seconds: float = 0.0
    reason: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def box_target(mask: np.ndarray) -> torch.Tensor:
    """The box head's target: the label's tight box as continuous edges, ``(cx, cy, w, h)`` as fractions of the
    image (the shipped training's targets too: ``scripts/proposer_pack.py`` calls this)."""
    x0, y0, x1, y1 = mask_to_box(mask)
    rows, cols = mask.shape
    x0, x1, y0, y1 = x0 / cols, (x1 + 1) / cols, y0 / rows, (y1 + 1) / rows
    return torch.tensor([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], dtype=torch.float32)


def heat_target(item: Item, img_size: int, grid: int) -> torch.Tensor:
    """The relevance map's target: the share of each patch of the padded model frame covered by the lesion
    (the decoder's thresholded target, :meth:`Frame.mask_to_model`, pooled onto the embedding grid).

    ``scripts/proposer_pack.py`` (the shipped checkpoint's targets) pools the unthresholded bilinear mask instead:
    the two differ only in the cells the lesion boundary crosses."""
    frame = item.frame.check(img_size)
    return frame.pool_to_grid(frame.mask_to_model(item.mask), grid)


@dataclass
class Outcome:
    """One image under one proposer: the match score and the top-1 box's IoU with the nearest lesion (None for
    a lesion-free image), whatever the threshold."""

    match: float
    iou: float | None

    def score(self, threshold: float) -> float:
        present = self.match >= threshold
        if self.iou is None:
            return float(not present)
        return self.iou if present else 0.0


def outcome(proposer, item: Item, text: str) -> Outcome:
    """Run the proposer's inference code with its threshold at 0, so the box is known at every threshold."""
    probe = proposer.with_model(proposer.model, type(proposer.calibration)(0.0, proposer.heat_threshold))
    enc = Encoded(item.embedding, item.original_size, item.input_size)
    proposal = probe.propose(None, text, top_k=1, encoded=enc)
    if not item.lesions:
        return Outcome(proposal.match_score, None)
    if not proposal.candidates:
        return Outcome(proposal.match_score, 0.0)
    truth = np.array([mask_to_box(m) for _, m in item.lesions] + [mask_to_box(item.mask)], np.float32)
    return Outcome(proposal.match_score, float(box_iou(np.array(proposal.candidates[0].box, np.float32), truth).max()))


def top1_iou(proposer, item: Item, text: str) -> float:
    """IoU of the proposer's top candidate (at its own threshold) with the nearest lesion box of the label."""
    return outcome(proposer, item, text).score(proposer.threshold)


def calibrate(outcomes: list[Outcome], floor: float, recall: float = 0.95) -> float:
    """The highest presence threshold at which ``recall`` of the lesion images in ``outcomes`` are still found
    (their match at or above it), never below ``floor``."""
    matches = np.sort([o.match for o in outcomes if o.iou is not None])
    if not len(matches):
        return floor
    keep = int(np.ceil(recall * len(matches)))  # lesion images that must stay at or above the threshold
    return float(max(floor, matches[len(matches) - keep]))


def refused(outcomes: list[Outcome], threshold: float) -> float | None:
    """Share of the lesion-free images in ``outcomes`` given no lesion at ``threshold`` (None if there are none)."""
    free = [o.match < threshold for o in outcomes if o.iou is None]
    return float(np.mean(free)) if free else None


class Phrases:
    """The fine-tune's phrases as one padded token table: ``positives`` (the app's phrase first, then the site's)
    learn the site's labels; ``anchors`` keep the served model's image-text match on every labelled image (its
    logits, ``teacher``, computed once). Why: trained on one phrase the Q-Former loses its text conditioning, so
    "colon polyp" began to find lesions on breast scans and "breast lesion" lost the presence it borrows from
    "lesion" (``benchmarks/bench_site_adaptation.py``)."""

    def __init__(self, encoder: TextEncoder, positives: list[str], anchors: list[str]):
        self.positives = list(dict.fromkeys(positives))
        self.anchors = [a for a in dict.fromkeys(anchors) if a not in self.positives]
        self.names = self.positives + self.anchors
        self.tokens, self.mask, _ = pad_batch([encoder.encode(p) for p in self.names])
        self.teacher: torch.Tensor | None = None  # (items, anchors) logits of the served model

    def anchor(self, k: int) -> int:
        return len(self.positives) + k


class SiteData:
    """Targets of every labelled image and, for ``heads`` scope, the frozen Q-Former outputs (computed once per
    image and phrase)."""

    def __init__(self, model: QFormerLite, items: list[Item], phrases: Phrases, img_size: int, scope: str):
        grid = model.cfg.grid
        self.device = dev = next(model.parameters()).device
        self.scope = scope
        self.phrases = phrases
        self.tokens, self.token_mask = phrases.tokens.to(dev), phrases.mask.to(dev)
        self.items = items
        self.feats: dict[int, torch.Tensor] = {}  # heads scope: the Q-Former's text-independent patch features
        self.z: dict[tuple[int, int], dict[str, torch.Tensor]] = {}  # heads scope: (item, phrase) -> outputs
        self.valid, self.heat, self.box, self.match = [], [], [], []
        with torch.no_grad():
            for it in items:
                valid = it.frame.check(img_size).grid_valid_mask(grid).to(dev)
                self.valid.append(valid)
                positive = bool(it.lesions)
                self.match.append(1.0 if positive else 0.0)
                self.heat.append(heat_target(it, img_size, grid).to(dev) if positive else torch.zeros(grid, grid))
                self.box.append(box_target(it.mask).to(dev) if positive else torch.tensor([0.5, 0.5, 1.0, 1.0]))
            if phrases.anchors:
                phrases.teacher = torch.stack([self._logits(model, i) for i in range(len(items))])

    def _logits(self, model: QFormerLite, i: int) -> torch.Tensor:
        """The served model's match logits of item ``i`` for every anchor phrase (one batched forward)."""
        a = len(self.phrases.anchors)
        first = len(self.phrases.positives)
        valid = self.valid[i][None].expand(a, -1, -1)
        feats = model.project(self.items[i].embedding.to(self.device)).expand(a, -1, -1, -1)
        z = model.encode(None, valid, self.tokens[first:], self.token_mask[first:], feats=feats)
        return model.match(z).float()

    def _outputs(self, model: QFormerLite, idx: list[int], phrase: list[int]) -> dict[str, torch.Tensor]:
        valid = torch.stack([self.valid[i] for i in idx])
        if self.scope == "heads":  # the Q-Former is frozen: its outputs per (image, phrase) are computed once
            z = [self._z(model, i, p) for i, p in zip(idx, phrase, strict=True)]
            return model.heads({k: torch.cat([x[k] for x in z]).float() for k in z[0]}, valid)
        emb = torch.cat([self.items[i].embedding for i in idx]).to(self.device).float()
        return model(emb, valid, self.tokens[phrase], self.token_mask[phrase])

    @torch.no_grad()
    def _z(self, model: QFormerLite, i: int, p: int) -> dict[str, torch.Tensor]:
        if i not in self.feats:  # the patch features do not depend on the phrase: computed once per image
            self.feats[i] = model.project(self.items[i].embedding.to(self.device)).half()
        if (i, p) not in self.z:
            z = model.encode(None, self.valid[i][None], self.tokens[p: p + 1], self.token_mask[p: p + 1],
                             feats=self.feats[i].float())
            self.z[(i, p)] = {"queries": z["queries"], "text": z["text"]}
        return {"feats": self.feats[i], **self.z[(i, p)]}

    def forward(self, model: QFormerLite, idx: list[int], rng: np.random.Generator
                ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """The model's outputs and targets for images ``idx``, each with a positive phrase (the app's phrase half
        the time when the site has its own)."""
        n_pos = len(self.phrases.positives)
        phrase = [0 if n_pos == 1 or rng.random() < 0.5 else int(rng.integers(1, n_pos)) for _ in idx]
        out = self._outputs(model, idx, phrase)
        n = len(idx)
        target = {"match": torch.tensor([self.match[i] for i in idx], device=self.device),
                  "mask": torch.stack([self.heat[i] for i in idx]), "box": torch.stack([self.box[i] for i in idx]),
                  "valid": torch.stack([self.valid[i] for i in idx]),
                  "domain": torch.full((n,), -1, device=self.device)}  # -1: no contrastive term
        return out, target

    def anchor_loss(self, model: QFormerLite, idx: list[int], rng: np.random.Generator, learn_match: bool
                    ) -> torch.Tensor | None:
        """Binary cross-entropy of the match for one random anchor phrase per image: on a lesion image against
        the served model's probability (a distillation of the text conditioning the site's labels do not cover);
        on a lesion-free one (with ``learn_match``) against 0, since no organ's lesion is there either."""
        teacher = self.phrases.teacher
        if not learn_match:
            idx = [i for i in idx if self.match[i]]
        if teacher is None or not idx:
            return None
        k = rng.integers(0, teacher.shape[1], len(idx))
        phrase = [self.phrases.anchor(int(a)) for a in k]
        if self.scope == "heads":
            z = [self._z(model, i, p) for i, p in zip(idx, phrase, strict=True)]
            queries = {"queries": torch.cat([x["queries"] for x in z])}
        else:
            valid = torch.stack([self.valid[i] for i in idx])
            emb = torch.cat([self.items[i].embedding for i in idx]).to(self.device)
            queries = model.encode(emb, valid, self.tokens[phrase], self.token_mask[phrase])
        lesion = torch.tensor([self.match[i] for i in idx])
        target = (teacher[torch.tensor(idx), torch.from_numpy(k)].sigmoid() * lesion).to(self.device)
        return torch.nn.functional.binary_cross_entropy_with_logits(model.match(queries), target)


def trainable(model: QFormerLite, scope: str, learn_match: bool) -> list[torch.nn.Parameter]:
    """Unfreeze what ``scope`` trains; the match head only when lesion-free images teach it."""
    model.requires_grad_(False)
    names = list(QFormerLite.HEADS) + (["itm_head"] if learn_match else [])
    if scope == "qformer":
        names += ["image_proj", "pos", "text_proj", "queries", "token_type", "qformer"]
    params: list[torch.nn.Parameter] = []
    for name in names:
        part = getattr(model, name)
        if part is None:  # the context head of a checkpoint without one
            continue
        part.requires_grad_(True)
        params += [part] if isinstance(part, torch.nn.Parameter) else list(part.parameters())
    return params


def train_copy(base: QFormerLite, data: SiteData, idx: list[int], cfg: ProposerConfig, learn_match: bool
               ) -> tuple[QFormerLite, list[float]]:
    """A copy of ``base`` trained on images ``idx`` of ``data``; returns it (eval mode) and the epoch losses."""
    with torch.random.fork_rng(devices=[]):  # dropout draws from torch's generator: seeded, a run repeats
        torch.manual_seed(cfg.seed)
        return _train_copy(base, data, idx, cfg, learn_match)


def _train_copy(base: QFormerLite, data: SiteData, idx: list[int], cfg: ProposerConfig, learn_match: bool
                ) -> tuple[QFormerLite, list[float]]:
    model = copy.deepcopy(base)
    opt = torch.optim.AdamW(trainable(model, cfg.scope, learn_match), lr=cfg.lr, weight_decay=0.01)
    rng = np.random.default_rng(cfg.seed)
    weights = {"itm": 1.0 if learn_match else 0.0, "itc": 0.0}
    model.train()
    history = []
    for _ in range(cfg.epochs):
        order, total, seen = rng.permutation(idx), 0.0, 0
        for s in range(0, len(order), cfg.batch_size):
            batch = [int(i) for i in order[s: s + cfg.batch_size]]
            out, target = data.forward(model, batch, rng)
            loss = losses(out, target, model, weights)["total"]
            # with the Q-Former and the match head frozen, nothing the anchor term could move is trained
            anchor = data.anchor_loss(model, batch, rng, learn_match) if cfg.anchor_weight > 0 and (
                cfg.scope == "qformer" or learn_match) else None
            if anchor is not None:
                loss = loss + cfg.anchor_weight * anchor
            if not loss.requires_grad:  # a batch of lesion-free images while the match head is frozen
                continue
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total, seen = total + loss.item() * len(batch), seen + len(batch)
        history.append(round(total / max(seen, 1), 5))
    return model.eval().requires_grad_(False), history


def _iou_stats(outcomes: list[Outcome], threshold: float) -> tuple[float, float]:
    scores = np.array([o.score(threshold) for o in outcomes if o.iou is not None])
    return (float(scores.mean()), float((scores >= 0.5).mean())) if len(scores) else (float("nan"), float("nan"))


def fine_tune_proposer(proposer, items: list[Item], store: ProposerStore, cfg: ProposerConfig | None = None,
                       text: str = DEFAULT_PHRASE, extra: list[Item] | None = None) -> ProposerRun:
    """Teach a copy of the served proposer the site's labelled ``items`` (lesion-free ones included); publish into
    ``store`` if out-of-fold it beats the served proposer with confidence (module docstring).

    ``extra``: lesion images that only train, in every fold and in the published model, and are never scored
    (pseudo-labels, :mod:`radvlsm.training.pseudo`): the gate stays the clinicians' labels'."""
    cfg = cfg or ProposerConfig()
    extra = [it for it in extra or [] if it.lesions]
    started = time.time()
    base_version = proposer.version
    served_thr = proposer.threshold
    before = [outcome(proposer, it, text) for it in items]
    iou_b, hit_b = _iou_stats(before, served_thr)
    n_neg = sum(not it.lesions for it in items)
    run = ProposerRun(False, base_version, base_version, iou_b, float("nan"), hit_b, float("nan"),
                      images=len(items), lesion_free=n_neg, pseudo_labels=len(extra))
    n_pos = len(items) - n_neg
    if cfg.epochs == 0 or n_pos == 0 or len(items) < 2:
        run.iou_after, run.hit_after = iou_b, hit_b
        run.reason = "proposer not trained (no epochs, no lesion image, or fewer than 2 labelled images)"
        return _done(run, started)
    learn_match = n_neg >= MIN_NEGATIVES
    phrases = Phrases(proposer.text_encoder, [text, *cfg.phrases], anchor_vocabulary() if cfg.anchor_weight else [])
    run.phrases, run.anchors = phrases.positives, len(phrases.anchors)
    held_out = item_folds(items, cfg.folds)
    # only ever lowered: a few near-certain in-domain matches would otherwise push it up to ~1
    bound = min(max(MIN_THRESHOLD, float(getattr(proposer, "mismatch_floor", None) or 0.0)), served_thr)
    served_scores = np.array([before[i].score(served_thr) for i in range(len(items)) if items[i].lesions])

    def candidate(outcomes: list[Outcome]) -> Candidate:
        return _candidate(outcomes, held_out, served_thr, bound, cfg, served_scores)

    recal = candidate(before) if cfg.recalibrate else None
    if recal is not None:
        run.recalibration = recal.to_json()
    data = SiteData(proposer.model, items + extra, phrases, proposer.predictor.backbone.img_size, cfg.scope)
    always = list(range(len(items), len(items) + len(extra)))  # the extra items train in every fold
    oof: list[Outcome] = list(before)
    for held in held_out:
        rest = [i for i in range(len(items)) if i not in held] + always
        if not any(data.match[i] for i in rest):  # nothing to learn where the lesion is: keep the served answer
            continue
        model, _ = train_copy(proposer.model, data, rest, cfg, learn_match)
        clone = proposer.with_model(model)
        for i in held:
            oof[i] = outcome(clone, items[i], text)
    tuned = candidate(oof)
    run.gate = {**tuned.gate.to_json(), "tolerance": cfg.tolerance, "folds": len(held_out),
                "metric": "per lesion image: top-1 box IoU with the nearest lesion, 0 when nothing is proposed; "
                          "each fold at the presence threshold calibrated on the other folds"}
    # the recalibrated candidate only if it lowers the threshold (else it is the served proposer again); on a tie
    # it wins: no new weights
    use_recal = recal is not None and recal.gate.passed and recal.threshold < served_thr and (
        not tuned.gate.passed or recal.gate.gain >= tuned.gate.gain)
    chosen = recal if use_recal else tuned
    run.match_threshold = chosen.threshold
    run.iou_after, run.hit_after = float(chosen.scores.mean()), float((chosen.scores >= 0.5).mean())
    run.lesion_free_refused_before = refused(before, served_thr)
    run.lesion_free_refused_after = chosen.lesion_free_refused
    if not chosen.gate.passed:
        run.reason = (f"proposer not published: out-of-fold top-1 IoU {tuned.gate.describe()}, not better with "
                      f"confidence" + (f"; the served weights recalibrated: {recal.gate.describe()}" if recal else ""))
        return _done(run, started)
    if use_recal:
        model, run.losses, run.candidate = proposer.model, [], "recalibrated"
    else:
        model, run.losses = train_copy(proposer.model, data, list(range(len(items))) + always, cfg, learn_match)
        run.candidate = "fine_tuned"
    calibration = {"calibration.match_threshold": torch.tensor(chosen.threshold),
                   "calibration.heat_threshold": torch.tensor(float(proposer.heat_threshold))}
    state = {**{f"qformer.{k}": v for k, v in model.state_dict().items()}, **calibration}
    meta = {"base_version": base_version, "text": text, "phrases": phrases.positives, "candidate": run.candidate,
            "anchors": phrases.anchors, "config": asdict(cfg), "images": len(items),
            "lesion_free": n_neg, "pseudo_labels": [it.image_id for it in extra], "match_threshold": chosen.threshold,
            "lesion_free_refused": [run.lesion_free_refused_before, run.lesion_free_refused_after],
            "gate": run.gate, "recalibration": run.recalibration, "iou_before": iou_b,
            "iou_after": run.iou_after, "hit_before": hit_b, "hit_after": run.hit_after, "losses": run.losses}
    run.version = store.publish_state(state, {"proposer_base": proposer.base_id}, meta)
    run.published = True
    what = "the served weights with the site's presence threshold" if use_recal else "fine-tuned weights"
    run.reason = (f"published proposer {run.version} ({what}): out-of-fold top-1 IoU {chosen.gate.describe()}; "
                  f"presence threshold {served_thr:.3f} -> {chosen.threshold:.3f}")
    return _done(run, started)


@dataclass
class Candidate:
    """Weights (the served ones, or a fine-tune's) at the site's presence threshold, as the gate sees them."""

    gate: GateResult
    threshold: float  # calibrated on every labelled image: what would be published
    fold_threshold: float  # mean of the thresholds the folds were scored at
    lesion_free_refused: float | None  # share of the lesion-free labels refused, out of fold
    scores: np.ndarray  # per labelled lesion image, out of fold

    def to_json(self) -> dict[str, Any]:
        return {"gate": self.gate.to_json(), "match_threshold": self.threshold, "fold_threshold": self.fold_threshold,
                "lesion_free_refused_after": self.lesion_free_refused}


def _candidate(outcomes: list[Outcome], held_out: list[set[int]], served_thr: float, bound: float,
               cfg: ProposerConfig, served_scores: np.ndarray) -> Candidate:
    """Score ``outcomes`` (out of fold, or the served model's) with each fold's images at the threshold
    :func:`calibrate` chooses on the other folds (never above the served one), so the threshold is not chosen on
    the images it is scored on; pair them with ``served_scores`` (the lesion images, in order) in the gate."""
    scores: dict[int, float] = {}
    refusals: list[bool] = []
    fold_thr = []
    for held in held_out:
        thr = min(served_thr, calibrate([outcomes[i] for i in range(len(outcomes)) if i not in held], bound,
                                        cfg.recall))
        fold_thr.append(thr)
        for i in held:
            scores[i] = outcomes[i].score(thr)
            if outcomes[i].iou is None:
                refusals.append(outcomes[i].match < thr)
    after = np.array([scores[i] for i in range(len(outcomes)) if outcomes[i].iou is not None])
    gate = paired_bootstrap(served_scores, after, cfg.confidence, seed=cfg.seed, tolerance=cfg.tolerance)
    return Candidate(gate, float(min(served_thr, calibrate(outcomes, bound, cfg.recall))), float(np.mean(fold_thr)),
                     float(np.mean(refusals)) if refusals else None, after)


def _done(run: ProposerRun, started: float) -> ProposerRun:
    run.seconds = round(time.time() - started, 2)
    logger.info(f"training: {run.reason} ({run.seconds:.1f} s)")
    return run
