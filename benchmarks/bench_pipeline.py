"""End-to-end benchmark of the ``radvlsm`` pipeline with a fixed phrase: phrase -> proposals -> fused masks.

    python benchmarks/bench_pipeline.py busbra-fold5 kvasir-val [--limit N] [--text lesion] [--diagnosis]

Per dataset: Dice and IoU of the pipeline's label (> 0, every lesion it returns) against the ground-truth mask,
side by side with the Dice of the single top-1 proposal box (the qformer_lite candidate with the best score, the
same box the pipeline prompts with, decoded once): the baseline multi-candidate aggregation has to beat. Latency:
median pipeline time with the embedding cached (every image; the disk cache of ``bench_sam.py``), and on
``--latency-images`` images with a predictor without disk cache: a new image (one encode) and the same call
repeated (memory cache). Per-image rows go to benchmarks/results/pipeline_<dataset>.csv and the 4 best / 4 worst
cases (green: ground truth, red: pipeline) to benchmarks/results/pipeline_<dataset>.png.

``--diagnosis`` (BUS-BRA only) also runs the shipped diagnosis head (model/diagnosis) inside the pipeline and scores
the top lesion's P(malignant) against the BUS-BRA ``Pathology`` labels, next to the same head on the ground-truth
masks (same CPU path, same images) and the model card's figures (model/diagnosis/bench_output.txt).
"""

from __future__ import annotations

import argparse
import csv
import re
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import Recording, dice, iou, stack_for, write_csv  # noqa: E402
from benchmarks.datasets import load  # noqa: E402
from radvlsm.io import load_image, load_mask  # noqa: E402
from radvlsm.pipeline import PipelineOptions, RadVLSMPipeline  # noqa: E402
from radvlsm.proposals.phrases import DEFAULT_PHRASE  # noqa: E402
from radvlsm.stack import Stack  # noqa: E402

DISK_CACHE = "~/.cache/radvlsm/embeddings"
MODEL_DIR = ROOT / "model" / "diagnosis"
RESULTS = ROOT / "benchmarks" / "results"
DICE_TARGET = 0.85
GAIN_TARGET, LOSS_LIMIT = 0.01, 0.005  # fused >= top-1 + 1 point; never worse than top-1 by more than 0.5 point








def pathology(img_path: Path) -> dict[str, int]:
    with open(img_path.parents[1] / "bus_data.csv") as f:
        return {r["ID"]: int(r["Pathology"].strip().lower() == "malignant") for r in csv.DictReader(f)}


def run_dataset(name: str, items, pipe: RadVLSMPipeline, rec: Recording, opts: PipelineOptions,
                diagnoser) -> tuple[list[dict], dict[str, np.ndarray]]:
    predictor = pipe.predictor
    rows, masks = [], {}
    for i, (img_path, mask_path, case) in enumerate(items):
        image = load_image(img_path)
        gt = load_mask(mask_path, image.shape) > 0
        enc = predictor.encode(image)  # disk cache -> memory cache, outside the timed call
        t = time.perf_counter()
        res = pipe.run(image, opts)
        ms = (time.perf_counter() - t) * 1e3
        pred = res.label > 0
        cands = rec.last.candidates  # the boxes the pipeline prompted with
        top1 = np.zeros_like(gt)
        if cands:
            best = max(cands, key=lambda c: c.score)
            top1 = predictor.decode(enc, np.array(best.box, np.float32))[0][0]
        row = {"case": case, "cached_on_disk": enc.encode_ms == 0.0, "dice": dice(pred, gt), "iou": iou(pred, gt),
               "top1_dice": dice(top1, gt), "top1_iou": iou(top1, gt), "n_lesions": len(res.lesions),
               "n_candidates": len(cands), "match": res.result["match_score"],
               "agreement": round(res.lesions[0].agreement, 4) if res.lesions else None, "ms": ms}
        for k in ("propose", "aggregate", "diagnose"):
            row[f"{k}_ms"] = res.result["latencies_ms"].get(k)
        if diagnoser is not None:
            d = res.diagnoses[0] if res.diagnoses else None
            row["p_pipeline"] = d.probability if d is not None and d.ok else None
            g = diagnoser.diagnose(image, gt, embedding=enc)
            row["p_gt"] = g.probability if g.ok else None
            row["threshold"] = g.threshold if g.ok else None
        rows.append(row)
        masks[case] = pred
        if (i + 1) % 25 == 0:
            print(f"  {name} {i + 1}/{len(items)}: Dice {np.mean([r['dice'] for r in rows]):.4f}, "
                  f"top-1 {np.mean([r['top1_dice'] for r in rows]):.4f}", file=sys.stderr, flush=True)
    return rows, masks


