"""Collect the mask ranker's training data: per image, the candidate masks the served ranking stage decodes and
their region features (:mod:`radvlsm.mask_ranking`), with each mask's IoU against the reference mask.

    python scripts/mask_ranker_collect.py SET --limit N --proposer model/qformer_lite_xsite/qformer_lite.pt \
        [--out work/mask_ranker]

``SET`` is a ``benchmarks/datasets.py`` preset (``busbra-train``, ``ddti-train``, ``kvasir-train`` to train;
``uclm-lesion``, ``uclm-normal``, ``busbra-fold5`` to report). ``--limit`` draws N images with a fixed seed. Every
image is scored with the phrase ``lesion`` whether or not the proposer calls it present (more candidates to learn
from); the candidates are the relevance components at 0.5/0.35/0.2 (up to 4), the box head's box and up to 8 contrast
blobs (more than are served), as :func:`radvlsm.proposals.ranked.ranking_boxes` builds them. Each candidate is
stored twice: from its first decode (``feats1``, ``iou1``) and after :func:`radvlsm.mask_ranking.tighten`
(``feats``, ``iou``), with its source and rank within the source (to compare fewer candidates or one pass
without collecting again).
Writes ``OUT/SET.npz`` (skipped if there).
Embeddings come from the disk cache (``~/.cache/radvlsm/embeddings``), the encoder runtime is the server's.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import stack_for  # noqa: E402
from benchmarks.datasets import load  # noqa: E402
from radvlsm.io import load_image, load_mask  # noqa: E402
from radvlsm.mask_ranking import first_pass, mask_iou, region_features, tighten  # noqa: E402
from radvlsm.proposals.base import Candidate, Proposal  # noqa: E402
from radvlsm.proposals.ranked import ranking_boxes  # noqa: E402

SOURCES = {"heatmap": 1, "box_head": 2, "contrast": 0}
#: more candidates than are served (mask_ranker_train.py --max-heat/--max-blobs picks a served count from them)
COLLECT_HEAT, COLLECT_BLOBS = 4, 8


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("set")
    ap.add_argument("--limit", type=int, default=0, help="N images drawn with seed 0 (0: all)")
    ap.add_argument("--proposer", required=True, help="qformer_lite checkpoint whose relevance map is read")
    ap.add_argument("--out", type=Path, default=ROOT / "work" / "mask_ranker")
    args = ap.parse_args()
    out = args.out / f"{args.set}.npz"
    if out.exists():
        print(f"{out} exists; delete it to collect again")
        return
    stack = stack_for(runtime="auto", disk_cache="~/.cache/radvlsm/embeddings", qformer_checkpoint=args.proposer)
    predictor, proposer = stack.predictor, stack.text_proposer
    items = load(args.set)
    if args.limit and len(items) > args.limit:
        pick = np.random.default_rng(0).choice(len(items), args.limit, replace=False)
        items = [items[i] for i in sorted(pick)]
    rows: dict[str, list] = {k: [] for k in ("feats", "iou", "feats1", "iou1", "img", "src", "rank", "match")}
    cases, t0 = [], time.time()
    for k, (img_path, mask_path, case) in enumerate(items):
        image = load_image(img_path)
        gt = load_mask(mask_path, image.shape) > 0
        enc = predictor.encode(image)
        match, heat, head_box = proposer.score(enc, "lesion")
        head = Candidate(head_box.tolist(), match, proposer.name, {"source": "box_head"})
        boxes, sources = ranking_boxes(image, Proposal([head], match, heat, proposer.name), COLLECT_HEAT, COLLECT_BLOBS)
        logits, ious, kept, origin = first_pass(predictor, enc, boxes)
        if not len(origin):  # every mask empty: nothing to rank
            continue
        rows["feats1"].append(region_features(logits, ious, kept, enc, image, heat, match))
        rows["iou1"].append(mask_iou(logits, gt))
        logits, ious, kept = tighten(predictor, enc, logits, kept)
        rows["feats"].append(region_features(logits, ious, kept, enc, image, heat, match))
        rows["iou"].append(mask_iou(logits, gt))
        rows["img"].append(np.full(len(origin), k))
        rows["src"].append(np.array([SOURCES[sources[i]] for i in origin], int))
        rows["rank"].append(np.array([i - sources.index(sources[i]) for i in origin], int))
        rows["match"].append(np.array([match]))
        cases.append(case)
        predictor.cache.clear()
        if (k + 1) % 20 == 0:
            print(f"{args.set} {k + 1}/{len(items)} {time.time() - t0:.0f} s", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    np.savez(out, cases=np.array(cases), **{k: np.concatenate(v) for k, v in rows.items()})
    print(f"wrote {out} ({len(items)} images, {time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
