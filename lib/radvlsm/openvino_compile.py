"""How the OpenVINO models are compiled for the CPU (a leaf without torch: the encoder's child process imports it).

Precision is pinned: f32 for ``openvino`` (on CPUs with bf16 units OpenVINO would otherwise pick bf16 itself), bf16
for ``openvino_bf16``, which only CPUs with native bf16 units run (AMX or AVX-512 BF16: OpenVINO lists ``BF16`` among
the CPU's optimisation capabilities); each must pass its own Dice gate. Compiled blobs are cached beside the exports
(``ov_cache/``, ``ov_cache_bf16/``), so a restart does not recompile; one folder per precision, because OpenVINO
2026.4 loaded the f32 blob for a bf16 compile of the same file and crashed on its first inference.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

PRECISIONS = ("f32", "bf16")


@lru_cache(maxsize=1)
def native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (emulated bf16 would be slower than f32, and is not what was gated).
    Asked once: ``auto`` asks it for every gate it reads."""
    import openvino as ov

    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def compile_openvino(path: Path, threads: int, precision: str = "f32"):
    import openvino as ov

    if precision not in PRECISIONS:
        raise ValueError(f"OpenVINO precision '{precision}': one of {', '.join(PRECISIONS)}")
    core = ov.Core()
    cache = "ov_cache" if precision == "f32" else f"ov_cache_{precision}"
    core.set_property({"CACHE_DIR": str(Path(path).parent / cache)})
    config = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY",
              "INFERENCE_NUM_THREADS": int(threads)}
    return core.compile_model(str(path), "CPU", config)


class OpenVinoEncoder:
    """The compiled encoder: ``(1, 3, S, S)`` float32 array -> ``(1, C, h, w)`` float32 array."""

    def __init__(self, path: Path, threads: int, precision: str = "f32"):
        self.compiled = compile_openvino(path, threads, precision)

    def __call__(self, x):
        import numpy as np

        out = self.compiled.create_infer_request().infer({"image": np.ascontiguousarray(x, dtype=np.float32)})
        return np.array(out[self.compiled.output(0)])


class OpenVinoDecoderCore:
    """The compiled mask decoder: embedding ``(1, C, h, w)`` and sparse prompt embeddings ``(N, T, C)`` -> the
    four low-res masks ``(N, 4, g, g)`` and IoUs ``(N, 4)``, float32 arrays."""

    def __init__(self, path: Path, threads: int, precision: str = "f32"):
        self.compiled = compile_openvino(path, threads, precision)

    def __call__(self, embedding, sparse):
        import numpy as np

        out = self.compiled.create_infer_request().infer(
            {"embedding": np.ascontiguousarray(embedding, dtype=np.float32),
             "sparse": np.ascontiguousarray(sparse, dtype=np.float32)})
        return tuple(np.array(out[self.compiled.output(name)]) for name in ("masks", "iou"))