def new_image_latency(items, stack: Stack, opts: PipelineOptions) -> tuple[list[float], list[float]]:
    """Pipeline ms on a new image (``stack``: no disk cache, so one encode), then the same call again (memory
    cache)."""
    pipe = stack.pipeline
    pipe.predictor.cache.clear()  # every dataset starts with an empty memory cache
    first, again = [], []
    for img_path, _, _ in items:
        image = load_image(img_path)
        for bucket in (first, again):
            t = time.perf_counter()
            pipe.run(image, opts)
            bucket.append((time.perf_counter() - t) * 1e3)
    return first, again


def figure(rows: list[dict], masks: dict[str, np.ndarray], items, out: Path) -> Path:
    """4 best and 4 worst cases by Dice: image, ground-truth outline (green), pipeline outline (red)."""
    by_case = {case: (img, m) for img, m, case in items}
    ranked = sorted(rows, key=lambda r: -r["dice"])
    picks = [("best", r) for r in ranked[:4]] + [("worst", r) for r in ranked[-4:][::-1]]
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return _figure_pil(picks, masks, by_case, out)
    fig, axes = plt.subplots(2, 4, figsize=(16, 8.5))
    for ax, (kind, r) in zip(axes.ravel(), picks, strict=False):
        img_path, mask_path = by_case[r["case"]]
        image = load_image(img_path)
        gt = load_mask(mask_path, image.shape) > 0
        ax.imshow(image.rgb_uint8())
        ax.contour(gt.astype(float), levels=[0.5], colors="lime", linewidths=1.5)
        if masks[r["case"]].any():
            ax.contour(masks[r["case"]].astype(float), levels=[0.5], colors="red", linewidths=1.5)
        ax.set_title(f"{kind}: {r['case']}  Dice {r['dice']:.3f} (top-1 {r['top1_dice']:.3f})", fontsize=9)
        ax.axis("off")
    fig.suptitle(f"{out.stem}: green = ground truth, red = radvlsm pipeline", fontsize=11)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def _figure_pil(picks, masks, by_case, out: Path) -> Path:
    from PIL import Image, ImageDraw
    from scipy import ndimage

    tiles = []
    for kind, r in picks:
        img_path, mask_path = by_case[r["case"]]
        image = load_image(img_path)
        rgb = image.rgb_uint8().copy()
        gt = load_mask(mask_path, image.shape) > 0
        for m, colour in ((gt, (0, 255, 0)), (masks[r["case"]], (255, 0, 0))):
            rgb[m & ~ndimage.binary_erosion(m, iterations=2)] = colour
        tile = Image.fromarray(rgb).resize((320, 320))
        ImageDraw.Draw(tile).text((4, 4), f"{kind} {r['case']} Dice {r['dice']:.3f}", fill=(255, 255, 0))
        tiles.append(tile)
    sheet = Image.new("RGB", (4 * 320, 2 * 320))
    for k, tile in enumerate(tiles):
        sheet.paste(tile, ((k % 4) * 320, (k // 4) * 320))
    sheet.save(out)
    return out




def model_card_fused() -> list[str]:
    """The fused line of model/diagnosis/bench_output.txt (ground-truth masks, cached GPU features)."""
    path = MODEL_DIR / "bench_output.txt"
    if path.exists():
        for line in path.read_text().splitlines():
            if re.match(r"^fused\s", line):
                return line.split()[1:]
    return []


def diagnosis_table(rows: list[dict], labels: dict[str, int]) -> None:
    from radvlsm.diagnosis.metrics import report

    both = [r for r in rows if r["p_pipeline"] is not None and r["p_gt"] is not None]
    y = np.array([labels[r["case"]] for r in both])
    thr = both[0]["threshold"] if both else 0.5
    missing = len(rows) - len(both)
    print(f"\nDiagnosis head on BUS-BRA ({len(rows)} images, {sum(labels[r['case']] for r in rows)} malignant): "
          f"P(malignant) of the pipeline's top lesion vs the same head on the ground-truth mask, scored on the "
          f"{len(both)} images where both gave a diagnosis ({missing} without: no lesion found or too small); "
          f"threshold {thr:.2f}.\n")
    print("| masks | images | AUC | accuracy | sens@90%spec | Brier |")
    print("|---|---|---|---|---|---|")
    out = {}
    for label, key in (("radvlsm pipeline (top lesion)", "p_pipeline"), ("ground truth (same CPU path)", "p_gt")):
        if len(set(y.tolist())) < 2:
            break
        m = report(y, np.array([r[key] for r in both]), thr)
        out[key] = m
        print(f"| {label} | {m['n']} | {m['auc']:.3f} | {m['accuracy']:.3f} | {m['sens_at_90spec']:.3f} "
              f"| {m['brier']:.3f} |")
    card = model_card_fused()
    if card:
        print(f"| ground truth (model card, fold 5, cached features) | 383 | {card[0]} | {card[1]} | {card[2]} "
              f"| {card[3]} |")
    if "p_pipeline" in out and "p_gt" in out:
        a, b = out["p_pipeline"], out["p_gt"]
        ok = all(b[k] - a[k] <= 0.02 for k in ("auc", "accuracy", "sens_at_90spec")) and a["brier"] - b["brier"] <= 0.02
        print(f"\nTarget (pipeline masks no more than 2 points below ground-truth masks, same path): "
              f"AUC {100 * (a['auc'] - b['auc']):+.1f} pt, accuracy {100 * (a['accuracy'] - b['accuracy']):+.1f} pt, "
              f"sens@90%spec {100 * (a['sens_at_90spec'] - b['sens_at_90spec']):+.1f} pt, "
              f"Brier {a['brier'] - b['brier']:+.3f}: {'met' if ok else 'NOT met'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("datasets", nargs="+", help="busbra-fold5, kvasir-val, ... or IMAGES_DIR:MASKS_DIR")
    ap.add_argument("--text", default=DEFAULT_PHRASE, help="the fixed phrase (default %(default)r)")
    ap.add_argument("--limit", type=int, default=None, help="first N images only")
    ap.add_argument("--latency-images", type=int, default=5, help="images timed without disk cache (0 to skip)")
    ap.add_argument("--diagnosis", action="store_true", help="BUS-BRA only: score the diagnosis head on the "
                    "pipeline's masks against the Pathology labels")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    # eager encoder over the disk cache; the shipped diagnosis head only with --diagnosis
    stack = stack_for(disk_cache=DISK_CACHE, diagnosis_dir=str(MODEL_DIR), diagnose=args.diagnosis)
    predictor = stack.predictor
    rec = Recording(stack.proposer)
    pipe = stack.pipeline_over(rec)  # the stack's pipeline, its proposer's answers kept
    diagnoser = stack.diagnoser
    # new-image latency: the same settings without the disk cache (built on first use)
    latency = Stack(replace(stack.settings, disk_cache=None))
    summaries, diag_rows = [], []
    for name in args.datasets:
        items = load(name)[: args.limit]
        is_busbra = Path(name).name.startswith("busbra")
        diag = diagnoser if is_busbra else None
        # diagnose only on BUS-BRA: the pipelines' diagnoser is not asked elsewhere
        opts = PipelineOptions(text=args.text, diagnose=diag is not None)
        rows, masks = run_dataset(name, items, pipe, rec, opts, diag)
        write_csv(rows, RESULTS / f"pipeline_{Path(name).name}.csv")
        fig = figure(rows, masks, items, RESULTS / f"pipeline_{Path(name).name}.png")
        predictor.cache.clear()
        first, again = (new_image_latency(items[: args.latency_images], latency, opts)
                        if args.latency_images else ([float("nan")], [float("nan")]))
        summaries.append((name, rows, first, again, diag is not None, fig))
        if diag is not None:
            diag_rows.append((rows, pathology(items[0][0])))

    print(f'Phrase "{args.text}"; radvlsm pipeline defaults (qformer_lite proposals, its own boxes, top-3, '
          "aggregation and lesion selection defaults of radvlsm.aggregation); label > 0 vs ground truth.\n")
    print("| dataset | images | Dice mean | Dice median | IoU mean | top-1 box Dice mean | fused - top-1 (pt) "
          "| images fused < top-1 - 0.5 pt | no lesion | pipeline ms cached (median) | new image ms (median, n) "
          "| repeated ms (median) | diagnosis in latency | targets |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, rows, first, again, with_diag, _ in summaries:
        d = np.array([r["dice"] for r in rows])
        t1 = np.array([r["top1_dice"] for r in rows])
        gain = d.mean() - t1.mean()
        worse = int((d < t1 - LOSS_LIMIT).sum())
        targets = (f"Dice >= {DICE_TARGET}: {'met' if d.mean() >= DICE_TARGET else 'NOT met'}; "
                   f"gain >= +{100 * GAIN_TARGET:.0f} pt: {'met' if gain >= GAIN_TARGET else 'NOT met'}; "
                   f"not below top-1 by > {100 * LOSS_LIMIT:.1f} pt: {'met' if gain >= -LOSS_LIMIT else 'NOT met'}")
        print(f"| {name} | {len(rows)} | {d.mean():.4f} | {np.median(d):.4f} "
              f"| {np.mean([r['iou'] for r in rows]):.4f} | {t1.mean():.4f} | {100 * gain:+.2f} | {worse} "
              f"| {sum(r['n_lesions'] == 0 for r in rows)} | {statistics.median(r['ms'] for r in rows):.0f} "
              f"| {statistics.median(first):.0f} ({len(first)}) | {statistics.median(again):.0f} "
              f"| {'yes' if with_diag else 'no'} | {targets} |", flush=True)
    uncached = {name: sum(not r["cached_on_disk"] for r in rows) for name, rows, *_ in summaries}
    if any(uncached.values()):
        print(f"\nNote: images not in the disk cache were encoded before the timed call: {uncached}")
    print("\nFigures: " + ", ".join(str(s[-1].relative_to(ROOT)) for s in summaries))
    for rows, labels in diag_rows:
        diagnosis_table(rows, labels)


if __name__ == "__main__":
    main()
