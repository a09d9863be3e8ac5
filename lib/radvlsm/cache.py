"""A thread-safe, byte-bounded LRU cache for image embeddings.

Keys are ``(image content digest, backbone name, checkpoint version)``: the same pixels under the same weights
reuse one embedding, whatever the file is called, and new weights never see stale embeddings. Concurrent requests
for one key compute it once (the others wait for it).
"""

from __future__ import annotations

import dataclasses
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

import torch


def nbytes(value: Any) -> int:
    """Approximate size of a cached value: the tensors it holds."""
    if isinstance(value, torch.Tensor):
        return value.element_size() * value.nelement()
    if isinstance(value, dict):
        return sum(nbytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(nbytes(v) for v in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):  # e.g. predictor.Encoded
        return sum(nbytes(getattr(value, f.name)) for f in dataclasses.fields(value))
    return getattr(value, "nbytes", 0)


class EmbeddingCache:
    """LRU over ``max_bytes`` (and optionally ``max_items``); ``get_or_compute`` reports whether it hit."""

    def __init__(self, max_bytes: int = 512 << 20, max_items: int | None = None):
        self.max_bytes = int(max_bytes)
        self.max_items = max_items
        self._items: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self._inflight: dict[Hashable, threading.Lock] = {}
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._items

    @property
    def bytes(self) -> int:
        return self._bytes

    def get(self, key: Hashable) -> Any | None:
        with self._lock:
            if key not in self._items:
                return None
            self._items.move_to_end(key)
            return self._items[key][0]

    def put(self, key: Hashable, value: Any) -> None:
        size = nbytes(value)
        with self._lock:
            if key in self._items:
                self._bytes -= self._items.pop(key)[1]
            if size > self.max_bytes:
                return  # larger than the whole cache: serve it, do not keep it
            self._items[key] = (value, size)
            self._bytes += size
            self._evict()

    def _evict(self) -> None:
        while self._items and (self._bytes > self.max_bytes or
                               (self.max_items is not None and len(self._items) > self.max_items)):
            _, (_, size) = self._items.popitem(last=False)
            self._bytes -= size

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0

    def get_or_compute(self, key: Hashable, compute: Callable[[], Any]) -> tuple[Any, bool]:
        """Return ``(value, hit)``; on a miss ``compute`` runs once even under concurrent callers."""
        value = self.get(key)
        if value is not None:
            with self._lock:
                self.hits += 1
            return value, True
        with self._lock:
            gate = self._inflight.setdefault(key, threading.Lock())
        with gate:
            value = self.get(key)
            if value is not None:
                with self._lock:
                    self.hits += 1
                return value, True
            try:
                value = compute()
                self.put(key, value)
            finally:
                with self._lock:
                    self._inflight.pop(key, None)
        with self._lock:
            self.misses += 1
        return value, False
