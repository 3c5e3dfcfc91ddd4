"""Completion engines behind one interface; :func:`make_backend` builds one by name."""

from __future__ import annotations

from depth_completion_ros.backends.base import BackendError, DepthCompletionBackend

#: values accepted by the node's ``model`` parameter
MODEL_NAMES = ("classical", "bpnet", "selfdc", "selfdc_r18")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("fp32", "fp16", "bf16")
DATASETS = ("kitti", "nyu")


def make_backend(
    model: str = "classical",
    checkpoint: str = "",
    device: str = "auto",
    precision: str = "fp32",
    dataset: str = "kitti",
    compile: bool = False,
    max_depth: float = 100.0,
) -> DepthCompletionBackend:
    """Build the backend the user asked for, or raise BackendError saying why not."""
    if model not in MODEL_NAMES:
        raise BackendError(f"unknown model {model!r}; choose one of {', '.join(MODEL_NAMES)}")
    if device not in DEVICES:
        raise BackendError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
    if precision not in PRECISIONS:
        raise BackendError(
            f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}"
        )
    if dataset not in DATASETS:
        raise BackendError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
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
    )


__all__ = ["BackendError", "DepthCompletionBackend", "make_backend", "MODEL_NAMES"]
