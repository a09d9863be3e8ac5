"""OpenVINO CPU runtime (``openvino``): the encoder and the mask decoder compiled by OpenVINO from the same fp32
ONNX exports the ``onnx`` runtime makes (:mod:`radvlsm.runtimes.onnx`, :mod:`radvlsm.runtimes.onnx_decoder`).

Why: on a CPU the embedding is the cost of a new image and the decoder the cost of every prompt; OpenVINO fuses
and schedules both graphs for the CPU it finds, and it is a PyPI wheel, so a hospital workstation without a GPU
can use it. Precision is pinned to f32 for ``openvino`` (on CPUs with bf16 units OpenVINO would otherwise pick
bf16 itself). ``openvino_bf16`` compiles the same exports at bf16, for CPUs with native bf16 units (AMX, AVX-512
BF16), where it encodes in well under half the f32 time; elsewhere it is not offered. Each must pass the Dice gate
(``benchmarks/bench_speed.py --dice``) before ``auto`` may pick it. bf16 passes it, but it changes the embedding
the proposer and the diagnosis head read too, and there it answers "lesion" on more lesion-free images
(``benchmarks/bench_cross_site.py --runtime``, ``benchmarks/bench_volume.py``), so ``auto`` never takes it: a user
asks for it (``--conf runtime openvino_bf16``), e.g. for box and click work, where it is as exact and 2.4x faster.
Compiled blobs are cached beside the exports (``ov_cache/``), so a restart does not recompile.

One compiled model is shared by every thread; each call makes its own infer request (OpenVINO's requests are not
thread-safe, compiled models are), so the server's worker pool can encode and decode concurrently.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import torch

from radvlsm.models.registry import Backbone
from radvlsm.openvino_compile import OpenVinoDecoderCore, OpenVinoEncoder, native_bf16
from radvlsm.runtimes.onnx import export_fp32
from radvlsm.runtimes.onnx_decoder import export_decoder
from radvlsm.runtimes.registry import register_runtime

logger = logging.getLogger(__name__)


class OpenVinoDecoder:
    """``run(embedding (1,C,h,w), sparse (N,T,C))`` -> the four low-res masks ``(N,4,g,g)`` and IoUs ``(N,4)``, as
    :class:`~radvlsm.runtimes.onnx_decoder.OnnxDecoder` (same exported graph, dynamic prompt count)."""

    def __init__(self, path: Path, threads: int | None = None, precision: str = "f32"):
        self.path, self.precision = path, precision
        self.core = OpenVinoDecoderCore(path, int(threads or torch.get_num_threads()), precision)

    def run(self, embedding: torch.Tensor, sparse: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        masks, iou = self.core(embedding.detach().cpu().float().numpy(), sparse.detach().cpu().float().numpy())
        return torch.from_numpy(masks), torch.from_numpy(iou)


class OpenVinoRuntime:
    """The image encoder compiled by OpenVINO for this CPU, with the OpenVINO mask decoder for the per-prompt path."""

    def __init__(self, name: str, path: Path, decoder: OpenVinoDecoder | None = None, threads: int | None = None,
                 precision: str = "f32"):
        self.name, self.path, self.decoder, self.precision = name, path, decoder, precision
        self.threads = int(threads or torch.get_num_threads())
        self.core = OpenVinoEncoder(path, self.threads, precision)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.core(x.detach().cpu().float().numpy()))

    def child_spec(self) -> tuple[str, str, int, str, str]:
        """What :mod:`radvlsm.encoder_process` needs to compile this very encoder (and decoder) in a child process."""
        return "openvino", str(self.path), self.threads, str(self.decoder.path) if self.decoder else "", self.precision

    def describe(self) -> dict:
        import openvino as ov

        return {"runtime": self.name, "file": str(self.path), "decoder": "openvino" if self.decoder else "torch",
                "threads": self.threads, "precision": self.precision, "openvino": ov.get_version()}


def _openvino_cpu(backbone: Backbone) -> str | None:
    if importlib.util.find_spec("openvino") is None:
        return "the openvino package is not installed (pip install openvino)"
    return None if backbone.device.type == "cpu" else "the OpenVINO runtime here runs on CPU (use bf16/fp16 on GPU)"


def _openvino_cpu_bf16(backbone: Backbone) -> str | None:
    reason = _openvino_cpu(backbone)
    if reason is None and not native_bf16():
        reason = "this CPU has no native bf16 units (AMX or AVX-512 BF16); emulated bf16 is slower than f32"
    return reason


def _compiled(name: str, precision: str, backbone: Backbone, cache_dir: str | Path | None) -> OpenVinoRuntime:
    """The encoder and decoder exports, both compiled at ``precision``."""
    return OpenVinoRuntime(name, export_fp32(backbone, cache_dir),
                           decoder=OpenVinoDecoder(export_decoder(backbone, cache_dir), precision=precision),
                           precision=precision)


@register_runtime("openvino", _openvino_cpu, "OpenVINO CPU, f32, compiled from the ONNX exports (encoder and decoder)")
def build_openvino(backbone: Backbone, cache_dir: str | Path | None = None) -> OpenVinoRuntime:
    return _compiled("openvino", "f32", backbone, cache_dir)


@register_runtime("openvino_bf16", _openvino_cpu_bf16,
                  "OpenVINO CPU, bf16 (CPUs with native bf16 only), compiled from the ONNX exports (encoder and "
                  "decoder)",
                  not_for_auto="its segmentation passes the Dice gate, but its embedding moves the text proposer's "
                               "presence: more lesions answered on lesion-free images (BUS-UCLM 17.5 -> 23.8 %, "
                               "lgg-mri tumour-free slices left empty 91.6 -> 88.6 %, session 16); ask for it")
def build_openvino_bf16(backbone: Backbone, cache_dir: str | Path | None = None) -> OpenVinoRuntime:
    return _compiled("openvino_bf16", "bf16", backbone, cache_dir)
