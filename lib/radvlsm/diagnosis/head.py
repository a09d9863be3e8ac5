"""Fusion head and the :class:`Diagnoser` the app calls: mask + image (+ cached embedding) -> P(malignant).

The head is a stacked ("late") fusion of two L2-regularised logistic models, one on the selected, standardised
radiomics descriptors and one on the pooled LiteMedSAM embedding. A third logistic combines their log-odds; it is
fitted on out-of-fold scores of the training folds, which makes it both the fusion gate (how much to trust each
branch) and the probability calibration (Platt scaling). Everything is linear in the standardised inputs, so the
fused log-odds split exactly into per-descriptor contributions plus one for the visual branch.

The head is stored as plain JSON (``head.json``): no pickle, inference needs numpy only.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from radvlsm.diagnosis.radiomics import CONFIG_PATH, NotEnoughLesion, check_mask, extract, load_config
from radvlsm.diagnosis.result import Contribution, DiagnosisResult
from radvlsm.diagnosis.selection import Transform
from radvlsm.io import Image2D
from radvlsm.versions.store import SHIPPED
from radvlsm.versions.watcher import Watcher

if TYPE_CHECKING:
    from radvlsm.predictor import Encoded

VIEW_LABELS = {"full": "visual: LiteMedSAM embedding, lesion in the whole image",
               "roi": "visual: LiteMedSAM embedding, lesion-centred crop"}

HEAD_FILE = "head.json"


def sigmoid(x: np.ndarray | float) -> np.ndarray | float:
    return 1.0 / (1.0 + np.exp(-np.asarray(x, np.float64)))


def config_digest(path: str | Path = CONFIG_PATH) -> str:
    """Hash of the radiomics YAML, stored with the head to refuse a head fitted under other settings."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


@dataclass
class Linear:
    """``logit = intercept + coef . z`` with ``z`` the standardised inputs."""

    coef: np.ndarray
    intercept: float

    def to_dict(self) -> dict:
        return {"coef": self.coef.tolist(), "intercept": float(self.intercept)}

    @classmethod
    def from_dict(cls, d: dict) -> Linear:
        return cls(np.asarray(d["coef"], float), float(d["intercept"]))


