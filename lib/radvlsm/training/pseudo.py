"""VESSA stage 2 at a new site: the site's unlabelled images teach the text proposer through pseudo-labels.

Why this shape (measured at BUS-UCLM, ``benchmarks/bench_site_adaptation.py`` pool, printout
``benchmarks/recorded/bench_pseudo_signal.md``): with 10 of the site's corrections, the served text path returns a
lesion on 122 of the 140 other pool images and is right (top box IoU >= 0.5) on only 22, so its outputs as a whole
are no target. But the aggregation's own **mask agreement** (the weighted pairwise Dice of the masks its prompts
decode to, :class:`radvlsm.aggregation.FusedLesion`) ranks them well (ROC AUC 0.84 for "this answer is right";
SAM's predicted IoU 0.76, the match score 0.67): the 14 answers with agreement >= 0.95 were all on lesion images,
12 of them right. So:

* every run, the current (served) text path runs on the site's unlabelled images (images with no final label);
  a top lesion with agreement >= ``min_agreement`` becomes a pseudo-label: the mask it answered;
* at most as many as the run has final labels, most agreeing first (the clinicians' labels stay at least half of
  what the proposer learns from);
* they train the **proposer only** (where the lesion is): they never enter validation or a gate (a version is
  published only on the clinicians' labels), and not the decoder (its targets would be its own outputs, while for
  the proposer they are the segmenter's consistent answer, a second opinion);
* they are remade on every run by the version then served (the student's masks fed back), and kept in their own
  folder (:class:`PseudoLabelStore`), never over or beside a clinician's label: an image that has a final label is
  not pseudo-labelled, and its old pseudo-label is dropped. An image's answer is reused while the decoder and
  proposer versions (and phrase) that gave it are still served: the gate often keeps them, and the text path costs
  about a second an image on a 2-core CPU.

A lesion-free pseudo-label is never made: the text path's "no lesion" is not a confident answer at a new site
(it says so on a third of BUS-UCLM's lesion images), and the site's lesion-free images teach presence only when a
clinician says so.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from radvlsm.defaults import DEFAULT_PHRASE
from radvlsm.errors import ImageReadError
from radvlsm.io import load_image, save_mask
from radvlsm.results import best_predicted_iou
from radvlsm.training.data import TrainSample, id_hash
from radvlsm.versions import atomic_write_json

logger = logging.getLogger(__name__)
#: a pseudo-label's top lesion must have at least this mask agreement (see the module docstring)
MIN_AGREEMENT = 0.95


@dataclass
class Answer:
    """What the served text path answered on one unlabelled image, and which versions answered."""

    image_id: str
    agreement: float | None  # the top lesion's mask agreement; None: no lesion, or one prompt only
    predicted_iou: float | None  # SAM's own estimate for the top lesion's best prompt
    decoder_version: str
    proposer_version: str
    text: str
    ts: float

    def confident(self, min_agreement: float) -> bool:
        return self.agreement is not None and self.agreement >= min_agreement

    def same_source(self, decoder_version: str, proposer_version: str, text: str) -> bool:
        return (self.decoder_version, self.proposer_version, self.text) == (decoder_version, proposer_version, text)


class PseudoLabelStore:
    """``<dir>/index.json`` (every answer of the last run, which were kept, run stats) and ``<dir>/masks/<image
    id>.png`` (the mask of every confident answer). Written atomically; derived data, remade by every run."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def mask_path(self, image_id: str) -> Path:
        return self.root / "masks" / f"{image_id}.png"

    def _index(self) -> dict:
        try:
            return json.loads((self.root / "index.json").read_text())
        except (OSError, ValueError):  # none yet, or unreadable: derived data, remade by the next run
            return {}

    def answers(self) -> dict[str, Answer]:
        return {k: Answer(**v) for k, v in self._index().get("answers", {}).items()}

    def load(self) -> dict[str, Answer]:
        """The pseudo-labels the last run trained with."""
        answers = self.answers()
        return {k: answers[k] for k in self._index().get("kept", []) if k in answers}

    def stats(self) -> dict:
        return self._index().get("stats", {})

    def save_mask(self, image_id: str, mask: np.ndarray) -> None:
        save_mask(mask.astype(np.uint8), self.mask_path(image_id))

    def replace(self, answers: dict[str, Answer], kept: list[str], confident: set[str], stats: dict) -> None:
        """Write the index, then remove the masks of images no longer confident (or no longer unlabelled)."""
        atomic_write_json(self.root / "index.json", {"answers": {k: asdict(a) for k, a in answers.items()},
                                                     "kept": kept, "stats": stats})
        masks = self.root / "masks"
        for path in masks.glob("*.png") if masks.is_dir() else []:
            if path.stem not in confident:
                path.unlink(missing_ok=True)


