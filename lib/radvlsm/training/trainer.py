"""One fine-tuning run, start to finish: split, embed, validate the served decoder, train, validate, publish
only if not worse. Usable without the server (benchmarks, scripts) and by the ``radvlsm`` train task.

The run starts from the version being served (continual learning from each round of corrections). Nothing is
written to the served pointer unless the new decoder passes its gate (:mod:`radvlsm.training.decoder_gate`:
better with confidence, image by image, out of fold while few images are held back); an exception or a kill
before that leaves the served model as it was. The ``qformer_lite`` proposer
(``train_proposer``, on by default) is then taught the site from every labelled image, lesion-free ones included,
and published into its own store only if its cross-validated per-image score beats the served proposer's with
confidence (:mod:`radvlsm.training.proposer`, :mod:`radvlsm.training.gate`). Pseudo-labels of the site's
unlabelled images (``pseudo``, made by :mod:`radvlsm.training.pseudo`) join the proposer's training only: never
its gate, the decoder's training or any validation.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch.distributed as dist

from radvlsm.proposals.phrases import DEFAULT_PHRASE
from radvlsm.training.data import TrainSample, prepare, split
from radvlsm.training.decoder_gate import decide, gate_method, out_of_fold
from radvlsm.training.loop import EpochLog, TrainConfig, build_model, evaluate, train
from radvlsm.training.proposer import fine_tune_proposer
from radvlsm.versions import ENCODER, PARTS, SHIPPED, DecoderStore, ProposerStore, decoder_state

logger = logging.getLogger(__name__)


@dataclass
class RunResult:
    published: bool
    version: str  # the version served after the run (the new one if published)
    base_version: str
    dice_before: float
    dice_after: float
    train_ids: list[str]
    val_ids: list[str]
    epochs: list[EpochLog] = field(default_factory=list)
    seconds: float = 0.0
    reason: str = ""
    proposer: dict[str, Any] | None = None  # the proposer fine-tune's own outcome (ProposerRun), when it ran
    gate: dict[str, Any] | None = None  # the decoder's gate (radvlsm.training.decoder_gate): method and figures

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["epochs"] = [asdict(e) for e in self.epochs]
        return out


def base_state(predictor, store: DecoderStore) -> tuple[str, dict]:
    """The served version's name and weights: the published checkpoint, or the shipped weights."""
    version = store.current()
    if version != SHIPPED:
        return version, store.load(version)["state"]
    watcher = getattr(predictor, "decoder_watcher", None)
    return SHIPPED, (watcher.shipped if watcher is not None else decoder_state(predictor.backbone))


class StatsWriter:
    """Progress in ``train_stats.json`` (atomic writes): what ``/info`` and ``/train`` stats report."""

    def __init__(self, store: DecoderStore, enabled: bool):
        self.store, self.enabled = store, enabled
        self.stats: dict[str, Any] = {}

    def update(self, **kw: Any) -> None:
        self.stats.update(kw, updated_at=time.time())
        if self.enabled:
            self.store.write_stats(self.stats)


def fine_tune(predictor, samples: list[TrainSample], store: DecoderStore, cfg: TrainConfig | None = None,
              progress: Callable[[EpochLog], None] | None = None, should_stop: Callable[[], bool] | None = None,
              proposer=None, proposer_store: ProposerStore | None = None, text: str = DEFAULT_PHRASE,
              pseudo: list[TrainSample] | None = None) -> RunResult:
    """Train on ``samples`` (corrected labels) and publish into ``store`` if validation is not worse.

    With ``proposer`` (a ``qformer_lite`` proposer) and ``proposer_store``, and ``cfg.train_proposer``, its heads
    are fine-tuned on the same split for the phrase ``text`` and published into ``proposer_store`` by their own
    gate. ``pseudo``: pseudo-labels of unlabelled images (:mod:`radvlsm.training.pseudo`), which only train the
    proposer. Under ``torch.distributed`` every rank calls this with the same samples; rank 0 validates, publishes
    and writes stats (and trains the proposer, which is cheap), the others only train their decoder shard."""
    cfg = cfg or TrainConfig()
    distributed = dist.is_available() and dist.is_initialized()
    # one run at a time; under torch.distributed the launching process holds the lock for its ranks
    with nullcontext() if distributed else store.training_lock():
        rank = dist.get_rank() if distributed else 0
        target = (proposer, proposer_store) if cfg.train_proposer and proposer_store is not None and hasattr(
            proposer, "with_model") else None
        return _run(predictor, samples, store, cfg, rank, progress, should_stop, target, text, pseudo or [])


