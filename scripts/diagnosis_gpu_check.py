"""Compare visual descriptors computed on the GPU machine with the CPU inference path, on a few images.

The server encodes the original image on CPU (``SegmentPredictor.encode``) and pools with
``visual_features``; the head was trained on the GPU pack's features. This prints how far apart they are.

    python scripts/diagnosis_gpu_check.py ~/.cache/radvlsm/diagnosis/visual.npz bus_0001-l bus_0002-l bus_0003-l
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from radvlsm.diagnosis.visual import visual_features
from radvlsm.io import load_image, load_mask
from radvlsm.models import build_backbone
from radvlsm.predictor import SegmentPredictor

sys.path.insert(0, str(Path(__file__).parent))
from diagnosis_common import cases  # noqa: E402


def main(npz: Path, ids: list[str]) -> None:
    torch.set_num_threads(1)
    d = np.load(npz)
    row = {str(i): k for k, i in enumerate(d["ids"])}
    by_id = {c.id: c for c in cases()}
    sd = d["X"].std(0)
    pred = SegmentPredictor(build_backbone("litemedsam"))
    for i in ids:
        c = by_id[i]
        img = load_image(c.image)
        cpu = visual_features(pred.encode(img), load_mask(c.mask, img.shape))
        gpu = d["X"][row[i]]
        diff = np.abs(cpu - gpu)
        cos = float(cpu @ gpu / (np.linalg.norm(cpu) * np.linalg.norm(gpu)))
        print(f"{i}: max|diff| {diff.max():.2e}  mean|diff| {diff.mean():.2e}  mean|value| {np.abs(cpu).mean():.2e}"
              f"  mean|diff|/feature SD {np.mean(diff / sd):.3f}  cosine {cos:.6f}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:])
