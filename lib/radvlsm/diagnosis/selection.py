"""Radiomics descriptor selection, fitted on training folds only and stored with the head.

Steps (why): heavy-tailed positive descriptors (energies, sizes) are log-transformed so that a linear head is not
driven by a few extreme lesions; near-constant descriptors carry no information; among highly correlated pairs
(|Spearman| above ``max_corr``) only the one with more mutual information with the label is kept, so
contributions are not split across duplicates; the survivors are ranked by mutual information and the ``k``
best kept.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Transform:
    """Per-descriptor transform + standardisation: ``z = (t(x) - mean) / std``, ``t`` = log1p where flagged."""

    names: list[str]
    log: np.ndarray  # bool per descriptor
    shift: np.ndarray  # subtracted before log1p (the training minimum), 0 when not logged
    mean: np.ndarray
    std: np.ndarray

    def __call__(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, np.float64)
        T = np.where(self.log, np.log1p(np.clip(X - self.shift, 0, None)), X)
        return (T - self.mean) / self.std

    def to_dict(self) -> dict:
        return {"names": list(self.names), "log": self.log.tolist(), "shift": self.shift.tolist(),
                "mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> Transform:
        return cls(list(d["names"]), np.asarray(d["log"], bool), *(np.asarray(d[k], float) for k in
                                                                     ("shift", "mean", "std")))


def fit_transform(X: np.ndarray, names: list[str], skew_limit: float = 2.0) -> Transform:
    """Log-transform descriptors that are non-negative and skewed beyond ``skew_limit``; then z-score."""
    from scipy.stats import skew

    X = np.asarray(X, np.float64)
    lo = X.min(0)
    logged = (lo >= 0) & (np.abs(skew(X, axis=0)) > skew_limit)
    shift = np.where(logged, lo, 0.0)
    T = np.where(logged, np.log1p(np.clip(X - shift, 0, None)), X)
    std = T.std(0)
    return Transform(list(names), logged, shift, T.mean(0), np.where(std > 0, std, 1.0))


@dataclass
class Selection:
    kept: list[str]  # in ranking order
    dropped: dict[str, str] = field(default_factory=dict)  # name -> reason


def select(X: np.ndarray, y: np.ndarray, names: list[str], k: int, max_corr: float = 0.95,
           min_unique_frac: float = 0.05, seed: int = 0) -> Selection:
    """Choose ``k`` descriptors from training data ``X`` (raw values) and labels ``y``."""
    from scipy.stats import spearmanr
    from sklearn.feature_selection import mutual_info_classif

    X = np.asarray(X, np.float64)
    dropped: dict[str, str] = {}
    keep = []
    for j, n in enumerate(names):
        col = X[:, j]
        top_share = np.unique(col, return_counts=True)[1].max() / len(col)
        if col.std() == 0 or top_share > 1 - min_unique_frac:
            dropped[n] = "near-constant"
        else:
            keep.append(j)
    Z = fit_transform(X[:, keep], [names[j] for j in keep])(X[:, keep])
    mi = mutual_info_classif(Z, y, random_state=seed)
    rho = np.abs(spearmanr(Z).statistic) if len(keep) > 2 else np.abs(np.corrcoef(Z, rowvar=False))
    order = np.argsort(-mi)
    chosen: list[int] = []
    for a in order:
        clash = [b for b in chosen if rho[a, b] > max_corr]
        if clash:
            dropped[names[keep[a]]] = f"|rho|>{max_corr} with {names[keep[clash[0]]]}"
        else:
            chosen.append(a)
    for a in chosen[k:]:
        dropped[names[keep[a]]] = "low mutual information rank"
    return Selection([names[keep[a]] for a in chosen[:k]], dropped)
