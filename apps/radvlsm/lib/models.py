"""One predictor (backbone + embedding cache) per app, shared by every task, so one image is encoded once."""

from __future__ import annotations

import logging
import threading

import torch

from radvlsm.cache import EmbeddingCache
from radvlsm.models import build_backbone
from radvlsm.predictor import SegmentPredictor
from radvlsm.runtimes.warmup import warm_up
from radvlsm.training import DecoderWatcher
from radvlsm.training.datastore import decoder_store

logger = logging.getLogger(__name__)
_lock = threading.Lock()
_predictors: dict[tuple, SegmentPredictor] = {}


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def shared_predictor(conf: dict[str, str]) -> SegmentPredictor:
    """The app's predictor for ``conf`` (``backbone``, ``checkpoint``, ``device``, ``cache_mb``, ``runtime``,
    ``runtime_dir``). The encoder runtime is built (ONNX export if not cached) and warmed up here, at start-up."""
    backbone = conf.get("backbone", "litemedsam")
    checkpoint = conf.get("checkpoint") or None
    device = conf.get("device") or default_device()
    cache_mb = int(conf.get("cache_mb", "512"))
    runtime = conf.get("runtime", "auto")
    key = (backbone, checkpoint, device, runtime)
    with _lock:
        if key not in _predictors:
            model = build_backbone(backbone, checkpoint=checkpoint, device=device)
            logger.info(f"radvlsm: backbone {backbone} (version {model.version}) on {device}; "
                        f"embedding cache {cache_mb} MB")
            _predictors[key] = SegmentPredictor(model, EmbeddingCache(max_bytes=cache_mb << 20), runtime=runtime,
                                                runtime_dir=conf.get("runtime_dir") or None)
            warm_up(_predictors[key])
            if conf.get("trained_dir"):  # serve the decoder the radvlsm train task publishes, live
                store = decoder_store(conf["trained_dir"], backbone)
                _predictors[key].decoder_watcher = DecoderWatcher(store, model, _predictors[key]._lock)
                version = _predictors[key].decoder_watcher.refresh()
                logger.info(f"radvlsm: decoder versions in {store.root}; serving {version}")
        return _predictors[key]
