"""Fitting the :class:`~radvlsm.diagnosis.head.Head` on training folds (scikit-learn; not needed at inference).

Model choice is by leave-one-fold-out cross-validation over the training folds only: descriptor selection, the
number of descriptors ``k`` and each branch's regularisation are refitted inside every CV fold, and the fusion /
calibration logistic is fitted on the resulting out-of-fold branch scores (stacking), so no training image is
scored by a model that saw it.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from radvlsm.diagnosis.head import Head, Linear, config_digest
from radvlsm.diagnosis.selection import Selection, fit_transform, select


@dataclass
class Grid:
    k: tuple[int, ...] = (5, 8, 10, 15, 20, 30)
    c_rad: tuple[float, ...] = (0.1, 0.3, 1.0, 3.0, 10.0)
    c_vis: tuple[float, ...] = (0.001, 0.003, 0.01, 0.03, 0.1)


@dataclass
class FitReport:
    k: int
    c_rad: float
    c_vis: float
    cv_auc: dict[str, float] = field(default_factory=dict)
    grid_auc: dict[str, float] = field(default_factory=dict)
    dropped: dict[str, str] = field(default_factory=dict)


def _logreg(c: float) -> LogisticRegression:
    return LogisticRegression(C=c, max_iter=5000)


def fit_rad_branch(X: np.ndarray, y: np.ndarray, names: list[str], k: int, c: float,
                   ranking: list[str] | None = None):
    """Select ``k`` descriptors, transform + standardise, fit an L2 logistic. Returns (transform, Linear, sel).

    ``ranking``: a selection already made on the same ``X`` (its first ``k`` are used; selection is greedy in
    mutual-information order, so a longer selection's prefix equals the shorter one).
    """
    sel = select(X, y, names, k) if ranking is None else Selection(ranking[:k])
    idx = [names.index(n) for n in sel.kept]
    tf = fit_transform(X[:, idx], sel.kept)
    m = _logreg(c).fit(tf(X[:, idx]), y)
    return tf, Linear(m.coef_[0].copy(), float(m.intercept_[0])), sel


def fit_vis_branch(V: np.ndarray, y: np.ndarray, c: float):
    mean, std = V.mean(0), V.std(0)
    std = np.where(std > 0, std, 1.0)
    m = _logreg(c).fit((V - mean) / std, y)
    return mean, std, Linear(m.coef_[0].copy(), float(m.intercept_[0]))


def _rad_logit(tf, lin: Linear, X: np.ndarray, names: list[str]) -> np.ndarray:
    idx = [names.index(n) for n in tf.names]
    return lin.intercept + tf(X[:, idx]) @ lin.coef


def oof_scores(X, V, y, folds, names, k, c_rad, c_vis, rankings=None) -> tuple[np.ndarray, np.ndarray]:
    """Out-of-fold branch log-odds over the training folds (leave one fold out)."""
    r, v = np.zeros(len(y)), np.zeros(len(y))
    for f in np.unique(folds):
        tr, te = folds != f, folds == f
        if k:
            tf, lin, _ = fit_rad_branch(X[tr], y[tr], names, k, c_rad, None if rankings is None else rankings[f])
            r[te] = _rad_logit(tf, lin, X[te], names)
        if c_vis:
            mean, std, lin = fit_vis_branch(V[tr], y[tr], c_vis)
            v[te] = lin.intercept + ((V[te] - mean) / std) @ lin.coef
    return r, v


def best_threshold(p: np.ndarray, y: np.ndarray) -> float:
    """The probability cut with the best out-of-fold accuracy (ties: closest to 0.5)."""
    cuts = np.round(np.arange(0.2, 0.81, 0.01), 2)
    acc = np.array([((p >= t) == y).mean() for t in cuts])
    best = np.flatnonzero(acc == acc.max())
    return float(cuts[best[np.argmin(np.abs(cuts[best] - 0.5))]])


def fit_head(X: np.ndarray, V: np.ndarray, y: np.ndarray, folds: np.ndarray, names: list[str],
             grid: Grid | None = None, log=print) -> tuple[Head, FitReport]:
    """Choose hyper-parameters by CV on the given (training) folds, then refit everything on all of them."""
    grid = grid or Grid()
    y = np.asarray(y, int)
    grid_auc: dict[str, float] = {}
    best_rad, best_vis = (None, -1.0), (None, -1.0)
    rankings = {f: select(X[folds != f], y[folds != f], names, max(grid.k)).kept for f in np.unique(folds)}
    for k, c in itertools.product(grid.k, grid.c_rad):
        r, _ = oof_scores(X, V, y, folds, names, k, c, 0, rankings)
        grid_auc[f"radiomics k={k} C={c}"] = auc = float(roc_auc_score(y, r))
        log(f"  radiomics k={k:3d} C={c:<7g} CV AUC {auc:.4f}")
        if auc > best_rad[1]:
            best_rad = ((k, c), auc)
    for c in grid.c_vis:
        _, v = oof_scores(X, V, y, folds, names, 0, 0, c)
        grid_auc[f"visual C={c}"] = auc = float(roc_auc_score(y, v))
        log(f"  visual    C={c:<7g} CV AUC {auc:.4f}")
        if auc > best_vis[1]:
            best_vis = (c, auc)
    (k, c_rad), c_vis = best_rad[0], best_vis[0]
    r, v = oof_scores(X, V, y, folds, names, k, c_rad, c_vis, rankings)
    fusion = LogisticRegression(C=1e4, max_iter=5000).fit(np.c_[r, v], y)
    rad_cal = LogisticRegression(C=1e4, max_iter=5000).fit(r[:, None], y)
    vis_cal = LogisticRegression(C=1e4, max_iter=5000).fit(v[:, None], y)
    p_fused = fusion.predict_proba(np.c_[r, v])[:, 1]
    p_rad = rad_cal.predict_proba(r[:, None])[:, 1]
    cv = {"radiomics": float(roc_auc_score(y, r)), "visual": float(roc_auc_score(y, v)),
          "fused": float(roc_auc_score(y, p_fused))}
    log(f"chosen k={k} C_rad={c_rad} C_vis={c_vis}; out-of-fold AUC {cv}")
    tf, rad, sel = fit_rad_branch(X, y, names, k, c_rad)
    mean, std, vis = fit_vis_branch(V, y, c_vis)
    head = Head(
        tf, rad, mean, std, vis,
        Linear(fusion.coef_[0].copy(), float(fusion.intercept_[0])),
        Linear(rad_cal.coef_[0].copy(), float(rad_cal.intercept_[0])),
        Linear(vis_cal.coef_[0].copy(), float(vis_cal.intercept_[0])),
        best_threshold(p_fused, y), best_threshold(p_rad, y),
        {"name": "radvlsm-diagnosis-busbra", "radiomics_config_sha": config_digest(), "k": k, "c_rad": c_rad,
         "c_vis": c_vis, "cv_auc_training_folds": cv, "n_train": int(len(y)),
         "train_folds": sorted(int(f) for f in np.unique(folds))},
    )
    return head, FitReport(k, c_rad, c_vis, cv, grid_auc, sel.dropped)
