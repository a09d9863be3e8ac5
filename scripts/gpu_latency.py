"""Encoder latency on a CUDA GPU, per precision: LiteMedSAM's TinyViT (real weights) and SAM ViT-B (segment-anything's
image encoder; random weights, the same compute as the released ones). Also the qformer_lite proposer head.

    python scripts/gpu_latency.py --pack .carry/proposer      # needs torch with CUDA, timm, segment-anything

Prints one row per model and precision: median ms per image at batch 1 (CUDA events, after warm-up) and images/s
at batch 32, with the largest absolute difference of the embedding against fp32.
"""

from __future__ import annotations

import argparse
import sys
from functools import partial
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "lib"))
sys.path.insert(0, str(ROOT / "scripts"))

from proposer_train import build_encoder  # noqa: E402


def timed(fn, x, reps: int = 30) -> float:
    for _ in range(5):
        fn(x)
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn(x)
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
    return sorted(times)[len(times) // 2]


@torch.inference_mode()
def bench(name: str, model: torch.nn.Module, size: int) -> None:
    x1 = torch.rand(1, 3, size, size, device="cuda")
    x32 = torch.rand(32, 3, size, size, device="cuda")
    ref = model(x1).float()
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        def run(x, dtype=dtype):
            with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
                return model(x)
        diff = (run(x1).float() - ref).abs().max().item()
        ms1 = timed(run, x1)
        ms32 = timed(run, x32, reps=10)
        print(f"| {name} | {str(dtype).removeprefix('torch.')} | {ms1:.2f} | {32000 / ms32:.0f} | {diff:.2e} |",
              flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pack", type=Path, default=ROOT / ".carry" / "proposer")
    args = ap.parse_args()
    from segment_anything.modeling import ImageEncoderViT

    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    print("| model | precision | ms / image (batch 1) | images/s (batch 32) | max abs diff vs fp32 |")
    print("|---|---|---|---|---|")
    bench("LiteMedSAM TinyViT (256)", build_encoder(args.pack, "cuda"), 256)
    vit_b = ImageEncoderViT(depth=12, embed_dim=768, img_size=1024, mlp_ratio=4,
                            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), num_heads=12, patch_size=16,
                            qkv_bias=True, use_rel_pos=True, global_attn_indexes=(2, 5, 8, 11), window_size=14,
                            out_chans=256).cuda().eval()
    bench("SAM ViT-B (1024)", vit_b, 1024)


if __name__ == "__main__":
    main()
