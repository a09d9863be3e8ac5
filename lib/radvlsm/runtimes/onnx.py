"""ONNX Runtime encoders on CPU: ``onnx`` (fp32 export) and ``onnx_int8`` (dynamic int8 quantisation of it); both
run the mask decoder on ONNX Runtime too (fp32, :mod:`radvlsm.runtimes.onnx_decoder`).

The export is made locally (no network) the first time a backbone/checkpoint is served and cached on disk:
``<cache_dir>/onnx/<backbone>-<checkpoint hash>-<img_size>-<tool versions hash>/encoder[.int8].onnx``. The
directory name holds everything that changes the file (checkpoint hash, backbone, torch / onnx / onnxruntime
versions, opset), so a new checkpoint or toolchain gets a new export and an unchanged one is reused across
restarts. Files are written to a temporary name and renamed (atomic), so a crash or a concurrent export never
leaves a half-written model behind. The cache layout, counters and export lock, shared with the decoder export,
live in :mod:`radvlsm.runtimes.onnx_cache`.
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from pathlib import Path

import torch

from radvlsm.io import atomic_write
from radvlsm.models.registry import Backbone
from radvlsm.runtimes.onnx_cache import EXPORT_ATOL, EXPORT_LOCK, EXPORTS, OPSET, export_dir

# "X as X": re-exported, public names of this module before the cache layout moved to onnx_cache
from radvlsm.runtimes.onnx_cache import default_cache_dir as default_cache_dir
from radvlsm.runtimes.onnx_cache import toolchain_tag as toolchain_tag
from radvlsm.runtimes.onnx_decoder import build_decoder
from radvlsm.runtimes.registry import register_runtime

logger = logging.getLogger(__name__)


def probe_input(backbone: Backbone) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.rand(1, 3, backbone.img_size, backbone.img_size, generator=g)


def export_fp32(backbone: Backbone, cache_dir: str | Path | None = None) -> Path:
    """The fp32 ONNX encoder for ``backbone``: the cached file, or a new export checked against eager."""
    out = export_dir(backbone, cache_dir)
    path = out / "encoder.onnx"
    with EXPORT_LOCK:
        if path.exists():
            return path
        out.mkdir(parents=True, exist_ok=True)
        logger.info(f"radvlsm: exporting the {backbone.name} encoder to ONNX (one-off, cached in {out})")
        start = time.perf_counter()
        encoder = backbone.image_encoder.cpu().eval()
        x = probe_input(backbone)

        def write(tmp: Path) -> None:
            with warnings.catch_warnings(), torch.inference_mode():
                warnings.simplefilter("ignore")
                torch.onnx.export(encoder, (x,), str(tmp), input_names=["image"], output_names=["embedding"],
                                  opset_version=OPSET, dynamo=False)
            diff = _max_diff(tmp, encoder, x)
            if diff > EXPORT_ATOL:
                raise RuntimeError(f"ONNX export of {backbone.name} differs from eager by {diff:.2e} "
                                   f"(> {EXPORT_ATOL}); not using it")
            meta = {"backbone": backbone.name, "version": backbone.version, "opset": OPSET,
                    "torch": torch.__version__, "max_abs_diff_vs_eager": diff,
                    "export_s": round(time.perf_counter() - start, 1)}
            atomic_write(out / "meta.json", lambda p: p.write_text(json.dumps(meta, indent=1)))

        atomic_write(path, write)
        backbone.image_encoder.to(backbone.device)
        EXPORTS["fp32"] += 1
        logger.info(f"radvlsm: ONNX export done in {time.perf_counter() - start:.1f} s")
        return path


def _max_diff(path: Path, encoder: torch.nn.Module, x: torch.Tensor) -> float:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(sess.run(None, {"image": x.numpy()})[0])
    with torch.inference_mode():
        ref = encoder(x)
    return float((got - ref).abs().max() / max(1.0, float(ref.abs().max())))


def export_int8(backbone: Backbone, cache_dir: str | Path | None = None) -> Path:
    """Dynamic int8 quantisation (weights int8, activations quantised on the fly) of the fp32 export."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    fp32 = export_fp32(backbone, cache_dir)
    path = fp32.with_name("encoder.int8.onnx")
    with EXPORT_LOCK:
        if path.exists():
            return path
        logger.info(f"radvlsm: quantising the {backbone.name} ONNX encoder to int8 (one-off)")
        logging.disable(logging.INFO)  # the quantiser logs every tensor it skips at INFO on the root logger
        try:  # per-channel weights, MatMul/Gemm only: quantised convolutions lost most of the embedding here
            atomic_write(path, lambda tmp: quantize_dynamic(str(fp32), str(tmp), weight_type=QuantType.QInt8,
                                                       per_channel=True, op_types_to_quantize=["MatMul", "Gemm"]))
        finally:
            logging.disable(logging.NOTSET)
        EXPORTS["int8"] += 1
        return path


class OnnxRuntime:
    """An ONNX Runtime CPU session over an exported encoder."""

    def __init__(self, name: str, path: Path, threads: int | None = None, decoder=None):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.intra_op_num_threads = threads or torch.get_num_threads()
        opts.inter_op_num_threads = 1
        self.name, self.path = name, path
        self.decoder = decoder  # an OnnxDecoder for the per-prompt path, or None (torch decoder)
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        out = self.session.run(None, {"image": x.detach().cpu().contiguous().numpy()})[0]
        return torch.from_numpy(out)

    def describe(self) -> dict:
        return {"runtime": self.name, "file": str(self.path), "decoder": "onnx" if self.decoder else "torch",
                "threads": self.session.get_session_options().intra_op_num_threads}


def _cpu_only(backbone: Backbone) -> str | None:
    return None if backbone.device.type == "cpu" else "ONNX runtimes here are CPU runtimes (use bf16/fp16 on GPU)"


@register_runtime("onnx", _cpu_only, "ONNX Runtime CPU, fp32 export of the encoder (made locally, cached)")
def build_onnx(backbone: Backbone, cache_dir: str | Path | None = None) -> OnnxRuntime:
    return OnnxRuntime("onnx", export_fp32(backbone, cache_dir), decoder=build_decoder(backbone, cache_dir))


@register_runtime("onnx_int8", _cpu_only, "ONNX Runtime CPU, dynamic int8 quantisation of the fp32 export",
                  not_for_auto="it changes the embedding by ~17 % (relative L2), and the embedding also feeds the "
                               "proposer and the diagnosis features, which the sam Dice gate does not measure")
def build_onnx_int8(backbone: Backbone, cache_dir: str | Path | None = None) -> OnnxRuntime:
    return OnnxRuntime("onnx_int8", export_int8(backbone, cache_dir), decoder=build_decoder(backbone, cache_dir))
