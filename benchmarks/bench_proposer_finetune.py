"""Does fine-tuning the qformer_lite proposer's heads on corrected masks raise its held-back top-1 box IoU?

    python benchmarks/bench_proposer_finetune.py [--train 100] [--val 50] [--settings 0:0 5:1e-4 10:3e-4 20:1e-3]

Images: BUS-BRA folds 1-4 after ``random.Random(0).shuffle`` (the active-learning benchmark's pool order); the
first ``--train`` are the corrections, the next ``--val`` the held-back images the gate scores (fold 5 is not
used: this chooses the trainer's defaults). Each setting ``EPOCHS:LR`` trains a fresh copy of the shipped heads
with :func:`radvlsm.training.proposer.fine_tune_proposer` (nothing is published: a throw-away store) and prints
the held-back mean top-1 box IoU and hit rate (IoU >= 0.5) before and after, as the gate sees them.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.datasets import busbra  # noqa: E402
from radvlsm.cache import EmbeddingCache  # noqa: E402
from radvlsm.models import build_backbone  # noqa: E402
from radvlsm.predictor import SegmentPredictor  # noqa: E402
from radvlsm.proposals import build_proposer  # noqa: E402
from radvlsm.training.data import TrainSample, prepare  # noqa: E402
from radvlsm.training.proposer import fine_tune_proposer  # noqa: E402
from radvlsm.training.store import ProposerStore  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", type=int, default=100)
    ap.add_argument("--val", type=int, default=50)
    ap.add_argument("--settings", nargs="+", default=["0:0", "5:1e-4", "10:3e-4", "20:1e-3"],
                    help="EPOCHS:LR pairs")
    args = ap.parse_args()
    settings = [(int(e), float(lr)) for e, lr in (s.split(":") for s in args.settings)]
    predictor = SegmentPredictor(build_backbone("litemedsam"), EmbeddingCache(max_bytes=1500 << 20),
                                 disk_cache="~/.cache/radvlsm/embeddings")
    proposer = build_proposer("qformer_lite", predictor=predictor)
    pool = busbra({1, 2, 3, 4})
    random.Random(0).shuffle(pool)
    samples = [TrainSample(case, img, mask) for img, mask, case in pool[: args.train + args.val]]
    t = time.time()
    train, val = prepare(samples[: args.train], predictor), prepare(samples[args.train:], predictor)
    print(f"BUS-BRA folds 1-4: {len(train)} corrections, {len(val)} held back ({time.time() - t:.0f} s to load)\n")
    print("| epochs | lr | top-1 IoU before | after | hit rate before | after | final loss | seconds |")
    print("|---|---|---|---|---|---|---|---|")
    for epochs, lr in settings:
        with tempfile.TemporaryDirectory() as tmp:
            run = fine_tune_proposer(proposer, train, val, ProposerStore(tmp), epochs, lr, tolerance=1.0)
        loss = run.losses[-1] if run.losses else ""
        print(f"| {epochs} | {lr:g} | {run.iou_before:.4f} | {run.iou_after:.4f} | {run.hit_before:.3f} | "
              f"{run.hit_after:.3f} | {loss} | {run.seconds:.0f} |", flush=True)


if __name__ == "__main__":
    main()
