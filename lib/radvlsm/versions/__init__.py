"""Published versions of the trained parts: the stores (:mod:`radvlsm.versions.store`), where they live
(:mod:`radvlsm.versions.locations`) and the one hot-reload rule serving follows them by
(:mod:`radvlsm.versions.watcher`).

Serving only reads these; :mod:`radvlsm.training` publishes into them. Nothing here imports the training package
(or torch, until a ``.pt`` payload is read or written).
"""

from radvlsm.versions.locations import (
    decoder_store,
    default_trained_dir,
    head_store,
    labelled_embeddings_dir,
    proposer_store,
)
from radvlsm.versions.store import (
    ENCODER,
    PARTS,
    SHIPPED,
    DecoderStore,
    HeadStore,
    ProposerStore,
    TrainingBusy,
    atomic_write_bytes,
    atomic_write_json,
    decoder_state,
)
from radvlsm.versions.watcher import DecoderWatcher, ModuleWatcher, Watcher

__all__ = ["ENCODER", "PARTS", "SHIPPED", "DecoderStore", "DecoderWatcher", "HeadStore", "ModuleWatcher",
           "ProposerStore", "TrainingBusy", "Watcher", "atomic_write_bytes", "atomic_write_json", "decoder_state",
           "decoder_store", "default_trained_dir", "head_store", "labelled_embeddings_dir", "proposer_store"]
