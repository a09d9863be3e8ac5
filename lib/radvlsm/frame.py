"""One coordinate frame for an image: original pixels <-> model input <-> embedding grid <-> decoder grid.

Four grids describe one image, and every conversion between them is a method of :class:`Frame`, used by serving
(the predictor, the proposers, the diagnosis head) and by training (decoder and proposer fine-tuning) alike:

* the **original** image, ``original_size = (rows, cols)``;
* the **model input**: the image resized so that its longest side is ``img_size`` (``input_size``, rounded as
  segment-anything does), then zero padded bottom/right to the square ``img_size x img_size``;
* the **embedding grid**: ``grid x grid`` cells (``img_size / 16``: 64 for LiteMedSAM at 256), each the average of
  an ``img_size / grid`` patch of the model input; the cells that touch the unpadded input are the valid ones;
* the **decoder grid**: the mask decoder's low-resolution logits (256 x 256 for both LiteMedSAM and SAM), which
  cover the whole padded model input.

Arrays are ``[row, col]``; prompts are ``[x, y]`` (:mod:`radvlsm.geometry`). Only numpy and torch are imported,
so the diagnosis packers can use it on a bare GPU machine.

Resampling, by direction (kept as they were when the conversions were gathered here, so served outputs and the
shipped checkpoints' training targets are unchanged):

* original -> model, image pixels and the diagnosis head's soft mask: bilinear, antialiased (:meth:`resize`);
* original -> model, the decoder's and the proposer's training targets: bilinear without antialiasing,
  thresholded at 0.5 (:meth:`mask_to_model`). The half-pixel convention (``align_corners=False``), the size and
  the padding are the image's, so the target lies on the image's pixels; only the filter width differs, which
  moves the thresholded boundary by less than a model pixel (``tests/test_frame.py`` measures it);
* model / decoder / embedding grid -> original: bilinear upsampling to the model input, crop of the unpadded
  part, bilinear resize to the original size (:meth:`logits_to_image`, :meth:`heat_to_image`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


def _pair(size) -> tuple[int, int]:
    rows, cols = (int(v) for v in tuple(size)[:2])
    return rows, cols


@dataclass(frozen=True)
class Frame:
    """The frame of one image of ``original_size`` (rows, cols) for a model of input side ``img_size``."""

    original_size: tuple[int, int]
    img_size: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "original_size", _pair(self.original_size))
        object.__setattr__(self, "img_size", int(self.img_size))
        if min(self.original_size) < 1 or self.img_size < 1:
            raise ValueError(f"frame: sizes must be positive, got {self.original_size} and {self.img_size}")

    @classmethod
    def of(cls, original_size, input_size) -> Frame:
        """The frame an encoding's ``(original_size, input_size)`` describe: ``img_size`` is the input's longest
        side (:attr:`input_size` always makes it exactly ``img_size``). A pair no frame makes is an error."""
        frame = cls(original_size, max(_pair(input_size)))
        if frame.input_size != _pair(input_size):
            raise ValueError(f"frame: input size {list(input_size)} is not the model input of an image of "
                             f"{list(frame.original_size)} (expected {list(frame.input_size)})")
        return frame

    def check(self, img_size: int) -> Frame:
        """This frame, after checking that it is one of a model of input side ``img_size`` (an encoding made for
        another backbone would be mapped wrongly)."""
        if self.img_size != int(img_size):
            raise ValueError(f"frame: an encoding of a {self.img_size}-pixel model input where a {img_size}-pixel "
                             "one is expected")
        return self

    # -- original <-> model input -----------------------------------------------------------------------------

    @property
    def input_size(self) -> tuple[int, int]:
        """``(rows, cols)`` of the resized image before padding: longest side ``img_size``; as segment-anything,
        rounded half up (Python's ``round`` halves to even) and never to zero rows."""
        height, width = self.original_size
        scale = self.img_size / max(height, width)
        return max(1, int(height * scale + 0.5)), max(1, int(width * scale + 0.5))

    @property
    def scale(self) -> float:
        """Model-input pixels per original pixel of the longest side (``img_size / max(rows, cols)``); coordinates
        use the per-axis :attr:`scale_xy`, which absorbs the rounding of the shorter side."""
        return self.img_size / max(self.original_size)

    @property
    def scale_xy(self) -> tuple[float, float]:
        """``(sx, sy)``: resized columns per original column and rows per original row."""
        new_h, new_w = self.input_size
        return new_w / self.original_size[1], new_h / self.original_size[0]

    def points_to_model(self, points) -> np.ndarray:
        """``[..., (x, y)]`` original pixel coordinates -> the model input's (float32)."""
        sx, sy = self.scale_xy
        out = np.array(points, dtype=np.float32, copy=True)
        out[..., 0] *= sx
        out[..., 1] *= sy
        return out

    def boxes_to_model(self, boxes) -> np.ndarray:
        """SAM boxes ``[x0, y0, x1, y1]`` (one or ``(N, 4)``) in original pixels -> ``(N, 4)`` float32 in the model
        input."""
        return self.points_to_model(np.asarray(boxes, np.float32).reshape(-1, 2, 2)).reshape(-1, 4)

    def points_to_image(self, points) -> np.ndarray:
        """Inverse of :meth:`points_to_model`: model-input ``[..., (x, y)]`` -> original pixels (float32)."""
        sx, sy = self.scale_xy
        out = np.array(points, dtype=np.float32, copy=True)
        out[..., 0] /= sx
        out[..., 1] /= sy
        return out

    def boxes_to_image(self, boxes) -> np.ndarray:
        """Inverse of :meth:`boxes_to_model`: ``(N, 4)`` model-input boxes -> original pixels (float32)."""
        return self.points_to_image(np.asarray(boxes, np.float32).reshape(-1, 2, 2)).reshape(-1, 4)

    def resize(self, x: torch.Tensor, antialias: bool = True) -> torch.Tensor:
        """``(N, C, rows, cols)`` on the original grid -> ``(N, C, *input_size)``, bilinear (half-pixel centres);
        antialiased by default, as the image itself is resized for the encoder."""
        return F.interpolate(x, size=self.input_size, mode="bilinear", align_corners=False, antialias=antialias)

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., *input_size)`` -> ``(..., img_size, img_size)``, zero padded bottom/right."""
        h, w = self.input_size
        return F.pad(x, (0, self.img_size - w, 0, self.img_size - h))

    def mask_to_model(self, mask: np.ndarray) -> torch.Tensor:
        """The training target: a label on the original grid -> ``(img_size, img_size)`` float 0/1 in the padded
        model input (bilinear without antialiasing, thresholded at 0.5, zero padded).

        The image is resized with antialiasing (:meth:`resize`); the target is not (the decoder and proposer were
        trained on this one). Both use the same size, pixel centres and padding, so the target lies on the image's
        pixels; at the usual downscaling (about 1.5x) the two filters move the thresholded boundary by less than a
        model pixel."""
        m = torch.from_numpy(np.asarray(mask).astype(np.float32))[None, None]
        m = self.resize(m, antialias=False) > 0.5
        return self.pad(m.float())[0, 0]

    def mask_to_decoder(self, mask: np.ndarray, low_res: int) -> torch.Tensor:
        """The decoder's training target on its ``low_res x low_res`` grid: :meth:`mask_to_model`, resampled
        bilinearly and thresholded at 0.5 when the decoder grid is coarser than the model input (SAM ViT: 256 vs
        1024; for LiteMedSAM both are 256 and it is the model-frame target itself)."""
        target = self.mask_to_model(mask)
        if low_res != self.img_size:
            target = (F.interpolate(target[None, None], size=(low_res, low_res), mode="bilinear",
                                    align_corners=False)[0, 0] > 0.5).float()
        return target

    def soft_mask_to_model(self, mask: np.ndarray) -> torch.Tensor:
        """A mask resized exactly as the image is (bilinear, antialiased), clamped to 0..1, zero padded:
        ``(img_size, img_size)`` coverage of each model-input pixel (what the diagnosis head pools)."""
        m = torch.from_numpy((np.asarray(mask) > 0).astype(np.float32))[None, None]
        return self.pad(self.resize(m).clamp(0, 1))[0, 0]

    def input_area(self) -> torch.Tensor:
        """``(img_size, img_size)``: 1 on the unpadded model input, 0 on the padding."""
        valid = torch.zeros(self.img_size, self.img_size)
        h, w = self.input_size
        valid[:h, :w] = 1.0
        return valid

    # -- model input <-> embedding grid -----------------------------------------------------------------------

    def cell(self, grid: int) -> int:
        """Model-input pixels per embedding cell side (``img_size // grid``)."""
        return self.img_size // grid

    def pool_to_grid(self, model_map: torch.Tensor, grid: int) -> torch.Tensor:
        """A ``(img_size, img_size)`` model-input map -> ``(grid, grid)``: the mean over each cell's patch."""
        return F.avg_pool2d(model_map[None, None], self.cell(grid))[0, 0]

    def grid_valid(self, grid: int) -> tuple[int, int]:
        """Rows and columns of a ``grid x grid`` embedding grid that touch the unpadded input (any part of a
        cell): ``ceil(input * grid / img_size)``, in integers.

        The one implementation of both former ``valid_grid`` functions (``proposals/template.py``: ``ceil(input /
        (img_size / grid))`` capped at ``grid``; ``proposals/qformer_model.py``: ``ceil(input * grid / img_size)``).
        They are the same number: with power-of-two strides (every backbone here) both float forms are exact, and
        the cap never binds (``input <= img_size``)."""
        h, w = self.input_size
        return min(grid, -(-h * grid // self.img_size)), min(grid, -(-w * grid // self.img_size))

    def grid_valid_mask(self, grid: int) -> torch.Tensor:
        """``(grid, grid)`` float: 1 on the cells of :meth:`grid_valid`, 0 on the padding."""
        rows, cols = self.grid_valid(grid)
        v = torch.zeros(grid, grid)
        v[:rows, :cols] = 1
        return v

    def mask_to_valid_grid(self, mask: np.ndarray, grid: int) -> torch.Tensor:
        """Fraction of each valid embedding cell (:meth:`grid_valid`) covered by a mask on the original grid: area
        interpolation of the mask straight onto the valid cells (the template proposer's exemplar weights).

        Unlike :meth:`soft_mask_to_model` + :meth:`pool_to_grid`, the image is stretched over whole cells: when
        the input size is not a multiple of the cell, the last row/column of cells also covers padding, so the
        far edge lands up to one cell's padding share (< 1 cell) further out. Kept: the template proposer's
        defaults were tuned with it."""
        m = torch.from_numpy(np.asarray(mask) > 0).float()[None, None]
        return F.interpolate(m, size=self.grid_valid(grid), mode="area")[0, 0]

    # -- decoder / embedding grid -> original -----------------------------------------------------------------

    def logits_to_image(self, low_res: torch.Tensor) -> torch.Tensor:
        """``(N, K, g, g)`` maps on a square grid covering the padded model input (the decoder's low-res logits, or
        an embedding-grid map) -> ``(N, K, rows, cols)`` on the original grid: bilinear to ``img_size`` (skipped
        when the grid already is ``img_size``, where it would return the same values), crop of the unpadded input,
        bilinear to the original size. What the predictor serves."""
        size = self.img_size
        x = low_res.float()
        if tuple(x.shape[-2:]) != (size, size):
            x = F.interpolate(x, (size, size), mode="bilinear", align_corners=False)
        h, w = self.input_size
        x = x[..., :h, :w]
        return F.interpolate(x, self.original_size, mode="bilinear", align_corners=False)

    def heat_to_image(self, grid_map: torch.Tensor, grid: int | None = None) -> torch.Tensor:
        """A ``(g, g)`` embedding-grid map -> ``(rows, cols)`` on the original grid, as :meth:`logits_to_image`.
        A map of the valid cells only (``(gh, gw)``, :meth:`grid_valid`) is zero padded to ``grid x grid`` first."""
        if grid is not None and tuple(grid_map.shape[-2:]) != (grid, grid):
            full = torch.zeros(grid, grid, dtype=grid_map.dtype, device=grid_map.device)
            full[: grid_map.shape[0], : grid_map.shape[1]] = grid_map
            grid_map = full
        return self.logits_to_image(grid_map[None, None])[0, 0]

    def decoder_valid(self, grid: int) -> tuple[int, int]:
        """Rows and columns of a ``grid x grid`` decoder map that cover the image: ``round(input * grid /
        img_size)`` (Python's round, halves to even), at least 1.

        Not :meth:`grid_valid` (which keeps any touched cell): this crops the decoder grid itself, for work done on
        it before one upsampling (:meth:`cropped_to_image`, aggregation). For LiteMedSAM the decoder grid is the
        model input (256), so it is exactly ``input_size`` and the two paths to the image agree; for SAM ViT
        (256 of 1024) the crop may differ from :meth:`logits_to_image`'s by a fraction of a decoder cell."""
        scale = grid / self.img_size
        h, w = self.input_size
        return max(1, round(h * scale)), max(1, round(w * scale))

    def cropped_to_image(self, maps: torch.Tensor) -> torch.Tensor:
        """Decoder-grid maps already cropped to :meth:`decoder_valid`, ``(K, h, w)`` -> ``(K, rows, cols)``
        (bilinear)."""
        return F.interpolate(maps[None].float(), self.original_size, mode="bilinear", align_corners=False)[0]
