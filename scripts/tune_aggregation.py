"""Compare aggregation rules on TRAINING images (BUS-BRA folds 1-4, Kvasir train), never on the report sets.

    python scripts/tune_aggregation.py --n 30

Prints mean Dice per rule: the single top-1 proposal box, and fusion variants of radvlsm.aggregation.
"""

from __future__ import annotations

import argparse
import copy
import random
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.datasets import load  # noqa: E402
from radvlsm import aggregation as agg  # noqa: E402
from radvlsm.io import load_image, load_mask  # noqa: E402
from radvlsm.models import build_backbone  # noqa: E402
from radvlsm.predictor import SegmentPredictor  # noqa: E402
from radvlsm.proposals import build_proposer  # noqa: E402
from radvlsm.proposals.refine import refine_candidates  # noqa: E402


def dice(a, b) -> float:
    return float(2 * (a & b).sum() / max(a.sum() + b.sum(), 1))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=30)
    ap.add_argument("--sets", nargs="+", default=["busbra-train", "kvasir-train"])
    args = ap.parse_args()
    predictor = SegmentPredictor(build_backbone("litemedsam"), disk_cache="~/.cache/radvlsm/embeddings")
    proposer = build_proposer("qformer_lite", predictor=predictor)
    rules = {
        "vote (default)": agg.AggregationConfig(),
        "vote, no variants": agg.AggregationConfig(scales=(), shift=0.0),
        "vote, no multimask": agg.AggregationConfig(multimask=False),
        "vote, wider jitter": agg.AggregationConfig(scales=(0.85, 1.15), shift=0.08),
    }
    for name in args.sets:
        items = load(name)
        items = random.Random(1).sample(items, args.n)
        scores: dict[str, list[float]] = {"top-1 box": [], "top-1 coarse box": [], **{r: [] for r in rules}}
        for img_path, mask_path, _ in items:
            image = load_image(img_path)
            gt = load_mask(mask_path, image.shape) > 0
            enc = predictor.encode(image)
            prop = proposer.propose(image, "lesion", encoded=enc)
            if not prop.candidates:
                for v in scores.values():
                    v.append(0.0)
                continue
            coarse = np.array(prop.candidates[0].box, np.float32)
            scores["top-1 coarse box"].append(dice(predictor.decode(enc, coarse)[0][0], gt))
            best = max(c.score for c in prop.candidates)
            kept = [copy.deepcopy(c) for c in prop.candidates if c.score >= 0.85 * best]
            for rule, cfg in rules.items():
                lesions = agg.aggregate(predictor, enc, copy.deepcopy(kept), cfg)
                pred = np.zeros(image.shape, bool)
                for lesion in lesions:
                    pred |= lesion.mask
                scores.setdefault(f"coarse {rule}", []).append(dice(pred, gt))
            cands = refine_candidates(predictor, enc, prop.candidates)
            scores["top-1 box"].append(dice(predictor.decode(enc, np.array(cands[0].box, np.float32))[0][0], gt))
            best = max(c.score for c in cands)
            cands = [c for c in cands if c.score >= 0.85 * best]
            for rule, cfg in rules.items():
                lesions = agg.aggregate(predictor, enc, cands, cfg)
                pred = np.zeros(image.shape, bool)
                for lesion in lesions:
                    pred |= lesion.mask
                scores[rule].append(dice(pred, gt))
        print(f"{name} ({args.n} images): " + "; ".join(f"{k} {np.mean(v):.4f}" for k, v in scores.items()),
              flush=True)


if __name__ == "__main__":
    main()
