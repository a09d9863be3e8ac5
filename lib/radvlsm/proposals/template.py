"""``template``: reference-guided box proposals from a bank of labelled exemplars (VESSA-style prompting).

No text model and no training: each exemplar (image + lesion mask) is embedded once with the shared backbone
(LiteMedSAM's 64x64x256 image embedding, through :class:`SegmentPredictor` so it shares its cache and version)
and reduced to a few unit-norm vectors:

* a global descriptor: the mean feature over the valid (unpadded) area, used to retrieve similar exemplars;
* a foreground prototype: the mask-weighted mean of the L2-normalised patch features;
* background prototypes: 4 weighted k-means centres of the features outside the mask (background tissue is
  heterogeneous; one mean vector would make dark shadows look closer to the lesion than to "background").

For a new image the ``k`` exemplars with the most similar global descriptor (cosine) are retrieved; each gives a
per-patch foreground probability ``sigmoid((cos(f, fg) - max_b cos(f, bg_b)) / temperature)`` (foreground vs the
nearest background prototype), averaged over the retrieved exemplars with softmax(retrieval cosine) weights and
smoothed (Gaussian, 1 cell). The map is cropped to the unpadded input area, upsampled to the original grid,
min-max normalised and handed to :func:`heatmap_boxes` (threshold 0.5). Defaults were chosen on BUS-BRA folds
1-4 only (20 exemplars, 80 queries from other patients). The phrase is accepted (the :class:`BoxProposer`
interface) but not used to localise: the exemplars define what is looked for.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from radvlsm.io import Image2D, atomic_write, load_image, load_mask
from radvlsm.predictor import Encoded, SegmentPredictor
from radvlsm.proposals.base import DEFAULT_TOP_K, Candidate, Proposal, register_proposer
from radvlsm.proposals.boxes import heatmap_boxes

_LOG = logging.getLogger(__name__)
#: Image suffixes ``load_folder`` looks at.
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".nii", ".nii.gz", ".nrrd")


@dataclass
class Exemplar:
    """One labelled reference image reduced to unit-norm vectors of the backbone's channel size."""

    case_id: str
    global_desc: np.ndarray  # (C,) unit norm
    fg: np.ndarray  # (C,) unit norm
    bg: np.ndarray  # (B, C) unit norm background prototypes


def _unit(v: torch.Tensor, dim: int = 0) -> torch.Tensor:
    return F.normalize(v.float(), dim=dim, eps=1e-8)


def valid_grid(enc: Encoded, img_size: int) -> tuple[int, int]:
    """Rows/cols of the embedding grid that cover the unpadded (resized) image (:meth:`Frame.grid_valid`)."""
    return enc.frame.check(img_size).grid_valid(enc.embedding.shape[-1])


def patch_features(enc: Encoded, img_size: int) -> torch.Tensor:
    """``(C, gh, gw)`` L2-normalised patch features of the valid area (padding excluded: it is not tissue)."""
    gh, gw = valid_grid(enc, img_size)
    return _unit(enc.embedding[0, :, :gh, :gw].detach().cpu(), dim=0)


def mask_on_grid(mask: np.ndarray, enc: Encoded, img_size: int) -> torch.Tensor:
    """Fraction of each valid grid cell covered by the mask (:meth:`Frame.mask_to_valid_grid`)."""
    return enc.frame.check(img_size).mask_to_valid_grid(mask, enc.embedding.shape[-1])


def kmeans_prototypes(x: torch.Tensor, weights: torch.Tensor, n: int, iters: int = 10) -> torch.Tensor:
    """``n`` unit-norm cluster centres of the columns of ``x`` (C, N), weighted; deterministic farthest-point init.

    Background tissue is heterogeneous (fat, glandular tissue, shadows, gel): one mean vector blurs it, so a
    lesion-like shadow can look closer to the lesion than to "average background". Several prototypes don't.
    """
    keep = weights > 0.5
    pts = x[:, keep] if keep.sum() >= n else x
    centres = [pts[:, int(torch.argmax(pts.norm(dim=0)))]]
    for _ in range(1, n):
        d = torch.stack([c @ pts for c in centres]).max(0).values
        centres.append(pts[:, int(torch.argmin(d))])
    c = torch.stack(centres)  # (n, C)
    for _ in range(iters):
        assign = torch.argmax(c @ pts, dim=0)
        c = torch.stack([_unit(pts[:, assign == j].mean(1)) if (assign == j).any() else c[j] for j in range(n)])
    return c


