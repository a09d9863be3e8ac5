"""The one hot-reload rule: live objects follow a store's ``current`` version (:mod:`radvlsm.versions.store`).

:class:`Watcher` is the rule; what it serves is a subclass's: the modules' weights (:class:`ModuleWatcher`: the
mask decoder, the proposer's heads), a predictor's decoder with its adapted encoder (:class:`DecoderWatcher`), the
diagnosis head (:class:`radvlsm.diagnosis.head.HeadWatcher`).
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from radvlsm.versions.store import ENCODER, PARTS, SHIPPED, DecoderStore

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)


class Watcher:
    """Keeps what it serves on a store's ``current`` version.

    ``refresh`` costs one ``stat`` when nothing changed; when the pointer changed it loads the version (or
    :attr:`shipped`, kept in memory at start) and applies it under ``lock``, so no reader sees half of it.
    A version that cannot be loaded or is refused (:meth:`_read` returns None, e.g. trained from another base) is
    logged and the served one stays; at start-up, when nothing is served yet, the newest earlier version that loads
    is served (the last good one).
    """

    #: what ``shipped`` serves (set by the subclass)
    shipped: Any = None

    def __init__(self, store: DecoderStore, lock: threading.Lock | None = None):
        self.store = store
        self.lock = lock if lock is not None else threading.Lock()
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

    def _read(self, version: str) -> Any:
        """A published version's payload to serve, or None when it is refused (logged); may raise."""
        raise NotImplementedError

    def _apply(self, version: str, payload: Any) -> None:
        """Serve ``payload`` (called under the lock)."""
        raise NotImplementedError

    def _load(self, version: str) -> bool:
        kind = self.store.kind
        if version == SHIPPED:
            payload = self.shipped
        else:
            try:
                payload = self._read(version)
            except Exception as exc:  # a corrupt file must not take the served model down
                logger.error(f"radvlsm: {kind} {version} could not be loaded ({exc}); keeping {self.version}")
                return False
            if payload is None:
                return False
        with self.lock:
            self._apply(version, payload)
        self.version, self.loaded_at = version, time.time()
        logger.info(f"radvlsm: now serving {kind} {version} from {self.store.root}")
        return True


class ModuleWatcher(Watcher):
    """Keeps live modules on a store's ``current`` version (the mask decoder, the proposer's heads, ...).

    A checkpoint trained from another base (its ``identity`` entry differs, e.g. another backbone) is refused.
    """

    def __init__(self, store: DecoderStore, modules: dict[str, torch.nn.Module], lock: threading.Lock,
                 identity: tuple[str, str], optional: tuple[str, ...] = ()):
        super().__init__(store, lock)
        self.modules = modules
        self.optional = optional  # modules a version may leave out: they get their shipped state
        self.identity = identity  # (payload key, the value this process's modules need)
        self.shipped = {f"{name}.{k}": v.detach().clone().cpu() for name, m in modules.items()
                        for k, v in m.state_dict().items()}

    def _read(self, version: str) -> dict[str, torch.Tensor] | None:
        ckpt = self.store.load(version)
        key, want = self.identity
        if ckpt.get(key) != want:
            logger.error(f"radvlsm: {self.store.kind} {version} was trained from {key} {ckpt.get(key)}, this one is "
                         f"{want}; keeping {self.version}")
            return None
        return ckpt["state"]

    def _apply(self, version: str, state: dict[str, torch.Tensor]) -> None:
        """Load ``state`` into the modules (called under the lock)."""
        for name, module in self.modules.items():
            sub = {k[len(name) + 1:]: v for k, v in state.items() if k.startswith(name + ".")}
            if not sub and name in self.optional:
                sub = {k[len(name) + 1:]: v for k, v in self.shipped.items() if k.startswith(name + ".")}
            module.load_state_dict(sub, strict=True)


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
