"""The ``diagnosis`` train task (``POST /train/diagnosis``): recalibrate the diagnosis head on the final labels
that carry a pathology (logic in :mod:`radvlsm.diagnosis.recalibrate`); the infer tasks follow the published
head live (``head_version`` in their result)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from monailabel.interfaces.exception import MONAILabelError, MONAILabelException
from monailabel.interfaces.tasks.train import TrainTask

from radvlsm.diagnosis.recalibrate import HeadStore, LabelledLesion, branch_logits, recalibrate
from radvlsm.params import check_known, get_float, get_int
from radvlsm.training import TrainingBusy
from radvlsm.training.data import lesion_components
from radvlsm.training.datastore import samples_from_datastore

logger = logging.getLogger(__name__)
DESCRIPTION = ("Recalibrate the diagnosis head's fusion layer on final labels saved with a pathology "
               "(params {\"pathology\": \"benign\"|\"malignant\"}); published only if the held-back log-loss is "
               "not worse. Options: strength (prior weight, 5), tolerance (0), max_images (0 = all).")


class DiagnosisTrain(TrainTask):
    def __init__(self, pipeline: Callable[[], Any], store: HeadStore, embeddings: Path | None = None):
        super().__init__(DESCRIPTION)
        self.pipeline = pipeline
        self.store = store
        self.embeddings = embeddings  # the labelled images' embeddings the server kept

    def config(self) -> dict[str, Any]:
        return {"strength": 5.0, "tolerance": 0.0, "max_images": 0}

    def stats(self) -> dict[str, Any]:
        return {**self.store.read_stats(), "served_version": self.store.current(), "versions": self.store.versions()}

    def validate(self, request: dict[str, Any], datastore=None, strict: bool = True) -> tuple[float, float, int | None]:
        """``(strength, tolerance, max_images)``, or an :class:`~radvlsm.errors.InputError` naming the bad option;
        the app calls it before MONAI Label starts the run in the background (``lib/server/guards.py``)."""
        if strict:  # the run itself is not: MONAI Label's POST /train/ merges every task's options into each
            check_known(request, self.config(), "train option", ignore=("model", "bundle_path"))
        return (get_float(request, "strength", 5.0, 1e-6, 1e6), get_float(request, "tolerance", 0.0, 0.0, 10.0),
                get_int(request, "max_images", 0, 0, 10**6) or None)

    def __call__(self, request: dict[str, Any], datastore) -> dict[str, Any]:
        start = time.time()
        try:
            strength, tolerance, limit = self.validate(request, datastore, strict=False)
            with self.store.training_lock():
                pipeline = self.pipeline()
                diagnoser = pipeline.diagnoser
                if diagnoser is None:
                    raise ValueError("no diagnosis head is loaded (model/diagnosis/head.json is missing)")
                base = diagnoser.refresh()
                # the head is a 2D breast-US one: a volume's slices do not recalibrate it
                samples = [s for s in samples_from_datastore(datastore) if s.pathology and s.slice is None][:limit]
                self.store.write_stats({"status": "running", "started": start, "images": len(samples)})
                lesions, skipped = [], []
                with pipeline.predictor.using_disk_cache(self.embeddings):  # a run is a process of its own
                    for s in samples:
                        image, mask = s.load()
                        parts = lesion_components(mask)
                        logits = branch_logits(diagnoser, image, parts[0], pipeline.predictor.encode(image)) \
                            if parts else None
                        if logits is None:
                            skipped.append(s.image_id)
                            continue
                        lesions.append(LabelledLesion(s.image_id, *logits, s.pathology == "malignant"))
                res = recalibrate(diagnoser.head, lesions, self.store, strength, tolerance, base_version=base)
            out = {"status": "done", "task": "diagnosis", **res.to_json(), "skipped": skipped,
                   "seconds": round(time.time() - start, 1), "served_version": self.store.current()}
            logger.info(f"radvlsm diagnosis training: {out}")
            self.store.write_stats(out)
            return out
        except (ValueError, TrainingBusy) as exc:
            self.store.write_stats({"status": "failed", "error": str(exc), "started": start})
            raise MONAILabelException(MONAILabelError.INVALID_INPUT, f"radvlsm diagnosis training: {exc}") from exc
