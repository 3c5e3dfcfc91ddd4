"""The one interface every completion engine implements.

The node, the offline tools, the demo and evaluation call ``complete`` (the pipeline calls
``complete_with_confidence`` when ``depth/confidence`` is published); a backend is
chosen by name through :func:`depth_completion_ros.backends.make_backend`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np

#: where a network runs (the node's ``device`` parameter); 'cuda:N' is accepted as well
DEVICES = ("auto", "cpu", "cuda")
#: network precisions (the node's ``precision`` parameter)
PRECISIONS = ("fp32", "fp16", "bf16")
#: what runs a network (the node's ``runtime`` parameter): PyTorch with a weights file, or ONNX
#: Runtime (TensorRT, CUDA or CPU execution provider) with an ``export_model`` .onnx file
RUNTIMES = ("torch", "onnxruntime")


class BackendError(RuntimeError):
    """A backend cannot be built or run; the message says what is wrong and how to fix it."""


def require_choice(what: str, value: str, choices: tuple[str, ...]) -> str:
    """``value`` if it is one of ``choices``, else a BackendError naming them."""
    if value not in choices:
        raise BackendError(f"unknown {what} {value!r}; choose one of {', '.join(choices)}")
    return value


class DepthCompletionBackend(ABC):
    """Sparse metric depth + image -> dense metric depth.

    Conventions (shared by every caller):
      rgb:    H x W x 3 uint8, RGB order.
      sparse: H x W float32 metres along the optical axis, 0 where there is no measurement.
      K:      3 x 3 float64 intrinsics of the rectified image (fx, fy, cx, cy).
      return: H x W float32 metres, 0 where the backend has no estimate.
    """

    #: short name used by the ``model`` parameter and in logs
    name: str = "base"
    #: per frame of the last :meth:`complete_batch`: how many frames shared its forward pass
    last_batch_sizes: list[int] = []

    @abstractmethod
    def complete(self, rgb: np.ndarray, sparse: np.ndarray, K: np.ndarray) -> np.ndarray:
        """Return dense depth for one frame."""

    def complete_with_confidence(
        self, rgb: np.ndarray, sparse: np.ndarray, K: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Dense depth as :meth:`complete` and the method's own confidence (H x W float32,
        0-1, on the same pixels as the depth), or None when the method has none (the pipeline
        then uses :func:`depth_completion_ros.confidence.distance_confidence`). Called only
        when the confidence is asked for, so the depth-only path costs nothing extra."""
        return self.complete(rgb, sparse, K), None

    def complete_batch(
        self, frames: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]], confidence: bool = False
    ) -> list[tuple[np.ndarray, np.ndarray | None]]:
        """Several frames at once ((rgb, sparse, K) each: the cameras of one node), as
        :meth:`complete_with_confidence` (``confidence``) or :meth:`complete` (confidence None)
        gives them one by one. A network runs the frames of one input geometry as one batch;
        this default completes them in turn. Sets :attr:`last_batch_sizes`."""
        self.last_batch_sizes = [1] * len(frames)
        if confidence:
            return [self.complete_with_confidence(*frame) for frame in frames]
        return [(self.complete(*frame), None) for frame in frames]

    def warm_up(self) -> None:
        """Run one small synthetic frame, so the first real frame does not pay for lazy set-up
        (kernels, work buffers, allocator); a lifecycle node does it in ``configure``."""
        rgb = np.zeros((64, 128, 3), np.uint8)
        sparse = np.zeros((64, 128), np.float32)
        sparse[32:, ::4] = 10.0
        K = np.array([[100.0, 0.0, 64.0], [0.0, 100.0, 32.0], [0.0, 0.0, 1.0]], np.float32)
        self.complete(rgb, sparse, K)

    def describe(self) -> str:
        """One line for the start-up log (device, precision, weights)."""
        return self.name
