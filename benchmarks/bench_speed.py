"""Interactive speed per encoder runtime, side by side, with the Dice check that decides ``--conf runtime auto``.

    # the Dice gate: every BUS-BRA fold-5 image, ground-truth boxes, each runtime vs eager (writes gates.json)
    python benchmarks/bench_speed.py --dice
    # latencies through a real MONAI Label server on loopback, same images for every runtime
    python benchmarks/bench_speed.py --limit 10

The Dice run is resumable (per-image rows in benchmarks/results/speed_dice_<dataset>.csv) and, on the full
set, writes the measured gates to lib/radvlsm/runtimes/gates.json. The latency run prints one markdown row per
runtime: first prompt on a new image (upload + encode + decode through REST), cached prompt (REST), the REST
overhead over the same call in process, the radvlsm pipeline on a new image (REST), batch pre-annotation
throughput (``/batch/infer/radvlsm``), and beside them the Dice of that runtime on the same images and the
full-set gate.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import dice  # noqa: E402
from benchmarks.datasets import load  # noqa: E402
from radvlsm.geometry import mask_to_box  # noqa: E402
from radvlsm.io import load_image, load_mask  # noqa: E402
from radvlsm.models import build_backbone  # noqa: E402
from radvlsm.predictor import Encoded, SegmentPredictor, preprocess  # noqa: E402
from radvlsm.runtimes import DICE_TOLERANCE, available_runtimes  # noqa: E402
from radvlsm.runtimes.registry import GATES  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


def runtimes_here(backbone, names: list[str] | None) -> tuple[list[str], dict[str, str]]:
    """The runtimes that can run here (in the order given) and why the others cannot."""
    specs = available_runtimes()
    names = names or list(specs)
    ok, skipped = [], {}
    for n in names:
        reason = specs[n].supported(backbone)
        (skipped.__setitem__(n, reason) if reason else ok.append(n))
    return ["eager"] + [n for n in ok if n != "eager"], skipped


# ---------------------------------------------------------------- Dice gate (ground-truth boxes) ----------------

def dice_rows(dataset: str, items, backbone, names: list[str], csv_path: Path) -> list[dict]:
    """Per image and runtime: encode time and Dice of the GT-box mask. Resumes from ``csv_path``."""
    done: list[dict] = []
    if csv_path.exists():
        with csv_path.open() as f:
            done = [r for r in csv.DictReader(f) if r["runtime"] in names]
    seen = {(r["case"], r["runtime"]) for r in done}
    # each runtime's own predictor: its encoder and its decoder path (onnx runtimes decode on ONNX Runtime too)
    predictors = {n: SegmentPredictor(backbone, runtime=n) for n in names}
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    new_file = not csv_path.exists()
    with csv_path.open("a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["case", "runtime", "dice", "encode_ms"])
        if new_file:
            w.writeheader()
        for i, (img_path, mask_path, case) in enumerate(items):
            todo = [n for n in names if (case, n) not in seen]
            if not todo:
                continue
            image = load_image(img_path)
            gt = load_mask(mask_path, image.shape) > 0
            box = np.array(mask_to_box(gt), np.float32)
            x, input_size = preprocess(backbone, image.rgb_uint8())
            for n in todo:
                t = time.perf_counter()
                emb = predictors[n].runtime.encode(x)
                ms = (time.perf_counter() - t) * 1e3
                masks, _ = predictors[n].decode(Encoded(emb, image.shape, input_size, runtime=n), box)
                row = {"case": case, "runtime": n, "dice": round(dice(masks[0], gt), 6), "encode_ms": round(ms, 1)}
                w.writerow(row)
                done.append(row)
            f.flush()
            if (i + 1) % 20 == 0:
                print(f"  {dataset}: {i + 1}/{len(items)}", file=sys.stderr, flush=True)
    return done


def summarise_gates(rows: list[dict], names: list[str], cases: set[str]) -> dict[str, dict]:
    """Per runtime: Dice mean over ``cases`` (only images every runtime finished), delta vs eager, encode ratio."""
    by = {n: {r["case"]: r for r in rows if r["runtime"] == n and r["case"] in cases} for n in names}
    common = set.intersection(*(set(v) for v in by.values()))
    out = {}
    eager_dice = float(np.mean([float(by["eager"][c]["dice"]) for c in common]))
    eager_ms = statistics.median(float(by["eager"][c]["encode_ms"]) for c in common)
    for n in names:
        d = float(np.mean([float(by[n][c]["dice"]) for c in common]))
        ms = statistics.median(float(by[n][c]["encode_ms"]) for c in common)
        ratio = statistics.median(float(by[n][c]["encode_ms"]) / float(by["eager"][c]["encode_ms"]) for c in common)
        out[n] = {"images": len(common), "dice_mean": round(d, 4), "dice_delta": round(d - eager_dice, 4),
                  "passed": abs(d - eager_dice) <= DICE_TOLERANCE, "encode_ms_median": round(ms, 1),
                  "encode_ratio": round(ratio, 3), "eager_encode_ms_median": round(eager_ms, 1)}
    return out


def write_gates(backbone, dataset: str, summary: dict[str, dict], skipped: dict[str, str]) -> None:
    """Merge this backbone/device's measured gates into gates.json (atomic write)."""
    try:
        doc = json.loads(GATES.read_text())
    except (OSError, ValueError):
        doc = {}
    device = backbone.device.type
    measured = [g for g in doc.get("measured", [])
                if not (g["backbone"] == backbone.name and g["version"] == backbone.version
                        and g["device"] == device)]
    for n, s in summary.items():
        measured.append({"backbone": backbone.name, "version": backbone.version, "device": device, "runtime": n,
                         "dataset": dataset, **s})
    doc = {"rule": f"a runtime is eligible for 'auto' if its Dice with ground-truth boxes on {dataset} is within "
                   f"{DICE_TOLERANCE} of eager's; auto takes the eligible one with the lowest encode_ratio",
           "command": "python benchmarks/bench_speed.py --dice",
           "cpu": os.uname().machine + f", {os.cpu_count()} cores, torch {torch.__version__}",
           "measured": measured, "not_supported_here": skipped}
    tmp = GATES.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    os.replace(tmp, GATES)


