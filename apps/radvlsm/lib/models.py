"""One :class:`radvlsm.stack.Stack` per process and settings, shared by every task: one predictor (so one image
is encoded once), one text proposer, one site exemplar bank, one diagnoser, one pipeline."""

from __future__ import annotations

import atexit
import logging
import queue
import threading
from pathlib import Path

import numpy as np

from radvlsm.defaults import DEFAULT_PHRASE
from radvlsm.io import load_mask
from radvlsm.proposals.site_exemplars import SiteExemplars
from radvlsm.stack import Settings, Stack
from radvlsm.volume import Volume, load_input, load_volume_label, slice_areas

logger = logging.getLogger(__name__)
_lock = threading.Lock()
_stacks: dict[Settings, Stack] = {}


def shared_stack(conf: dict[str, str], model_dir: str) -> Stack:
    """The app's stack for ``conf`` (MONAI Label's ``--conf`` strings, :meth:`Settings.from_conf`) and the app's
    model folder; its parts are built on first use (the predictor's encoder runtime, with its warm-up, at
    start-up: the first task's ``infer()`` asks for it)."""
    settings = Settings.from_conf(conf, model_dir)
    with _lock:
        if settings not in _stacks:
            _stacks[settings] = Stack(settings)
        return _stacks[settings]


def learn_final_label(site: SiteExemplars, datastore, image_id: str, text=None, phrase: str = DEFAULT_PHRASE,
                      keep: Path | None = None) -> None:
    """A saved final label joins the site's exemplars at once (one encode). With ``text`` (the served text
    proposer) it is then scored against both sources, which decodes a few masks per recent label (seconds on a
    CPU): that runs on the site's learning thread, in saving order, so the save answers first. With ``keep``
    the image's embedding is written there (:attr:`radvlsm.stack.Stack.labelled_embeddings`): the next training
    run, a process of its own, reads it instead of encoding the image again. A bad stored label must not break
    saving or serving, so it is logged and skipped."""
    loaded = _load(datastore, image_id)
    if loaded is None:
        return
    image, mask = loaded
    try:
        if site.add(image_id, image, mask) and text is not None:
            _learner.submit(_score, site, image_id, image, mask, text, phrase)
    except Exception as exc:
        logger.warning(f"site exemplars: skipped {image_id}: {exc}")
        return
    _keep_embedding(site, image_id, image, keep)


def learn_saved_labels(site: SiteExemplars, datastore, text=None, phrase: str = DEFAULT_PHRASE,
                       keep: Path | None = None) -> None:
    """At start-up of the server (not of its training subprocesses, which build the app too but serve nothing):
    the final labels already saved, on the site's learning thread (each is encoded)."""
    for image_id in sorted(datastore.get_labeled_images(label_tag="final")):
        _learner.submit(_learn, site, datastore, image_id, text, phrase, keep)


def _keep_embedding(site: SiteExemplars, image_id: str, image, keep: Path | None) -> None:
    """Derived data for the next training run: a failure (a full disk) is logged and costs that run one encode."""
    if keep is None:
        return
    predictor = site.bank.predictor
    try:
        predictor.persist(image, predictor.encode(image), keep)  # the bank just encoded it: a memory-cache hit
    except Exception as exc:
        logger.warning(f"radvlsm: could not keep the embedding of {image_id} in {keep}: {exc}")


def _load(datastore, image_id: str):
    """The image and final label the site learns; a volume's is its slice with the largest lesion (one exemplar
    per volume, as per 2D image; a lesion-free volume label is its first slice, empty: it empties the exemplar)."""
    try:
        label_uri = datastore.get_label_uri(image_id, "final")
        if not label_uri:
            return None
        image = load_input(datastore.get_image_uri(image_id))
        if isinstance(image, Volume):
            label = load_volume_label(label_uri, image) > 0
            k = int(np.argmax(slice_areas(label)))
            return image.slice_image(k), label[k]
        return image, load_mask(label_uri, image.shape) > 0
    except Exception as exc:
        logger.warning(f"site exemplars: skipped {image_id}: {exc}")
        return None


class _Learner:
    """One daemon thread learns a site's labels in the order they came. At exit the labels still queued are dropped
    (they are in the datastore and are learned again at the next start) and the one being learned is finished: a
    process must not exit while this thread is inside the runtime (a training subprocess, which builds the app
    too, aborted so)."""

    def __init__(self):
        self._queue: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self._state = threading.Lock()
        self._stopped = False

    def submit(self, fn, *args) -> None:
        with self._state:
            if self._stopped:
                return
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, daemon=True, name="site-exemplars")
                self._thread.start()
                atexit.register(self.stop)
            self._queue.put((fn, args))

    def stop(self, timeout: float = 120.0) -> None:
        with self._state:
            self._stopped = True
            while True:
                try:
                    self._queue.get_nowait()
                except queue.Empty:
                    break
            self._queue.put(None)
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            fn, args = item
            fn(*args)


_learner = _Learner()


def _learn(site: SiteExemplars, datastore, image_id: str, text, phrase: str, keep: Path | None) -> None:
    loaded = _load(datastore, image_id)
    if loaded is None:
        return
    try:
        site.learn(image_id, *loaded, text, phrase)
    except Exception as exc:
        logger.warning(f"site exemplars: skipped {image_id}: {exc}")
        return
    _keep_embedding(site, image_id, loaded[0], keep)


def _score(site: SiteExemplars, image_id: str, image, mask, text, phrase: str) -> None:
    try:
        site.score(image_id, image, mask, text, phrase)
    except Exception as exc:
        logger.warning(f"site exemplars: could not score {image_id}: {exc}")
