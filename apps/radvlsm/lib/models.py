"""One :class:`radvlsm.stack.Stack` per process and settings, shared by every task: one predictor (so one image
is encoded once), one text proposer, one site exemplar bank, one diagnoser, one pipeline."""

from __future__ import annotations

import logging
import threading

from radvlsm.defaults import DEFAULT_PHRASE
from radvlsm.io import load_image, load_mask
from radvlsm.proposals.site_exemplars import SiteExemplars
from radvlsm.stack import Settings, Stack

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


def learn_final_label(site: SiteExemplars, datastore, image_id: str, text=None, phrase: str = DEFAULT_PHRASE) -> None:
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


def learn_saved_labels(site: SiteExemplars, datastore, text=None, phrase: str = DEFAULT_PHRASE) -> None:
    """At start-up: the final labels already saved, in the background (each is encoded)."""
    ids = sorted(datastore.get_labeled_images(label_tag="final"))
    if ids:
        threading.Thread(target=lambda: [learn_final_label(site, datastore, i, text, phrase) for i in ids],
                         daemon=True, name="site-exemplars").start()
