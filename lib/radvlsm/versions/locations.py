"""Where the published versions live: one store per trained part and backbone under a ``trained_dir``.

Serving follows these stores and training publishes into them, so both read the location from here.
"""

from __future__ import annotations

import os
from pathlib import Path

from radvlsm.versions.store import DecoderStore, HeadStore, ProposerStore


def default_trained_dir(studies: str, app_dir: str) -> str:
    """Checkpoints learned from a dataset's corrections live with it (``<studies>/.radvlsm/trained``); a remote
    datastore (a URL) falls back to ``<app_dir>/model/trained``."""
    if studies and os.path.isdir(studies):
        return os.path.join(studies, ".radvlsm", "trained")
    return os.path.join(app_dir, "model", "trained")


def labelled_embeddings_dir(trained_dir: str | Path) -> Path:
    """Where the server keeps the embeddings of images with a final label (``<trained_dir>/embeddings``), so a
    training run, a process of its own, does not encode them again. Derived data: safe to delete."""
    return Path(trained_dir) / "embeddings"


def decoder_store(trained_dir: str | Path, backbone: str) -> DecoderStore:
    """One store per backbone: ``<trained_dir>/<backbone>/sam_decoder``."""
    return DecoderStore(Path(trained_dir) / backbone / "sam_decoder")


def proposer_store(trained_dir: str | Path, backbone: str) -> ProposerStore:
    """Fine-tunes of the qformer_lite proposer: ``<trained_dir>/<backbone>/qformer_lite`` (it reads that
    backbone's embedding)."""
    return ProposerStore(Path(trained_dir) / backbone / "qformer_lite")


def head_store(trained_dir: str | Path, backbone: str) -> HeadStore:
    """Site-recalibrated diagnosis heads: ``<trained_dir>/<backbone>/diagnosis_head`` (its visual branch reads
    that backbone's embedding)."""
    return HeadStore(Path(trained_dir) / backbone / "diagnosis_head")
