"""VESSA stage 1 before any training: does a site's exemplar bank help the text path find its lesions?

    python benchmarks/bench_site_exemplars.py [--exemplars 5 10 25] [--eval 80]

Rules compared through the served pipeline (:class:`radvlsm.pipeline.RadVLSMPipeline` defaults, encoder runtime
``auto``, shipped decoder), text Dice (label > 0 vs the mask) with the site's phrase and with ``lesion``, and the
share of lesion-free images given a lesion:

* ``text``: the text proposer alone;
* ``exemplars``: the bank alone (no presence decision: it proposes on every image);
* ``exemplars-first``: under the text proposer's presence decision, the bank's candidates and map first, the text
  proposer's candidates at half weight (a fixed rule);
* ``shipped``: :class:`radvlsm.proposals.site_exemplars.ExemplarAssistedProposer`, what the server runs: the bank's
  candidates unless the text proposer's record on the site's labels is better with confidence (printouts before
  2026-12-03: the higher mean top-1 box IoU; since: fused-mask Dice, the column's last figure its lower bound);
  since session 13 the prior depends on the text proposer's median presence on the labels
  (:func:`radvlsm.proposals.site_exemplars.text_places`; the column adds the bank's lower bound, the presence and
  the source that places).

Sites: BUS-UCLM held-back patients (start ``model/qformer_lite_xsite``, which never saw it; exemplars = the first
N lesion images of the site-adaptation pool, its seeded order) and BUS-BRA fold 5 (in-domain, default checkpoint;
exemplars from folds 1-4, seeded): all of BUS-UCLM's held-back images, the first ``--eval`` of BUS-BRA fold 5.

``--draws K`` repeats each bank size with K seeded draws of the exemplars (seed 0 is the single draw's), the rules
``text`` (once) and ``shipped`` only, the site's phrase only: how often a few labels hand the candidates to the bank
and what that costs or gains (the rule decides on 5 labels; one draw says little about it).
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bench_site_adaptation import DISK_CACHE, site_cases  # noqa: E402
from benchmarks.common import dice, stack_for  # noqa: E402
from benchmarks.datasets import busbra  # noqa: E402
from radvlsm.io import load_image, load_mask  # noqa: E402
from radvlsm.pipeline import PipelineOptions  # noqa: E402
from radvlsm.proposals.base import Candidate, Proposal  # noqa: E402

RULES = ("text", "exemplars", "exemplars-first", "shipped")


class ExemplarsFirst:
    """The fixed rule: under the text proposer's presence, the bank's candidates and map lead."""

    name, refine_by_default = "exemplars-first", False

    def __init__(self, text, bank):
        self.text, self.bank = text, bank

    def propose(self, image, text, top_k=3, encoded=None) -> Proposal:
        tp = self.text.propose(image, text, top_k=top_k, encoded=encoded)
        if not tp.candidates:
            return tp
        bp = self.bank.propose(image, text, top_k=top_k, encoded=encoded)
        half = [Candidate(c.box, c.score * 0.5, c.backend) for c in tp.candidates]
        return Proposal(bp.candidates + half, tp.match_score, bp.heatmap, self.name)


def cases(site: str, seed: int = 0) -> tuple[list, list, str, Path | None]:
    """``(exemplar pool in order, test cases (image, mask, id, has lesion), phrase, start checkpoint)``."""
    if site == "uclm":
        pool, test, phrase, start = site_cases("uclm")
        pool = sorted(pool, key=lambda c: c[2])
        random.Random(seed).shuffle(pool)
        return [c for c in pool[:150] if c[3]], test, phrase, start
    train = busbra({1, 2, 3, 4})
    random.Random(seed).shuffle(train)
    return train, [(*c, True) for c in busbra({5})], "breast lesion", None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sites", nargs="+", default=["uclm", "busbra"], choices=["uclm", "busbra"])
    ap.add_argument("--exemplars", type=int, nargs="+", default=[10])
    ap.add_argument("--eval", type=int, default=80, help="first N images of BUS-BRA fold 5 (0: all)")
    ap.add_argument("--draws", type=int, default=1, help="seeded draws of the exemplars per bank size")
    args = ap.parse_args()
    print("| site | exemplars | draw | rule | phrase | lesion images | text Dice | lesion-free images given a lesion | "
          "source reliability (text / exemplars) |" if args.draws > 1 else
          "| site | exemplars | rule | phrase | lesion images | text Dice | lesion-free images given a lesion | "
          "source reliability (text / exemplars) |")
    print("|---|---|---|---|---|---|---|---|" + ("---|" if args.draws > 1 else ""))
    for site in args.sites:
        pool, test, phrase, start = cases(site)
        test = test[: args.eval] if args.eval and site == "busbra" else test
        data = []
        for img_path, mask_path, _, has_lesion in test:
            image = load_image(img_path)
            data.append((image, load_mask(mask_path, image.shape) > 0, has_lesion))
        for n in args.exemplars:
            for draw in range(args.draws):
                exemplars = cases(site, draw)[0][:n] if draw else pool[:n]
                run_bank(args, site, n, draw, exemplars, data, phrase, start)


def run_bank(args, site: str, n: int, draw: int, exemplars: list, data: list, phrase: str,
             start: Path | None) -> None:
    """Learn ``exemplars`` into a fresh served stack and print each rule's text Dice on ``data``."""
    # the served stack (encoder runtime auto, shipped decoder, no diagnosis) from the site's start
    # checkpoint, with the site's exemplars (a bank of 200 at most, empty: a new stack per bank)
    stack = stack_for(runtime="auto", disk_cache=DISK_CACHE, qformer_checkpoint=str(start) if start else None,
                      site_exemplars=True, text="lesion", template_exemplars=200)
    text, bank, shipped = stack.text_proposer, stack.site.bank, stack.proposer
    for img_path, mask_path, case_id, *_ in exemplars:
        image = load_image(img_path)
        shipped.learn(case_id, image, load_mask(mask_path, image.shape) > 0)
    rel = shipped.site.reliability()
    proposers = {"text": text, "exemplars": bank, "exemplars-first": ExemplarsFirst(text, bank),
                 "shipped": shipped}
    rules = RULES if args.draws == 1 else (("text", "shipped") if draw == 0 else ("shipped",))
    for rule in rules:
        phrases = [phrase] if rule == "exemplars" or args.draws > 1 else [phrase, "lesion"]  # bank: no text
        for p in dict.fromkeys(phrases):
            pipeline = stack.pipeline if rule == "shipped" else stack.pipeline_over(proposers[rule])
            d, fp = [], []
            for image, gt, has_lesion in data:
                res = pipeline.run(image, PipelineOptions(text=p, diagnose=False))
                if has_lesion:
                    d.append(dice(res.label > 0, gt))
                else:
                    fp.append(bool(res.lesions))
            fp_s = f"{np.mean(fp):.1%} of {len(fp)}" if fp else "-"
            rel_s = (f"{rel.text:.3f} / {rel.bank:.3f} ({rel.scored} labels, lower {rel.lower:+.3f}, exemplars' "
                     f"{rel.bank_lower:+.3f}, presence {rel.match:.2f}: {'text' if rel.text_leads else 'exemplars'} "
                     "place)" if rel else "-")
            draw_s = f" {draw} |" if args.draws > 1 else ""
            print(f"| {site} | {n} |{draw_s} {rule} | {p} | {len(d)} | {np.mean(d):.4f} | {fp_s} | {rel_s} |",
                  flush=True)

if __name__ == "__main__":
    main()
