"""One lesion through a volume: each next slice is prompted with the box of the previous slice's mask.

A 2D box-prompted segmenter (LiteMedSAM) answers a box with *something*, so where to stop is the question; SAM's
predicted IoU does not answer it (past a tumour's end it still segments tissue with a high predicted IoU).
What does: **the mask looks more like its own surroundings than like the lesion**. The encoder's embedding pooled
inside the new mask is compared (cosine) with the embedding pooled inside the seed slice's mask and with the one
pooled in a ring around the new mask; the direction stops when the ring is the closer. The rule was picked on 5
of the 10 lgg-mri patients, where tumour slices were closer to the seed than to their ring and slices past the
tumour the other way round; ``benchmarks/bench_volume.py`` reports the other 5 apart.

A direction also stops where the mask vanishes (under ``min_area_px``), where SAM's predicted IoU falls under
``min_predicted_iou``, where the mask overlaps the previous one (in plane) less than ``min_overlap`` (it jumped to
another structure), or at the end of the slice range. That slice is not kept. Slices are encoded as they are
reached (and cached per slice), so a small lesion costs few encodes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from radvlsm.geometry import mask_to_box
from radvlsm.predictor import Encoded, SegmentPredictor
from radvlsm.volume import Volume


@dataclass(frozen=True)
class PropagationConfig:
    min_predicted_iou: float = 0.5
    min_area_px: int = 8
    min_overlap: float = 0.2
    #: stop where the mask's pooled embedding is closer to its surrounding ring's than to the seed lesion's
    appearance_stop: bool = True
    #: the box around the previous mask grows by this share of its size on each side (at least 2 pixels):
    #: LiteMedSAM was trained on boxes a few pixels looser than the lesion, and the lesion moves between slices
    margin: float = 0.1


@dataclass
class Propagated:
    """A lesion's masks by slice, SAM's predicted IoU by slice, and why each direction stopped."""

    masks: dict[int, np.ndarray]
    predicted_iou: dict[int, float]
    stopped: dict[str, str] = field(default_factory=dict)
    encodes: int = 0
    ms: float = 0.0

    @property
    def slices(self) -> list[int]:
        return sorted(self.masks)


def grow_box(box: list[float], shape: tuple[int, int], margin: float) -> np.ndarray:
    x0, y0, x1, y1 = box
    mx, my = max(2.0, margin * (x1 - x0 + 1)), max(2.0, margin * (y1 - y0 + 1))
    rows, cols = shape
    return np.array([max(0.0, x0 - mx), max(0.0, y0 - my), min(cols - 1.0, x1 + mx), min(rows - 1.0, y1 + my)],
                    np.float32)


def pooled_embedding(enc: Encoded, mask: np.ndarray) -> torch.Tensor:
    """The embedding averaged over a mask (each cell weighted by the share of it the mask covers): ``(C,)``."""
    frame = enc.frame
    grid = enc.embedding.shape[-1]
    weight = frame.pool_to_grid(frame.soft_mask_to_model(mask), grid).to(enc.embedding.device)
    return (enc.embedding[0].float() * weight).sum((1, 2)) / weight.sum().clamp(min=1e-6)


def ring(mask: np.ndarray) -> np.ndarray:
    """A band about one embedding cell wide (at least 5 pixels) around a mask."""
    from scipy import ndimage

    width = max(5, round(1.25 * max(mask.shape) / 64))
    return ndimage.binary_dilation(mask, iterations=width) & ~mask


def looks_like_surroundings(enc: Encoded, mask: np.ndarray, seed: torch.Tensor) -> tuple[bool, float, float]:
    """Whether the mask's embedding is closer (cosine) to its ring's than to the seed lesion's; both similarities."""
    inside = pooled_embedding(enc, mask)
    band = ring(mask)
    if not band.any():
        return False, 1.0, 0.0
    to_seed = float(torch.cosine_similarity(inside, seed, 0))
    to_ring = float(torch.cosine_similarity(inside, pooled_embedding(enc, band), 0))
    return to_ring > to_seed, to_seed, to_ring


def _mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def propagate(predictor: SegmentPredictor, volume: Volume, k: int, mask: np.ndarray, score: float,
              first: int = 0, last: int | None = None, config: PropagationConfig | None = None) -> Propagated:
    """``mask`` (bool, on slice ``k``) carried down to ``first`` and up to ``last`` (inclusive)."""
    cfg = config or PropagationConfig()
    last = volume.n_slices - 1 if last is None else last
    t0 = time.perf_counter()
    out = Propagated({k: mask.astype(bool)}, {k: float(score)})
    seed_enc = predictor.encode(volume.slice_image(k))
    out.encodes += 0 if seed_enc.cache_hit else 1
    seed = pooled_embedding(seed_enc, out.masks[k])
    for name, step, end in (("down", -1, first), ("up", 1, last)):
        prev = out.masks[k]
        for z in range(k + step, end + step, step):
            enc = predictor.encode(volume.slice_image(z))
            out.encodes += 0 if enc.cache_hit else 1
            box = grow_box(mask_to_box(prev), prev.shape, cfg.margin)
            masks, iou = predictor.decode(enc, box)
            m, s = masks[0].astype(bool), float(iou[0])
            area = int(m.sum())
            if area < cfg.min_area_px:
                reason = f"mask vanished on slice {z}"
            elif s < cfg.min_predicted_iou:
                reason = f"predicted IoU {s:.2f} under {cfg.min_predicted_iou:g} on slice {z}"
            elif _mask_iou(m, prev) < cfg.min_overlap:
                reason = f"mask moved off the previous slice's on slice {z}"
            elif cfg.appearance_stop and (judged := looks_like_surroundings(enc, m, seed))[0]:
                reason = (f"mask looks like its surroundings on slice {z} (similarity to them {judged[2]:.2f}, "
                          f"to the lesion {judged[1]:.2f})")
            else:
                out.masks[z], out.predicted_iou[z] = m, s
                prev = m
                continue
            break
        else:
            reason = "end of the slice range"
        out.stopped[name] = reason
    out.ms = (time.perf_counter() - t0) * 1e3
    return out