@dataclass
class Head:
    rad_transform: Transform  # selected radiomics descriptors (order = coef order)
    rad: Linear
    vis_mean: np.ndarray
    vis_std: np.ndarray
    vis: Linear
    fusion: Linear  # coef [w_rad, w_vis] on the branch log-odds: gate + calibration
    rad_calib: Linear  # coef [a]: calibrated radiomics-only P = sigmoid(a * logit_rad + b)
    vis_calib: Linear
    threshold: float  # on calibrated P(malignant), fused
    rad_threshold: float
    meta: dict[str, Any]

    # -- batch scoring (training, benchmark) -------------------------------------------------------------------
    def rad_logit(self, X_sel: np.ndarray) -> np.ndarray:
        return self.rad.intercept + self.rad_transform(X_sel) @ self.rad.coef

    def vis_logit(self, V: np.ndarray) -> np.ndarray:
        return self.vis.intercept + ((np.asarray(V, np.float64) - self.vis_mean) / self.vis_std) @ self.vis.coef

    def predict(self, X_sel: np.ndarray, V: np.ndarray | None) -> dict[str, np.ndarray]:
        """Calibrated probabilities of each branch and of the fusion (``V`` None: radiomics only)."""
        r = self.rad_logit(X_sel)
        out = {"radiomics": sigmoid(self.rad_calib.coef[0] * r + self.rad_calib.intercept)}
        if V is not None:
            v = self.vis_logit(V)
            out["visual"] = sigmoid(self.vis_calib.coef[0] * v + self.vis_calib.intercept)
            out["fused"] = sigmoid(self.fusion.intercept + self.fusion.coef[0] * r + self.fusion.coef[1] * v)
        return out

    # -- persistence -------------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "format": "radvlsm-diagnosis-head/1", "meta": self.meta,
            "radiomics": {"transform": self.rad_transform.to_dict(), **self.rad.to_dict()},
            "visual": {"mean": self.vis_mean.tolist(), "std": self.vis_std.tolist(), **self.vis.to_dict()},
            "fusion": self.fusion.to_dict(), "radiomics_calibration": self.rad_calib.to_dict(),
            "visual_calibration": self.vis_calib.to_dict(),
            "threshold": self.threshold, "radiomics_threshold": self.rad_threshold,
        }

    def save(self, model_dir: str | Path) -> Path:
        path = Path(model_dir) / HEAD_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1))
        return path

    @classmethod
    def load(cls, model_dir: str | Path) -> Head:
        path = Path(model_dir)
        path = path / HEAD_FILE if path.is_dir() else path
        return cls.from_dict(json.loads(path.read_text()), path)

    @classmethod
    def from_dict(cls, d: dict, source: str | Path = "head") -> Head:
        """The head of :meth:`to_dict`'s JSON (``source`` names it in the error when it is not one)."""
        if d.get("format") != "radvlsm-diagnosis-head/1":
            raise ValueError(f"{source}: not a radvlsm diagnosis head")
        r, v = d["radiomics"], d["visual"]
        return cls(Transform.from_dict(r["transform"]), Linear.from_dict(r), np.asarray(v["mean"], float),
                   np.asarray(v["std"], float), Linear.from_dict(v), Linear.from_dict(d["fusion"]),
                   Linear.from_dict(d["radiomics_calibration"]), Linear.from_dict(d["visual_calibration"]),
                   float(d["threshold"]), float(d["radiomics_threshold"]), d.get("meta", {}))


class HeadWatcher(Watcher):
    """Keeps :attr:`head` on a :class:`radvlsm.versions.HeadStore`'s ``current`` version (site-recalibrated heads,
    ``POST /train/diagnosis``), by the one reload rule the decoder and the proposer follow too."""

    def __init__(self, store: Any, shipped: Head):
        super().__init__(store)
        self.shipped = shipped
        self.head = shipped

    def _read(self, version: str) -> Head:
        return Head.from_dict(self.store.load(version), self.store.payload(version))

    def _apply(self, version: str, head: Head) -> None:
        self.head = head


