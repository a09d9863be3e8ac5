"""Evaluation sets as data: (image path, mask path, case id) lists for BUS-BRA fold 5, Kvasir validation, or
any folder pair whose file stems match."""

from __future__ import annotations

import csv
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


def folder(images: Path, masks: Path) -> list[tuple[Path, Path, str]]:
    by_stem = {p.stem.removeprefix("mask_"): p for p in Path(masks).iterdir()}
    return [(p, by_stem[p.stem], p.stem) for p in sorted(Path(images).iterdir()) if p.stem in by_stem]


PRESETS = {
    "busbra-fold5": lambda: busbra({5}),
    "busbra-train": lambda: busbra({1, 2, 3, 4}),
    "kvasir-val": lambda: kvasir("validation"),
    "kvasir-train": lambda: kvasir("train"),
}


def load(name_or_dirs: str) -> list[tuple[Path, Path, str]]:
    """A preset name, or ``IMAGES_DIR:MASKS_DIR``."""
    if name_or_dirs in PRESETS:
        return PRESETS[name_or_dirs]()
    images, _, masks = name_or_dirs.partition(":")
    if not masks:
        raise SystemExit(f"unknown dataset '{name_or_dirs}': use one of {sorted(PRESETS)} or IMAGES_DIR:MASKS_DIR")
    return folder(Path(images), Path(masks))
