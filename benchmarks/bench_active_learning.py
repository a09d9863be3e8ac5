"""Simulated annotation loop: does learning from corrections help, and does `uncertainty` pick better than `random`?

    python benchmarks/bench_active_learning.py [--pool 200] [--eval 100] [--rounds 4] [--k 25] [--epochs 2]
        [--strategies uncertainty random] [--prompts box|text] [--train-proposer] [--encoder-lora RANK]
        [--work DIR]

Start from the shipped LiteMedSAM decoder. Each round a strategy picks ``k`` unlabelled images from a pool (the
first ``--pool`` images of BUS-BRA folds 1-4 after ``random.Random(0).shuffle``); their reference masks stand in
for the clinician's corrections; the trainer runs as the ``/train/radvlsm`` task does (all labels so far, hash split,
publish only if not worse, continuing from the served version); then the served decoder is evaluated on the
first ``--eval`` images of BUS-BRA fold 5. ``uncertainty`` ranks the unlabelled pool images by the product's
scoring method (text pipeline, phrase "lesion"): scored once under the shipped decoder, or under the current
decoder every round with ``--rescore`` (what the product does after training; several times slower on CPU).

Evaluation prompts: ``box`` (default) = the tight box of each reference mask, what the ``sam`` task gets from a
clinician; ``text`` = the full ``radvlsm`` pipeline from the phrase "lesion". ``--train-proposer`` also fine-tunes
the qformer_lite proposer's heads each round, as ``/train/radvlsm`` does by default (its own gate and store).

Embeddings come from the shared disk cache (~/.cache/radvlsm/embeddings); progress is kept in ``--work``
(default ~/.cache/radvlsm/bench_al) after every round, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import dice, stack_for  # noqa: E402
from benchmarks.datasets import busbra  # noqa: E402
from radvlsm.geometry import mask_to_box  # noqa: E402
from radvlsm.io import load_image, load_mask  # noqa: E402
from radvlsm.pipeline import PipelineOptions  # noqa: E402
from radvlsm.training import DecoderStore, DecoderWatcher, TrainConfig, TrainSample, fine_tune  # noqa: E402
from radvlsm.training.store import ProposerStore, decoder_state  # noqa: E402
from radvlsm.training.uncertainty import pick_first, pick_random, pick_uncertain, score_image  # noqa: E402

DISK_CACHE = "~/.cache/radvlsm/embeddings"


class Loop:
    def __init__(self, args):
        self.args = args
        # eager encoder, 1500 MB memory cache over the disk cache, no diagnosis; the decoder and proposer stores
        # are this run's own (set per strategy in advance), not a trained_dir's
        self.stack = stack_for(cache_mb=1500, disk_cache=DISK_CACHE,
                               qformer_checkpoint=str(ROOT / "model" / "qformer_lite" / "qformer_lite.pt"))
        self.predictor = self.stack.predictor
        self.proposer = self.stack.text_proposer
        self.shipped_proposer = copy.deepcopy(self.proposer.model.state_dict())
        self.pipeline = self.stack.pipeline
        pool = busbra({1, 2, 3, 4})
        random.Random(0).shuffle(pool)  # a larger --pool extends a smaller one (embeddings are reused)
        self.pool = {case: (img, mask) for img, mask, case in pool[: args.pool]}
        self.eval = busbra({5})[: args.eval]
        self.shipped = decoder_state(self.predictor.backbone)

    def encode_all(self) -> None:
        items = [(img, case) for case, (img, _) in self.pool.items()] + [(img, case) for img, _, case in self.eval]
        t = time.time()
        for n, (img, _) in enumerate(items, 1):
            self.predictor.encode(load_image(img))
            if n % 25 == 0:
                print(f"  encoded {n}/{len(items)} ({(time.time() - t) / 60:.1f} min)", file=sys.stderr)

    def evaluate(self) -> float:
        scores = []
        for img, mask, _ in self.eval:
            image = load_image(img)
            gt = load_mask(mask, image.shape) > 0
            if self.args.prompts == "box":
                enc = self.predictor.encode(image)
                masks, _ = self.predictor.decode(enc, np.array(mask_to_box(gt), np.float32))
                pred = masks[0]
            else:
                pred = self.pipeline.run(image, PipelineOptions(text="lesion", diagnose=False)).label > 0
            scores.append(dice(pred, gt))
        return float(np.mean(scores))

    def scores(self, free: list[str]) -> dict[str, float]:
        """Uncertainty of the unlabelled pool images under the served decoder; with ``--rescore`` every round
        (as the product rescores stale images after training), else once, under the shipped decoder (kept in
        ``--work`` for resuming)."""
        path = Path(self.args.work).expanduser() / f"scores-p{self.args.pool}.json"
        cached = {} if self.args.rescore or not path.exists() else json.loads(path.read_text())
        for n, c in enumerate(c for c in free if c not in cached):
            cached[c] = score_image(self.pipeline, load_image(self.pool[c][0])).score
            if (n + 1) % 25 == 0:
                print(f"  scored {n + 1} pool images", file=sys.stderr)
        if not self.args.rescore:
            self._save(path, cached)
        return {c: cached[c] for c in free}

    def pick(self, strategy: str, labelled: list[str], rng: random.Random) -> tuple[list[str], float]:
        t = time.time()
        free = sorted(set(self.pool) - set(labelled))
        picked: list[str] = []
        if strategy == "uncertainty":
            scores = self.scores(free)
            while len(picked) < self.args.k and free:
                c, _ = pick_uncertain(free, scores.get)
                picked.append(c)
                free.remove(c)
        else:
            pick = pick_first if strategy == "first" else lambda ids: pick_random(ids, rng)
            while len(picked) < self.args.k and free:
                c = pick(free)
                picked.append(c)
                free.remove(c)
        return picked, (time.time() - t) / 60

    def advance(self, strategy: str, upto: int) -> list[dict]:
        """Run ``strategy``'s rounds up to ``upto`` (0 = evaluate the shipped model), resuming from its state."""
        a = self.args
        suffix = ("" if a.prompts == "box" else f"-{a.prompts}") + ("-proposer" if a.train_proposer else "")
        suffix += f"-lora{a.encoder_lora}" if a.encoder_lora else ""
        if a.encoder_lora and a.encoder_lora_lr != TrainConfig.encoder_lora_lr:
            suffix += f"-lr{a.encoder_lora_lr:g}"
        work = Path(a.work).expanduser() / f"{strategy}-p{a.pool}-k{a.k}-e{a.epochs}{suffix}"
        state_path = work / "state.json"
        state = json.loads(state_path.read_text()) if state_path.exists() else {"labelled": [], "rounds": []}
        store = DecoderStore(work / "sam_decoder")
        self.predictor.backbone.load_state_dict(self.shipped, strict=False)  # undo the other strategy's decoder
        self.predictor.decoder_watcher = DecoderWatcher(store, self.predictor.backbone, self.predictor.lock)
        self.predictor.decoder_watcher.refresh()  # this strategy's last published version, if any
        proposer_store = ProposerStore(work / "qformer_lite") if self.args.train_proposer else None
        self.proposer.model.load_state_dict(self.shipped_proposer)
        if proposer_store is not None:
            self.proposer.follow(proposer_store)
        rng = random.Random(len(state["labelled"]) + 1)  # deterministic per round, also when resuming
        if not state["rounds"]:
            state["rounds"].append({"round": 0, "labels": 0, "dice": self.evaluate(), "published": None,
                                    "train_min": 0.0, "pick_min": 0.0, "version": "shipped"})
            self._save(state_path, state)
        while len(state["rounds"]) <= upto:
            r = len(state["rounds"])
            picked, pick_min = self.pick(strategy, state["labelled"], rng)
            state["labelled"] += picked
            samples = [TrainSample(c, *self.pool[c]) for c in state["labelled"]]
            t = time.time()
            cfg = TrainConfig(epochs=self.args.epochs, train_proposer=self.args.train_proposer,
                              encoder_lora_rank=self.args.encoder_lora, encoder_lora_lr=self.args.encoder_lora_lr)
            res = fine_tune(self.predictor, samples, store, cfg, proposer=self.proposer, proposer_store=proposer_store)
            train_min = (time.time() - t) / 60
            row = {"round": r, "labels": len(state["labelled"]), "dice": self.evaluate(), "published": res.published,
                   "val_before": round(res.dice_before, 4), "val_after": round(res.dice_after, 4),
                   "train_min": round(train_min, 2), "pick_min": round(pick_min, 2), "version": res.version}
            if res.proposer is not None:
                p = res.proposer
                row["proposer"] = {"published": p["published"], "version": p["version"],
                                   "iou_before": round(p["iou_before"], 4), "iou_after": round(p["iou_after"], 4)}
            state["rounds"].append(row)
            self._save(state_path, state)
            print(f"  {strategy} round {r}: {row}", file=sys.stderr)
        return state["rounds"]

    @staticmethod
    def _save(path: Path, state: dict) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=1))
        tmp.replace(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pool", type=int, default=200, help="pool size drawn from BUS-BRA folds 1-4")
    ap.add_argument("--eval", type=int, default=100, help="first N images of BUS-BRA fold 5")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--k", type=int, default=25, help="images labelled per round")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--strategies", nargs="+", default=["uncertainty", "random"],
                    choices=["uncertainty", "random", "first"])
    ap.add_argument("--prompts", choices=["box", "text"], default="box")
    ap.add_argument("--train-proposer", action="store_true",
                    help="also fine-tune the qformer_lite proposer's heads each round (its own gate and store)")
    ap.add_argument("--encoder-lora", type=int, default=0, metavar="RANK",
                    help="also train rank-RANK adapters in the image encoder's last stage (radvlsm.training.lora)")
    ap.add_argument("--encoder-lora-lr", type=float, default=TrainConfig.encoder_lora_lr)
    ap.add_argument("--rescore", action="store_true",
                    help="rescore the pool under the current decoder every round (default: once, shipped decoder)")
    ap.add_argument("--work", default="~/.cache/radvlsm/bench_al")
    ap.add_argument("--encode-only", action="store_true", help="fill the embedding cache and stop")
    args = ap.parse_args()
    if args.rounds < 1 or args.k < 1:
        ap.error("--rounds and --k must be at least 1")
    loop = Loop(args)
    t = time.time()
    loop.encode_all()
    print(f"embeddings ready ({(time.time() - t) / 60:.1f} min)", file=sys.stderr)
    if args.encode_only:
        return
    curves: dict[str, list[dict]] = {}
    for r in range(args.rounds + 1):  # strategies advance round by round, so a cut-short run compares like with like
        for s in args.strategies:
            curves[s] = loop.advance(s, r)
    trained = "LiteMedSAM decoder + prompt encoder" + (" + qformer_lite heads" if args.train_proposer else "")
    trained += (f" + rank-{args.encoder_lora} encoder adapters (last stage, lr {args.encoder_lora_lr:g})"
                if args.encoder_lora else "")
    print(f"\nBUS-BRA pool {args.pool} (folds 1-4), eval first {args.eval} of fold 5, prompts={args.prompts}, "
          f"k={args.k}/round, {args.epochs} epochs/round, {trained}\n")
    print("| strategy | round | labels | eval Dice | published | val Dice before -> after | proposer: published, "
          "val top-1 IoU before -> after | train min | pick min |")
    print("|---|---|---|---|---|---|---|---|---|")
    for s, rows in curves.items():
        for row in rows:
            val = f"{row.get('val_before', '')} -> {row.get('val_after', '')}" if row["round"] else ""
            p = row.get("proposer")
            prop = f"{p['published']}, {p['iou_before']} -> {p['iou_after']}" if p else ""
            print(f"| {s} | {row['round']} | {row['labels']} | {row['dice']:.4f} | {row['published']} | {val} | "
                  f"{prop} | {row['train_min']} | {row['pick_min']} |")
    if len(curves) > 1:
        names = list(curves)
        print("\n| labels | " + " | ".join(names) + " |\n" + "|---" * (len(names) + 1) + "|")
        for i, row in enumerate(curves[names[0]]):
            print(f"| {row['labels']} | " + " | ".join(f"{curves[n][i]['dice']:.4f}" for n in names) + " |")
        base = curves[names[0]][0]["dice"]
        for n in names:
            print(f"{n}: {(curves[n][-1]['dice'] - base) * 100:+.2f} Dice points after {curves[n][-1]['labels']} "
                  f"labels over the shipped model ({base:.4f})")


if __name__ == "__main__":
    main()
