"""Benchmark of the ``sam`` task with tight ground-truth boxes: Dice, encode / cached-decode latency in process,
and REST latency (first prompt and cached prompt) through a real MONAI Label server on loopback.

    python benchmarks/bench_sam.py busbra-fold5 kvasir-val [--rest 20] [--limit N] [--backbone litemedsam]

Prints one markdown table row per dataset; per-image rows go to benchmarks/results/sam_<dataset>.csv.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import dice, stack_for, write_csv  # noqa: E402
from benchmarks.datasets import load  # noqa: E402
from radvlsm.geometry import Prompts, mask_to_box  # noqa: E402
from radvlsm.io import load_image, load_mask  # noqa: E402
from radvlsm.predictor import SegmentPredictor  # noqa: E402
from radvlsm.stack import Stack  # noqa: E402
from tests.conftest import start_server, stop_server  # noqa: E402

DISK_CACHE = "~/.cache/radvlsm/embeddings"
NO_POINTS = (np.zeros((0, 2), np.float32), np.zeros(0, int))




def in_process(items, predictor: SegmentPredictor, out_csv: Path, store: SegmentPredictor) -> list[dict]:
    rows = []
    for i, (img_path, mask_path, case) in enumerate(items):
        image = load_image(img_path)
        gt = load_mask(mask_path, image.shape) > 0
        box = np.array([mask_to_box(gt)], np.float32)
        first = predictor.segment(image, Prompts(box, *NO_POINTS))
        store.persist(image, predictor.encode(image))
        cached = predictor.segment(image, Prompts(box, *NO_POINTS))
        rows.append({"case": case, "dice": dice(first.lesions[0].mask, gt),
                     "encode_ms": first.timings_ms["encode"], "cached_decode_ms": cached.timings_ms["total"]})
        if (i + 1) % 25 == 0:
            print(f"  {i + 1}/{len(items)} mean Dice {np.mean([r['dice'] for r in rows]):.4f}", file=sys.stderr)
    write_csv(rows, out_csv)
    return rows


def rest(items, conf: dict[str, str]) -> tuple[list[float], list[float]]:
    """Upload each image (new content: encode) then prompt again (cached): REST round trips in ms."""
    firsts, cached = [], []
    with tempfile.TemporaryDirectory() as tmp:
        srv = start_server(Path(tmp), conf=conf)
        try:
            for img_path, mask_path, _ in items:
                image = load_image(img_path)
                box = mask_to_box(load_mask(mask_path, image.shape) > 0)
                data = img_path.read_bytes()
                for bucket in (firsts, cached):
                    t = time.perf_counter()
                    r = requests.post(f"{srv.url}/infer/sam", params={"output": "json"},
                                      files={"params": (None, json.dumps({"boxes": [box]})),
                                             "file": (img_path.name, data)}, timeout=300)
                    r.raise_for_status()
                    bucket.append((time.perf_counter() - t) * 1e3)
        finally:
            stop_server(srv.proc)
    return firsts, cached


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("datasets", nargs="+", help="busbra-fold5, kvasir-val, ... or IMAGES_DIR:MASKS_DIR")
    ap.add_argument("--backbone", default="litemedsam")
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--limit", type=int, default=None, help="first N images only")
    ap.add_argument("--rest", type=int, default=20, help="images timed through REST (0 to skip)")
    args = ap.parse_args()
    stack = stack_for(backbone=args.backbone, checkpoint=args.checkpoint)  # eager encoder
    predictor = stack.predictor
    # Encode latency must be measured, so no disk cache here; the embeddings are stored for the other benchmarks
    # (through the same settings with the disk cache: a predictor only used to persist them)
    store = Stack(replace(stack.settings, disk_cache=DISK_CACHE)).predictor
    print("| dataset | images | Dice mean | Dice median | encode ms (median) | cached decode ms (median) "
          "| REST first prompt ms (median) | REST cached prompt ms (median) |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.datasets:
        items = load(name)[: args.limit]
        rows = in_process(items, predictor, ROOT / "benchmarks" / "results" / f"sam_{Path(name).name}.csv", store)
        predictor.cache.clear()
        firsts, cached = rest(items[: args.rest], {"backbone": args.backbone, **(
            {"checkpoint": args.checkpoint} if args.checkpoint else {})}) if args.rest else ([float("nan")],) * 2
        d = [r["dice"] for r in rows]
        print(f"| {name} | {len(rows)} | {np.mean(d):.4f} | {np.median(d):.4f} "
              f"| {statistics.median(r['encode_ms'] for r in rows):.0f} "
              f"| {statistics.median(r['cached_decode_ms'] for r in rows):.0f} "
              f"| {statistics.median(firsts):.0f} | {statistics.median(cached):.0f} |", flush=True)


if __name__ == "__main__":
    main()
