"""Fit the mask ranker (:mod:`radvlsm.mask_ranking`) on candidate masks collected by ``mask_ranker_collect.py``.

    python scripts/mask_ranker_train.py --train busbra-train ddti-train kvasir-train --out model/mask_ranker \
        --proposer model/qformer_lite_xsite/qformer_lite.pt [--proxy ddti-train=FILE] [--report uclm-lesion ...]

The model (features as they are or also relative to the image's other candidates; logistic regression or a small
perceptron; regularisation) is chosen leave-one-site-out *among the training sets* (fit on all but one, rank the
held-out one's candidates; ``--proxy``: that set also as collected with a proposer that never saw it, i.e. with a
new site's relevance map): the report sets are only measured, never used to choose. Target: the
candidate mask's IoU with the reference >= 0.5. Printed per set: mean IoU of the top-ranked mask, the share with
IoU >= 0.5, and the oracle (the best candidate). With ``--presence`` the ranker also decides presence
(``min_score``: the score that keeps 97 % of the training sets' lesion images; they have no lesion-free images);
by default it only ranks and the proposer decides whether there is a lesion.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "lib"))

from radvlsm.mask_ranking import FEATURES, MaskRanker, design  # noqa: E402
from radvlsm.proposals.ranked import BLOB_CANDIDATES, HEAT_CANDIDATES  # noqa: E402

#: chosen before any report set was scored: the candidate's quality, shape, contrast and embedding distinctness,
#: and the text relevance it holds; not its size or place in the frame (a site's framing: BUS-BRA's lesions are
#: large and central, DDTI's crops are mostly nodule) nor the image-level match (the same for every candidate)
DEFAULT_FEATURES = tuple(f for f in FEATURES if f not in ("area", "cx", "cy", "match"))


def load(data: Path | str, name: str | None = None) -> dict[str, np.ndarray]:
    d = np.load(Path(data) / f"{name}.npz" if name else data)
    return {k: d[k] for k in d.files}


def view(d: dict[str, np.ndarray], one_pass: bool, max_heat: int, max_blobs: int) -> dict[str, np.ndarray]:
    """The candidates as the ranker sees them: after the tightening decode, or (``one_pass``) from the first; only
    the first ``max_heat`` relevance components and ``max_blobs`` contrast blobs (the served counts,
    :mod:`radvlsm.proposals.ranked`; collection keeps more, to compare)."""
    d = {**d, "feats": d["feats1"], "iou": d["iou1"]} if one_pass else dict(d)
    keep = ((d["src"] == 1) & (d["rank"] < max_heat)) | (d["src"] == 2) | ((d["src"] == 0) & (d["rank"] < max_blobs))
    return {**d, "feats": d["feats"][keep], "iou": d["iou"][keep], "img": d["img"][keep]}


def stacked(sets: list[dict[str, np.ndarray]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Features, targets (IoU >= 0.5) and a global image index of several sets' candidates."""
    x = np.concatenate([d["feats"] for d in sets])
    y = np.concatenate([d["iou"] >= 0.5 for d in sets]).astype(int)
    image = np.concatenate([d["img"] + 100000 * i for i, d in enumerate(sets)])
    return x, y, image


def fit(sets: list[dict[str, np.ndarray]], features: list[str], relative: bool, hidden: int, c: float,
        seed: int = 0) -> dict:
    """Standardise, then logistic regression (``hidden`` 0) or a one-hidden-layer perceptron; as a JSON spec."""
    x, y, image = stacked(sets)
    x = design(x[:, [FEATURES.index(f) for f in features]], relative, image)
    mean, scale = x.mean(0), x.std(0) + 1e-6
    z = (x - mean) / scale
    if hidden == 0:
        from sklearn.linear_model import LogisticRegression

        m = LogisticRegression(C=c, max_iter=2000, class_weight="balanced").fit(z, y)
        layers = [[m.coef_.T.tolist(), m.intercept_.tolist()]]
    else:
        from sklearn.neural_network import MLPClassifier

        m = MLPClassifier((hidden,), alpha=1 / c, max_iter=2000, random_state=seed).fit(z, y)
        layers = [[w.tolist(), b.tolist()] for w, b in zip(m.coefs_, m.intercepts_, strict=True)]
    return {"features": features, "relative": relative, "mean": mean.tolist(), "scale": scale.tolist(),
            "layers": layers}


