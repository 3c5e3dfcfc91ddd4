"""ONNX Runtime backend (``runtime:=onnxruntime``): an ``export_model`` file behind ``complete``.

It is a :class:`NetworkBackend` without a torch model: the window/tile plan, resize,
normalisation, depth units, K and the way back to the camera's pixels are the torch backend's own
(``prepare_all`` / ``restore``, run on the CPU), so the two engines differ only in what runs the
network. BP-Net's nearest-valid-pixel search, which the graph cannot hold, runs here before the
session (``export.neighbour_inputs``).

Execution providers follow ``device`` as the torch backend does: ``auto`` takes TensorRT, then
CUDA, where the installed onnxruntime has them (``onnxruntime-gpu``), then the CPU; ``cuda`` or
``cuda:N`` asks for those on GPU N and falls back to the CPU with a warning; ``cpu`` is the CPU
only. ``precision:=fp16`` builds TensorRT engines in FP16 (cached next to the model, or in
``$XDG_CACHE_HOME/depth_completion_ros/trt`` when that folder is read-only); the CUDA and CPU
providers run the fp32 graph (ONNX Runtime has no autocast; bf16 likewise runs fp32).
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from pathlib import Path
from typing import Any

import torch

from depth_completion_ros.backends.base import (
    DEVICES,
    BackendError,
    require_choice,
)
from depth_completion_ros.backends.network import NetworkBackend
from depth_completion_ros.support import SupportConfig

log = logging.getLogger(__name__)

TRT, CUDA, CPU = "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"


def _import_ort():
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise BackendError(
            f"runtime 'onnxruntime' needs the onnx extra ({e}): pip install "
            "'depth_completion_ros[onnx]' (onnxruntime-gpu for CUDA/TensorRT), or runtime:=torch"
        ) from e
    return ort


def _trt_cache_dir(model_path: Path) -> Path:
    """Where TensorRT engines are cached: beside the model, else in the user's cache."""
    beside = model_path.parent / (model_path.name + ".trt")
    try:
        beside.mkdir(exist_ok=True)
        if os.access(beside, os.W_OK):
            return beside
    except OSError:
        pass
    digest = hashlib.sha1(str(model_path.resolve()).encode()).hexdigest()[:12]
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    cache = base / "depth_completion_ros" / "trt" / digest
    cache.mkdir(parents=True, exist_ok=True)
    return cache


def choose_providers(
    device: str, precision: str, model_path: Path, available: list[str]
) -> list[tuple[str, dict[str, Any]]]:
    """Execution providers, fastest first, for ``device`` (the torch backend's rule)."""
    if not device.startswith("cuda:"):
        require_choice("device", device, DEVICES)
    if device == "cpu":
        return [(CPU, {})]
    device_id = int(device.split(":", 1)[1]) if device.startswith("cuda:") else 0
    chosen: list[tuple[str, dict[str, Any]]] = []
    if TRT in available:
        cache = str(_trt_cache_dir(model_path))
        chosen.append(
            (
                TRT,
                {
                    "device_id": device_id,
                    "trt_fp16_enable": precision == "fp16",
                    "trt_engine_cache_enable": True,
                    "trt_engine_cache_path": cache,
                    "trt_timing_cache_enable": True,
                    "trt_timing_cache_path": cache,
                },
            )
        )
    if CUDA in available:
        chosen.append((CUDA, {"device_id": device_id}))
    if not chosen and device.startswith("cuda"):
        log.warning(
            "device %r requested but this onnxruntime has no CUDA/TensorRT provider (it has "
            "%s): running on the CPU; install onnxruntime-gpu or set device:=cpu",
            device,
            ", ".join(available),
        )
    if precision != "fp32" and not (chosen and chosen[0][0] == TRT and precision == "fp16"):
        log.warning(
            "precision %r with ONNX Runtime: only TensorRT builds reduced-precision engines "
            "(fp16); running the fp32 graph",
            precision,
        )
    return [*chosen, (CPU, {})]


