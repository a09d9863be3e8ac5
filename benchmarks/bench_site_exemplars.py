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
  2026-12-03: the higher mean top-1 box IoU; since: fused-mask Dice, the column's last figure its lower bound).

Sites: BUS-UCLM held-back patients (start ``model/qformer_lite_xsite``, which never saw it; exemplars = the first
N lesion images of the site-adaptation pool, its seeded order) and BUS-BRA fold 5 (in-domain, default checkpoint;
exemplars from folds 1-4, seeded): all of BUS-UCLM's held-back images, the first ``--eval`` of BUS-BRA fold 5.
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


def cases(site: str) -> tuple[list, list, str, Path | None]:
    """``(exemplar pool in order, test cases (image, mask, id, has lesion), phrase, start checkpoint)``."""
    if site == "uclm":
        pool, test, phrase, start = site_cases("uclm")
        pool = sorted(pool, key=lambda c: c[2])
        random.Random(0).shuffle(pool)
        return [c for c in pool[:150] if c[3]], test, phrase, start
    train = busbra({1, 2, 3, 4})
    random.Random(0).shuffle(train)
    return train, [(*c, True) for c in busbra({5})], "breast lesion", None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sites", nargs="+", default=["uclm", "busbra"], choices=["uclm", "busbra"])
    ap.add_argument("--exemplars", type=int, nargs="+", default=[10])
    ap.add_argument("--eval", type=int, default=80, help="first N images of BUS-BRA fold 5 (0: all)")
    args = ap.parse_args()
    print("| site | exemplars | rule | phrase | lesion images | text Dice | lesion-free images given a lesion | "
          "source reliability (text / exemplars) |")
    print("|---|---|---|---|---|---|---|---|")
    for site in args.sites:
        pool, test, phrase, start = cases(site)
        test = test[: args.eval] if args.eval and site == "busbra" else test
        data = []
        for img_path, mask_path, _, has_lesion in test:
            image = load_image(img_path)
            data.append((image, load_mask(mask_path, image.shape) > 0, has_lesion))
        for n in args.exemplars:
            # the served stack (encoder runtime auto, shipped decoder, no diagnosis) from the site's start
            # checkpoint, with the site's exemplars (a bank of 200 at most, empty: a new stack per bank size)
            stack = stack_for(runtime="auto", disk_cache=DISK_CACHE, qformer_checkpoint=str(start) if start else None,
                              site_exemplars=True, text="lesion", template_exemplars=200)
            text, bank, shipped = stack.text_proposer, stack.site.bank, stack.proposer
            for img_path, mask_path, case_id, *_ in pool[:n]:
                image = load_image(img_path)
                shipped.learn(case_id, image, load_mask(mask_path, image.shape) > 0)
            rel = shipped.site.reliability()
            proposers = {"text": text, "exemplars": bank, "exemplars-first": ExemplarsFirst(text, bank),
                         "shipped": shipped}
            for rule in RULES:
                for p in dict.fromkeys([phrase, "lesion"] if rule != "exemplars" else [phrase]):  # bank: no text
                    pipeline = stack.pipeline if rule == "shipped" else stack.pipeline_over(proposers[rule])
                    d, fp = [], []
                    for image, gt, has_lesion in data:
                        res = pipeline.run(image, PipelineOptions(text=p, diagnose=False))
                        if has_lesion:
                            d.append(dice(res.label > 0, gt))
                        else:
                            fp.append(bool(res.lesions))
                    fp_s = f"{np.mean(fp):.1%} of {len(fp)}" if fp else "-"
                    rel_s = (f"{rel.text:.3f} / {rel.bank:.3f} ({rel.scored} labels, lower {rel.lower:+.3f})"
                             if rel else "-")
                    print(f"| {site} | {n} | {rule} | {p} | {len(d)} | {np.mean(d):.4f} | {fp_s} | {rel_s} |",
                          flush=True)


if __name__ == "__main__":
    main()
