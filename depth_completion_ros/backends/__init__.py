"""Completion engines behind one interface; :func:`make_backend` builds one by name."""

from __future__ import annotations

import logging

from depth_completion_ros.backends.base import (
    DEVICES,
    PRECISIONS,
    RUNTIMES,
    BackendError,
    DepthCompletionBackend,
    require_choice,
)
from depth_completion_ros.networks.registry import DATASETS, MODELS
from depth_completion_ros.support import SupportConfig

log = logging.getLogger(__name__)

#: values accepted by the node's ``model`` parameter: the classical fill and every registry network
MODEL_NAMES = ("classical", *MODELS)


def make_backend(
    model: str = "classical",
    checkpoint: str = "",
    device: str = "auto",
    precision: str = "fp32",
    dataset: str = "kitti",
    compile: bool = False,
    max_depth: float = 100.0,
    network_input: str = "auto",
    network_focal: float = 0.0,
    support: SupportConfig | None = SupportConfig(),
    runtime: str = "torch",
) -> DepthCompletionBackend:
    """Build the backend the user asked for, or raise BackendError saying why not (a network's
    device, precision and dataset are checked by the network backend itself). ``support``:
    where the pipeline publishes (the network covers at least those rows). ``runtime``: what
    runs a network, PyTorch (``checkpoint`` = weights) or ONNX Runtime (``checkpoint`` = an
    ``export_model`` .onnx file); the classical fill ignores it."""
    require_choice("model", model, MODEL_NAMES)
    require_choice("runtime", runtime, RUNTIMES)
    if model == "classical":
        from depth_completion_ros.backends.classical import ClassicalBackend

        return ClassicalBackend(max_depth=max_depth)
    network = {
        "model": model,
        "checkpoint": checkpoint,
        "device": device,
        "precision": precision,
        "dataset": dataset,
        "input_mode": network_input,
        "input_focal": network_focal,
        "support": support,
    }
    if runtime == "onnxruntime":
        try:
            from depth_completion_ros.backends.onnx import OnnxBackend
        except ImportError as exc:  # torch missing (the shared pre/post-processing uses it)
            raise BackendError(f"runtime 'onnxruntime' needs PyTorch too ({exc})") from exc
        if compile:
            log.warning("compile:=true has no effect with runtime:=onnxruntime")
        return OnnxBackend(**network)
    try:
        from depth_completion_ros.backends.network import NetworkBackend
    except ImportError as exc:  # torch missing on this machine
        raise BackendError(
            f"model {model!r} needs PyTorch ({exc}); install torch or use model:=classical"
        ) from exc
    return NetworkBackend(**network, compile=compile)


__all__ = [
    "DATASETS",
    "DEVICES",
    "MODEL_NAMES",
    "PRECISIONS",
    "RUNTIMES",
    "BackendError",
    "DepthCompletionBackend",
    "make_backend",
]
