"""The ``radvlsm`` train task (``POST /train/radvlsm``): fine-tune the served decoder on the final labels.

MONAI Label runs it in a subprocess of the server and refuses a second request while one runs (HTTP 429, or
queues it with ``enqueue=true``); the store's lock refuses any other concurrent run. The infer tasks pick the
published decoder and proposer up on their next request (``decoder_version`` and ``proposer_version`` in their
result JSON).
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import psutil
import torch
from monailabel.interfaces.exception import MONAILabelError, MONAILabelException
from monailabel.interfaces.tasks.train import TrainTask

from radvlsm.defaults import DEFAULT_PHRASE
from radvlsm.errors import InputError
from radvlsm.params import check_known, get_bool, get_int
from radvlsm.pipeline import RadVLSMPipeline
from radvlsm.predictor import SegmentPredictor
from radvlsm.training import DecoderStore, TrainConfig, TrainingBusy, fine_tune
from radvlsm.training.data import MIN_LABELLED
from radvlsm.training.datastore import samples_from_datastore, unlabelled_images
from radvlsm.training.pseudo import PseudoLabelStore, make_pseudo_labels
from radvlsm.training.store import ProposerStore

logger = logging.getLogger(__name__)
#: keys MONAI Label itself puts into a train request
SERVER_KEYS = ("model", "bundle_path")
DESCRIPTION = ("Teach the app the site from its final (corrected) labels, lesion-free ones included: SAM's prompt "
               "encoder + mask decoder (optionally with low-rank adapters in the image encoder's last stage) and the "
               "qformer_lite proposer (where the lesion is; whether there is one, from lesion-free labels). Each is "
               "published only if its per-image score is better with confidence (paired bootstrap; decoder: "
               "cross-validated while few images are held back; proposer: cross-validated). Options: epochs, lr, "
               "batch_size, box_jitter, clicks, train_decoder, train_prompt_encoder, train_proposer, proposer_epochs, "
               "proposer_lr, proposer_scope, proposer_folds, proposer_phrases (the site's own phrases, default "
               "--conf site_phrases), proposer_anchor_weight (every other phrase keeps the served match), "
               "proposer_recalibrate (also offer the served weights at the site's presence threshold), "
               "gate_confidence, decoder_gate, decoder_folds, "
               "encoder_lora_rank, encoder_lora_lr, "
               "tolerance, seed, max_images, multi_gpu, pseudo_labels (VESSA stage 2: confident answers on unlabelled "
               "images also train the proposer; off by default), pseudo_min_agreement, pseudo_max_images.")


def _alive(pid: Any) -> bool:
    """Whether the run that wrote the stats still runs (a killed run's process may linger as a zombie)."""
    try:
        return psutil.Process(int(pid)).status() != psutil.STATUS_ZOMBIE
    except (psutil.Error, TypeError, ValueError):
        return False


class RadVLSMTrain(TrainTask):
    def __init__(self, predictor: SegmentPredictor, store: DecoderStore, proposer=None,
                 proposer_store: ProposerStore | None = None, text: str = DEFAULT_PHRASE,
                 pseudo_store: PseudoLabelStore | None = None, site_phrases: tuple[str, ...] = (),
                 embeddings: Path | None = None):
        super().__init__(DESCRIPTION)
        self.embeddings = embeddings  # the labelled images' embeddings the server kept (read, and filled, by a run)
        self.site_phrases = list(site_phrases)  # --conf site_phrases: the default of proposer_phrases
        self.predictor = predictor
        self.store = store
        self.proposer = proposer
        self.proposer_store = proposer_store
        self.text = text
        self.pseudo_store = pseudo_store

    def config(self) -> dict[str, Any]:
        return {**asdict(self.defaults()), "max_images": 0, "multi_gpu": False}

    def defaults(self) -> TrainConfig:
        """What a request without options runs: :class:`TrainConfig`'s defaults and the site's phrases."""
        return TrainConfig(proposer_phrases=list(self.site_phrases))

    def stats(self) -> dict[str, Any]:
        stats = self.store.read_stats()
        if stats.get("status") == "running" and not _alive(stats.get("pid")):
            stats["status"] = "stopped"  # killed (DELETE /train): the served decoder was not touched
        out = {**stats, "served_version": self.store.current(), "versions": self.store.versions()}
        if self.proposer_store is not None:
            out["proposer_served_version"] = self.proposer_store.current()
            out["proposer_versions"] = self.proposer_store.versions()
        return out

    def validate(self, request: dict[str, Any], datastore, strict: bool = True) -> tuple[TrainConfig, list]:
        """The options and the final labels a run would use, or an :class:`InputError` naming what is wrong.

        The app calls it before MONAI Label starts the run in the background (``lib/server/guards.py``), so a misspelt
        option, a wrong type or too few labels is a 422 at once instead of a 200 and a failed run."""
        if strict:  # the run itself is not: MONAI Label's POST /train/ merges every task's options into each
            check_known(request, self.config(), "train option", ignore=SERVER_KEYS)
        try:
            cfg = TrainConfig.from_request({"proposer_phrases": self.site_phrases, **request})
        except InputError:
            raise
        except ValueError as exc:  # TrainConfig's messages start with the field's name
            field, _, message = str(exc).partition(": ")
            raise InputError(field, message or str(exc)) from exc
        limit = get_int(request, "max_images", 0, 0, 10**6) or None
        get_bool(request, "multi_gpu", False)
        samples = samples_from_datastore(datastore, limit)
        if len(samples) < MIN_LABELLED:
            raise InputError("labels", f"training needs at least {MIN_LABELLED} final labels (one to train on, one "
                                       f"to validate on); the datastore has {len(samples)}")
        return cfg, samples

    def pseudo_labels(self, cfg: TrainConfig, samples: list, datastore) -> list:
        """With ``pseudo_labels``: the served text path's confident answers on the unlabelled images, at most one
        per final label (:mod:`radvlsm.training.pseudo`); they only train the proposer."""
        if not cfg.pseudo_labels or self.pseudo_store is None or not (cfg.train_proposer and self.proposer_store):
            return []
        text_path = RadVLSMPipeline(self.predictor, self.proposer, None)
        return make_pseudo_labels(text_path, unlabelled_images(datastore), len(samples), self.pseudo_store,
                                  self.text, cfg.pseudo_min_agreement, cfg.pseudo_max_images)

    def __call__(self, request: dict[str, Any], datastore) -> dict[str, Any]:
        try:
            cfg, samples = self.validate(request, datastore, strict=False)
            gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
            if get_bool(request, "multi_gpu", False) and gpus > 1:
                from radvlsm.training.distributed import launch

                out = launch(self.predictor, samples, self.store, cfg, world_size=gpus)
                out["proposer_note"] = "the proposer is not fine-tuned under multi_gpu; run once without it"
                return out
            # a run is a process of its own (MONAI Label's train subprocess): nothing else encodes with its predictor
            with self.predictor.using_disk_cache(self.embeddings):
                return fine_tune(self.predictor, samples, self.store, cfg, proposer=self.proposer,
                                 proposer_store=self.proposer_store, text=self.text,
                                 pseudo=self.pseudo_labels(cfg, samples, datastore)).to_json()
        except (ValueError, TrainingBusy) as exc:
            raise MONAILabelException(MONAILabelError.INVALID_INPUT, f"radvlsm training: {exc}") from exc
