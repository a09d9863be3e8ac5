"""Learning curve of a new site: how fast does the text path get better at a hospital from its first corrections?

    python benchmarks/bench_site_adaptation.py [--site uclm|ddti] [--steps 5 10 25 50]
        [--strategies random uncertainty] [--variant default] [--options '{"proposer_scope": "heads"}']
        [--pool 150] [--eval 0] [--exemplars] [--site-phrase] [--seed 0] [--work DIR] [--report]
    python benchmarks/bench_site_adaptation.py --evaluate-store start <trained_dir> ...   # a server's store

A site's images are split by patient (``sha1(patient) mod 5 == 0`` held back, as ``benchmarks/datasets.py``).
The start is a proposer that never saw the site: for ``uclm`` (BUS-UCLM, breast, Spain) the cross-site
checkpoint ``model/qformer_lite_xsite`` (trained on BUS-BRA, Kvasir-SEG and DDTI), for ``ddti`` (thyroid) the
default ``model/qformer_lite`` (BUS-BRA and Kvasir-SEG only), and the shipped LiteMedSAM decoder.

Each round a strategy picks images from the site's unlabelled pool (the first ``--pool`` of the training
patients' images after a seeded shuffle; BUS-UCLM's lesion-free images included, as a clinician meets them) until
``step`` images are labelled; their reference masks (empty for lesion-free images) stand in for the clinician's
final labels; :func:`radvlsm.training.fine_tune` runs with ``TrainConfig()`` defaults (what ``POST
/train/radvlsm`` with no options runs), plus ``--options``, continuing from the versions it published before.
``uncertainty`` rescores the unlabelled pool under the served models each round (the product's scoring method);
``random`` draws uniformly (seeded); ``uncertainty_mask`` (an experiment, not a product strategy) ranks by the
segmentation's terms alone (:func:`radvlsm.training.uncertainty.mask_disagreement`); ``uncertainty_mixed`` (an
experiment) takes every other label at random (the site's 2nd, 4th, ... label; seeded by its position) and the
rest by the product's score. With
``--options '{"pseudo_labels": true}'`` (VESSA stage 2, off by
default) the round first pseudo-labels the rest of the pool as the server's train task does
(:mod:`radvlsm.training.pseudo`; the row reports their Dice against the reference masks). With ``--exemplars``
(the server's default, ``--conf site_exemplars true``; off here unless asked, as the earlier curves ran), each
label joins the site's exemplars when it is saved, before the round's training (VESSA stage 1,
:mod:`radvlsm.proposals.site_exemplars`); on resume they are re-learned in labelling order, as the server
re-learns its final labels at start-up. With ``--site-phrase`` the server is configured with the site's phrase
(``--conf site_phrases "breast lesion"``): training teaches it beside ``lesion`` (the trainer's default
``proposer_phrases``) and it takes the presence of ``lesion`` whatever its own match
(:class:`radvlsm.proposals.qformer_lite.QFormerLiteProposer`).

Measured on the held-back patients through the served stack (encoder runtime ``auto``, the published decoder and
proposer, :class:`radvlsm.pipeline.RadVLSMPipeline` defaults): text Dice (label > 0 vs the mask) of lesion images
with the site's phrase and with ``lesion``, the share answered "no lesion", the share of lesion-free images given
a lesion, and the share of lesion images given one for a wrong-domain phrase (``colon polyp``, on every third
lesion image: LSMS's referring phrases must still mean something). Training time per round too.

State (labelled ids, rows) is written after each round to ``--work`` (default
``benchmarks/results/site_adaptation``), so an interrupted run resumes; ``--report`` prints the table and writes
the plot (``docs/site_adaptation.png``) from what is there.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import dice, stack_for  # noqa: E402
from benchmarks.datasets import DATA, ddti, held_out, uclm  # noqa: E402
from radvlsm.io import load_image, load_mask  # noqa: E402
from radvlsm.pipeline import PipelineOptions  # noqa: E402
from radvlsm.training import TrainConfig, TrainSample, fine_tune  # noqa: E402
from radvlsm.training.pseudo import PseudoLabelStore, make_pseudo_labels  # noqa: E402
from radvlsm.training.uncertainty import mask_disagreement, score_image  # noqa: E402

DISK_CACHE = "~/.cache/radvlsm/embeddings"
WRONG_PHRASE = "colon polyp"
#: targets of the site-adaptation issue
TARGET_DICE, TARGET_GAIN, TARGET_STEP = 0.85, 0.08, 25
PSEUDO_GAIN, PSEUDO_STEP = 0.02, 10
Case = tuple[Path, Path, str, bool]  # image, mask, id, has a lesion


def site_cases(site: str) -> tuple[list[Case], list[Case], str, Path]:
    """``(pool, test, phrase, start checkpoint)`` of a site, split by patient."""
    if site == "uclm":
        with open(DATA / "bus-uclm" / "info.csv") as f:
            patient = {r["id"]: r["patient"] for r in csv.DictReader(f)}
        cases = [(*c, True) for c in uclm("lesion")] + [(*c, False) for c in uclm("normal")]
        test = [c for c in cases if held_out(patient[c[2]])]
        pool = [c for c in cases if not held_out(patient[c[2]])]
        return pool, test, "breast lesion", ROOT / "model" / "qformer_lite_xsite" / "qformer_lite.pt"
    return ([(*c, True) for c in ddti("train")], [(*c, True) for c in ddti("test")], "thyroid nodule",
            ROOT / "model" / "qformer_lite" / "qformer_lite.pt")


class Curve:
    """One strategy's rounds on one site, resumable."""

    def __init__(self, args, strategy: str, work: Path | None = None):
        self.args, self.strategy = args, strategy
        pool, test, self.phrase, self.start = site_cases(args.site)
        pool = sorted(pool, key=lambda c: c[2])
        random.Random(args.seed).shuffle(pool)
        self.pool = {c[2]: c for c in pool[: args.pool]}
        self.test = test[: args.eval] if args.eval else test
        self.work = work or Path(args.work) / f"{args.site}-{strategy}-{args.variant}"
        self.state_path = self.work / "state.json"
        self.state = json.loads(self.state_path.read_text()) if self.state_path.exists() else {
            "labelled": [], "rounds": [], "options": args.options, "exemplars": args.exemplars,
            "site_phrase": args.site_phrase, "seed": args.seed}
        # what the server serves for this site: its store (trained_dir), the start checkpoint, the site's exemplars
        # with --exemplars; the text proposer is measured alone (no mask ranker), as every curve here was
        self.site_phrases = (self.phrase,) if args.site_phrase else ()
        self.stack = stack_for(runtime="auto", disk_cache=DISK_CACHE, trained_dir=str(self.work),
                               qformer_checkpoint=str(self.start), mask_ranker="off", site_exemplars=args.exemplars,
                               site_phrases=self.site_phrases)
        self.predictor = self.stack.predictor
        self.decoders, self.proposers = self.stack.decoder_store, self.stack.proposer_store
        self.proposer = self.stack.text_proposer
        self.assisted = self.stack.proposer if args.exemplars else None
        if self.assisted is not None:
            self.learn(self.state["labelled"])
        self.pipeline = self.stack.pipeline

    def learn(self, ids: list[str]) -> None:
        """The labels join the site's exemplars (what the server does when each is saved)."""
        if self.assisted is None:
            return
        for c in ids:
            image = load_image(self.pool[c][0])
            self.assisted.learn(c, image, load_mask(self.pool[c][1], image.shape) > 0)

    def save(self) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.state, indent=1))
        tmp.replace(self.state_path)

    def evaluate(self) -> dict:
        lesion = {self.phrase: [], "lesion": []}
        found = {self.phrase: [], "lesion": []}
        normal_fp = {self.phrase: [], "lesion": []}
        wrong = []
        for n, (img_path, mask_path, _, has_lesion) in enumerate(self.test):
            image = load_image(img_path)
            gt = load_mask(mask_path, image.shape) > 0
            for phrase in lesion:
                res = self.pipeline.run(image, PipelineOptions(text=phrase, diagnose=False))
                if has_lesion:
                    lesion[phrase].append(dice(res.label > 0, gt))
                    found[phrase].append(bool(res.lesions))
                else:
                    normal_fp[phrase].append(bool(res.lesions))
            if has_lesion and self.args.site == "uclm" and n % 3 == 0:  # a third of them: the check is cheap
                wrong.append(bool(self.pipeline.run(image, PipelineOptions(text=WRONG_PHRASE, diagnose=False)).lesions))
            self.predictor.cache.clear()
        out = {"images": len(lesion["lesion"]), "lesion_free_images": len(normal_fp["lesion"])}
        for phrase in lesion:
            out[phrase] = {"dice": round(float(np.mean(lesion[phrase])), 4),
                           "no_lesion": round(1 - float(np.mean(found[phrase])), 4),
                           "normals_with_lesion": round(float(np.mean(normal_fp[phrase])), 4)
                           if normal_fp[phrase] else None}
        out["wrong_phrase_found"] = round(float(np.mean(wrong)), 4) if wrong else None
        return out

    def pick(self, k: int) -> list[str]:
        free = sorted(set(self.pool) - set(self.state["labelled"]))
        if self.strategy == "random":
            return random.Random(self.draw_seed(len(self.state["labelled"]) + 1)).sample(free, min(k, len(free)))
        scores = {}
        for c in free:
            u = score_image(self.pipeline, load_image(self.pool[c][0]))
            scores[c] = mask_disagreement(u) if self.strategy == "uncertainty_mask" else u.score
            self.predictor.cache.clear()
        ranked = sorted(free, key=lambda c: (-scores[c], c))
        if self.strategy != "uncertainty_mixed":
            return ranked[:k]
        picks: list[str] = []  # the n-th label overall: odd n drawn at random, even n the most uncertain left
        for n in range(len(self.state["labelled"]), len(self.state["labelled"]) + min(k, len(free))):
            left = [c for c in ranked if c not in picks]
            picks.append(random.Random(self.draw_seed(n + 1)).choice(sorted(left)) if n % 2 else left[0])
        return picks

    def draw_seed(self, n: int) -> int:
        """Seed of a random draw: ``n`` alone for ``--seed 0`` (the curves measured before the option existed)."""
        return n + 1_000_003 * self.args.seed

    def pseudo_labels(self, cfg: TrainConfig) -> list[TrainSample]:
        """VESSA stage 2 (train option ``pseudo_labels``): what the server's train task makes of the unlabelled
        pool before training, with the text path then served."""
        if not cfg.pseudo_labels:
            return []
        free = [(c, self.pool[c][0]) for c in sorted(set(self.pool) - set(self.state["labelled"]))]
        text_path = self.stack.pipeline_over(self.proposer)
        return make_pseudo_labels(text_path, free, len(self.state["labelled"]), PseudoLabelStore(self.work / "pseudo"),
                                  "lesion", cfg.pseudo_min_agreement, cfg.pseudo_max_images)

    def run(self, steps: list[int]) -> None:
        if not self.state["rounds"]:
            t = time.time()
            self.state["rounds"].append({"labels": 0, **self.evaluate(), "train_s": 0.0,
                                         "eval_s": round(time.time() - t, 1)})
            self.save()
            print(f"  {self.work.name} 0 labels: {self.state['rounds'][-1]}", file=sys.stderr, flush=True)
        for step in steps:
            if step <= len(self.state["labelled"]):
                continue
            t = time.time()
            new = self.pick(step - len(self.state["labelled"]))
            self.state["labelled"] += new
            self.learn(new)
            pick_s = time.time() - t
            samples = [TrainSample(c, self.pool[c][0], self.pool[c][1]) for c in self.state["labelled"]]
            # what the trainer runs: the site's phrases are the default proposer_phrases
            cfg = TrainConfig.from_request({"proposer_phrases": list(self.site_phrases), **self.state["options"]})
            t = time.time()
            pseudo = self.pseudo_labels(cfg)
            res = fine_tune(self.predictor, samples, self.decoders, cfg, proposer=self.proposer,
                            proposer_store=self.proposers, text="lesion", pseudo=pseudo)
            train_s = time.time() - t
            t = time.time()
            row = {"labels": len(self.state["labelled"]),
                   "lesion_free_labels": sum(not self.pool[c][3] for c in self.state["labelled"]),
                   **self.evaluate(), "train_s": round(train_s, 1), "pick_s": round(pick_s, 1),
                   "eval_s": round(time.time() - t, 1), "decoder": {
                       "published": res.published, "version": res.version, "val_before": res.dice_before,
                       "val_after": res.dice_after}}
            if self.assisted is not None:
                rel = self.assisted.reliability()
                row["exemplars"] = {"in_bank": len(self.assisted.site.bank),
                                    "reliability": rel.to_json() if rel else None}
            if res.proposer is not None:
                p = res.proposer
                row["proposer"] = {k: p[k] for k in ("published", "version", "candidate", "match_threshold", "gate",
                                                      "recalibration", "seconds", "pseudo_labels")}
                if cfg.pseudo_labels:
                    truth = {c: load_mask(self.pool[c][1]) > 0 for c in (s.image_id for s in pseudo)}
                    row["pseudo"] = {"kept": len(pseudo), "on_lesion_images": int(sum(m.any() for m in truth.values())),
                                     "dice": [round(dice(load_mask(s.mask_path) > 0, truth[s.image_id]), 4)
                                              for s in pseudo]}
            self.state["rounds"].append(row)
            self.save()
            print(f"  {self.work.name} {step} labels: {row}", file=sys.stderr, flush=True)


