"""The training images the shipped ``qformer_lite`` never trained on: its held-back 8 % (scripts/proposer_train.py).

Anything tuned on top of the proposer (the aggregation rule) must be tuned on images the proposer did not learn:
on its own training images its relevance maps are sharper than on new ones. This rebuilds the record order of
``scripts/proposer_pack.py`` (BUS-BRA folds 1-4 with their lesion-free crops, then Kvasir train) and the seeded
shuffle that ``scripts/proposer_train.py`` used for that checkpoint, and returns the held-back lesion images per
dataset.

    python scripts/proposer_heldback.py          # prints the counts and checks them against the model card
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from proposer_pack import lesion_free_crop  # noqa: E402

from benchmarks.datasets import busbra, kvasir  # noqa: E402
from radvlsm.io import load_mask  # noqa: E402

EXPECTED_NORMALS = 689  # lesion-free crops in the shipped model's training pack (model/qformer_lite/README.md)


def heldback() -> dict[str, list[tuple[Path, Path, str]]]:
    rng = random.Random(0)  # proposer_pack.py's rng: one draw per breast image, in this order
    records: list[tuple[str, tuple[Path, Path, str] | None]] = []
    for item in busbra({1, 2, 3, 4}):
        records.append(("busbra-train", item))
        if rng.random() < 0.5:
            mask = load_mask(item[1]) > 0
            if lesion_free_crop(mask[..., None], mask) is not None:
                records.append(("normal", None))
    records += [("kvasir-train", item) for item in kvasir("train")]
    normals = sum(kind == "normal" for kind, _ in records)
    if normals != EXPECTED_NORMALS:
        raise SystemExit(f"rebuilt {normals} lesion-free crops, the shipped pack had {EXPECTED_NORMALS}: "
                         "the record order differs, the held-back split cannot be rebuilt")
    ids = list(range(len(records)))
    # the split the default checkpoint was trained with (proposer_train.py then: rng = random.Random(0);
    # rng.shuffle(ids)); the script now holds back by source image, so a retrain needs its own split
    random.Random(0).shuffle(ids)
    n_val = max(2, int(0.08 * len(ids)))
    out: dict[str, list] = {"busbra-train": [], "kvasir-train": []}
    for i in sorted(ids[:n_val]):
        kind, item = records[i]
        if item is not None:
            out[kind].append(item)
    return out


if __name__ == "__main__":
    for name, items in heldback().items():
        print(f"{name}: {len(items)} held-back lesion images, e.g. {[c for _, _, c in items[:5]]}")
