"""Embedding cache: keying, LRU eviction, byte bound and single computation under concurrency."""

from __future__ import annotations

import threading
import time

import torch

from radvlsm.cache import EmbeddingCache


def t(nbytes: int) -> torch.Tensor:
    return torch.zeros(nbytes // 4, dtype=torch.float32)


def test_hit_after_miss_and_distinct_keys():
    c = EmbeddingCache(max_bytes=1 << 20)
    v1, hit1 = c.get_or_compute(("img", "litemedsam", "v1"), lambda: t(400))
    v2, hit2 = c.get_or_compute(("img", "litemedsam", "v1"), lambda: t(400))
    v3, hit3 = c.get_or_compute(("img", "litemedsam", "v2"), lambda: t(400))  # new checkpoint version
    assert (hit1, hit2, hit3) == (False, True, False)
    assert v1 is v2 and v3 is not v1
    assert (c.hits, c.misses) == (1, 2)


def test_lru_eviction_by_bytes():
    c = EmbeddingCache(max_bytes=1000)
    for k in "abc":
        c.put(k, t(400))
    assert "a" not in c and "b" in c and "c" in c and c.bytes == 800
    c.get("b")  # b becomes most recent; inserting d evicts c
    c.put("d", t(400))
    assert "b" in c and "c" not in c and "d" in c


def test_max_items_and_oversized_values():
    c = EmbeddingCache(max_bytes=10_000, max_items=2)
    for k in "abc":
        c.put(k, t(40))
    assert len(c) == 2 and "a" not in c
    c.put("huge", t(20_000))
    assert "huge" not in c


def test_concurrent_misses_compute_once():
    c = EmbeddingCache()
    calls = []

    def compute():
        calls.append(1)
        time.sleep(0.05)
        return t(40)

    threads = [threading.Thread(target=c.get_or_compute, args=("k", compute)) for _ in range(6)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert len(calls) == 1 and c.misses == 1 and c.hits == 5
