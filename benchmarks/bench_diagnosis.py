"""Benchmark the shipped diagnosis head on BUS-BRA fold 5 (held out) with ground-truth masks.

Scores the cached descriptors of fold 5 (``scripts/diagnosis_extract_radiomics.py`` and the GPU visual pack,
see ``model/diagnosis/README.md``) with the head in ``model/diagnosis``, per branch: radiomics-only, visual-only,
fused. ``--e2e N`` also runs the full inference path (``Diagnoser.diagnose`` with a CPU LiteMedSAM encode, ~2 s
each) on the first N fold-5 images and reports how far its probabilities are from the cached-feature ones.

    python benchmarks/bench_diagnosis.py [--e2e 20] [--json benchmarks/results/diagnosis.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from radvlsm.diagnosis.head import Head
from radvlsm.diagnosis.metrics import report

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
from diagnosis_common import MODEL_DIR, TEST_FOLD, cases  # noqa: E402
from diagnosis_train import load_features  # noqa: E402

from benchmarks.common import stack_for  # noqa: E402


def e2e(model_dir: Path, test: list, probs: np.ndarray, n: int) -> dict:
    """Full path on ``n`` images: original image -> CPU encode -> Diagnoser; compare with cached features."""
    import torch

    from radvlsm.io import load_image, load_mask

    torch.set_num_threads(1)
    # eager LiteMedSAM on the CPU, no disk cache; the head in model_dir, the predictor its encoder (roi views)
    stack = stack_for(diagnosis_dir=str(model_dir), diagnose=True)
    pred = stack.predictor
    diag = stack.diagnoser
    if diag is None:
        raise SystemExit(f"--e2e: no diagnosis head (head.json) in the folder {model_dir}")
    diffs, t = [], []
    for c, p in zip(test[:n], probs[:n], strict=False):
        img = load_image(c.image)
        mask = load_mask(c.mask, img.shape)
        t0 = time.perf_counter()
        res = diag.diagnose(img, mask, pred.encode(img))
        t.append(time.perf_counter() - t0)
        diffs.append(abs(res.probability - p))
    return {"n": n, "max_abs_prob_diff": float(np.max(diffs)), "mean_abs_prob_diff": float(np.mean(diffs)),
            "mean_seconds": float(np.mean(t)), "example": res.to_text()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=MODEL_DIR)
    ap.add_argument("--e2e", type=int, default=0, help="also run the full CPU path on this many fold-5 images")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    head = Head.load(args.model)
    test = [c for c in cases() if c.fold == TEST_FOLD]
    X, V, names = load_features([c.id for c in test], head.meta.get("visual_views", ["full"]))
    y = np.array([c.malignant for c in test])
    X_sel = X[:, [names.index(n) for n in head.rad_transform.names]]
    p = head.predict(X_sel, V)
    thresholds = {"radiomics": head.rad_threshold, "visual": 0.5, "fused": head.threshold}
    out = {k: report(y, p[k], thresholds[k]) for k in ("radiomics", "visual", "fused")}
    print(f"BUS-BRA fold {TEST_FOLD} (held out), ground-truth masks: {len(y)} images, {y.sum()} malignant")
    print(f"{'branch':<11} {'AUC':>6} {'acc':>6} {'sens@90spec':>12} {'Brier':>6} {'thr':>5}")
    for k, m in out.items():
        print(f"{k:<11} {m['auc']:6.3f} {m['accuracy']:6.3f} {m['sens_at_90spec']:12.3f} {m['brier']:6.3f} "
              f"{m['threshold']:5.2f}")
    if args.e2e:
        out["e2e"] = e2e(args.model, test, p["fused"], args.e2e)
        e = out["e2e"]
        print(f"end-to-end CPU path on {e['n']} images: |P - P_cached| max {e['max_abs_prob_diff']:.4f}, "
              f"mean {e['mean_abs_prob_diff']:.4f}; {e['mean_seconds']:.2f} s per diagnosis incl. encode")
        print("example result:\n" + e["example"])
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