class Diagnoser:
    """Benign/malignant diagnosis of one lesion mask, with the reasons, from a shipped head.

    ``encoder`` (e.g. ``SegmentPredictor(backbone).encode``) encodes the lesion-centred crop when the head uses
    the ``roi`` view (``head.meta["visual_views"]``); its cache makes repeated diagnoses of a mask cheap.
    """

    def __init__(self, head: Head, model_dir: str | Path = "", encoder: Callable[[Image2D], Encoded] | None = None,
                 store: Any = None):
        self.shipped = head
        self.model_dir = str(model_dir)
        self.encoder = encoder
        # a HeadStore of site-recalibrated heads (radvlsm.versions): followed live, like the decoder
        self.watcher = HeadWatcher(store, head) if store is not None else None
        self.views = list(head.meta.get("visual_views", ["full"]))
        want = head.meta.get("radiomics_config_sha")
        if want and want != config_digest():
            raise ValueError(f"{model_dir}: head was fitted under another radiomics.yaml ({want} != {config_digest()})")
        self._config = load_config()

    @classmethod
    def load(cls, model_dir: str | Path, encoder: Callable[[Image2D], Encoded] | None = None,
             store: Any = None) -> Diagnoser:
        return cls(Head.load(model_dir), model_dir, encoder, store)

    @property
    def store(self) -> Any:
        """The :class:`radvlsm.versions.HeadStore` followed, or None (the shipped head only)."""
        return self.watcher.store if self.watcher is not None else None

    @property
    def head(self) -> Head:
        """The served head: the store's current version (as of the last :meth:`refresh`) or the shipped one."""
        return self.watcher.head if self.watcher is not None else self.shipped

    @property
    def version(self) -> str:
        return self.watcher.version if self.watcher is not None else SHIPPED

    def refresh(self) -> str:
        """Serve the store's current head if its pointer changed (one ``stat``); returns the served version."""
        return self.watcher.refresh() if self.watcher is not None else SHIPPED

    def visual_vector(self, image: Image2D, mask: np.ndarray, embedding: Encoded) -> np.ndarray | None:
        """The head's visual input (views concatenated), or None when a view cannot be computed."""
        from radvlsm.diagnosis.visual import roi_crop, visual_features

        parts = []
        for view in self.views:
            if view == "full":
                parts.append(visual_features(embedding, mask))
            elif view == "roi":
                if self.encoder is None:
                    return None
                pixels, crop_mask = roi_crop(image.pixels, mask)
                parts.append(visual_features(self.encoder(Image2D(np.ascontiguousarray(pixels))), crop_mask))
            else:
                raise ValueError(f"unknown visual view {view!r} in the head")
        return np.concatenate(parts).astype(np.float64)

    @property
    def name(self) -> str:
        return str(self.head.meta.get("name", "radvlsm-diagnosis"))

    def diagnose(self, image: Image2D, mask: np.ndarray, embedding: Encoded | None = None) -> DiagnosisResult:
        """Diagnose the lesion ``mask > 0`` (one lesion; ``(rows, cols)`` on the image grid).

        ``embedding``: the predictor's cached LiteMedSAM encoding of ``image`` for the fused head; without it (or
        without the ``encoder`` a ``roi`` view needs) the radiomics-only branch answers (``mode`` says which).
        Too little lesion gives ``status`` = ``not_enough_lesion`` rather than an exception.
        """
        self.refresh()
        h = self.head
        try:
            stats = check_mask(mask, image.shape, self._config)
            feats = extract(image, mask)
        except NotEnoughLesion as exc:
            st = exc.stats.to_dict() if exc.stats is not None else {}
            return DiagnosisResult("not_enough_lesion", mask=st, message=str(exc), model=self.name)
        names = h.rad_transform.names
        x = np.array([feats[n] for n in names], np.float64)
        z = h.rad_transform(x[None])[0]
        rad_terms = h.rad.coef * z
        vec = self.visual_vector(image, mask, embedding) if embedding is not None else None
        if vec is not None:
            zv = (vec - h.vis_mean) / h.vis_std
            w_r, w_v = h.fusion.coef
            baseline = h.fusion.intercept + w_r * h.rad.intercept + w_v * h.vis.intercept
            contribs = [Contribution(n, float(v), float(zz), float(w_r * t)) for n, v, zz, t in
                        zip(names, x, z, rad_terms, strict=True)]
            for view, block in zip(self.views, np.array_split(np.arange(len(zv)), len(self.views)), strict=True):
                contribs.append(Contribution(VIEW_LABELS.get(view, view), None, None,
                                             float(w_v * (zv[block] @ h.vis.coef[block]))))
            mode, threshold = "fused", h.threshold
        else:
            a = h.rad_calib.coef[0]
            baseline = h.rad_calib.intercept + a * h.rad.intercept
            contribs = [Contribution(n, float(v), float(zz), float(a * t)) for n, v, zz, t in
                        zip(names, x, z, rad_terms, strict=True)]
            mode, threshold = "radiomics-only", h.rad_threshold
        logit = baseline + sum(c.logit for c in contribs)
        prob = float(sigmoid(logit))
        contribs.sort(key=lambda c: -abs(c.logit))
        return DiagnosisResult(
            "ok", prob, "malignant" if prob >= threshold else "benign", threshold, mode, contribs,
            float(baseline), stats.to_dict(), model=self.name, version=self.version,
        )
