"""Which signal tells a right answer of the text path from a wrong one at a new site (VESSA stage 2's choice)?

    python benchmarks/bench_pseudo_signal.py [--labels 10] [--work DIR]

At BUS-UCLM (the site no shipped model trained on), with the first ``--labels`` images of a learning-curve run's
labelling order (``benchmarks/bench_site_adaptation.py``, ``uclm-random-default``; the same seeded draw) as the
site's corrections: the cross-site proposer (``model/qformer_lite_xsite``) and the shipped decoder answer the
pool's other images with "lesion" through the served pipeline, and each answer's evidence is set against whether
it is right (top lesion's box IoU >= 0.5 with the reference lesion): ROC AUC of each signal, and how many right
answers (and lesion-free images) the pseudo-label rule (:mod:`radvlsm.training.pseudo`: mask agreement >=
0.95) and the top-k by agreement keep. The exemplar bank of the labelled lesions is scored too (its top box's
agreement with the text proposer's: cross-modal consistency). Per-image rows go to ``--work``.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bench_site_adaptation import DISK_CACHE, site_cases  # noqa: E402
from benchmarks.common import stack_for  # noqa: E402
from radvlsm.geometry import mask_to_box  # noqa: E402
from radvlsm.io import load_image, load_mask  # noqa: E402
from radvlsm.pipeline import PipelineOptions  # noqa: E402
from radvlsm.proposals.boxes import box_iou  # noqa: E402
from radvlsm.training.pseudo import MIN_AGREEMENT  # noqa: E402


def labelling_order(pool: list[str]) -> list[str]:
    """The learning curve's ``random`` draws (seeded by the number labelled so far), steps 5, 10, 25, 50."""
    labelled: list[str] = []
    for step in (5, 10, 25, 50):
        free = sorted(set(pool) - set(labelled))
        labelled += random.Random(len(labelled) + 1).sample(free, step - len(labelled))
    return labelled


def auc(y: np.ndarray, score: np.ndarray) -> float:
    """Mann-Whitney ROC AUC (ties count half)."""
    pos, neg = score[y], score[~y]
    if not len(pos) or not len(neg):
        return float("nan")
    return float(((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()) / (len(pos) * len(neg)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--labels", type=int, default=10)
    ap.add_argument("--pool", type=int, default=150)
    ap.add_argument("--work", default=str(ROOT / "benchmarks" / "results" / "pseudo_signal"))
    args = ap.parse_args()
    pool, _, _, start = site_cases("uclm")
    pool = sorted(pool, key=lambda c: c[2])
    random.Random(0).shuffle(pool)
    pool = pool[: args.pool]
    by_id = {c[2]: c for c in pool}
    labelled = labelling_order(list(by_id))[: args.labels]
    stack = stack_for(runtime="auto", disk_cache=DISK_CACHE, qformer_checkpoint=str(start), mask_ranker="off")
    predictor, text, bank = stack.predictor, stack.text_proposer, stack.site.bank
    for c in labelled:
        image = load_image(by_id[c][0])
        mask = load_mask(by_id[c][1], image.shape) > 0
        if mask.any():
            bank.add_exemplar(c, image, mask)
    pipeline = stack.pipeline
    rows = []
    for case_id, (image_path, mask_path, _, _) in sorted(by_id.items()):
        if case_id in labelled:
            continue
        image = load_image(image_path)
        gt = load_mask(mask_path, image.shape) > 0
        enc = predictor.encode(image)
        tp = text.propose(image, "lesion", top_k=1, encoded=enc)
        bp = bank.propose(image, "lesion", top_k=1, encoded=enc)
        res = pipeline.run(image, PipelineOptions(text="lesion", diagnose=False))
        predictor.cache.clear()
        top = res.lesions[0] if res.lesions else None
        row = {"id": case_id, "lesion": bool(gt.any()), "found": top is not None, "match": tp.match_score}
        if top is not None:
            box = np.array(mask_to_box(top.mask), np.float32)
            ious = [p.get("predicted_iou") for p in top.prompts if p.get("predicted_iou") is not None]
            row.update(agreement=top.agreement, prompts=len(top.prompts), predicted_iou=max(ious) if ious else None,
                       bank_agreement=float(box_iou(np.array(bp.candidates[0].box), box)[0, 0]) if bp.candidates
                       else 0.0,
                       right=bool(gt.any()) and float(box_iou(box, np.array(mask_to_box(gt), np.float32))[0, 0]) >= 0.5)
        rows.append(row)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    (work / f"uclm-{args.labels}.json").write_text(json.dumps(rows, indent=1))
    found = [r for r in rows if r["found"]]
    y = np.array([r["right"] for r in found])
    print(f"BUS-UCLM pool, {args.labels} corrections ({sum(not by_id[c][3] for c in labelled)} lesion-free) as the "
          f"site's labels; {len(rows)} other pool images ({sum(r['lesion'] for r in rows)} with a lesion); "
          f"the text path ('lesion') returns a lesion on {len(found)}, right (top box IoU >= 0.5) on {int(y.sum())}")
    print("\n| signal | ROC AUC (right vs wrong answer) |\n|---|---|")
    for key in ("agreement", "predicted_iou", "match", "bank_agreement"):
        v = np.array([r.get(key) if r.get(key) is not None else np.nan for r in found], float)
        ok = ~np.isnan(v)
        print(f"| {key} | {auc(y[ok], v[ok]):.3f} |")
    print("\n| kept by | images | right | lesion-free |\n|---|---|---|---|")
    rule = [r for r in found if r["prompts"] >= 2 and r["agreement"] >= MIN_AGREEMENT]
    print(f"| agreement >= {MIN_AGREEMENT} (the pseudo-label rule) | {len(rule)} | {sum(r['right'] for r in rule)} | "
          f"{sum(not r['lesion'] for r in rule)} |")
    ranked = sorted(found, key=lambda r: -r["agreement"])
    for k in (5, 10, 20, 30):
        top = ranked[:k]
        print(f"| top {k} by agreement | {len(top)} | {sum(r['right'] for r in top)} | "
              f"{sum(not r['lesion'] for r in top)} |")


if __name__ == "__main__":
    main()
