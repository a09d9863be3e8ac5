"""Encoder runtimes (registry in :mod:`radvlsm.runtimes.registry`): eager, onnx, onnx_int8, openvino, bf16, fp16.

Importing the package registers the built-in runtimes (as timm's ``timm.models`` registers its models): the
registry is a leaf module and the runtime modules import it, never the other way round. ONNX Runtime itself is
imported only when an ONNX runtime is built.
"""

from radvlsm.runtimes import onnx, openvino_runtime, torch_runtimes  # noqa: F401  (registers the built-in runtimes)
from radvlsm.runtimes.registry import (
    DICE_TOLERANCE,
    EncoderRuntime,
    available_runtimes,
    build_runtime,
    choose_auto,
    register_runtime,
)

__all__ = ["DICE_TOLERANCE", "EncoderRuntime", "available_runtimes", "build_runtime", "choose_auto",
           "register_runtime"]
