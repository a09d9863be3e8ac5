"""Site recalibration of the diagnosis head from clinicians' labels (the ``diagnosis`` train task).

The shipped head was fitted on one dataset; another site's scanners and case mix shift both branches' log-odds.
With the few labelled lesions a site has, only the **fusion layer** is refitted: three numbers (the weights of the
radiomics and the visual log-odds, and the intercept), estimated by maximum a posteriori with a Gaussian prior
centred on the shipped values, so that a handful of labels moves it a little and many labels move it more. The
branch models, the selected descriptors (and so every explanation) and the decision threshold stay as shipped.
A new head is published only if its log-loss on the held-back images (the trainer's hash split) is not worse.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from radvlsm.diagnosis.head import Diagnoser, Head, Linear, sigmoid
from radvlsm.diagnosis.radiomics import NotEnoughLesion, check_mask, extract
from radvlsm.holdout import split
from radvlsm.io import Image2D
from radvlsm.versions.store import SHIPPED
from radvlsm.versions.store import HeadStore as HeadStore  # its home is radvlsm.versions (serving follows it)


@dataclass
class LabelledLesion:
    image_id: str
    radiomics_logit: float
    visual_logit: float
    malignant: bool


def branch_logits(diagnoser: Diagnoser, image: Image2D, mask: np.ndarray, embedding: Any) -> tuple[float, float] | None:
    """The two branch log-odds of one lesion under ``diagnoser``'s head; None when it cannot be described."""
    h = diagnoser.head
    try:
        check_mask(mask, image.shape, diagnoser._config)
        feats = extract(image, mask)
    except NotEnoughLesion:
        return None
    vec = diagnoser.visual_vector(image, mask, embedding)
    if vec is None:
        return None
    x = np.array([feats[n] for n in h.rad_transform.names], np.float64)
    return float(h.rad_logit(x[None])[0]), float(h.vis_logit(vec[None])[0])


def _design(lesions: list[LabelledLesion]) -> tuple[np.ndarray, np.ndarray]:
    X = np.array([[1.0, le.radiomics_logit, le.visual_logit] for le in lesions])
    return X, np.array([float(le.malignant) for le in lesions])


def log_loss(fusion: Linear, lesions: list[LabelledLesion]) -> float:
    X, y = _design(lesions)
    p = np.clip(sigmoid(X @ np.r_[fusion.intercept, fusion.coef]), 1e-7, 1 - 1e-7)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def fit_fusion(lesions: list[LabelledLesion], prior: Linear, strength: float) -> Linear:
    """MAP logistic fit of ``[intercept, w_radiomics, w_visual]`` with a N(prior, 1/strength) prior (Newton)."""
    X, y = _design(lesions)
    theta0 = np.r_[prior.intercept, prior.coef].astype(np.float64)

    def objective(t: np.ndarray) -> float:
        z = X @ t
        return float(np.sum(np.logaddexp(0.0, z) - y * z) + 0.5 * strength * np.sum((t - theta0) ** 2))

    theta = theta0.copy()
    for _ in range(100):  # Newton with backtracking: the objective is strictly convex, so this converges
        p = sigmoid(X @ theta)
        grad = X.T @ (p - y) + strength * (theta - theta0)
        hess = (X * (p * (1 - p))[:, None]).T @ X + strength * np.eye(3)
        step = np.linalg.solve(hess, grad)
        f0, scale = objective(theta), 1.0
        while objective(theta - scale * step) > f0 and scale > 1e-6:
            scale /= 2
        theta = theta - scale * step
        if np.abs(scale * step).max() < 1e-9:
            break
    return Linear(theta[1:], float(theta[0]))


@dataclass
class RecalibrationResult:
    published: str | None
    reason: str
    n_train: int
    n_val: int
    log_loss_before: float | None = None
    log_loss_after: float | None = None
    fusion_before: dict | None = None
    fusion_after: dict | None = None

    def to_json(self) -> dict[str, Any]:
        return {k: (round(v, 5) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


def recalibrate(head: Head, lesions: list[LabelledLesion], store: HeadStore | None = None,
                strength: float = 5.0, tolerance: float = 0.0, base_version: str = SHIPPED) -> RecalibrationResult:
    """Refit ``head``'s fusion layer on ``lesions`` (hash split by image), publish to ``store`` if not worse."""
    train_ids, val_ids = split(sorted({le.image_id for le in lesions}))
    train = [le for le in lesions if le.image_id in set(train_ids)]
    val = [le for le in lesions if le.image_id in set(val_ids)]
    if {le.malignant for le in train} != {True, False}:
        raise ValueError(f"the diagnosis head needs benign and malignant lesions to train on; the training split "
                         f"has {sum(le.malignant for le in train)} malignant of {len(train)} "
                         "(save labels with params {\"pathology\": \"benign\"|\"malignant\"})")
    new = fit_fusion(train, head.fusion, strength)
    before, after = log_loss(head.fusion, val), log_loss(new, val)
    res = RecalibrationResult(None, "", len(train), len(val), before, after, head.fusion.to_dict(), new.to_dict())
    if after > before + tolerance:
        res.reason = f"not published: held-back log-loss {after:.4f} > {before:.4f} (served) + {tolerance}"
        return res
    res.reason = f"held-back log-loss {before:.4f} -> {after:.4f}"
    if store is not None:
        meta = {**head.meta, "recalibrated_from": base_version, "recalibration": res.to_json(),
                "train_ids": train_ids, "val_ids": val_ids}
        res.published = store.publish_head(replace(head, fusion=new, meta=meta), {"recalibration": res.to_json()})
    return res
