"""Batch pre-annotation: run an infer task over every image of a datastore that has no label yet.

Resumable by construction: each label is saved (tag ``original`` by default) as soon as its image is done, and an
image that already has that tag or a clinician's ``final`` label is skipped, so an interrupted run picks up
where it stopped. Memory stays bounded: images are processed one at a time (the embedding cache is an LRU) and
only a few numbers per image are kept. Progress (done / total, images per second, ETA) goes to the log.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)
SKIP_TAGS = ("final",)  # a clinician's label is never overwritten by a pre-annotation


def pending_images(all_ids: Iterable[str], has_label: Callable[[str, str], bool], label_tag: str) -> list[str]:
    """Sorted ids with neither a ``label_tag`` label nor a final one."""
    tags = (label_tag, *(t for t in SKIP_TAGS if t != label_tag))
    return sorted(i for i in all_ids if not any(has_label(i, t) for t in tags))


@dataclass
class BatchReport:
    total: int
    done: int = 0
    failed: list[str] = field(default_factory=list)
    lesions: int = 0
    start: float = field(default_factory=time.perf_counter)

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.start

    @property
    def images_per_s(self) -> float:
        return self.done / self.seconds if self.seconds > 0 else 0.0

    def to_json(self, skipped: int) -> dict[str, Any]:
        return {"total": self.total, "done": self.done, "failed": self.failed, "skipped_already_labelled": skipped,
                "lesions": self.lesions, "seconds": round(self.seconds, 2),
                "images_per_s": round(self.images_per_s, 3)}


def run_batch(ids: list[str], infer_one: Callable[[str], dict[str, Any]], log_every: int = 1) -> BatchReport:
    """``infer_one(id)`` (which saves the label) over ``ids``, one at a time; failures are logged and skipped."""
    report = BatchReport(total=len(ids))
    for i, image_id in enumerate(ids):
        try:
            res = infer_one(image_id)
            report.done += 1
            report.lesions += len(res.get("lesions", []) or [])
        except Exception as exc:  # one bad image must not stop a pre-annotation run of thousands
            report.failed.append(image_id)
            logger.warning(f"radvlsm batch: {image_id} failed: {exc}")
        if (i + 1) % log_every == 0 or i + 1 == len(ids):
            left = len(ids) - i - 1
            rate = (i + 1) / max(report.seconds, 1e-9)
            logger.info(f"radvlsm batch: {i + 1}/{len(ids)} ({image_id}); {rate:.2f} images/s; "
                        f"ETA {left / rate:.0f} s; failed {len(report.failed)}")
    return report