def _run(predictor, samples: list[TrainSample], store: DecoderStore, cfg: TrainConfig, rank: int,
         progress: Callable[[EpochLog], None] | None, should_stop: Callable[[], bool] | None,
         proposer_target: tuple[Any, ProposerStore] | None, text: str, pseudo: list[TrainSample]) -> RunResult:
    started = time.time()
    stats = StatsWriter(store, rank == 0)
    train_ids, val_ids = split([s.image_id for s in samples])  # by image: a volume's slices stay together
    base_version, state = base_state(predictor, store)
    stats.stats = {}
    stats.update(status="running", pid=os.getpid(), started_at=started, base_version=base_version,
                 config=asdict(cfg), train_images=len(train_ids), val_images=len(val_ids), epoch=0,
                 total_epochs=cfg.epochs, with_pathology=sum(s.pathology is not None for s in samples))
    try:
        by_id: dict[str, list[TrainSample]] = {}
        for s in samples:
            by_id.setdefault(s.image_id, []).append(s)
        logger.info(f"training: {len(train_ids)} training / {len(val_ids)} validation images; base {base_version}")
        _check_encoder(predictor, base_version, state)
        head, _ = _encoder_split(predictor, cfg)
        train_all = prepare([s for i in train_ids for s in by_id[i]], predictor, cfg.max_lesions, head,
                            keep_empty=True)
        val_all = prepare([s for i in val_ids for s in by_id[i]], predictor, cfg.max_lesions, head, keep_empty=True) \
            if rank == 0 else []
        # the decoder learns from lesions; the proposer also from lesion-free labels (presence)
        train_items, val_items = [it for it in train_all if it.lesions], [it for it in val_all if it.lesions]
        if not train_items and not (proposer_target is not None and any(it.lesions for it in val_all)):
            raise ValueError("no training image has a non-empty label")
        result = RunResult(False, base_version, base_version, float("nan"), float("nan"), train_ids, val_ids)
        if (cfg.train_decoder or cfg.train_prompt_encoder) and train_items:
            result = _decoder_part(result, predictor, store, state, cfg, rank, train_items, val_items, stats,
                                   progress, should_stop, _tail_factory(predictor, cfg))
        else:
            result.reason = ("decoder not trained (train_decoder and train_prompt_encoder are false)" if not
                             (cfg.train_decoder or cfg.train_prompt_encoder) else
                             "decoder not trained (no lesion among its training images)")
        if proposer_target is not None and rank == 0:
            stats.update(stage="proposer")
            proposer, proposer_store = proposer_target
            # every labelled image: the proposer's gate is cross-validated (radvlsm.training.proposer)
            labelled = set(by_id)  # a clinician's label always wins over a pseudo-label of the same image
            extra = prepare([p for p in pseudo if p.image_id not in labelled], predictor, 1)
            run = fine_tune_proposer(proposer, train_all + val_all, proposer_store, cfg.proposer_config(), text,
                                     extra=extra)
            result.proposer = run.to_json()
            result.reason += f"; {run.reason}"
        result.seconds = round(time.time() - started, 2)
        stats.update(status="done", finished_at=time.time(), **result.to_json())
        logger.info(f"training: {result.reason} ({result.seconds:.1f} s)")
        return result
    except BaseException as exc:  # interrupted or failed: the served pointers were never touched
        stats.update(status="stopped" if isinstance(exc, KeyboardInterrupt) else "failed",
                     error=f"{type(exc).__name__}: {exc}", finished_at=time.time())
        raise


