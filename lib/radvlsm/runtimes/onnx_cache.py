"""The on-disk ONNX export cache shared by the encoder (:mod:`radvlsm.runtimes.onnx`) and mask decoder
(:mod:`radvlsm.runtimes.onnx_decoder`) exports: where the files live, what their names depend on, the export
counters and the lock that serialises writing them.

A leaf module: both exporters import it, it imports neither (so neither imports the other back).
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections import Counter
from pathlib import Path

import torch

from radvlsm.models.registry import Backbone

OPSET = 17
#: fp32 export must reproduce eager to this (absolute, scaled by the embedding's magnitude) on a probe input
EXPORT_ATOL = 1e-3
#: files written by this process, by kind ("fp32", "int8", "decoder"): tests read it to prove an export was reused
EXPORTS: Counter[str] = Counter()
#: held while an export is checked for and written (encoder and decoder alike), so one process never writes the
#: same file twice at once; a concurrent process is covered by the atomic rename
EXPORT_LOCK = threading.Lock()


def default_cache_dir() -> Path:
    return Path(os.environ.get("RADVLSM_CACHE", "~/.cache/radvlsm")).expanduser()


def toolchain_tag() -> str:
    """Hash of what the exported file depends on besides the weights."""
    import onnx
    import onnxruntime

    text = f"torch={torch.__version__};onnx={onnx.__version__};ort={onnxruntime.__version__};opset={OPSET}"
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def export_dir(backbone: Backbone, cache_dir: str | Path | None = None) -> Path:
    root = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    return root / "onnx" / f"{backbone.name}-{backbone.version}-{backbone.img_size}-{toolchain_tag()}"
