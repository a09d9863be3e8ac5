"""Leave-one-site-out benchmark of text-guided localisation: does the phrase find the lesion at a site the
proposer never trained on?

    python benchmarks/bench_cross_site.py [--proposer model/qformer_lite/qformer_lite.pt] [--tag shipped]
        [--sets uclm-lesion uclm-normal busbra-fold5 kvasir-val ddti-test] [--limit N] [--diagnosis]
        [--mask-ranker auto|off|FILE]

A proposer checkpoint is evaluated through the code the server runs: the served predictor (encoder runtime
``auto``, as ``--conf runtime`` defaults) and :class:`radvlsm.pipeline.RadVLSMPipeline` with its defaults. Each set
is run with the phrase its users would type and with the default ``lesion``:

* ``uclm-lesion`` (BUS-UCLM, a breast site in Spain, another scanner; the 260 lesion images whose mask has their
  size): text Dice (label > 0 vs the mask), share whose top-1 proposal box has IoU >= 0.5 with the lesion's box,
  share answered "no lesion", and the reference-box Dice (the ``sam`` task with the lesion's tight box, same
  images) the text path is compared to. With ``--diagnosis``: the diagnosis head's AUC (benign/malignant) from
  the pipeline's own top lesion vs from the reference mask; an image with no lesion gets no diagnosis and is
  scored 0.5 (uninformative).
* ``uclm-normal`` (196 real lesion-free BUS-UCLM images): share with any lesion returned.
* ``uclm-lesion-test``, ``uclm-normal-test``: the same of BUS-UCLM's held-back patients (``sha1(patient) mod 5
  == 0``; 72 and 45 images), to compare a model trained on its other patients (the all-sites model) with one
  that never saw the site. The cross-site targets are printed for ``uclm-lesion`` only.
* ``busbra-fold5``, ``kvasir-val`` (the in-domain report sets) and ``ddti-test`` (DDTI thyroid cases with
  ``sha1(case) mod 5 == 0``, never trained on).

Which sets a checkpoint trained on is in its model card; this script only measures. Rows are appended per image
to ``benchmarks/results/cross_site_<tag>_<set>.csv`` as they are computed, so an interrupted run resumes (delete
the file to recompute). Embeddings come from the disk cache (``~/.cache/radvlsm/embeddings``).
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import Recording, dice, stack_for  # noqa: E402
from benchmarks.datasets import load, uclm_pathology  # noqa: E402
from radvlsm.geometry import mask_to_box  # noqa: E402
from radvlsm.io import load_image, load_mask  # noqa: E402
from radvlsm.pipeline import PipelineOptions, RadVLSMPipeline  # noqa: E402
from radvlsm.proposals.boxes import box_iou  # noqa: E402
from radvlsm.proposals.phrases import DEFAULT_PHRASE  # noqa: E402

DISK_CACHE = "~/.cache/radvlsm/embeddings"
RESULTS = ROOT / "benchmarks" / "results"
DIAGNOSIS_DIR = ROOT / "model" / "diagnosis"
#: the phrase each set's users would type (the default phrase is always run as well)
USER_PHRASE = {"uclm-lesion": "breast lesion", "uclm-normal": "breast lesion", "busbra-fold5": "breast lesion",
               "kvasir-val": "colon polyp", "ddti-test": "thyroid nodule",
               "uclm-lesion-test": "breast lesion", "uclm-normal-test": "breast lesion"}
#: run by default; the -test sets (BUS-UCLM's held-back patients) are for a model trained on its other patients
SETS = ["uclm-lesion", "uclm-normal", "busbra-fold5", "kvasir-val", "ddti-test"]
#: targets of the cross-site issue (model never trained on BUS-UCLM)
CROSS_DICE, CROSS_REF_SHARE, CROSS_TOP1, CROSS_NO_LESION, NORMAL_FP = 0.75, 0.90, 0.85, 0.03, 0.15
IN_DOMAIN = {"busbra-fold5": 0.80, "kvasir-val": 0.82}
AUC_GAP = 0.05


def done_rows(path: Path) -> dict[tuple[str, str], dict]:
    if not path.exists():
        return {}
    with path.open() as f:
        return {(r["case"], r["phrase"]): r for r in csv.DictReader(f)}


FIELDS = ["case", "phrase", "has_lesion", "found", "n_lesions", "dice", "ref_dice", "top1_iou", "match",
          "heat_peak", "p_pipeline", "p_reference", "ms"]


def run_set(name: str, items, pipe: RadVLSMPipeline, rec: Recording, diagnoser, out_csv: Path) -> list[dict]:
    """Every image with both phrases; rows appended to ``out_csv`` as they come (resumable)."""
    predictor = pipe.predictor
    done = done_rows(out_csv)
    phrases = [USER_PHRASE.get(name, DEFAULT_PHRASE)] + ([DEFAULT_PHRASE] if USER_PHRASE.get(name) else [])
    new_file = not out_csv.exists()
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    with out_csv.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        if new_file:
            writer.writeheader()
        for i, (img_path, mask_path, case) in enumerate(items):
            if all((case, p) in done for p in phrases):
                continue
            image = load_image(img_path)
            gt = load_mask(mask_path, image.shape) > 0
            enc = predictor.encode(image)
            gt_box = mask_to_box(gt)
            ref_dice, p_ref = "", ""
            if gt_box is not None:
                ref_dice = dice(predictor.decode(enc, np.array(gt_box, np.float32))[0][0], gt)
                if diagnoser is not None:
                    g = diagnoser.diagnose(image, gt, embedding=enc)
                    p_ref = g.probability if g.ok else ""
            for k, phrase in enumerate(phrases):
                if (case, phrase) in done:
                    continue
                diagnose = diagnoser is not None and k == 0
                t = time.perf_counter()
                res = pipe.run(image, PipelineOptions(text=phrase, diagnose=diagnose))
                ms = (time.perf_counter() - t) * 1e3
                cands = rec.last.candidates
                top1 = ""
                if gt_box is not None:
                    top1 = float(box_iou(np.array(cands[0].box)[None], np.array(gt_box)[None])[0, 0]) if cands else 0.0
                p_pipe = ""
                if diagnose and res.diagnoses and res.diagnoses[0].ok:
                    p_pipe = res.diagnoses[0].probability
                row = {"case": case, "phrase": phrase, "has_lesion": int(gt_box is not None),
                       "found": int(bool(res.lesions)), "n_lesions": len(res.lesions),
                       "dice": dice(res.label > 0, gt) if gt_box is not None else "", "ref_dice": ref_dice,
                       "top1_iou": top1, "match": round(res.result["match_score"], 4),
                       "heat_peak": round(float(rec.last.heatmap.max()), 4) if rec.last.heatmap is not None else "",
                       "p_pipeline": p_pipe, "p_reference": p_ref if diagnose else "", "ms": round(ms, 1)}
                writer.writerow(row)
                done[(case, phrase)] = {k2: str(v) for k2, v in row.items()}
            f.flush()
            predictor.cache.clear()
            if (i + 1) % 25 == 0:
                print(f"  {name} {i + 1}/{len(items)}", file=sys.stderr, flush=True)
    cases = {c for _, _, c in items}
    return [r for (c, _), r in done.items() if c in cases]


def _f(v) -> float | None:
    return None if v in ("", None) else float(v)


def summarise(name: str, rows: list[dict]) -> list[str]:
    out = []
    for phrase in dict.fromkeys(r["phrase"] for r in rows):
        rs = [r for r in rows if r["phrase"] == phrase]
        found = np.array([int(r["found"]) for r in rs])
        lesion = [r for r in rs if int(r["has_lesion"])]
        if lesion:
            d = np.array([float(r["dice"]) for r in lesion])
            ref = np.array([float(r["ref_dice"]) for r in lesion])
            top1 = np.array([float(r["top1_iou"]) >= 0.5 for r in lesion])
            no_lesion = 1 - np.mean([int(r["found"]) for r in lesion])
            targets = ""
            if name == "uclm-lesion":
                targets = (f"Dice >= {CROSS_DICE}: {_met(d.mean() >= CROSS_DICE)}; >= {CROSS_REF_SHARE:.0%} of ref: "
                           f"{_met(d.mean() >= CROSS_REF_SHARE * ref.mean())}; top-1 >= {CROSS_TOP1:.0%}: "
                           f"{_met(top1.mean() >= CROSS_TOP1)}; no lesion <= {CROSS_NO_LESION:.0%}: "
                           f"{_met(no_lesion <= CROSS_NO_LESION)}")
            elif name in IN_DOMAIN:
                targets = f"Dice >= {IN_DOMAIN[name]}: {_met(d.mean() >= IN_DOMAIN[name])}"
            share = d.mean() / max(ref.mean(), 1e-9)
            out.append(f"| {name} | {phrase} | {len(lesion)} | {d.mean():.4f} | {np.median(d):.4f} | {ref.mean():.4f} "
                       f"| {share:.1%} | {top1.mean():.1%} | {no_lesion:.1%} | - | {targets} |")
        else:
            fp = found.mean()
            out.append(f"| {name} | {phrase} | {len(rs)} | - | - | - | - | - | - | {fp:.1%} "
                       f"| lesion returned <= {NORMAL_FP:.0%}: {_met(fp <= NORMAL_FP)} |")
    return out


def presence_lines(lesion: list[dict], normal: list[dict]) -> list[str]:
    """Whether the image-text match tells a site's lesion images from its lesion-free ones (ROC AUC, ties half),
    whatever the threshold; and how often the top box is right where a lesion was answered."""
    out = []
    for phrase in dict.fromkeys(r["phrase"] for r in lesion):
        pos = np.array([float(r["match"]) for r in lesion if r["phrase"] == phrase])
        neg = np.array([float(r["match"]) for r in normal if r["phrase"] == phrase])
        if not len(pos) or not len(neg):
            continue
        auc = float(np.mean((pos[:, None] > neg[None]) + 0.5 * (pos[:, None] == neg[None])))
        top1 = [float(r["top1_iou"]) >= 0.5 for r in lesion if r["phrase"] == phrase and int(r["found"])]
        right = f"{np.mean(top1):.1%} of {len(top1)}" if top1 else "-"
        out.append(f"| {phrase} | {len(pos)} / {len(neg)} | {auc:.3f} | {right} |")
    if not out:
        return []
    return ["\nPresence: the match score, lesion vs lesion-free images of the same site\n",
            "| phrase | images (lesion / lesion-free) | ROC AUC | top-1 IoU>=0.5 where a lesion was answered |",
            "|---|---|---|---|", *out]


def _met(ok: bool) -> str:
    return "met" if ok else "NOT met"


def diagnosis_lines(rows: list[dict], labels: dict[str, int]) -> list[str]:
    from radvlsm.diagnosis.metrics import report

    rs = [r for r in rows if r["p_reference"] not in ("", None) and r["case"] in labels]
    if len({labels[r["case"]] for r in rs}) < 2:
        return []
    y = np.array([labels[r["case"]] for r in rs])
    p_ref = np.array([float(r["p_reference"]) for r in rs])
    p_app = np.array([_f(r["p_pipeline"]) if _f(r["p_pipeline"]) is not None else 0.5 for r in rs])
    missing = sum(_f(r["p_pipeline"]) is None for r in rs)
    a, b = report(y, p_app), report(y, p_ref)
    return [f"\nDiagnosis head on BUS-UCLM lesion images ({len(rs)} images, {int(y.sum())} malignant; phrase "
            f"'{rs[0]['phrase']}'): {missing} got no lesion to describe (scored 0.5).\n",
            "| mask | AUC | sens@90%spec | Brier |", "|---|---|---|---|",
            f"| the app's own (pipeline top lesion) | {a['auc']:.3f} | {a['sens_at_90spec']:.3f} | {a['brier']:.3f} |",
            f"| reference mask | {b['auc']:.3f} | {b['sens_at_90spec']:.3f} | {b['brier']:.3f} |",
            f"\nTarget: AUC within {AUC_GAP} of the reference mask's: {b['auc'] - a['auc']:+.3f} below, "
            f"{_met(b['auc'] - a['auc'] <= AUC_GAP)}"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--proposer", type=Path, default=None, help="qformer_lite checkpoint (default: the shipped one)")
    ap.add_argument("--tag", default="shipped", help="name of this run in the result files")
    ap.add_argument("--sets", nargs="+", default=SETS, choices=list(USER_PHRASE))
    ap.add_argument("--limit", type=int, default=None, help="first N images of each set")
    ap.add_argument("--diagnosis", action="store_true", help="also the diagnosis AUC on uclm-lesion")
    ap.add_argument("--runtime", default="auto", help="encoder runtime (the server's default: auto)")
    ap.add_argument("--mask-ranker", default="auto",
                    help="the pipeline's mask ranker: auto (the server's default), off, or a ranker file")
    args = ap.parse_args()
    stack = stack_for(runtime=args.runtime, disk_cache=DISK_CACHE,
                      qformer_checkpoint=str(args.proposer) if args.proposer else None,
                      diagnosis_dir=str(DIAGNOSIS_DIR), diagnose=args.diagnosis, mask_ranker=args.mask_ranker)
    predictor = stack.predictor
    rec = Recording(stack.proposer)
    pipe = stack.pipeline_over(rec)  # the stack's pipeline, its proposer's answers kept
    diagnoser = stack.diagnoser
    lines, diag, by_set = [], [], {}
    for name in args.sets:
        items = load(name)[: args.limit]
        d = diagnoser if name.startswith("uclm-lesion") else None  # run_set asks for a diagnosis only with one
        rows = run_set(name, items, pipe, rec, d, RESULTS / f"cross_site_{args.tag}_{name}.csv")
        lines += summarise(name, rows)
        by_set[name] = rows
        if d is not None:
            diag = diagnosis_lines(rows, uclm_pathology())
    ckpt = args.proposer or "model/qformer_lite/qformer_lite.pt (shipped)"
    ranker = stack.mask_ranker
    ranked = f"mask ranker {stack.settings.ranker_path} (version {ranker.version})" if ranker else "no mask ranker"
    print(f"Proposer {ckpt}; {ranked}; encoder runtime {predictor.runtime.name}; radvlsm pipeline defaults; label > 0 "
          f"vs the mask. Reference = the sam task with the lesion's tight box on the same images.\n")
    print("| set | phrase | images | text Dice mean | median | reference-box Dice | text / reference | top-1 IoU>=0.5 "
          "| no lesion | lesion returned (normals) | targets |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(lines))
    print("\n".join(diag))
    for suffix in ("", "-test"):
        if f"uclm-lesion{suffix}" in by_set and f"uclm-normal{suffix}" in by_set:
            print("\n".join(presence_lines(by_set[f"uclm-lesion{suffix}"], by_set[f"uclm-normal{suffix}"])))
    print(f"\nPer-image rows: benchmarks/results/cross_site_{args.tag}_<set>.csv")


if __name__ == "__main__":
    main()
