"""Evaluation sets as data: (image path, mask path, case id) lists for BUS-BRA fold 5, Kvasir validation, or
any folder pair whose file stems match."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def busbra(folds: set[int], data: Path = DATA) -> list[tuple[Path, Path, str]]:
    root = data / "bus-bra"
    with open(root / "5-fold-cv.csv") as f:
        ids = sorted(r["ID"] for r in csv.DictReader(f) if int(r["kFold"]) in folds)
    return [(root / "Images" / f"{i}.png", root / "Masks" / f"mask_{i.removeprefix('bus_')}.png", i) for i in ids]


def kvasir(split: str, data: Path = DATA) -> list[tuple[Path, Path, str]]:
    root = data / "kvasir-seg" / split
    return [(p, root / "masks" / p.name, p.stem) for p in sorted((root / "images").glob("*.jpg"))]


def held_out(case: str) -> bool:
    """The patient-wise report split of a set without official folds: ``sha1(case) mod 5 == 0`` (~20 %)."""
    return int(hashlib.sha1(case.encode()).hexdigest(), 16) % 5 == 0


def ddti(split: str, data: Path = DATA) -> list[tuple[Path, Path, str]]:
    """DDTI thyroid nodules split by case: ``test`` (held out, never trained on) or ``train``."""
    root = data / "ddti"
    with open(root / "info.csv") as f:
        rows = [r for r in csv.DictReader(f) if held_out(r["case"]) == (split == "test")]
    return [(root / "images" / f"{r['id']}.jpg", root / "masks" / f"{r['id']}.png", r["id"]) for r in rows]


def uclm(kind: str, data: Path = DATA, split: str = "all") -> list[tuple[Path, Path, str]]:
    """BUS-UCLM ``lesion`` images (benign and malignant) or ``normal`` (lesion-free) ones of ``all`` patients, or
    of the ``test`` patients (``held_out(patient)``) or the ``train`` ones (the other patients).

    Pairs whose mask has another size than the image are left out (8 images of one patient, HESN: cropped
    images with full-frame masks, so where the lesion lies is unknown): 260 lesion and 196 normal images remain."""
    from PIL import Image

    root = data / "bus-uclm"
    with open(root / "info.csv") as f:
        rows = [r for r in csv.DictReader(f) if (r["pathology"] == "normal") == (kind == "normal")]
    if split != "all":
        rows = [r for r in rows if held_out(r["patient"]) == (split == "test")]
    out = []
    for r in rows:
        img, mask = root / "images" / f"{r['id']}.jpg", root / "masks" / f"{r['id']}.png"
        with Image.open(img) as a, Image.open(mask) as b:
            if a.size == b.size:
                out.append((img, mask, r["id"]))
    return out


def uclm_pathology(data: Path = DATA) -> dict[str, int]:
    """BUS-UCLM id -> 1 malignant / 0 benign (lesion images only)."""
    with open(data / "bus-uclm" / "info.csv") as f:
        return {r["id"]: int(r["pathology"] == "malignant") for r in csv.DictReader(f) if r["pathology"] != "normal"}


def folder(images: Path, masks: Path) -> list[tuple[Path, Path, str]]:
    by_stem = {p.stem.removeprefix("mask_"): p for p in Path(masks).iterdir()}
    return [(p, by_stem[p.stem], p.stem) for p in sorted(Path(images).iterdir()) if p.stem in by_stem]


PRESETS = {
    "busbra-fold5": lambda: busbra({5}),
    "busbra-train": lambda: busbra({1, 2, 3, 4}),
    "kvasir-val": lambda: kvasir("validation"),
    "kvasir-train": lambda: kvasir("train"),
    "ddti-test": lambda: ddti("test"),
    "ddti-train": lambda: ddti("train"),
    "uclm-lesion": lambda: uclm("lesion"),
    "uclm-normal": lambda: uclm("normal"),
    # the patient split, for a model that trained on BUS-UCLM's other patients (the all-sites model)
    "uclm-lesion-test": lambda: uclm("lesion", split="test"),
    "uclm-normal-test": lambda: uclm("normal", split="test"),
}


def load(name_or_dirs: str) -> list[tuple[Path, Path, str]]:
    """A preset name, or ``IMAGES_DIR:MASKS_DIR``."""
    if name_or_dirs in PRESETS:
        return PRESETS[name_or_dirs]()
    images, _, masks = name_or_dirs.partition(":")
    if not masks:
        raise SystemExit(f"unknown dataset '{name_or_dirs}': use one of {sorted(PRESETS)} or IMAGES_DIR:MASKS_DIR")
    return folder(Path(images), Path(masks))