def _decoder_part(result: RunResult, predictor, store: DecoderStore, state: dict, cfg: TrainConfig, rank: int,
                  train_items: list, val_items: list, stats: StatsWriter,
                  progress: Callable[[EpochLog], None] | None, should_stop: Callable[[], bool] | None,
                  tails: Callable[[], Any] | None = None) -> RunResult:
    """Score the served decoder, train a copy (with fresh encoder adapters from ``tails``, if any), score it
    (held back or out of fold: :mod:`radvlsm.training.decoder_gate`), publish it if the gate passes (rank 0)."""
    img_size = predictor.backbone.img_size
    method = gate_method(cfg, val_items, distributed=dist.is_available() and dist.is_initialized())
    # cross-validated: the published model learns from every labelled lesion image, each scored out of fold
    fit_items = train_items + val_items if method == "cv" else train_items
    scored = fit_items if method == "cv" else val_items

    def fresh() -> Any:
        """A trainable copy of the served decoder, with fresh adapters if the run trains them."""
        model = build_model(predictor.backbone, state, cfg)
        model.encoder_tail = tails() if tails is not None else None
        return model

    # the served model's scores, without adapters (they start at zero, but it need not be assumed)
    before = evaluate(build_model(predictor.backbone, state, cfg), scored, img_size) if scored and rank == 0 else []
    result.dice_before = float(np.mean(before)) if before else float("nan")
    model = fresh()
    stats.update(dice_before=result.dice_before, stage="decoder", gate_method=method)

    def on_epoch(log: EpochLog) -> None:
        stats.update(epoch=log.epoch, loss=log.loss, losses=[*stats.stats.get("losses", []), log.loss])
        if progress is not None:
            progress(log)

    result.epochs = train(model, fit_items, img_size, cfg, on_epoch, should_stop).logs
    if rank == 0:
        if method == "cv":
            stats.update(stage="decoder cross-validation")
            after = out_of_fold(fresh, scored, img_size, cfg, should_stop)
        else:
            after = evaluate(model, scored, img_size) if scored else []
        result.dice_after = float(np.nanmean(after)) if after else float("nan")
        passed, result.gate, rule = decide(method, scored, before, after, cfg)
        if passed:
            result = _publish(result, model, predictor, store, cfg, len(fit_items), state, rule)
        else:
            result.reason = f"not published: decoder {rule}"
    return result


def _served_encoder(predictor):
    """``(version, module)`` of the adapted segmentation encoder the predictor serves, or None."""
    watcher = getattr(predictor, "decoder_watcher", None)
    return watcher.segmentation_encoder if watcher is not None else None


def _check_encoder(predictor, base_version: str, state: dict) -> None:
    """A served version with adapted encoder weights trains on that encoder's embeddings: the predictor must
    be serving it (follow the store), or the decoder would learn from the wrong embeddings."""
    if not any(k.startswith(f"{ENCODER}.") for k in state):
        return
    served = _served_encoder(predictor)
    if served is None or served[0] != base_version:
        raise ValueError(f"the served version {base_version} has an adapted image encoder, which this predictor "
                         "does not serve; train through a predictor that follows the store (DecoderWatcher)")


def _tail_factory(predictor, cfg: TrainConfig) -> Callable[[], Any] | None:
    """Fresh encoder adapters (zero-initialised) for each model a run trains, or None without adapters."""
    if cfg.encoder_lora_rank <= 0:
        return None
    return lambda: _encoder_split(predictor, cfg)[1]


def _encoder_split(predictor, cfg: TrainConfig):
    """``(head, tail)`` for training encoder adapters (``cfg.encoder_lora_rank`` > 0), from the served
    segmentation encoder (an adapted one continues), else ``(None, None)``."""
    if cfg.encoder_lora_rank <= 0:
        return None, None
    from radvlsm.training.lora import split_encoder

    served = _served_encoder(predictor)
    encoder = served[1] if served is not None else predictor.backbone.image_encoder
    head, tail = split_encoder(predictor.backbone.name, encoder, cfg.encoder_lora_rank)
    return head, tail.cpu()


def _publish(result: RunResult, model, predictor, store: DecoderStore, cfg: TrainConfig, n_train: int,
             base: dict, rule: str) -> RunResult:
    state = {k: v for k, v in model.state_dict().items() if k.split(".")[0] in PARTS}
    # encoder weights: the new adapters merged, else the served version's own (a decoder trained on an adapted
    # encoder's embeddings is published with that encoder)
    encoder = {k: v for k, v in base.items() if k.startswith(f"{ENCODER}.")}
    state.update(model.encoder_tail.merged_state() if model.encoder_tail is not None else encoder)
    meta = {"base_version": result.base_version, "dice_before": result.dice_before, "dice_after": result.dice_after,
            "train_ids": result.train_ids, "val_ids": result.val_ids, "train_images": n_train,
            "gate": result.gate, "config": asdict(cfg), "losses": [e.loss for e in result.epochs]}
    result.version = store.publish(state, predictor.backbone.name, predictor.backbone.version, meta)
    result.published = True
    result.reason = f"published {result.version}: decoder {rule}"
    return result
