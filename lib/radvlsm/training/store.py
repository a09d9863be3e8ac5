"""Versioned, atomically published mask-decoder checkpoints, and live pickup by a running predictor.

Layout under ``root`` (one folder per trained part, e.g. ``<trained_dir>/sam_decoder``)::

    v0001.pt  v0001.json   # weights (prompt encoder + mask decoder state) and their metadata
    v0002.pt  v0002.json
    current                # the served version's name ("shipped" = the bundled weights); replaced atomically
    train_stats.json       # the last run's progress and outcome (what MONAI Label's /train stats show)
    .lock                  # held by the one training run allowed at a time

Every file is written to a temp file in the same folder and ``os.replace``-d into place, so a reader sees the
old file or the new one, never half of one. A run that dies before publishing leaves ``current`` untouched; old
versions are never deleted, so ``restore(version)`` brings any of them (or ``shipped``) back.
"""

from __future__ import annotations

import copy
import fcntl
import json
import logging
import re
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from radvlsm.io import atomic_write

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
        return torch.load(self.payload(version), map_location="cpu", weights_only=True)

    def publish(self, state: dict[str, torch.Tensor], backbone: str, backbone_version: str,
                meta: dict[str, Any]) -> str:
        """Write a new version beside the old ones, then point ``current`` at it (both atomic)."""
        return self.publish_state(state, {"backbone": backbone, "backbone_version": backbone_version}, meta)

    def publish_state(self, state: dict[str, torch.Tensor], identity: dict[str, str], meta: dict[str, Any]) -> str:
        """Publish ``state`` (``{module.key: tensor}``) with ``identity`` (what a watcher checks before loading:
        e.g. the backbone version it was trained on) in both the payload and the metadata."""
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


class ModuleWatcher:
    """Keeps live modules on a store's ``current`` version (the mask decoder, the proposer's heads, ...).

    ``refresh`` costs one ``stat`` when nothing changed; when the pointer changed it loads the version (or the
    shipped weights, kept in memory at start) under ``lock``, so no forward pass sees half-loaded weights.
    A checkpoint that cannot be loaded or was trained from another base (its ``identity`` entry differs, e.g.
    another backbone) is logged and the served weights stay; at start-up, when nothing is served yet, the newest
    earlier version that loads is served (the last good one).
    """

    def __init__(self, store: DecoderStore, modules: dict[str, torch.nn.Module], lock: threading.Lock,
                 identity: tuple[str, str], optional: tuple[str, ...] = ()):
        self.store = store
        self.modules = modules
        self.optional = optional  # modules a version may leave out: they get their shipped state
        self.lock = lock
        self.identity = identity  # (payload key, the value this process's modules need)
        self.shipped = {f"{name}.{k}": v.detach().clone().cpu() for name, m in modules.items()
                        for k, v in m.state_dict().items()}
        self.version = SHIPPED
        self.loaded_at: float | None = None
        self._stamp: tuple[int, int] | None = None
        self._check = threading.Lock()

    def refresh(self) -> str:
        stamp = self.store.pointer_stamp()
        if stamp == self._stamp:
            return self.version
        with self._check:
            if stamp == self._stamp:
                return self.version
            version = self.store.current()
            if version != self.version and not self._load(version) and self.loaded_at is None:
                self._fall_back_from(version)
            self._stamp = stamp
        return self.version

    def _fall_back_from(self, version: str) -> None:
        """At start-up (nothing loaded yet) a ``current`` that cannot be loaded falls back to the newest earlier
        version that loads, the last good one, rather than to the shipped weights."""
        older = [v for v in self.store.versions() if v != version and (
            version == SHIPPED or not version[1:].isdigit() or int(v[1:]) < int(version[1:]))]
        for candidate in reversed(older):
            if self._load(candidate):
                logger.error(f"radvlsm: serving {self.store.kind} {candidate}, the newest that loads "
                             f"('current' is {version})")
                return

    def _apply(self, version: str, state: dict[str, torch.Tensor]) -> None:
        """Load ``state`` into the modules (called under the lock)."""
        for name, module in self.modules.items():
            sub = {k[len(name) + 1:]: v for k, v in state.items() if k.startswith(name + ".")}
            if not sub and name in self.optional:
                sub = {k[len(name) + 1:]: v for k, v in self.shipped.items() if k.startswith(name + ".")}
            module.load_state_dict(sub, strict=True)

    def _load(self, version: str) -> bool:
        kind = self.store.kind
        if version == SHIPPED:
            state = self.shipped
        else:
            try:
                ckpt = self.store.load(version)
            except Exception as exc:  # a corrupt file must not take the served model down
                logger.error(f"radvlsm: {kind} {version} could not be loaded ({exc}); keeping {self.version}")
                return False
            key, want = self.identity
            if ckpt.get(key) != want:
                logger.error(f"radvlsm: {kind} {version} was trained from {key} {ckpt.get(key)}, this one is "
                             f"{want}; keeping {self.version}")
                return False
            state = ckpt["state"]
        with self.lock:
            self._apply(version, state)
        self.version, self.loaded_at = version, time.time()
        logger.info(f"radvlsm: now serving {kind} {version} from {self.store.root}")
        return True


class DecoderWatcher(ModuleWatcher):
    """Keeps a predictor's prompt encoder + mask decoder on the store's ``current`` version; a checkpoint
    trained on another backbone version is refused.

    A version trained with encoder adapters (``encoder_lora_rank``) also holds ``image_encoder.*`` weights: they
    go into a separate copy of the image encoder, :attr:`segmentation_encoder`, which the predictor runs for the
    mask decoder only; the backbone's own encoder (and so the proposer's and diagnosis head's input) is untouched.
    """

    def __init__(self, store: DecoderStore, backbone, lock: threading.Lock):
        super().__init__(store, {part: getattr(backbone, part) for part in PARTS}, lock,
                         ("backbone_version", backbone.version))
        self.backbone = backbone
        #: ``(version, encoder module)`` while a version with adapted encoder weights is served, else None
        self.segmentation_encoder: tuple[str, torch.nn.Module] | None = None
        self._encoder_copy: torch.nn.Module | None = None

    def _apply(self, version: str, state: dict[str, torch.Tensor]) -> None:
        super()._apply(version, state)
        prefix = f"{ENCODER}."
        adapted = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if not adapted:
            self.segmentation_encoder = None
            return
        if self._encoder_copy is None:
            self._encoder_copy = copy.deepcopy(self.backbone.image_encoder).eval()
        # the backbone's own encoder is never changed: it is the shipped base the adapted weights replace parts of
        self._encoder_copy.load_state_dict({**self.backbone.image_encoder.state_dict(), **adapted}, strict=True)
        self.segmentation_encoder = (version, self._encoder_copy)
