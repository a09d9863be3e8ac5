"""Interactive speed per encoder runtime, side by side, with the Dice check that decides ``--conf runtime auto``.

    # the Dice gate: every BUS-BRA fold-5 image, ground-truth boxes, each runtime vs eager (writes gates.json)
    python benchmarks/bench_speed.py --dice
    # latencies through a real MONAI Label server on loopback, same images for every runtime
    python benchmarks/bench_speed.py --limit 10 [--conf mask_ranker=off ...]
    # where a cached prompt's time goes (in process), and the mask decoder's FLOPs
    python benchmarks/bench_speed.py --profile

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
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import requests
import torch
from PIL import Image as PILImage

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import dice, stack_for  # noqa: E402
from benchmarks.datasets import load  # noqa: E402
from radvlsm.geometry import mask_to_box  # noqa: E402
from radvlsm.io import load_image, load_mask  # noqa: E402
from radvlsm.predictor import Encoded, SegmentPredictor, preprocess  # noqa: E402
from radvlsm.runtimes import DICE_TOLERANCE, available_runtimes  # noqa: E402
from radvlsm.runtimes.registry import GATES, SPEED_MARGIN  # noqa: E402
from radvlsm.service import SamService, write_label  # noqa: E402
from radvlsm.stack import Stack  # noqa: E402
from tests.conftest import start_server, stop_server  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


def predictor_for(stack: Stack, runtime: str) -> SegmentPredictor:
    """What a server with ``--conf runtime <runtime>`` and ``stack``'s other settings predicts with: a stack of its
    own (backbone, encoder runtime, empty memory cache; no warm-up)."""
    return Stack(replace(stack.settings, runtime=runtime)).predictor


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

def dice_rows(dataset: str, items, stack: Stack, names: list[str], csv_path: Path) -> list[dict]:
    """Per image and runtime: encode time and Dice of the GT-box mask. Resumes from ``csv_path``."""
    backbone = stack.predictor.backbone
    done: list[dict] = []
    if csv_path.exists():
        with csv_path.open() as f:
            done = [r for r in csv.DictReader(f) if r["runtime"] in names]
    seen = {(r["case"], r["runtime"]) for r in done}
    # each runtime's own predictor: its encoder and its decoder path (onnx runtimes decode on ONNX Runtime too)
    predictors = {n: predictor_for(stack, n) for n in names}
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
    """Merge this run's gates into gates.json (atomic write): the rows of the runtimes it measured on this
    backbone, checkpoint and device are replaced, others kept (each row carries the eager median it was timed
    against, so a run of some runtimes leaves the others' verdicts as measured)."""
    try:
        doc = json.loads(GATES.read_text())
    except (OSError, ValueError):
        doc = {}
    device = backbone.device.type
    measured = [g for g in doc.get("measured", [])
                if not (g["backbone"] == backbone.name and g["version"] == backbone.version
                        and g["device"] == device and g["runtime"] in summary)]
    for n, s in summary.items():
        measured.append({"backbone": backbone.name, "version": backbone.version, "device": device, "runtime": n,
                         "dataset": dataset, **s})
    doc = {"rule": f"a runtime is eligible for 'auto' if its Dice with ground-truth boxes on {dataset} is within "
                   f"{DICE_TOLERANCE} of eager's and the run covered the whole set; auto takes the eligible one "
                   f"with the lowest encode_ratio, and among those within {SPEED_MARGIN:.0%} of it the one "
                   "closest to eager",
           "command": "python benchmarks/bench_speed.py --dice",
           "cpu": os.uname().machine + f", {os.cpu_count()} cores, torch {torch.__version__}",
           "measured": measured, "not_supported_here": {
               **{n: why for n, why in doc.get("not_supported_here", {}).items() if n not in summary}, **skipped}}
    tmp = GATES.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    os.replace(tmp, GATES)


def run_dice(args, stack: Stack) -> None:
    backbone = stack.predictor.backbone
    names, skipped = runtimes_here(backbone, args.runtimes)
    items = load(args.dataset)[: args.limit]
    tag = f"{Path(args.dataset).name}_{backbone.name}"
    rows = dice_rows(args.dataset, items, stack, names, RESULTS / f"speed_dice_{tag}.csv")
    summary = summarise_gates(rows, names, {c for _, _, c in items})
    print(f"Dice with ground-truth boxes, {args.dataset}, {backbone.name}@{backbone.version}, "
          f"gate: |Dice - eager| <= {DICE_TOLERANCE}\n")
    print("| runtime | images | Dice mean | delta vs eager | gate | encode ms (median) | encode time / eager |")
    print("|---|---|---|---|---|---|---|")
    for n, s in summary.items():
        print(f"| {n} | {s['images']} | {s['dice_mean']:.4f} | {s['dice_delta']:+.4f} "
              f"| {'passed' if s['passed'] else 'FAILED'} | {s['encode_ms_median']:.0f} | {s['encode_ratio']:.2f} |")
    for n, why in skipped.items():
        print(f"| {n} | - | - | - | not run: {why} | - | - |")
    complete = len(items) == len(load(args.dataset)) and all(s["images"] == len(items) for s in summary.values())
    if complete or args.write_partial:
        for s in summary.values():
            s.update(dataset_size=len(load(args.dataset)), complete=complete)
        write_gates(backbone, args.dataset, summary, skipped)
        print(f"\nwritten: {GATES.relative_to(ROOT)} ({'complete' if complete else 'PARTIAL: auto ignores it'})")


# ---------------------------------------------------------------- latency through a real server ------------------

def fresh_copy(src: Path, out: Path) -> Path:
    """Same image, one pixel's lowest bit flipped: new content for the server (it must encode it)."""
    pixels = np.array(PILImage.open(src))
    pixels.flat[0] ^= 1
    PILImage.fromarray(pixels).save(out)
    return out


def post(url: str, model: str, params: dict, upload: Path | None = None, image: str = "") -> tuple[float, dict]:
    files = {"params": (None, json.dumps(params))}
    if upload is not None:
        files["file"] = (upload.name, upload.read_bytes())
    t = time.perf_counter()
    r = requests.post(f"{url}/infer/{model}", params={"image": image, "output": "json"}, files=files, timeout=600)
    ms = (time.perf_counter() - t) * 1e3
    r.raise_for_status()
    return ms, r.json()


def in_process(stack: Stack, runtime: str, items) -> dict:
    """The sam task's own call (SamService + label write) without HTTP: first (encode) and cached, and GT Dice."""
    service = SamService(predictor_for(stack, runtime))
    first, cached, dices = [], [], []
    for img_path, mask_path, _ in items:
        gt = load_mask(mask_path, load_image(img_path).shape) > 0
        request = {"image": str(img_path), "boxes": [mask_to_box(gt)], "result_extension": ".png"}
        for bucket in (first, cached):
            t = time.perf_counter()
            res = service.run(request)
            Path(write_label(res.label, res.image, request)).unlink()
            bucket.append((time.perf_counter() - t) * 1e3)
        dices.append(dice(res.label > 0, gt))
    return {"first": first, "cached": cached, "dice": dices}


def through_server(runtime: str, items, batch_items, tmp: Path, conf: dict[str, str] | None = None) -> dict:
    studies = tmp / "studies"  # start_server serves tmp/studies (and seeds it only when missing)
    studies.mkdir(parents=True)
    for img_path, _, case in batch_items:
        shutil.copy(img_path, studies / f"{case}{img_path.suffix}")
    srv = start_server(tmp, conf={"runtime": runtime, "models": "sam,radvlsm", **(conf or {})}, timeout=900)
    try:
        first, cached, pipeline, runtimes = [], [], [], set()
        for img_path, mask_path, case in items:
            box = mask_to_box(load_mask(mask_path, load_image(img_path).shape) > 0)
            for bucket in (first, cached):
                ms, res = post(srv.url, "sam", {"boxes": [box], "result_extension": ".png"}, upload=img_path)
                bucket.append(ms)
                runtimes.add(res["runtime"])
            ms, res = post(srv.url, "radvlsm", {}, upload=fresh_copy(img_path, tmp / f"new-{case}.png"))
            assert res["encodes"] == 1, "the pipeline image was not new"
            pipeline.append(ms)
            runtimes.add(res["runtime"])
        t = time.perf_counter()
        r = requests.post(f"{srv.url}/batch/infer/radvlsm", params={"images": "unlabeled", "run_sync": "true"},
                          json={"label_tag": "original"}, timeout=3600)
        r.raise_for_status()
        batch = {**r.json(), "wall_s": time.perf_counter() - t}
    finally:
        stop_server(srv.proc)
    assert runtimes == {runtime}, f"server reported {runtimes}, asked {runtime}"
    return {"first": first, "cached": cached, "pipeline": pipeline, "batch": batch}


def run_latency(args, stack: Stack) -> None:
    backbone = stack.predictor.backbone
    names, skipped = runtimes_here(backbone, args.runtimes or ["eager", "onnx", "onnx_int8"])
    data = load(args.dataset)
    items, batch_items = data[: args.limit], data[args.limit: args.limit + args.batch]
    gates = {g["runtime"]: g for g in json.loads(GATES.read_text())["measured"]
             if g["backbone"] == backbone.name and g["version"] == backbone.version} if GATES.exists() else {}
    print(f"{args.dataset}: {len(items)} images for latency, {len(batch_items)} others for batch pre-annotation; "
          f"{backbone.name}@{backbone.version}; {os.cpu_count()} CPU cores, {torch.get_num_threads()} torch threads; "
          f"load average at start {os.getloadavg()[0]:.1f}; server --conf {' '.join(args.conf) or '(defaults)'}\n")
    print("| runtime | first prompt ms (REST, new image) | cached prompt ms (REST) | in-process cached ms "
          "| REST overhead | pipeline ms (REST, new image) | batch images/s | Dice (these images, GT box) "
          "| Dice gate (full set) |")
    print("|---|---|---|---|---|---|---|---|---|")
    med = statistics.median
    with tempfile.TemporaryDirectory() as tmp:
        for n in names:
            local = in_process(stack, n, items)
            remote = through_server(n, items, batch_items, Path(tmp) / n, dict(kv.split("=", 1) for kv in args.conf))
            overhead = med(remote["cached"]) / med(local["cached"]) - 1
            g = gates.get(n)
            gate = (f"{g['dice_mean']:.4f} ({g['dice_delta']:+.4f}, {g['images']} img, "
                    f"{'passed' if g['passed'] else 'FAILED'}{'' if g.get('complete', True) else ', partial'})"
                    if g else "not measured")
            print(f"| {n} | {med(remote['first']):.0f} | {med(remote['cached']):.0f} | {med(local['cached']):.0f} "
                  f"| {overhead:+.0%} | {med(remote['pipeline']):.0f} "
                  f"| {remote['batch']['images_per_s']:.2f} ({remote['batch']['done']} img) "
                  f"| {np.mean(local['dice']):.4f} | {gate} |", flush=True)
    for n, why in skipped.items():
        print(f"| {n} | not run: {why} |")


# ---------------------------------------------------------------- where a cached prompt goes -------------------

STAGES = {"mask decoder (+ prompt encoder)": "_run_decoder", "mask to image grid": "postprocess",
          "label file write": "write_label", "image read": "load_request_image"}


def run_profile(args, stack: Stack) -> None:
    """cProfile of the in-process cached ``sam`` call per runtime, and the decoder's FLOPs per prompt."""
    import cProfile
    import pstats

    from torch.utils.flop_counter import FlopCounterMode

    backbone = stack.predictor.backbone
    img_path, mask_path, _ = load(args.dataset)[0]
    gt = load_mask(mask_path, load_image(img_path).shape) > 0
    request = {"image": str(img_path), "boxes": [mask_to_box(gt)], "result_extension": ".png"}
    print(f"cached sam call in process, {img_path.name}, {torch.get_num_threads()} torch threads, "
          f"load average {os.getloadavg()[0]:.1f}\n")
    print("| runtime | total ms | " + " | ".join(STAGES) + " | other |")
    print("|---|---|" + "---|" * (len(STAGES) + 1))
    for n in runtimes_here(backbone, args.runtimes or ["eager", "onnx"])[0]:
        service = SamService(predictor_for(stack, n))

        def call(service=service) -> None:
            res = service.run(request)
            Path(write_label(res.label, res.image, request)).unlink()

        call()
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(args.repeat):
            call()
        prof.disable()
        stats = pstats.Stats(prof).stats  # {(file, line, name): (cc, nc, tt, ct, callers)}
        cum = {name: sum(v[3] for k, v in stats.items() if k[2] == name and "radvlsm" in k[0])
               for name in STAGES.values()}
        total = sum(v[3] for k, v in stats.items() if k[2] == "call" and k[0] == __file__)
        shares = [cum[f] / total for f in STAGES.values()]
        print(f"| {n} | {total / args.repeat * 1e3:.0f} | " + " | ".join(f"{x:.1%}" for x in shares)
              + f" | {1 - sum(shares):.1%} |")
    pe = backbone.prompt_encoder
    grid = pe.image_embedding_size
    with torch.inference_mode(), FlopCounterMode(display=False) as fc:
        sparse, dense = pe(points=None, boxes=torch.tensor([[10.0, 20.0, 200.0, 150.0]]), masks=None)
        backbone.mask_decoder(image_embeddings=torch.zeros(1, pe.embed_dim, *grid), image_pe=pe.get_dense_pe(),
                              sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=False)
    by_module = fc.get_flop_counts()
    parts = {m: sum(by_module.get(f"MaskDecoder.{m}", {}).values()) / 1e9 for m in ("transformer", "output_upscaling")}
    print(f"\nmask decoder, one box: {fc.get_total_flops() / 1e9:.2f} GFLOP (two-way transformer "
          f"{parts['transformer']:.2f}, upscaling convolutions {parts['output_upscaling']:.2f})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="busbra-fold5")
    ap.add_argument("--backbone", default="litemedsam")
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--runtimes", nargs="*", default=None, help="default: every registered runtime usable here")
    ap.add_argument("--limit", type=int, default=None, help="--dice: first N images only; latency: N images (10)")
    ap.add_argument("--profile", action="store_true", help="where a cached prompt's time goes, per runtime")
    ap.add_argument("--repeat", type=int, default=20, help="--profile: calls profiled per runtime")
    ap.add_argument("--batch", type=int, default=10, help="latency run: images pre-annotated by batch infer")
    ap.add_argument("--dice", action="store_true", help="the Dice gate run (full set unless --limit)")
    ap.add_argument("--conf", nargs="*", default=[], metavar="KEY=VALUE",
                    help="latency run: more --conf of the server (e.g. qformer_checkpoint=..., mask_ranker=off)")
    ap.add_argument("--write-partial", action="store_true",
                    help="record an unfinished Dice run in gates.json (marked incomplete; auto ignores it)")
    args = ap.parse_args()
    bad = [kv for kv in args.conf if "=" not in kv or not kv.split("=", 1)[0]]
    if bad:
        ap.error(f"--conf takes KEY=VALUE, got {' '.join(bad)}")
    if not args.dice and args.limit is None:
        args.limit = 10
    # the runtimes compared share these settings (CPU, no disk cache, no warm-up); each runtime gets its own stack
    stack = stack_for(backbone=args.backbone, checkpoint=args.checkpoint)
    if args.dice:
        run_dice(args, stack)
    elif args.profile:
        run_profile(args, stack)
    else:
        run_latency(args, stack)


if __name__ == "__main__":
    main()