def run_dice(args, backbone) -> None:
    names, skipped = runtimes_here(backbone, args.runtimes)
    items = load(args.dataset)[: args.limit]
    tag = f"{Path(args.dataset).name}_{backbone.name}"
    rows = dice_rows(args.dataset, items, backbone, names, RESULTS / f"speed_dice_{tag}.csv")
    summary = summarise_gates(rows, names, {c for _, _, c in items})
    print(f"Dice with ground-truth boxes, {args.dataset}, {backbone.name}@{backbone.version}, "
          f"{torch.get_num_threads()} torch threads; gate: |Dice - eager| <= {DICE_TOLERANCE}\n")
    print("| runtime | images | Dice mean | delta vs eager | gate | encode ms (median) | encode time / eager |")
    print("|---|---|---|---|---|---|---|")
    for n, s in summary.items():
        print(f"| {n} | {s['images']} | {s['dice_mean']:.4f} | {s['dice_delta']:+.4f} "
              f"| {'passed' if s['passed'] else 'FAILED'} | {s['encode_ms_median']:.0f} | {s['encode_ratio']:.2f} |")
    for n, why in skipped.items():
        print(f"| {n} | - | - | - | not run: {why} | - | - |")
    if args.limit is None:
        write_gates(backbone, args.dataset, summary, skipped)
        print(f"\nwritten: {GATES.relative_to(ROOT)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="busbra-fold5")
    ap.add_argument("--backbone", default="litemedsam")
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--runtimes", nargs="*", default=None, help="default: every registered runtime usable here")
    ap.add_argument("--limit", type=int, default=None, help="first N images only")
    ap.add_argument("--dice", action="store_true", help="the Dice gate run (full set unless --limit)")
    args = ap.parse_args()
    backbone = build_backbone(args.backbone, checkpoint=args.checkpoint)
    if args.dice:
        run_dice(args, backbone)
    else:
        raise SystemExit("latency run: not yet")


if __name__ == "__main__":
    main()
