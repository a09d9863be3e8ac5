"""Encoder runtimes (registry in :mod:`radvlsm.runtimes.registry`): eager, onnx, onnx_int8, bf16, fp16."""

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
