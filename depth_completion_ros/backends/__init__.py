"""Completion engines behind one interface; :func:`make_backend` builds one by name."""

from __future__ import annotations

from depth_completion_ros.backends.base import (
    DEVICES,
    PRECISIONS,
    BackendError,
    DepthCompletionBackend,
    require_choice,
)
from depth_completion_ros.networks.registry import DATASETS, MODELS
from depth_completion_ros.support import SupportConfig

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
) -> DepthCompletionBackend:
    """Build the backend the user asked for, or raise BackendError saying why not (a network's
    device, precision and dataset are checked by the network backend itself). ``support``:
    where the pipeline publishes (the network covers at least those rows)."""
    require_choice("model", model, MODEL_NAMES)
    if model == "classical":
        from depth_completion_ros.backends.classical import ClassicalBackend

        return ClassicalBackend(max_depth=max_depth)
    try:
        from depth_completion_ros.backends.network import NetworkBackend
    except ImportError as exc:  # torch missing on this machine
        raise BackendError(
            f"model {model!r} needs PyTorch ({exc}); install torch or use model:=classical"
        ) from exc
    return NetworkBackend(
        model=model,
        checkpoint=checkpoint,
        device=device,
        precision=precision,
        dataset=dataset,
        compile=compile,
        input_mode=network_input,
        input_focal=network_focal,
        support=support,
    )


__all__ = [
    "DATASETS",
    "DEVICES",
    "MODEL_NAMES",
    "PRECISIONS",
    "BackendError",
    "DepthCompletionBackend",
    "make_backend",
]
