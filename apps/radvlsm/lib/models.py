"""One predictor (backbone + embedding cache) per app, shared by every task, so one image is encoded once."""

from __future__ import annotations

import logging
import threading

import torch

from radvlsm.cache import EmbeddingCache
from radvlsm.io import load_image, load_mask
from radvlsm.models import build_backbone
from radvlsm.predictor import SegmentPredictor
from radvlsm.proposals import build_proposer
from radvlsm.proposals.site_exemplars import SiteExemplars
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


_sites: dict[int, SiteExemplars] = {}


def site_exemplars_on(conf: dict[str, str]) -> bool:
    """``--conf site_exemplars true``: the radvlsm pipeline is helped by the site's exemplars (off by default)."""
    return conf.get("site_exemplars", "false").lower() == "true"


def shared_site_exemplars(conf: dict[str, str], predictor: SegmentPredictor) -> SiteExemplars:
    """The site's exemplar bank over ``predictor`` (``--conf template_exemplars``, 200): one per app, fed by every
    task that hears of a saved final label, read by the ``template`` backend and the ``radvlsm`` pipeline."""
    with _lock:
        if id(predictor) not in _sites:
            bank = build_proposer("template", predictor=predictor,
                                  max_exemplars=int(conf.get("template_exemplars", "200")))
            _sites[id(predictor)] = SiteExemplars(bank)
        return _sites[id(predictor)]


def learn_final_label(site: SiteExemplars, datastore, image_id: str, text=None, phrase: str = "lesion") -> None:
    """A saved final label joins the site's exemplars (scored first against ``text``, the served text proposer);
    a bad stored label must not break saving or serving, so it is logged and skipped."""
    try:
        label_uri = datastore.get_label_uri(image_id, "final")
        if not label_uri:
            return
        image = load_image(datastore.get_image_uri(image_id))
        site.learn(image_id, image, load_mask(label_uri, image.shape) > 0, text, phrase)
    except Exception as exc:
        logger.warning(f"site exemplars: skipped {image_id}: {exc}")


def learn_saved_labels(site: SiteExemplars, datastore, text=None, phrase: str = "lesion") -> None:
    """At start-up: the final labels already saved, in the background (each is encoded)."""
    ids = sorted(datastore.get_labeled_images(label_tag="final"))
    if ids:
        threading.Thread(target=lambda: [learn_final_label(site, datastore, i, text, phrase) for i in ids],
                         daemon=True, name="site-exemplars").start()