class OnnxBackend(NetworkBackend):
    """A registry network exported by ``export_model``, run by ONNX Runtime.

    ``checkpoint`` is the .onnx file; its metadata must name the same model and dataset
    settings, so that the shared pre/post-processing is the one its weights expect.
    """

    def __init__(
        self,
        model: str = "selfdc",
        checkpoint: str | Path | None = None,
        device: str = "auto",
        precision: str = "fp32",
        dataset: str = "kitti",
        *,
        input_mode: str = "auto",
        input_focal: float = 0.0,
        support: SupportConfig | None = SupportConfig(),
        threads: int = 0,
        only: tuple[str, ...] = (),
    ) -> None:
        """``only``: keep just these of the providers ``device`` picks (benchmarks time
        TensorRT and CUDA apart); ``threads``: ONNX Runtime's intra-op threads (0: its own)."""
        ort = _import_ort()
        self._set_network(model, dataset, precision, input_mode, input_focal, support)
        if not checkpoint:
            raise BackendError(
                f"runtime 'onnxruntime' needs checkpoint:= an .onnx file; make one with "
                f"export_model {model} WEIGHTS {model}.onnx"
            )
        path = Path(checkpoint).expanduser()
        if not path.is_file():
            raise BackendError(f"ONNX model '{path}' not found")
        if path.suffix != ".onnx":
            raise BackendError(
                f"runtime 'onnxruntime' runs an .onnx file, got '{path}'; export it first: "
                f"export_model {model} {path} {path.with_suffix('.onnx').name} "
                "(or runtime:=torch for weight files)"
            )
        from depth_completion_ros.export import read_metadata

        meta = read_metadata(path)
        for key, want in (("model", model), ("dataset", dataset)):
            if key in meta and meta[key] != want:
                raise BackendError(
                    f"'{path}' is an export of {key} {meta[key]!r}, but {key}:={want!r}; set "
                    f"{key}:={meta[key]} or export the {want} weights"
                )
        # The shared pre/post-processing runs on the CPU in torch; the session takes numpy.
        self.device = torch.device("cpu")
        self.precision = "fp32"  # no torch autocast around the session
        self.runtime_precision = precision
        self.channels_last = False
        self.compiled = False
        self.checkpoint = path
        self.metadata = meta
        self.weights_label = f"{path} ({meta.get('weights', 'unknown weights')})"
        self.net = None
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        providers = choose_providers(device, precision, path, ort.get_available_providers())
        if only:
            providers = [p for p in providers if p[0] in only] or [(CPU, {})]
        t0 = time.perf_counter()
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as e:
            if len(providers) == 1 or device.startswith("cuda"):
                raise BackendError(f"ONNX Runtime could not load '{path}': {e}") from e
            log.warning("GPU providers failed (%s); ONNX Runtime runs on the CPU", e)
            self.session = ort.InferenceSession(str(path), options, providers=[CPU])
        self.providers = self.session.get_providers()
        self.load_s = time.perf_counter() - t0
        self._input_names = [i.name for i in self.session.get_inputs()]
        self._init_frame_io()

    def describe(self) -> str:
        return (
            f"network {self.name} ({self.dataset} settings) on ONNX Runtime "
            f"[{', '.join(self.providers)}] {self.runtime_precision}, model {self.weights_label}"
        )

    def _run(self, image: torch.Tensor, dep: torch.Tensor, k_net: torch.Tensor) -> torch.Tensor:
        feeds = {"image": image.contiguous().numpy(), "sparse": dep.contiguous().numpy()}
        if self.spec.needs_intrinsics:
            from depth_completion_ros.export import neighbour_inputs

            feeds["K"] = k_net.contiguous().numpy()
            feeds.update(neighbour_inputs(dep))
        feeds = {k: v for k, v in feeds.items() if k in self._input_names}
        try:
            (depth,) = self.session.run(["depth"], feeds)
        except Exception as e:
            if "dimension" in str(e).lower() or "shape" in str(e).lower():
                shapes = {k: v.shape for k, v in feeds.items() if k in ("image", "sparse")}
                raise BackendError(
                    f"'{self.checkpoint}' does not take inputs {shapes} (exported "
                    f"{self.metadata.get('traced_size', '?')}, dynamic "
                    f"{self.metadata.get('dynamic', '?')}): export it without --static "
                    f"({e})"
                ) from e
            raise
        return torch.from_numpy(depth)
