"""Shared helpers of the diagnosis scripts: the BUS-BRA table, folds and file paths."""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("RADVLSM_BUSBRA", ROOT.parent / "shared" / "data" / "bus-bra"))
CACHE = Path(os.environ.get("RADVLSM_DIAG_CACHE", Path.home() / ".cache" / "radvlsm" / "diagnosis"))
MODEL_DIR = ROOT / "model" / "diagnosis"
TEST_FOLD = 5  # the held-out report split: never trained or selected on


@dataclass(frozen=True)
class Case:
    id: str  # e.g. bus_0001-l
    malignant: int
    fold: int

    @property
    def image(self) -> Path:
        return DATA / "Images" / f"{self.id}.png"

    @property
    def mask(self) -> Path:
        return DATA / "Masks" / f"mask_{self.id.removeprefix('bus_')}.png"


def cases(data: Path = DATA) -> list[Case]:
    """All BUS-BRA images with pathology label and the 5-fold-cv test fold, sorted by ID."""
    with open(data / "bus_data.csv") as fh:
        label = {r["ID"]: int(r["Pathology"] == "malignant") for r in csv.DictReader(fh)}
    with open(data / "5-fold-cv.csv") as fh:
        fold = {r["ID"]: int(r["kFold"]) for r in csv.DictReader(fh)}
    return [Case(i, label[i], fold[i]) for i in sorted(label)]
