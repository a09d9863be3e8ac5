"""Versioned, atomically published checkpoints: the mask decoder's, the proposer's and the diagnosis head's.

Layout under ``root`` (one folder per trained part, e.g. ``<trained_dir>/sam_decoder``)::

    v0001.pt  v0001.json   # weights (prompt encoder + mask decoder state) and their metadata
    v0002.pt  v0002.json
    current                # the served version's name ("shipped" = the bundled weights); replaced atomically
    train_stats.json       # the last run's progress and outcome (what MONAI Label's /train stats show)
    .lock                  # held by the one training run allowed at a time

Every file is written to a temp file in the same folder and ``os.replace``-d into place, so a reader sees the
old file or the new one, never half of one. A run that dies before publishing leaves ``current`` untouched; old
versions are never deleted, so ``restore(version)`` brings any of them (or ``shipped``) back.

Training publishes into a store; serving only reads it (:mod:`radvlsm.versions.watcher`). torch is imported only
by the methods that read or write ``.pt`` payloads.
"""

from __future__ import annotations

import fcntl
import json
import logging
import re
import time
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from radvlsm.io import atomic_write

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)
SHIPPED = "shipped"
_VERSION = re.compile(r"^v(\d{4,})$")
#: the backbone parts a decoder checkpoint holds (the image encoder stays frozen, so embeddings stay valid)
PARTS = ("prompt_encoder", "mask_decoder")
#: key prefix of adapted image-encoder weights in a checkpoint (only runs with encoder adapters write them)
ENCODER = "image_encoder"


class TrainingBusy(RuntimeError):
    """Another training run holds the store's lock."""


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, json.dumps(obj, indent=1, sort_keys=True).encode())


class DecoderStore:
    """The versioned checkpoints of one backbone's prompt encoder + mask decoder."""

    payload_suffix = ".pt"  # a version's weights file; its metadata is always ``<version>.json``
    kind = "decoder"

    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser()

    def payload(self, version: str) -> Path:
        return self.root / f"{version}{self.payload_suffix}"

    @property
    def pointer(self) -> Path:
        return self.root / "current"

    @property
    def stats_path(self) -> Path:
        return self.root / "train_stats.json"

    def versions(self) -> list[str]:
        if not self.root.is_dir():
            return []
        cut = len(self.payload_suffix)
        names = [p.name[:-cut] for p in self.root.glob(f"v*{self.payload_suffix}") if _VERSION.match(p.name[:-cut])]
        return sorted(names, key=lambda n: int(n[1:]))

    def current(self) -> str:
        """The served version's name, ``shipped`` when nothing was published (or the pointer is unreadable)."""
        try:
            name = self.pointer.read_text().strip()
        except OSError:
            return SHIPPED
        return name if name == SHIPPED or self.payload(name).is_file() else SHIPPED

    def pointer_stamp(self) -> tuple[int, int] | None:
        """``(mtime_ns, inode)`` of the pointer: a cheap change test for every decode."""
        try:
            st = self.pointer.stat()
        except OSError:
            return None
        return st.st_mtime_ns, st.st_ino

    def metadata(self, version: str) -> dict[str, Any]:
        try:
            return json.loads((self.root / f"{version}.json").read_text())
        except (OSError, ValueError):
            return {}

    def load(self, version: str) -> dict[str, Any]:
        """``{"state": {part.key: tensor}, "backbone": ..., "backbone_version": ...}`` of a published version."""
        import torch

        return torch.load(self.payload(version), map_location="cpu", weights_only=True)

    def publish(self, state: dict[str, torch.Tensor], backbone: str, backbone_version: str,
                meta: dict[str, Any]) -> str:
        """Write a new version beside the old ones, then point ``current`` at it (both atomic)."""
        return self.publish_state(state, {"backbone": backbone, "backbone_version": backbone_version}, meta)

    def publish_state(self, state: dict[str, torch.Tensor], identity: dict[str, str], meta: dict[str, Any]) -> str:
        """Publish ``state`` (``{module.key: tensor}``) with ``identity`` (what a watcher checks before loading:
        e.g. the backbone version it was trained on) in both the payload and the metadata."""
        import torch

        payload = {"state": {k: v.detach().cpu() for k, v in state.items()}, **identity}
        return self.publish_payload(lambda tmp: torch.save(payload, tmp), {**meta, **identity})

    def publish_payload(self, write, meta: dict[str, Any]) -> str:
        """``write(tmp_path)`` the next version's payload; it is renamed into place, its metadata written, and
        ``current`` pointed at it last (all atomic), so a reader never sees a half-published version."""
        self.root.mkdir(parents=True, exist_ok=True)
        with self._file_lock(".publish.lock", blocking=True):
            existing = self.versions()
            version = f"v{(int(existing[-1][1:]) + 1 if existing else 1):04d}"
            atomic_write(self.payload(version), write)
            atomic_write_json(self.root / f"{version}.json", {**meta, "version": version, "published_at": time.time()})
            atomic_write_bytes(self.pointer, f"{version}\n".encode())
        logger.info(f"radvlsm: published {self.kind} {version} in {self.root}")
        return version

    def restore(self, version: str) -> None:
        """Serve an earlier version again (or ``shipped``); running servers pick it up on their next decode."""
        if version != SHIPPED and not self.payload(version).is_file():
            raise ValueError(f"no {self.kind} version '{version}' in {self.root}; have {self.versions() + [SHIPPED]}")
        atomic_write_bytes(self.pointer, f"{version}\n".encode())

    def write_stats(self, stats: dict[str, Any]) -> None:
        atomic_write_json(self.stats_path, stats)

    def read_stats(self) -> dict[str, Any]:
        try:
            return json.loads(self.stats_path.read_text())
        except (OSError, ValueError):
            return {}

    @contextmanager
    def training_lock(self):
        """Held for a whole run: a second concurrent run fails fast with :class:`TrainingBusy`."""
        with self._file_lock(".lock", blocking=False):
            yield

    @contextmanager
    def _file_lock(self, name: str, blocking: bool):
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / name, "a+") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
            except BlockingIOError as exc:
                raise TrainingBusy(f"another training run is in progress ({self.root / name} is locked)") from exc
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)


def decoder_state(backbone) -> dict[str, torch.Tensor]:
    """The trainable parts' weights as ``{part.key: tensor}`` (what a checkpoint holds)."""
    return {f"{part}.{k}": v.detach().clone().cpu() for part in PARTS
            for k, v in getattr(backbone, part).state_dict().items()}


class ProposerStore(DecoderStore):
    """Versioned fine-tunes of the ``qformer_lite`` proposer (same layout and guarantees as the decoder's)."""

    kind = "proposer"


class HeadStore(DecoderStore):
    """Versioned diagnosis heads (``v0001.head.json`` + ``v0001.json`` metadata, ``current`` pointer), published
    and restored exactly as the decoder checkpoints are. A payload is the head's plain JSON
    (:meth:`radvlsm.diagnosis.head.Head.to_dict`); :class:`radvlsm.diagnosis.head.HeadWatcher` serves it."""

    payload_suffix = ".head.json"
    kind = "diagnosis head"

    def publish_head(self, head: Any, meta: dict[str, Any]) -> str:
        """Publish ``head`` (anything with ``to_dict()``, a :class:`radvlsm.diagnosis.head.Head`)."""
        return self.publish_payload(lambda tmp: Path(tmp).write_text(json.dumps(head.to_dict(), indent=1)), meta)

    def load(self, version: str) -> dict[str, Any]:
        """The published head's JSON (``Head.from_dict`` makes the head of it)."""
        return json.loads(self.payload(version).read_text())
