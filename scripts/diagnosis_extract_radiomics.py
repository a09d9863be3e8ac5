"""Compute the pyradiomics descriptors of every BUS-BRA image with its ground-truth mask (resumable).

One JSON per image under ``$RADVLSM_DIAG_CACHE/radiomics/`` (default ``~/.cache/radvlsm/diagnosis``); images
already done are skipped, so the job can be stopped and restarted. ``--collect`` writes ``radiomics.npz``
(names, ids, X) next to them for ``diagnosis_train.py``.

    OMP_NUM_THREADS=1 nice -n 10 python scripts/diagnosis_extract_radiomics.py
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from radvlsm.diagnosis.radiomics import NotEnoughLesion, extract
from radvlsm.io import load_image, load_mask

sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
from diagnosis_common import CACHE, cases  # noqa: E402


def run() -> None:
    out = CACHE / "radiomics"
    out.mkdir(parents=True, exist_ok=True)
    todo = [c for c in cases() if not (out / f"{c.id}.json").exists()]
    t0 = time.time()
    for i, c in enumerate(todo):
        img = load_image(c.image)
        mask = load_mask(c.mask, img.shape)
        try:
            rec = {"id": c.id, "features": extract(img, mask)}
        except NotEnoughLesion as exc:
            rec = {"id": c.id, "error": str(exc)}
        tmp = out / f".{c.id}.tmp"
        tmp.write_text(json.dumps(rec))
        tmp.replace(out / f"{c.id}.json")
        if i % 100 == 0:
            print(f"{i}/{len(todo)} {time.time() - t0:.0f}s", flush=True)
    print(f"done {len(todo)} in {time.time() - t0:.0f}s", flush=True)


def collect() -> None:
    out = CACHE / "radiomics"
    recs = [json.loads((out / f"{c.id}.json").read_text()) for c in cases()]
    ok = [r for r in recs if "features" in r]
    names = sorted(ok[0]["features"])
    X = np.array([[r["features"][n] for n in names] for r in ok], np.float64)
    np.savez_compressed(CACHE / "radiomics.npz", names=np.array(names), ids=np.array([r["id"] for r in ok]), X=X)
    print(f"collected {len(ok)} / {len(recs)} images, {len(names)} descriptors -> {CACHE / 'radiomics.npz'}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--collect", action="store_true", help="only gather the per-image JSONs into radiomics.npz")
    args = ap.parse_args()
    if not args.collect:
        run()
    collect()
