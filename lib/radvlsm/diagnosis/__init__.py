"""Lesion diagnosis: radiomics + LiteMedSAM embedding descriptors fused into a calibrated P(malignant).

Public API::

    from radvlsm.diagnosis import Diagnoser
    diag = Diagnoser.load("model/diagnosis")
    result = diag.diagnose(image, mask, encoded)  # encoded: SegmentPredictor.encode(image), or None
    result.to_json()  # dict; result.to_text() for plain text

Submodules import lazily so that ``radvlsm.diagnosis.visual`` runs where pyradiomics is not installed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from radvlsm.diagnosis.head import Diagnoser, Head
    from radvlsm.diagnosis.radiomics import MaskStats, NotEnoughLesion, extract
    from radvlsm.diagnosis.result import Contribution, DiagnosisResult

__all__ = ["Contribution", "DiagnosisResult", "Diagnoser", "Head", "MaskStats", "NotEnoughLesion", "extract"]

_WHERE = {"Diagnoser": "head", "Head": "head", "MaskStats": "radiomics", "NotEnoughLesion": "radiomics",
          "extract": "radiomics", "Contribution": "result", "DiagnosisResult": "result"}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(f"radvlsm.diagnosis.{_WHERE[name]}"), name)
    raise AttributeError(name)
