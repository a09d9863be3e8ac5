"""How the OpenVINO models are compiled for the CPU (a leaf without torch: the encoder's child process imports it).

Precision is pinned to f32 (on CPUs with bf16 units OpenVINO would otherwise pick bf16 itself): the runtime must
pass the same Dice gate as ``onnx``. Compiled blobs are cached beside the exports (``ov_cache/``), so a restart
does not recompile.
"""

from __future__ import annotations

from pathlib import Path


def compile_openvino(path: Path, threads: int):
    import openvino as ov

    core = ov.Core()
    core.set_property({"CACHE_DIR": str(Path(path).parent / "ov_cache")})
    config = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": int(threads)}
    return core.compile_model(str(path), "CPU", config)


class OpenVinoEncoder:
    """The compiled encoder: ``(1, 3, S, S)`` float32 array -> ``(1, C, h, w)`` float32 array."""

    def __init__(self, path: Path, threads: int):
        self.compiled = compile_openvino(path, threads)

    def __call__(self, x):
        import numpy as np

        out = self.compiled.create_infer_request().infer({"image": np.ascontiguousarray(x, dtype=np.float32)})
        return np.array(out[self.compiled.output(0)])


class OpenVinoDecoderCore:
    """The compiled mask decoder: embedding ``(1, C, h, w)`` and sparse prompt embeddings ``(N, T, C)`` -> the
    four low-res masks ``(N, 4, g, g)`` and IoUs ``(N, 4)``, float32 arrays."""

    def __init__(self, path: Path, threads: int):
        self.compiled = compile_openvino(path, threads)

    def __call__(self, embedding, sparse):
        import numpy as np

        out = self.compiled.create_infer_request().infer(
            {"embedding": np.ascontiguousarray(embedding, dtype=np.float32),
             "sparse": np.ascontiguousarray(sparse, dtype=np.float32)})
        return tuple(np.array(out[self.compiled.output(name)]) for name in ("masks", "iou"))
