"""Encode a pack from ``diagnosis_gpu_pack.py`` with LiteMedSAM's image encoder and pool the lesion descriptors.

Runs on the GPU machine (torch + timm, no segment-anything): normalises like ``radvlsm.predictor.preprocess``
(min-max to [0, 1], zero pad to 256), encodes in fp32 with TF32 off (to match the CPU path used at inference),
and pools with ``radvlsm.diagnosis.visual.pool_embedding``. Writes ``visual_<part>.npz`` (ids, X).

    PYTHONPATH=lib python3 scripts/diagnosis_gpu_features.py .carry/common .carry/pack0 $OUT/visual_0.npz
"""

from __future__ import annotations

import importlib.util
import lzma
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from radvlsm.diagnosis.visual import pool_embedding


def tiny_vit(common: Path) -> torch.nn.Module:
    """The LiteMedSAM image encoder, built as ``radvlsm.models.litemedsam._tiny_vit`` builds it."""
    spec = importlib.util.spec_from_file_location("tiny_vit_sam", common / "tiny_vit_sam.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    net = mod.TinyViT(
        img_size=256, in_chans=3, embed_dims=[64, 128, 160, 320], depths=[2, 2, 6, 2], num_heads=[2, 4, 5, 10],
        window_sizes=[7, 7, 14, 7], mlp_ratio=4.0, drop_rate=0.0, drop_path_rate=0.0, use_checkpoint=False,
        mbconv_expand_ratio=4.0, local_conv_size=3, layer_lr_decay=0.8,
    )
    net.load_state_dict(torch.load(common / "encoder.pt", map_location="cpu", weights_only=True), strict=True)
    return net.eval()


def main(common: Path, pack: Path, out: Path, limit: int | None = None, batch: int = 32) -> None:
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    net = tiny_vit(common).to(dev)
    meta = np.load(pack / "meta.npz")
    raw = lzma.decompress((pack / "pixels.xz").read_bytes())
    ids, shapes, grids = meta["ids"][:limit], meta["shapes"][:limit], meta["grids"][:limit]
    offsets = np.concatenate([[0], np.cumsum(shapes[:, 0] * shapes[:, 1])])
    feats = []
    t0 = time.time()
    for s in range(0, len(ids), batch):
        xs = []
        for i in range(s, min(s + batch, len(ids))):
            h, w = (int(v) for v in shapes[i])
            g = np.frombuffer(raw, np.uint8, h * w, int(offsets[i])).reshape(h, w)
            x = torch.from_numpy(g.astype(np.float32))[None, None].repeat(1, 3, 1, 1)
            x = (x - x.amin()) / torch.clamp(x.amax() - x.amin(), min=1e-8)
            xs.append(F.pad(x, (0, 256 - w, 0, 256 - h)))
        with torch.inference_mode():
            emb = net(torch.cat(xs).to(dev))
        for j, i in enumerate(range(s, s + len(xs))):
            gi = torch.from_numpy(grids[i])
            feats.append(pool_embedding(emb[j : j + 1], gi[0], gi[1], gi[2]))
    np.savez_compressed(out, ids=ids, X=np.stack(feats))
    print(f"{pack.name}: {len(ids)} images in {time.time() - t0:.1f}s on {dev}", flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4]) if len(sys.argv) > 4 else None)
