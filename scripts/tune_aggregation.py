"""Tune the aggregation rule on TRAINING images (BUS-BRA folds 1-4, Kvasir train), never on the report sets,
and by default only on the training images the shipped proposer held back (``scripts/proposer_heldback.py``): on
the images it trained on, its relevance maps are better than on new images, which flatters the text terms.

    python scripts/tune_aggregation.py collect --n 60 --sets heldback-kvasir-train heldback-busbra-train   # slow
    python scripts/tune_aggregation.py rules                                                                # fast

``collect`` stores, per image, everything a rule needs on the decoder's low-resolution grid (cropped to the
image): the reference mask, the qformer_lite relevance map, every candidate (top 3, as the pipeline) with its
score/relevance, and the mask logits and predicted IoUs of each candidate's prompt set (the box, its scaled and
shifted variants, SAM's three multimask outputs). ``rules`` replays :func:`radvlsm.aggregation.fuse_prompts` and
the lesion selection of :func:`radvlsm.aggregation.select_lesions` under several settings and prints mean Dice
against the single top-1 box. Packs are resumable (one file per image under ``--out``).
"""

from __future__ import annotations

import argparse
import random
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from benchmarks.datasets import load  # noqa: E402
from radvlsm import aggregation as agg  # noqa: E402
from radvlsm.io import load_image, load_mask  # noqa: E402

TOP_K = 3  # the pipeline's default top_k
COLLECT_SCALES = (0.9, 1.1, 1.2, 1.3, 1.45)
PACKS = Path("~/.cache/radvlsm/aggregation_packs").expanduser()


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / max(a.sum() + b.sum(), 1))


def dataset(name: str) -> tuple[list, str]:
    """Items and pack folder of a set; ``heldback-<set>``: the images the shipped proposer never trained on;
    ``seen-<set>``: the ones it trained on."""
    if name.startswith("heldback-"):
        from proposer_heldback import heldback

        base = name.removeprefix("heldback-")
        return heldback()[base], base
    if name.startswith("seen-"):  # the training images the shipped proposer learnt (biased: for comparison only)
        from proposer_heldback import heldback

        base = name.removeprefix("seen-")
        held = {case for _, _, case in heldback()[base]}
        return [it for it in load(base) if it[2] not in held], base
    return load(name), name


def collect(args) -> None:
    from radvlsm.models import build_backbone
    from radvlsm.predictor import SegmentPredictor
    from radvlsm.proposals import build_proposer

    predictor = SegmentPredictor(build_backbone("litemedsam"), disk_cache="~/.cache/radvlsm/embeddings")
    proposer = build_proposer("qformer_lite", predictor=predictor)
    cfg = agg.AggregationConfig(scales=COLLECT_SCALES, shift=0.0)  # every scale any rule below may use
    for name in args.sets:
        items, folder = dataset(name)
        items = list(items)
        random.Random(1).shuffle(items)  # a fixed order: a larger --n extends a smaller run's packs
        items = items[: args.n]
        out = args.out / folder
        out.mkdir(parents=True, exist_ok=True)
        for i, (img_path, mask_path, case) in enumerate(items):
            dst = out / f"{case}.pt"
            if dst.exists():
                continue
            image = load_image(img_path)
            enc = predictor.encode(image)
            prop = proposer.propose(image, "lesion", top_k=TOP_K, encoded=enc)
            gt = load_mask(mask_path, image.shape) > 0
            grid = predictor.lowres_valid(enc, 256)
            rec = {"case": case, "gt": agg.to_grid(torch.from_numpy(gt.astype(np.float32)), grid) > 0.5,
                   "heat": agg.to_grid(torch.from_numpy(prop.heatmap), grid).half()
                   if prop.heatmap is not None else None,
                   "match": prop.match_score, "candidates": []}
            for c in prop.candidates:
                ps = agg.decode_prompt_set(predictor, enc, np.array(c.box, np.float32), cfg)
                rec["candidates"].append({"box": c.box, "score": c.score, "extra": c.extra,
                                          "logits": ps.logits.half(), "ious": ps.ious, "kinds": ps.kinds})
            tmp = dst.with_suffix(".tmp")
            torch.save(rec, tmp)
            tmp.rename(dst)
            if (i + 1) % 10 == 0:
                print(f"  {name} {i + 1}/{len(items)}", file=sys.stderr, flush=True)


