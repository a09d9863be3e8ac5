"""Fit the diagnosis head on BUS-BRA folds 1-4 (fold 5 is never read here) and write ``model/diagnosis/``.

Inputs are the cached descriptors of the ground-truth masks:
``radiomics.npz`` (``diagnosis_extract_radiomics.py``) and ``visual.npz`` (``diagnosis_gpu_features.py`` on the
GPU pack, merged by ``--merge``), both under ``$RADVLSM_DIAG_CACHE`` (default ``~/.cache/radvlsm/diagnosis``).

    python scripts/diagnosis_train.py [--merge visual_0.npz visual_1.npz]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from radvlsm.diagnosis.fit import fit_head

sys.path.insert(0, str(Path(__file__).parent))
from diagnosis_common import CACHE, MODEL_DIR, TEST_FOLD, cases  # noqa: E402


def merge(parts: list[Path], out: Path) -> None:
    ds = [np.load(p) for p in parts]
    np.savez_compressed(out, ids=np.concatenate([d["ids"] for d in ds]), X=np.concatenate([d["X"] for d in ds]))


VIEW_FILES = {"full": "visual.npz", "roi": "visual_roi.npz"}


def _rows(npz: Path, ids_wanted: list[str]) -> np.ndarray:
    d = np.load(npz)
    index = {str(i): k for k, i in enumerate(d["ids"])}
    missing = [i for i in ids_wanted if i not in index]
    if missing:
        raise SystemExit(f"{npz}: {len(missing)} images lack cached features, e.g. {missing[:3]}")
    return d["X"][[index[i] for i in ids_wanted]].astype(np.float64)


def load_features(ids_wanted: list[str], views: list[str]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Radiomics ``X``, visual ``V`` (views concatenated) rows for ``ids_wanted``, and the descriptor names."""
    X = _rows(CACHE / "radiomics.npz", ids_wanted)
    V = np.concatenate([_rows(CACHE / VIEW_FILES[v], ids_wanted) for v in views], axis=1)
    return X, V, [str(n) for n in np.load(CACHE / "radiomics.npz")["names"]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--merge", nargs="*", type=Path, help="visual_<part>.npz files to merge into visual.npz first")
    ap.add_argument("--merge-roi", nargs="*", type=Path, help="visual_roi_<part>.npz files to merge first")
    ap.add_argument("--views", nargs="+", default=["full"], choices=sorted(VIEW_FILES),
                    help="visual views: the lesion pooled from the whole-image embedding and/or the crop's")
    ap.add_argument("--out", type=Path, default=MODEL_DIR)
    args = ap.parse_args()
    if args.merge:
        merge(args.merge, CACHE / "visual.npz")
    if args.merge_roi:
        merge(args.merge_roi, CACHE / "visual_roi.npz")
    train = [c for c in cases() if c.fold != TEST_FOLD]
    X, V, names = load_features([c.id for c in train], args.views)
    y = np.array([c.malignant for c in train])
    folds = np.array([c.fold for c in train])
    print(f"training on folds {sorted(set(folds.tolist()))}: {len(y)} images ({y.sum()} malignant), "
          f"{X.shape[1]} radiomics descriptors, {V.shape[1]} visual")
    head, rep = fit_head(X, V, y, folds, names)
    head.meta["visual_views"] = list(args.views)
    path = head.save(args.out)
    (args.out / "fit_report.json").write_text(json.dumps(
        {"k": rep.k, "c_rad": rep.c_rad, "c_vis": rep.c_vis, "cv_auc": rep.cv_auc, "grid_cv_auc": rep.grid_auc,
         "selected": head.rad_transform.names, "dropped": rep.dropped}, indent=1))
    print(f"selected descriptors ({len(head.rad_transform.names)}): {', '.join(head.rad_transform.names)}")
    print(f"fusion log-odds weights: radiomics {head.fusion.coef[0]:.3f}, visual {head.fusion.coef[1]:.3f}; "
          f"thresholds fused {head.threshold:.2f}, radiomics-only {head.rad_threshold:.2f}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