def _versions(pipeline) -> tuple[str, str]:
    watcher = getattr(pipeline.predictor, "decoder_watcher", None)
    decoder = watcher.refresh() if watcher is not None else "shipped"
    return decoder, getattr(pipeline.proposer, "version", "shipped")


def _answer(pipeline, image_id: str, path: str | Path, text: str, versions: tuple[str, str]
            ) -> tuple[Answer, np.ndarray | None]:
    from radvlsm.pipeline import PipelineOptions

    # the predictor's byte-bounded cache keeps memory flat; the kept images' embeddings are then reused by training
    result = pipeline.run(load_image(path), PipelineOptions(text=text, diagnose=False))
    top = result.lesions[0] if result.lesions else None
    if top is None or top.mask is None or len(top.prompts) < 2:  # one prompt: agreement is 1 by definition
        return Answer(image_id, None, None, *versions, text, time.time()), None
    iou = best_predicted_iou(top.prompts)
    return Answer(image_id, round(float(top.agreement), 5), None if iou is None else round(iou, 5), *versions,
                  text, time.time()), top.mask


def make_pseudo_labels(pipeline, unlabelled: Iterable[tuple[str, str | Path]], limit: int,
                       store: PseudoLabelStore, text: str = DEFAULT_PHRASE, min_agreement: float = MIN_AGREEMENT,
                       max_images: int = 0) -> list[TrainSample]:
    """Answer ``unlabelled`` ``(image id, image path)`` pairs with the served text path (``max_images`` > 0: that
    many, a stable hash-ordered subset; answers of the still-served versions are reused), keep the ``limit`` most
    agreeing top lesions with agreement >= ``min_agreement``, store them and return them as training samples (see
    the module docstring)."""
    started = time.time()
    versions = _versions(pipeline)
    paths = dict(unlabelled)
    if max_images > 0:
        paths = {k: paths[k] for k in sorted(paths, key=id_hash)[:max_images]}
    previous = store.answers()
    answers: dict[str, Answer] = {}
    reused = 0
    for image_id, path in sorted(paths.items()):
        old = previous.get(image_id)
        if old is not None and old.same_source(*versions, text) and (
                not old.confident(min_agreement) or store.mask_path(image_id).is_file()):
            answers[image_id], reused = old, reused + 1
            continue
        try:
            answers[image_id], mask = _answer(pipeline, image_id, path, text, versions)
        except ImageReadError as exc:  # an unreadable unlabelled image must not stop training on the labelled ones
            logger.warning(f"pseudo-labels: {image_id} skipped: {exc}")
            continue
        if answers[image_id].confident(min_agreement):
            store.save_mask(image_id, mask)
    confident = {k for k, a in answers.items() if a.confident(min_agreement)}
    kept = sorted(confident, key=lambda k: (-answers[k].agreement, k))[:max(limit, 0)]
    stats = {"scored": len(paths), "reused": reused, "confident": len(confident), "kept": len(kept), "limit": limit,
             "min_agreement": min_agreement, "text": text, "decoder_version": versions[0],
             "proposer_version": versions[1], "seconds": round(time.time() - started, 1)}
    store.replace(answers, kept, confident, stats)
    logger.info(f"pseudo-labels: {len(kept)} kept of {len(confident)} confident among {len(paths)} unlabelled images "
                f"({reused} answers reused; {stats['seconds']} s)")
    return [TrainSample(k, paths[k], store.mask_path(k)) for k in kept]