def top1(d: dict[str, np.ndarray], ranker: MaskRanker) -> tuple[float, float, float, int, np.ndarray]:
    """Mean IoU of each image's top-scored mask, the share >= 0.5, the oracle mean, images, each image's best score."""
    scores = ranker.score(d["feats"], d["img"])
    ious, oracle, best = [], [], []
    for k in np.unique(d["img"]):
        s = d["img"] == k
        ious.append(d["iou"][s][np.argmax(scores[s])])
        oracle.append(d["iou"][s].max())
        best.append(scores[s].max())
    ious = np.array(ious)
    return float(ious.mean()), float((ious >= 0.5).mean()), float(np.mean(oracle)), len(ious), np.array(best)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=ROOT / "work" / "mask_ranker", help="mask_ranker_collect.py's --out")
    ap.add_argument("--proposer", default=None, help="the checkpoint the data was collected with (recorded: the stack "
                    "uses a shipped ranker only over it)")
    ap.add_argument("--train", nargs="+", default=["busbra-train", "ddti-train", "kvasir-train"],
                    metavar="SET[=FILE]", help="collected sets (in --data, or the file given)")
    ap.add_argument("--proxy", nargs="*", default=[], metavar="SET=FILE",
                    help="a training set also collected with a proposer that never saw it: scored too when that set "
                    "is held out")
    ap.add_argument("--report", nargs="*", default=[])
    ap.add_argument("--features", nargs="+", default=list(DEFAULT_FEATURES))
    ap.add_argument("--one-pass", action="store_true", help="rank the first decode's masks (no tightening decode)")
    ap.add_argument("--max-heat", type=int, default=HEAT_CANDIDATES, help="relevance components ranked")
    ap.add_argument("--max-blobs", type=int, default=BLOB_CANDIDATES, help="contrast blobs ranked")
    ap.add_argument("--presence", action="store_true",
                    help="also decide presence: no lesion unless a mask scores what keeps 97 %% of the training sets' "
                    "lesion images (off: the proposer alone decides; held out, a new site kept only 90 %%)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    as_served = {"one_pass": args.one_pass, "max_heat": args.max_heat, "max_blobs": args.max_blobs}
    sets = {}
    for item in args.train:  # NAME (in --data) or NAME=FILE
        name, _, path = item.partition("=")
        sets[name] = view(load(path) if path else load(args.data, name), **as_served)
    args.train = list(sets)
    proxies = {}
    for item in args.proxy:
        name, _, path = item.partition("=")
        proxies[name] = view(load(path), **as_served)
    held_out = args.train + [f"{n} (proposer never saw it)" for n in proxies]
    grid = [(r, 0, c) for r in (False, True) for c in (0.01, 0.1, 1.0)] + \
           [(r, h, c) for r in (False, True) for h in (16, 32) for c in (0.3, 3.0)]
    print(f"Features: {', '.join(args.features)}; {'first' if args.one_pass else 'tightened'} decode; "
          f"{args.max_heat} relevance components, the box head's box, {args.max_blobs} contrast blobs\n")
    print("| model | " + " | ".join(f"held-out {n}: top-1 IoU / >=0.5" for n in held_out) + " | mean |")
    print("|---|" + "---|" * (len(held_out) + 1))
    results = []
    for relative, hidden, c in grid:
        cells, extra, means = [], [], []
        for held in args.train:
            ranker = MaskRanker(fit([sets[n] for n in args.train if n != held], args.features, relative, hidden, c))
            for d, row in [(sets[held], cells)] + ([(proxies[held], extra)] if held in proxies else []):
                m, share, *_ = top1(d, ranker)
                row.append(f"{m:.3f} / {share:.1%}")
                means.append(m)
        results.append((float(np.mean(means)), relative, hidden, c))
        print(f"| {'relative, ' if relative else ''}hidden {hidden}, C {c} | " + " | ".join(cells + extra)
              + f" | {np.mean(means):.3f} |")
    _, relative, hidden, c = max(results)
    print(f"\nChosen by the leave-one-site-out mean: relative {relative}, hidden {hidden}, C {c}")
    spec = fit([sets[n] for n in args.train], args.features, relative, hidden, c)
    ranker = MaskRanker(spec)
    best = np.concatenate([top1(sets[n], ranker)[4] for n in args.train])
    score_97 = round(float(np.quantile(best, 0.03)), 4)
    spec.update(min_score=score_97 if args.presence else 0.0, score_keeping_97=score_97, trained_on=args.train,
                target="candidate mask IoU >= 0.5 with the reference", hidden=hidden, C=c,
                two_pass=not args.one_pass, max_heat=args.max_heat, max_blobs=args.max_blobs)
    if args.proposer:
        from radvlsm.models.registry import file_version

        spec["proposer"] = file_version(args.proposer)
    print(f"score keeping 97 % of training lesion images: {score_97}; min_score (presence from the ranker): "
          f"{spec['min_score']}")
    ranker = MaskRanker(spec)
    print(f"\n| set | images | top-1 IoU | top-1 IoU >= 0.5 | oracle IoU | best score >= {score_97} |")
    print("|---|---|---|---|---|---|")
    for n in args.train + args.report:
        d = sets.get(n) or view(load(args.data, n), **as_served)
        m, share, oracle, k, best = top1(d, ranker)
        print(f"| {n} | {k} | {m:.3f} | {share:.1%} | {oracle:.3f} | {(best >= score_97).mean():.1%} |")
    if args.out:
        import hashlib

        spec["version"] = hashlib.sha1(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "ranker.json").write_text(json.dumps(spec, indent=1))
        print(f"\nwrote {args.out / 'ranker.json'} (version {spec['version']})")


if __name__ == "__main__":
    main()
