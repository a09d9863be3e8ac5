"""Active learning: the ``uncertainty`` scoring method (``POST /scoring/uncertainty``) and the strategies
``uncertainty``, ``random``, ``first`` (``POST /activelearning/<name>``), thin over radvlsm.training.uncertainty."""

from __future__ import annotations

import logging
import random
import time
from typing import Any

from monailabel.interfaces.tasks.scoring import ScoringMethod
from monailabel.interfaces.tasks.strategy import Strategy

from radvlsm.defaults import DEFAULT_PHRASE
from radvlsm.io import load_image
from radvlsm.training import uncertainty as al

logger = logging.getLogger(__name__)


class UncertaintyScoring(ScoringMethod):
    """Scores the unlabelled images that have no score yet, or one from an older decoder or proposer
    (``max_images`` per run, 0 = all); ``force=true`` rescores everything."""

    def __init__(self, pipeline_fn, text: str = DEFAULT_PHRASE):
        super().__init__("Pipeline uncertainty per unlabelled image: mean of (1 - candidate agreement), "
                         "(1 - predicted IoU), (1 - image-text match); stored in the image info")
        self.pipeline_fn = pipeline_fn
        self.text = text

    def __call__(self, request: dict[str, Any], datastore) -> dict[str, Any]:
        pipeline = self.pipeline_fn()
        version = pipeline.predictor.decoder_watcher.refresh() if pipeline.predictor.decoder_watcher else "shipped"
        proposer = getattr(pipeline.proposer, "version", "") or "shipped"
        force = bool(request.get("force", False))
        limit = int(request.get("max_images") or 0)
        todo = [i for i in sorted(datastore.get_unlabeled_images())
                if force or al.needs_scoring(datastore.get_image_info(i), version, proposer)]
        todo = todo[:limit] if limit else todo
        scores = {}
        for n, image_id in enumerate(todo, 1):
            try:
                u = al.score_image(pipeline, load_image(datastore.get_image_uri(image_id)), self.text)
            except Exception as exc:  # one unreadable image must not stop the others
                logger.warning(f"uncertainty: skipped {image_id}: {exc}")
                continue
            datastore.update_image_info(image_id, {al.SCORE_KEY: u.to_info(version, time.time(), proposer)})
            scores[image_id] = round(u.score, 5)
            logger.info(f"uncertainty: {n}/{len(todo)} {image_id} = {u.score:.4f}")
        return {"scored": len(scores), "decoder_version": version, "proposer_version": proposer, "scores": scores}


class _Pick(Strategy):
    def __init__(self, name: str):
        super().__init__(f"{name}: {al.STRATEGIES[name]}")
        self.name = name

    def __call__(self, request: dict[str, Any], datastore) -> dict[str, Any] | None:
        ids = datastore.get_unlabeled_images()
        if not ids:
            return None
        return self.pick(ids, datastore)

    def pick(self, ids: list[str], datastore) -> dict[str, Any]:
        raise NotImplementedError


class UncertaintyStrategy(_Pick):
    def __init__(self):
        super().__init__("uncertainty")

    def pick(self, ids, datastore):
        image_id, score = al.pick_uncertain(ids, lambda i: al.stored_score(datastore.get_image_info(i)))
        out: dict[str, Any] = {"id": image_id, "uncertainty": score}
        if score is None:
            out["note"] = "no image is scored yet (POST /scoring/uncertainty); gave the first unlabelled image"
        return out


class RandomStrategy(_Pick):
    def __init__(self):
        super().__init__("random")

    def pick(self, ids, datastore):
        return {"id": al.pick_random(ids, random.Random())}


class FirstStrategy(_Pick):
    def __init__(self):
        super().__init__("first")

    def pick(self, ids, datastore):
        return {"id": al.pick_first(ids)}


STRATEGY_TASKS = {"uncertainty": UncertaintyStrategy, "random": RandomStrategy, "first": FirstStrategy}
