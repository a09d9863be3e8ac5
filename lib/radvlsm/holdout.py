"""The held-back split rule every train task validates on (the decoder's and proposer's fine-tunes, the diagnosis
head's recalibration), before anything is published.

Stable as labels accumulate, so an image never moves between train and validation as more are saved: an image is
held back for validation when ``sha1(image_id) mod 5 == 0`` (~20 %). If that leaves no validation image and there
are at least two, the image with the smallest hash is held back, so every run is validated on at least one image.
Fewer than two labelled images cannot be trained (nothing to validate on).
"""

from __future__ import annotations

import hashlib

HOLD_OUT_MODULUS = 5
#: one image to train on and one to validate on, at the least
MIN_LABELLED = 2


def id_hash(image_id: str) -> int:
    return int(hashlib.sha1(image_id.encode()).hexdigest()[:12], 16)


def split(ids: list[str]) -> tuple[list[str], list[str]]:
    """``(train, validation)`` ids by the documented hash rule (see the module docstring)."""
    ids = sorted(set(ids))
    if len(ids) < MIN_LABELLED:
        raise ValueError(f"need at least {MIN_LABELLED} labelled images to train and validate, have {len(ids)}")
    val = [i for i in ids if id_hash(i) % HOLD_OUT_MODULUS == 0]
    if not val or len(val) == len(ids):
        val = [min(ids, key=id_hash)]
    return [i for i in ids if i not in val], val
