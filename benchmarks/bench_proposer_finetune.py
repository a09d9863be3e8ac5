"""In-domain check of the proposer fine-tune: on images like its own training data, does the gate refuse?

    python benchmarks/bench_proposer_finetune.py [--train 100] [--val 50] [--settings 0:0 20:3e-4 20:1e-3]

Images: BUS-BRA folds 1-4 after ``random.Random(0).shuffle`` (the active-learning benchmark's pool order); the
first ``--train`` are the corrections (fold 5 is not used: this chooses the trainer's defaults). Each setting
``EPOCHS:LR`` runs :func:`radvlsm.training.proposer.fine_tune_proposer` on them as the train task does (heads
scope, 3-fold out-of-fold gate, paired bootstrap; a throw-away store), and prints the gate's figures; with
``--val`` the published model's top-1 box IoU and hit rate on the next ``--val`` images too (0 = skip).
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import stack_for  # noqa: E402
from benchmarks.datasets import busbra  # noqa: E402
from radvlsm.training.data import TrainSample, prepare  # noqa: E402
from radvlsm.training.proposer import ProposerConfig, fine_tune_proposer, outcome  # noqa: E402
from radvlsm.training.store import ProposerStore  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", type=int, default=100)
    ap.add_argument("--val", type=int, default=50)
    ap.add_argument("--settings", nargs="+", default=["0:0", "20:3e-4", "20:1e-3"],
                    help="EPOCHS:LR pairs")
    args = ap.parse_args()
    settings = [(int(e), float(lr)) for e, lr in (s.split(":") for s in args.settings)]
    # eager encoder, 1500 MB memory cache over the disk cache, the shipped proposer
    stack = stack_for(cache_mb=1500, disk_cache="~/.cache/radvlsm/embeddings")
    predictor = stack.predictor
    proposer = stack.text_proposer
    pool = busbra({1, 2, 3, 4})
    random.Random(0).shuffle(pool)
    samples = [TrainSample(case, img, mask) for img, mask, case in pool[: args.train + args.val]]
    t = time.time()
    train, val = prepare(samples[: args.train], predictor), prepare(samples[args.train:], predictor)
    print(f"BUS-BRA folds 1-4: {len(train)} corrections, {len(val)} held back ({time.time() - t:.0f} s to load)\n")
    print("| epochs | lr | out-of-fold score before | after | 90 % lower bound of the gain | published | "
          "held-back top-1 IoU (served / published) | hit rate | seconds |")
    print("|---|---|---|---|---|---|---|---|---|")
    served = [outcome(proposer, it, "lesion") for it in val]
    for epochs, lr in settings:
        with tempfile.TemporaryDirectory() as tmp:
            store = ProposerStore(tmp)
            run = fine_tune_proposer(proposer, train, store, ProposerConfig(epochs=epochs, lr=lr))
            follower = (stack.proposer_over("qformer_lite", checkpoint=stack.settings.qformer_path, store=store)
                        if run.published else proposer)
            after = [outcome(follower, it, "lesion") for it in val]
        g = run.gate
        iou = lambda outs, p: np.array([o.score(p.threshold) for o in outs])  # noqa: E731
        b, a = iou(served, proposer), iou(after, follower)
        held = "- | -" if not val else \
            f"{b.mean():.4f} / {a.mean():.4f} | {(b >= 0.5).mean():.3f} / {(a >= 0.5).mean():.3f}"
        print(f"| {epochs} | {lr:g} | {g.get('before', float('nan')):.4f} | {g.get('after', float('nan')):.4f} | "
              f"{g.get('lower', float('nan')):+.4f} | {run.published} | {held} | {run.seconds:.0f} |", flush=True)


if __name__ == "__main__":
    main()
