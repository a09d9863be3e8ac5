"""How should a site's exemplars help the text proposer? Rules compared on one saved learning-curve state.

    python benchmarks/bench_exemplar_rules.py --curve benchmarks/results/site_adaptation/uclm-uncertainty-default \
        [--rules text pooled bank-first bank-first-bankmap] [--eval 0]

The state (``bench_site_adaptation.py``'s work folder of one curve: its labels and the decoder and proposer versions
it published) is served as the server would with ``--conf site_phrases <the site's phrase>``; its labels are learned
into the site's exemplar bank in labelling order (the prequential record as the server keeps it) and the held-back
patients are measured as in ``bench_site_adaptation.py`` (text Dice with the site's phrase and with ``lesion``).

* ``text``: the text proposer alone;
* ``pooled``: both sources' candidates pooled, each scaled by its source's reliability, the relevance map the
  reliability-weighted mean of both (the rule shipped before 2026-12-03);
* ``bank-first``: the shipped rule (:class:`radvlsm.proposals.site_exemplars.ExemplarAssistedProposer`): where the
  text proposer says present, the bank's candidates with the text proposer's relevance map, unless its record says
  the text proposer is better (until 2026-12-03: a higher mean top-1 box IoU, the bank scored prequentially;
  since: a higher fused-mask Dice with confidence, the bank scored leave-one-out; the printout's date says which);
* ``bank-first-bankmap``: the same with the bank's relevance map;
* ``bank-always``: the bank's candidates wherever the text proposer says present, whatever the record (is the
  record's choice right?).

``--record-only`` prints the record the labels build and the source it hands the candidates to, without the
held-back measurement (minutes instead of a quarter of an hour): where the shipped rule's choice is unchanged, the
held-back figures of a printout of the same state stand. Nothing is written to the curve's folder.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bench_site_adaptation import Curve  # noqa: E402
from radvlsm.proposals import site_exemplars  # noqa: E402
from radvlsm.proposals.base import Candidate, Proposal  # noqa: E402

RULES = ("text", "pooled", "bank-first", "bank-first-bankmap", "bank-always")
SHIPPED_PROPOSE = site_exemplars.ExemplarAssistedProposer.propose


def pooled(self, image, text, top_k=5, encoded=None) -> Proposal:
    """The rule shipped before: candidates pooled and scaled by reliability, maps averaged by it."""
    proposal = self.text.propose(image, text, top_k=top_k, encoded=encoded)
    rel = self.reliability()
    if rel is None or not proposal.candidates:
        return proposal
    exemplar = self.site.bank.propose(image, text, top_k=top_k, encoded=encoded)
    w_text, w_bank = max(rel.text, 0.05), max(rel.bank, 0.05)
    candidates = [Candidate(c.box, c.score * w, c.backend, dict(c.extra)) for cs, w in
                  ((proposal.candidates, w_text), (exemplar.candidates, w_bank)) for c in cs]
    candidates.sort(key=lambda c: -c.score)
    heat = proposal.heatmap
    if heat is not None and exemplar.heatmap is not None:
        heat = ((w_text * heat + w_bank * exemplar.heatmap) / (w_text + w_bank)).astype(np.float32)
    return Proposal(candidates[: max(top_k, 1) * 2], proposal.match_score, heat, f"{proposal.backend}+template",
                    proposal.timings_ms, proposal.notes, proposal.version)


def bank_map(self, image, text, top_k=5, encoded=None) -> Proposal:
    out = SHIPPED_PROPOSE(self, image, text, top_k, encoded)
    if out.backend.endswith("+template"):
        out.heatmap = self.site.bank.propose(image, text, top_k=top_k, encoded=encoded).heatmap
    return out


def bank_always(self, image, text, top_k=5, encoded=None) -> Proposal:
    proposal = self.text.propose(image, text, top_k=top_k, encoded=encoded)
    if not proposal.candidates or not len(self.site.bank):
        return proposal
    exemplar = self.site.bank.propose(image, text, top_k=top_k, encoded=encoded)
    return Proposal(exemplar.candidates[:top_k] or proposal.candidates, proposal.match_score, proposal.heatmap,
                    f"{proposal.backend}+template", proposal.timings_ms, proposal.notes, proposal.version)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--curve", required=True, help="a curve's work folder (<site>-<strategy>-<variant>)")
    ap.add_argument("--rules", nargs="+", default=list(RULES), choices=RULES)
    ap.add_argument("--eval", type=int, default=0, help="first N held-back images (0: all)")
    ap.add_argument("--record-only", action="store_true",
                    help="print the record and which source places the candidates, no held-back measurement (the "
                         "held-back figures of a rule follow from its choice: where two rules choose alike, a "
                         "printed row of one stands for both)")
    args = ap.parse_args()
    folder = Path(args.curve).resolve()
    site, strategy, variant = folder.name.split("-", 2)
    for rule in args.rules:
        site_exemplars.ExemplarAssistedProposer.propose = {"pooled": pooled, "bank-first-bankmap": bank_map,
                                                                     "bank-always": bank_always}.get(
            rule, SHIPPED_PROPOSE)
        ns = argparse.Namespace(site=site, pool=150, eval=args.eval, work=str(folder.parent), variant=variant,
                                options={}, exemplars=rule != "text", site_phrase=True)
        t = time.time()
        curve = Curve(ns, strategy)
        rel = curve.assisted.reliability() if curve.assisted is not None else None
        row = {"curve": folder.name, "labels": len(curve.state["labelled"]), "rule": rule,
               "proposer": curve.proposer.version, "reliability": rel.to_json() if rel else None}
        if args.record_only:
            row["places"] = "-" if rel is None else "text" if rel.text_leads else "exemplars"
        else:
            row.update(curve.evaluate())
        row["seconds"] = round(time.time() - t)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
