"""Training samples from a MONAI Label datastore (any object with its ``Datastore`` methods), and where trained
checkpoints live (the serving stores' locations are :mod:`radvlsm.versions.locations`, re-exported here; the
pseudo-labels, training's own, are here).

How a diagnosis label travels: with the corrected mask, as the label's info JSON, e.g.
``PUT /datastore/label?image=ID&tag=final`` with form field ``params={"pathology": "malignant"}``; any other value
(or none) means "not given". The ``diagnosis`` train task recalibrates the diagnosis head on them.
"""

from __future__ import annotations

import logging
from pathlib import Path

from radvlsm.training.data import PATHOLOGIES, TrainSample, volume_samples
from radvlsm.versions.locations import decoder_store as decoder_store
from radvlsm.versions.locations import default_trained_dir as default_trained_dir
from radvlsm.versions.locations import head_store as head_store
from radvlsm.versions.locations import proposer_store as proposer_store

logger = logging.getLogger(__name__)
FINAL = "final"


def pathology_of(info: dict | None) -> str | None:
    value = (info or {}).get("pathology")
    return value.lower() if isinstance(value, str) and value.lower() in PATHOLOGIES else None


def samples_from_datastore(datastore, limit: int | None = None) -> list[TrainSample]:
    """Every image with a final (clinician-corrected) label, with its pathology when the label carries one; a
    volume's label as its slices (:func:`radvlsm.training.data.volume_samples`). ``limit`` counts images."""
    out = []
    for image_id in sorted(datastore.get_labeled_images(label_tag=FINAL)):
        label_uri = datastore.get_label_uri(image_id, FINAL)
        image_uri = datastore.get_image_uri(image_id)
        if not label_uri or not image_uri:
            continue
        try:
            info = datastore.get_label_info(image_id, FINAL)
        except Exception:  # label info is optional
            info = {}
        out.append(TrainSample(image_id, image_uri, label_uri, pathology_of(info)))
    out = out[:limit] if limit else out
    expanded = []
    for sample in out:
        try:
            expanded += volume_samples(sample)
        except ValueError as exc:  # unreadable now (it was checked when saved): the other labels still train
            logger.warning(f"training: {sample.image_id} skipped: {exc}")
    return expanded


def pseudo_store(trained_dir: str | Path, backbone: str):
    """The last run's pseudo-labels of unlabelled images: ``<trained_dir>/<backbone>/pseudo_labels`` (made by that
    backbone's served stack; apart from the datastore's labels, never over a clinician's)."""
    from radvlsm.training.pseudo import PseudoLabelStore

    return PseudoLabelStore(Path(trained_dir) / backbone / "pseudo_labels")


def unlabelled_images(datastore) -> list[tuple[str, str]]:
    """``(image id, image path)`` of every image with no final label."""
    out = []
    for image_id in sorted(datastore.get_unlabeled_images()):
        uri = datastore.get_image_uri(image_id)
        if uri:
            out.append((image_id, uri))
    return out

