"""Lesion-aware visual descriptors pooled from the LiteMedSAM image embedding.

The segmentation encoder already ran for the image (its embedding is cached by the predictor), so these
descriptors cost only a pooling step. The mask is mapped onto the embedding grid exactly as the image was mapped
onto the encoder input (:class:`radvlsm.frame.Frame`): resized (bilinear, antialiased) to ``input_size``, zero
padded bottom/right to ``img_size``, then averaged over the ``img_size / grid`` patch of each embedding cell,
which gives each cell the fraction of it covered by lesion. Pooled vectors (``C`` = 256 each):

* ``in_mean``: coverage-weighted mean inside the lesion (what the lesion looks like);
* ``in_max``: max over the cells at least half as covered as the best one (the most salient part);
* ``ring_mean``: mean over a band ``ring_px`` wide (encoder-input pixels) around the lesion, inside the image
  (margin / posterior acoustic features, surrounding tissue);
* ``global_mean``: mean over the whole image area (context; excludes the padding).

Only numpy and torch are needed, so the same code runs on a GPU machine without radvlsm's other dependencies.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from radvlsm.frame import Frame

if TYPE_CHECKING:
    from radvlsm.predictor import Encoded

POOLS = ("in_mean", "in_max", "ring_mean", "global_mean")
RING_PX = 16  # ring width in encoder-input pixels (4 embedding cells for LiteMedSAM)


def mask_grids(mask: np.ndarray, input_size: tuple[int, int], img_size: int = 256, grid: int = 64,
               ring_px: int = RING_PX) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-cell weights ``(grid, grid)`` for the lesion, the ring around it and the valid (unpadded) image.

    ``input_size`` must be the model input of the mask's image (``Frame(mask.shape, img_size).input_size``)."""
    frame = Frame(np.shape(mask), img_size)
    if frame.input_size != tuple(int(v) for v in input_size):
        raise ValueError(f"input size {list(input_size)} is not the {img_size}-pixel model input of a "
                         f"{list(np.shape(mask))} mask (expected {list(frame.input_size)})")
    m = frame.soft_mask_to_model(mask)
    valid = frame.input_area()
    k = 2 * ring_px + 1
    dilated = F.max_pool2d(m[None, None], kernel_size=k, stride=1, padding=ring_px)[0, 0]
    ring = (dilated - m).clamp(0, 1) * valid
    return frame.pool_to_grid(m, grid), frame.pool_to_grid(ring, grid), frame.pool_to_grid(valid, grid)


def _wmean(emb: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    total = weight.sum()
    if float(total) <= 0:
        return torch.zeros(emb.shape[0], dtype=emb.dtype, device=emb.device)
    return (emb * weight).flatten(1).sum(1) / total


def pool_embedding(embedding: torch.Tensor, inside: torch.Tensor, ring: torch.Tensor,
                   valid: torch.Tensor) -> np.ndarray:
    """``(1, C, g, g)`` embedding + cell weights -> float32 vector ``[in_mean, in_max, ring_mean, global_mean]``."""
    emb = embedding[0].float()
    inside, ring, valid = (t.to(emb.device, emb.dtype) for t in (inside, ring, valid))
    in_mean = _wmean(emb, inside)
    top = inside >= 0.5 * inside.max() if float(inside.max()) > 0 else valid > 0
    in_max = emb[:, top].amax(dim=1)
    vec = torch.cat([in_mean, in_max, _wmean(emb, ring), _wmean(emb, valid)])
    return vec.cpu().numpy().astype(np.float32)


def feature_names(channels: int = 256) -> list[str]:
    return [f"{p}_{i:03d}" for p in POOLS for i in range(channels)]


def visual_features(encoded: Encoded, mask: np.ndarray, img_size: int = 256) -> np.ndarray:
    """Pooled descriptors of ``mask`` (original image grid) from the predictor's cached embedding."""
    if tuple(np.asarray(mask).shape) != tuple(encoded.original_size):
        raise ValueError(f"mask shape {list(np.shape(mask))} != image {list(encoded.original_size)}")
    grid = int(encoded.embedding.shape[-1])
    inside, ring, valid = mask_grids(mask, encoded.input_size, img_size, grid)
    return pool_embedding(encoded.embedding, inside, ring, valid)


def roi_box(mask: np.ndarray, margin: float = 0.25, min_side: int = 32) -> tuple[int, int, int, int] | None:
    """Square crop ``(y0, y1, x0, x1)`` (end exclusive) centred on the lesion box with ``margin`` of its size
    on each side, moved (not shrunk) to stay inside the image where it fits; None for an empty mask.

    The crop is re-encoded at the encoder's full input size, so small lesions get many more embedding cells.
    """
    ys, xs = np.nonzero(np.asarray(mask))
    if len(xs) == 0:
        return None
    rows, cols = np.asarray(mask).shape
    side = int(round(max(xs.max() - xs.min() + 1, ys.max() - ys.min() + 1) * (1 + 2 * margin)))
    side = max(side, min_side)
    out = []
    for lo, hi, n in ((ys.min(), ys.max(), rows), (xs.min(), xs.max(), cols)):
        s = min(side, n)
        start = int(round((lo + hi + 1) / 2 - s / 2))
        start = min(max(start, 0), n - s)
        out += [start, start + s]
    return out[0], out[1], out[2], out[3]


def roi_crop(pixels: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The lesion-centred crop of ``pixels`` (rows, cols, C) and of ``mask`` (see :func:`roi_box`)."""
    box = roi_box(mask)
    if box is None:
        raise ValueError("empty mask: no lesion to crop")
    y0, y1, x0, x1 = box
    return pixels[y0:y1, x0:x1], np.asarray(mask)[y0:y1, x0:x1]
