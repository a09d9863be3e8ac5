"""Binary diagnosis metrics as reported by the benchmark."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve


def sensitivity_at_specificity(y: np.ndarray, p: np.ndarray, specificity: float = 0.9) -> float:
    """Best sensitivity among operating points whose specificity is at least ``specificity``."""
    fpr, tpr, _ = roc_curve(y, p)
    ok = fpr <= 1 - specificity + 1e-12
    return float(tpr[ok].max()) if ok.any() else 0.0


def report(y: np.ndarray, p: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    y, p = np.asarray(y, int), np.asarray(p, float)
    return {
        "auc": float(roc_auc_score(y, p)),
        "accuracy": float(((p >= threshold) == y).mean()),
        "sens_at_90spec": sensitivity_at_specificity(y, p, 0.9),
        "brier": float(np.mean((p - y) ** 2)),
        "threshold": float(threshold),
        "n": int(len(y)),
        "n_malignant": int(y.sum()),
    }