def exemplar_vectors(feats: torch.Tensor, weights: torch.Tensor,
                     bg_prototypes: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Global descriptor ``(C,)``, foreground ``(C,)`` and background ``(bg_prototypes, C)`` unit-norm prototypes."""
    flat, w = feats.flatten(1), weights.flatten()
    glob = _unit(flat.mean(1))
    fg = _unit((flat * w).sum(1) / w.sum().clamp(min=1e-6))
    if bg_prototypes <= 1:
        bg = _unit((flat * (1 - w)).sum(1) / (1 - w).sum().clamp(min=1e-6))[None]
    else:
        bg = kmeans_prototypes(flat, 1 - w, bg_prototypes)
    return glob.numpy(), fg.numpy(), bg.numpy()


def grid_to_image(heat: torch.Tensor, enc: Encoded, img_size: int) -> np.ndarray:
    """Valid-area grid map ``(gh, gw)`` -> ``(rows, cols)`` on the original image, as
    :meth:`SegmentPredictor.postprocess` (:meth:`Frame.heat_to_image`): pad to the full grid, upsample to the model
    frame, crop the unpadded input area, resize to the original size."""
    return enc.frame.check(img_size).heat_to_image(heat, enc.embedding.shape[-1]).numpy()


class TemplateProposer:
    """Box proposals by matching a new image's patches against the prototypes of its most similar exemplars.

    ``match_score`` answers "does this image look like the exemplars?": a logistic of the best retrieval cosine,
    ``sigmoid((cos - match_center) / match_scale)``. The defaults (0.91, 0.015) were set with LiteMedSAM on
    BUS-BRA folds 1-4 (top cosines 0.94-0.98 for 12 held-apart breast US queries against 20 exemplars) vs 6
    Kvasir-SEG colonoscopy images (0.82-0.89); recalibrate for another backbone or modality. The peak
    foreground probability (``extra["peak"]``) separated these far worse, so it only ranks boxes. Neither says
    whether *this* image holds a lesion: every exemplar has one.
    """

    name = "template"
    refine_by_default = False  # measured: snapping lowered its top-1 hit rate

    def __init__(self, predictor: SegmentPredictor, max_exemplars: int = 20, k: int = 5, temperature: float = 0.05,
                 retrieval_temperature: float = 0.05, thresholds: tuple[float, ...] = (0.5,),
                 min_area_frac: float = 0.002, bg_prototypes: int = 4, smooth: float = 1.0,
                 match_center: float = 0.91, match_scale: float = 0.015):
        if max_exemplars < 1 or k < 1:
            raise ValueError("max_exemplars and k must be >= 1")
        self.predictor = predictor
        self.max_exemplars = max_exemplars
        self.k = k
        self.temperature = temperature
        self.retrieval_temperature = retrieval_temperature
        self.thresholds = thresholds
        self.min_area_frac = min_area_frac
        self.bg_prototypes = bg_prototypes
        self.smooth = smooth
        self.match_center = match_center
        self.match_scale = match_scale
        self._bank: dict[str, Exemplar] = {}
        # The server may add exemplars while another request proposes; bank reads/writes are serialised (the
        # heavy encode happens outside the lock).
        self._lock = threading.RLock()

    @property
    def img_size(self) -> int:
        return self.predictor.backbone.img_size

    def __len__(self) -> int:
        return len(self._bank)

    @property
    def ids(self) -> list[str]:
        return list(self._bank)

    # -- bank ---------------------------------------------------------------------------------------------
    def add_exemplar(self, case_id: str, image: Image2D, mask: np.ndarray) -> None:
        """Embed ``image`` and store its prototypes under ``case_id`` (replacing an exemplar with that id).

        Raises ``ValueError`` for an empty mask or one whose shape differs from the image, and when the bank is
        full (``max_exemplars``) and ``case_id`` is new: remove one first, so the bank never silently drops data.
        """
        mask = np.asarray(mask)
        if mask.shape != image.shape:
            raise ValueError(f"mask {mask.shape} does not match image {image.shape}")
        if not (mask > 0).any():
            raise ValueError(f"exemplar '{case_id}': mask is empty")
        self._check_room(case_id)
        enc = self.predictor.encode(image)
        feats = patch_features(enc, self.img_size)
        weights = mask_on_grid(mask, enc, self.img_size)
        if weights.sum() <= 0:
            raise ValueError(f"exemplar '{case_id}': mask too small for the {tuple(feats.shape[1:])} feature grid")
        exemplar = Exemplar(case_id, *exemplar_vectors(feats, weights, self.bg_prototypes))
        with self._lock:
            self._check_room(case_id)
            self._bank[case_id] = exemplar

    def _check_room(self, case_id: str) -> None:
        if case_id not in self._bank and len(self._bank) >= self.max_exemplars:
            raise ValueError(f"exemplar bank is full ({self.max_exemplars}); remove one before adding '{case_id}'")

    def remove_exemplar(self, case_id: str) -> None:
        """Drop an exemplar; a ``KeyError`` names an unknown id."""
        with self._lock:
            if case_id not in self._bank:
                raise KeyError(f"no exemplar '{case_id}'")
            del self._bank[case_id]

    def load_folder(self, images_dir: str | Path, masks_dir: str | Path, limit: int | None = None) -> list[str]:
        """Add image/mask pairs matched by file stem; returns the ids (image stems) added.

        Same names (Kvasir-SEG) and BUS-BRA's ``bus_0001-l.png`` <-> ``mask_0001-l.png`` both pair up.
        """
        images_dir, masks_dir = Path(images_dir), Path(masks_dir)
        masks = {key: p for p in sorted(masks_dir.iterdir()) if _is_image(p) for key in _mask_keys(_stem(p))}
        added: list[str] = []
        for path in sorted(images_dir.iterdir()):
            case_id = _stem(path)
            mask_path = next((masks[k] for k in (case_id, case_id.split("_", 1)[-1]) if k in masks), None)
            if not _is_image(path) or mask_path is None:
                continue
            if limit is not None and len(added) >= limit:
                break
            image = load_image(path)
            self.add_exemplar(case_id, image, load_mask(mask_path, image.shape) > 0)
            added.append(case_id)
        return added

    def save(self, path: str | Path) -> Path:
        """Write the prototypes (not the images) as ``.npz`` with the backbone name/version they came from.

        Written to a temporary file and renamed, so a server restart never reads a half-written bank.
        """
        path = Path(path)
        with self._lock:
            bank = dict(self._bank)
        ids = list(bank)
        arrays = {a: np.stack([getattr(bank[i], a) for i in ids]) if ids else np.zeros((0, 0), np.float32)
                  for a in ("global_desc", "fg", "bg")}

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as f:  # a file object: np.savez would otherwise append ".npz" to the name
                np.savez(f, ids=np.array(ids, dtype=str), backbone=np.array(self._backbone_tag()), **arrays)

        return atomic_write(path, write)

    def load(self, path: str | Path) -> None:
        """Replace the bank with one written by :meth:`save`; refuses prototypes from another backbone version."""
        with np.load(Path(path)) as d:
            tag = str(d["backbone"])
            if tag != self._backbone_tag():
                raise ValueError(f"{path}: prototypes come from backbone {tag}, not {self._backbone_tag()}; "
                                 "re-add the exemplars")
            ids = [str(i) for i in d["ids"]]
            if len(ids) > self.max_exemplars:
                raise ValueError(f"{path}: {len(ids)} exemplars exceed max_exemplars={self.max_exemplars}")
            bank = {i: Exemplar(i, d["global_desc"][n], d["fg"][n], d["bg"][n]) for n, i in enumerate(ids)}
        with self._lock:
            self._bank = bank

    def _backbone_tag(self) -> str:
        return f"{self.predictor.backbone.name}-{self.predictor.backbone.version}"

    # -- proposals ----------------------------------------------------------------------------------------
    def retrieve(self, feats: torch.Tensor, exclude: Collection[str] = ()) -> tuple[list[str], np.ndarray]:
        """The ``k`` exemplar ids with the most similar global descriptor, and their cosines, best first
        (``exclude``: ids left out, e.g. an image's own exemplar when the bank is scored on it)."""
        ids = [i for i in self._bank if i not in exclude]
        if not ids:
            return [], np.zeros(0, np.float32)
        glob = _unit(feats.flatten(1).mean(1)).numpy()
        sims = np.stack([self._bank[i].global_desc for i in ids]) @ glob
        order = np.argsort(-sims, kind="stable")[: self.k]
        return [ids[j] for j in order], sims[order]

    def foreground_map(self, feats: torch.Tensor, ids: list[str], sims: np.ndarray) -> torch.Tensor:
        """``(gh, gw)`` foreground probability: retrieval-weighted mean over exemplars of
        ``sigmoid((cos(f, fg) - cos(f, bg)) / temperature)``."""
        flat = feats.flatten(1)  # (C, N)
        probs = []
        for i in ids:
            s_fg = torch.from_numpy(self._bank[i].fg).float() @ flat  # (N,)
            s_bg = (torch.from_numpy(self._bank[i].bg).float() @ flat).max(0).values  # nearest background prototype
            probs.append(torch.sigmoid((s_fg - s_bg) / self.temperature))
        w = torch.softmax(torch.from_numpy(sims).float() / self.retrieval_temperature, 0)
        prob = (w[:, None] * torch.stack(probs)).sum(0).reshape(feats.shape[1:])
        if self.smooth > 0:
            prob = torch.from_numpy(ndimage.gaussian_filter(prob.numpy(), self.smooth, mode="nearest"))
        return prob

    def propose(self, image: Image2D, text: str = "", top_k: int = DEFAULT_TOP_K,
                encoded: Encoded | None = None) -> Proposal:
        """Ranked candidate boxes for the lesion the exemplars show; ``text`` is not used to localise."""
        t0 = time.perf_counter()
        if not len(self):
            # Not an error: a fresh server has no exemplars until the user labels some.
            _LOG.warning("template proposer: the exemplar bank is empty; add labelled exemplars "
                         "(add_exemplar / load_folder) to get proposals")
            return Proposal([], 0.0, None, self.name, {"total": 0.0},
                            notes=["template: the exemplar bank is empty; save final labels to fill it"])
        enc = encoded if encoded is not None else self.predictor.encode(image)
        proposal = self.propose_encoded(enc, top_k)
        proposal.timings_ms["total"] = (time.perf_counter() - t0) * 1e3
        return proposal

    def propose_encoded(self, enc: Encoded, top_k: int = DEFAULT_TOP_K, exclude: Collection[str] = ()) -> Proposal:
        """:meth:`propose` on an image already encoded, the exemplars in ``exclude`` left out (scoring the bank on
        one of its own images needs no image, only its encoding); no candidates when no exemplar is left."""
        t1 = time.perf_counter()
        feats = patch_features(enc, self.img_size)
        with self._lock:
            ids, sims = self.retrieve(feats, exclude)
            if not ids:
                return Proposal([], 0.0, None, self.name, {"encode": enc.encode_ms, "match": 0.0})
            prob = self.foreground_map(feats, ids, sims)
        heat = grid_to_image(prob, enc, self.img_size)
        peak = float(heat.max())
        lo, hi = float(heat.min()), peak
        norm = ((heat - lo) / max(hi - lo, 1e-6)).astype(np.float32)
        boxes, scores = heatmap_boxes(norm, self.thresholds, self.min_area_frac)
        extra = {"exemplars": ids, "similarity": [round(float(s), 4) for s in sims]}
        cands = [Candidate(_clip_box(b, enc.original_size), float(s), self.name, dict(extra, peak=round(peak, 4)))
                 for b, s in zip(boxes[:top_k], scores[:top_k], strict=True)]
        match = float(1.0 / (1.0 + np.exp(-(float(sims[0]) - self.match_center) / self.match_scale)))
        return Proposal(cands, match, norm, self.name,
                        {"encode": enc.encode_ms, "match": (time.perf_counter() - t1) * 1e3})


def _clip_box(box: np.ndarray, shape: tuple[int, int]) -> list[float]:
    rows, cols = shape
    x0, y0, x1, y1 = (float(v) for v in box)
    return [min(max(x0, 0.0), cols - 1), min(max(y0, 0.0), rows - 1), min(max(x1, 0.0), cols - 1),
            min(max(y1, 0.0), rows - 1)]


def _stem(path: Path) -> str:
    name = path.name
    for suffix in sorted(_IMAGE_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _mask_keys(stem: str) -> set[str]:
    """Names a mask file may pair with: itself, and without a ``mask_`` prefix or ``_mask`` suffix."""
    return {stem, stem.removeprefix("mask_"), stem.removesuffix("_mask")}


def _is_image(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(_IMAGE_SUFFIXES)


@register_proposer("template")
def build_template(predictor: SegmentPredictor, max_exemplars: int = 20, k: int = 5, **kwargs) -> TemplateProposer:
    return TemplateProposer(predictor, max_exemplars=max_exemplars, k=k, **kwargs)