def replay(rec: dict, cfg: agg.AggregationConfig, sel: agg.SelectionConfig) -> np.ndarray:
    """The library's fusion + selection on a pack; returns the predicted foreground on the low-res grid."""
    gt = rec["gt"]
    lesions = []
    heat = rec["heat"].float() if rec["heat"] is not None else None
    clusters = agg.cluster_candidates([agg.Candidate(c["box"], c["score"], "qformer_lite", c["extra"])
                                       for c in rec["candidates"][:TOP_K]], cfg.cluster_iou)
    by_box = {tuple(c["box"]): c for c in rec["candidates"]}
    for cl in clusters:
        members = [by_box[tuple(c.box)] for c in cl]
        ps = agg.PromptSet.concat([agg.PromptSet(m["logits"].float(), m["ious"], m["kinds"],
                                                 np.full(len(m["kinds"]), m["score"], np.float32))
                                   for m in members],
                                  [m["score"] for m in members], cfg)
        lesions.append(agg.fuse_prompts(ps, heat, cl, cfg))
    kept = agg.select_lesions(lesions, sel)
    pred = np.zeros(gt.shape, bool)
    for lesion in kept:
        pred |= (lesion.logit > 0).numpy()
    return pred


def rules(args) -> None:
    torch.set_num_threads(1)
    base, sel0 = agg.AggregationConfig(), agg.SelectionConfig()
    variants = {
        "default": (base, sel0),
        "default, one lesion": (base, replace(sel0, max_lesions=1)),
        "default, lesions ranked by proposal score": (base, replace(sel0, use_quality=False)),
        "default, relative 0.5": (base, replace(sel0, relative=0.5)),
        "default, relative 0.95": (base, replace(sel0, relative=0.95)),
        "default, no text terms": (replace(base, heat_weight=False), sel0),
        "default, best prompt only": (replace(base, best_only=True), sel0),
        "default, m0 outputs only": (replace(base, multimask=False), sel0),
        "box only, m0": (replace(base, scales=(), multimask=False), sel0),
        "box only, m0, no text terms": (replace(base, scales=(), multimask=False, heat_weight=False), sel0),
        "no fusion (best box's mask)": (replace(base, fuse=False), sel0),
        "no fusion, lesions ranked by proposal score": (replace(base, fuse=False), replace(sel0, use_quality=False)),
        "no fusion, one lesion": (replace(base, fuse=False), replace(sel0, max_lesions=1)),
    }
    for scales in ((0.9, 1.1), (1.1, 1.2), (0.9, 1.1, 1.2, 1.3), COLLECT_SCALES):
        for term in ("mean", "coverage", "dice"):
            for sharp in (1.0, 3.0):
                variants[f"scales {'/'.join(map(str, scales))}, {term}, sharp {sharp:g}"] = (
                    replace(base, scales=scales, prompt_text_term=term, sharpness=sharp), sel0)
    for name in args.sets:
        items, folder = dataset(name)
        cases = {case for _, _, case in items}
        packs = sorted(p for p in (args.out / folder).glob("*.pt") if p.stem in cases)
        if not packs:
            continue
        scores: dict[str, list[float]] = {"top-1 box": [], **{k: [] for k in variants}}
        for p in packs:
            rec = torch.load(p, weights_only=False)
            gt = rec["gt"].numpy()
            if not rec["candidates"]:
                for v in scores.values():
                    v.append(0.0)
                continue
            top = max(rec["candidates"], key=lambda c: c["score"])
            scores["top-1 box"].append(dice((top["logits"][0].float() > 0).numpy(), gt))
            for k, (cfg, sel) in variants.items():
                scores[k].append(dice(replay(rec, cfg, sel), gt))
        ref = np.mean(scores["top-1 box"])
        print(f"{name} ({len(packs)} images, low-res grid):")
        for k, v in scores.items():
            print(f"  {k:28s} Dice {np.mean(v):.4f}  ({(np.mean(v) - ref) * 100:+.2f} pt vs top-1)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=["collect", "rules"])
    ap.add_argument("--n", type=int, default=150)
    ap.add_argument("--sets", nargs="+", default=["heldback-busbra-train", "heldback-kvasir-train"],
                    help="dataset presets; heldback-<preset>: only the images the shipped proposer never trained on; "
                         "seen-<preset>: only those it trained on")
    ap.add_argument("--out", type=Path, default=PACKS)
    args = ap.parse_args()
    collect(args) if args.command == "collect" else rules(args)


if __name__ == "__main__":
    main()