def report(work: Path) -> None:
    curves = {}
    for state_path in sorted(work.glob("*/state.json")):
        curves[state_path.parent.name] = json.loads(state_path.read_text())
    if not curves:
        raise SystemExit(f"no results under {work}")
    print("| site-strategy-variant | labels (lesion-free) | text Dice, site phrase | text Dice, 'lesion' | no lesion "
          "(site phrase / 'lesion') | lesion on lesion-free (site / 'lesion') | 'colon polyp' finds one | "
          "train s | decoder | proposer |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, st in curves.items():
        phrase = next(k for k in st["rounds"][0] if isinstance(st["rounds"][0][k], dict) and k != "lesion")
        for r in st["rounds"]:
            a, b = r[phrase], r["lesion"]
            nf = "-" if a["normals_with_lesion"] is None else \
                f"{a['normals_with_lesion']:.1%} / {b['normals_with_lesion']:.1%}"
            wp = "-" if r.get("wrong_phrase_found") is None else f"{r['wrong_phrase_found']:.1%}"
            dec = r.get("decoder", {})
            dec_s = "-" if not dec else (dec["version"] if dec["published"] else "kept")
            prop = r.get("proposer")
            how = {"recalibrated": "threshold only, "}.get(prop.get("candidate", "") if prop else "", "")
            prop_s = "-" if not prop else (f"{prop['version']} ({how}thr {prop['match_threshold']:.3f})"
                                           if prop["published"] else "kept")
            print(f"| {name} | {r['labels']} ({r.get('lesion_free_labels', 0)}) | {a['dice']:.4f} | {b['dice']:.4f} | "
                  f"{a['no_lesion']:.1%} / {b['no_lesion']:.1%} | {nf} | {wp} | {r['train_s']:.0f} | {dec_s} | "
                  f"{prop_s} |")
    print()
    for name, st in curves.items():
        phrase = next(k for k in st["rounds"][0] if isinstance(st["rounds"][0][k], dict) and k != "lesion")
        zero = st["rounds"][0][phrase]["dice"]
        at = {r["labels"]: r[phrase]["dice"] for r in st["rounds"]}
        if TARGET_STEP in at:
            d = at[TARGET_STEP]
            ok = d >= TARGET_DICE or d - zero >= TARGET_GAIN
            print(f"{name}: after {TARGET_STEP} corrections text Dice {d:.4f} ({(d - zero) * 100:+.1f} pt over 0); "
                  f"target >= {TARGET_DICE} or >= +{TARGET_GAIN * 100:.0f} pt: {'met' if ok else 'NOT met'}")
    for name, st in curves.items():  # pseudo-labels against the same labels without them
        base = curves.get(name.rsplit("-", 1)[0] + "-default")
        if not st.get("options", {}).get("pseudo_labels") or base is None:
            continue
        phrase = next(k for k in st["rounds"][0] if isinstance(st["rounds"][0][k], dict) and k != "lesion")
        for p in (phrase, "lesion"):
            at = {r["labels"]: r[p]["dice"] for r in st["rounds"]}
            ref = {r["labels"]: r[p]["dice"] for r in base["rounds"]}
            if PSEUDO_STEP in at and PSEUDO_STEP in ref:
                gain = at[PSEUDO_STEP] - ref[PSEUDO_STEP]
                print(f"{name} ('{p}'): at {PSEUDO_STEP} corrections {at[PSEUDO_STEP]:.4f} vs {ref[PSEUDO_STEP]:.4f} "
                      f"without pseudo-labels ({gain * 100:+.1f} pt); target >= +{PSEUDO_GAIN * 100:.0f} pt: "
                      f"{'met' if gain >= PSEUDO_GAIN else 'NOT met'}")
    plot(curves, ROOT / "docs" / "site_adaptation.png")


def plot(curves: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, st in curves.items():
        phrase = next(k for k in st["rounds"][0] if isinstance(st["rounds"][0][k], dict) and k != "lesion")
        xs = [r["labels"] for r in st["rounds"]]
        ax.plot(xs, [r[phrase]["dice"] for r in st["rounds"]], marker="o", label=f"{name} ('{phrase}')")
    ax.set_xlabel("corrections (final labels at the site)")
    ax.set_ylabel("text-prompted Dice, held-back patients")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    print(f"\nPlot: {out.relative_to(ROOT)}")


def evaluate_store(args) -> None:
    """What the held-back patients get from the versions published into a server's trained store (e.g. the site
    e2e test's, ``tests/test_server_site_adaptation.py``): the same figures as a curve's rows."""
    import tempfile

    for store in args.evaluate_store:
        with tempfile.TemporaryDirectory() as empty:
            work = Path(empty) if store == "start" else Path(store)
            curve = Curve(args, "store", work=work)
            published = {"decoder": curve.decoders.current(), "proposer": curve.proposers.current()}
            print(json.dumps({"store": store, **published, **curve.evaluate()}), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--site", choices=["uclm", "ddti"], default="uclm")
    ap.add_argument("--steps", type=int, nargs="+", default=[5, 10, 25, 50])
    ap.add_argument("--strategies", nargs="+", default=["random", "uncertainty"],
                    choices=["random", "uncertainty", "uncertainty_mask", "uncertainty_mixed"])
    ap.add_argument("--variant", default="default", help="name of this configuration in the work folder")
    ap.add_argument("--options", type=json.loads, default={}, help="train options (JSON), as POST /train takes")
    ap.add_argument("--seed", type=int, default=0,
                    help="pool shuffle and random draws (0: the curves measured before this option)")
    ap.add_argument("--pool", type=int, default=150, help="unlabelled pool size (training patients)")
    ap.add_argument("--eval", type=int, default=0, help="first N held-back images (0: all)")
    ap.add_argument("--exemplars", action="store_true",
                    help="the site's exemplars help the text proposer (VESSA stage 1, --conf site_exemplars true)")
    ap.add_argument("--site-phrase", action="store_true",
                    help="the server names the site's phrase (--conf site_phrases): trained, and takes the presence "
                         "of 'lesion'")
    ap.add_argument("--work", default=str(ROOT / "benchmarks" / "results" / "site_adaptation"))
    ap.add_argument("--report", action="store_true", help="print the table and plot from the work folder")
    ap.add_argument("--evaluate-store", nargs="+", metavar="TRAINED_DIR",
                    help="only measure the held-back patients as a server serves them from each of these trained "
                         "stores (its --conf trained_dir; 'start' = nothing published), with --exemplars and "
                         "--site-phrase as given (the site e2e test's server: neither)")
    args = ap.parse_args()
    if args.report:
        report(Path(args.work))
        return
    if args.evaluate_store:
        evaluate_store(args)
        return
    if sorted(args.steps) != args.steps or args.steps[0] < 2:
        ap.error("--steps must be increasing and at least 2 (one image trains, one validates)")
    TrainConfig.from_request(args.options)  # a wrong option fails now, not after the first evaluation
    for strategy in args.strategies:
        Curve(args, strategy).run(args.steps)
    report(Path(args.work))


if __name__ == "__main__":
    main()
