"""The stores and watchers moved to :mod:`radvlsm.versions` (serving reads them; training publishes into them);
re-exported here so existing imports keep working."""

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
           "ProposerStore", "TrainingBusy", "Watcher", "atomic_write_bytes", "atomic_write_json", "decoder_state"]
