"""Torch network backend: a registry model plus the pre- and post-processing its weights expect.

One frame goes: image + sparse depth + K -> (resize to the weights' focal length, or the
camera's own pixels) -> the window the LiDAR supports (rows from a little above its top return
down to the bottom, every column; KITTI-sized frames: the release's bottom 352 x centred 1216
crop plus edge tiles) -> centred padding to the network's size multiple -> normalisation ->
network -> the inverse geometry -> dense depth at the input size, 0 above the window.
K follows every step, because BP-Net uses it and a wrong K silently bends its output.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from depth_completion_ros.backends.base import (
    DEVICES,
    PRECISIONS,
    BackendError,
    DepthCompletionBackend,
    require_choice,
)
from depth_completion_ros.networks.checkpoints import CheckpointError, load_checkpoint
from depth_completion_ros.networks.registry import (
    DATASETS,
    NETWORK_INPUTS,
    InputSpec,
    ModelSpec,
    get_model_spec,
)
from depth_completion_ros.support import SupportConfig, support_rows

log = logging.getLogger(__name__)

#: autocast dtype of each precision name (fp32 runs without autocast)
AUTOCAST_DTYPES = dict(zip(PRECISIONS, (torch.float32, torch.float16, torch.bfloat16), strict=True))


# ---------------------------------------------------------------------------------------------
# Geometry: which part of the image the network sees, and at what size
# ---------------------------------------------------------------------------------------------


#: rows of context (network pixels) the window keeps above the LiDAR support's top row
CONTEXT_ROWS = 16


@dataclass(frozen=True)
class FrameGeometry:
    """How an input of size (height, width) maps to the network input and back.

    Steps: scale by (sy, sx) to (rh, rw); crop rows y0:y0+ch, columns x0:x0+cw; pad
    (top, bottom, left, right) with zeros to (nh, nw). ``tiles``: edge tiles that complete the
    columns the window leaves out (only on frames of the weights' trained crop, see
    :func:`plan_geometry`), each ``(start, keep_from, keep_to)`` in resized columns: the tile
    covers columns start:start+tile_width of the window's rows, and its output is used for
    columns keep_from:keep_to.
    """

    height: int
    width: int
    rh: int
    rw: int
    y0: int
    x0: int
    ch: int
    cw: int
    top: int
    bottom: int
    left: int
    right: int
    tiles: tuple[tuple[int, int, int], ...] = ()
    tile_width: int = 0

    @property
    def sy(self) -> float:
        return self.rh / self.height

    @property
    def sx(self) -> float:
        return self.rw / self.width

    @property
    def resized(self) -> bool:
        return (self.rh, self.rw) != (self.height, self.width)

    @property
    def net_size(self) -> tuple[int, int]:
        return self.ch + self.top + self.bottom, self.cw + self.left + self.right

    @property
    def columns(self) -> tuple[int, int]:
        """The resized columns that get the network's output (window and tiles together)."""
        lo = min([self.x0, *(t[1] for t in self.tiles)])
        hi = max([self.x0 + self.cw, *(t[2] for t in self.tiles)])
        return lo, hi


def plan_geometry(
    height: int, width: int, spec: InputSpec, top_row: int = 0, scale: float = 1.0
) -> FrameGeometry:
    """The window the network sees for one frame.

    ``top_row``: the first input row that must get an estimate (the LiDAR support's top);
    ``scale``: the resize factor (1 = the camera's own pixels). The window is bottom-anchored
    and spans every column; its height is the smallest multiple of ``size_multiple`` that
    reaches ``CONTEXT_ROWS`` above ``top_row`` and is at least the trained crop's height (the
    context the weights were evaluated with, and a window that keeps its shape from frame to
    frame while the support stays below it). Image rows fill it where the image has them;
    otherwise the whole image is padded (centred) to the multiple, as are columns.

    Frames of the trained crop's size class (KITTI's 1224-1242 x 370-376: height >= 352,
    width rounded down to 32 == 1216, support within the bottom 352 rows) get exactly that
    crop, so the released weights run as they were evaluated, plus two edge tiles one
    multiple wide for the few columns left of and right of it.
    """
    rh, rw = height, width
    if abs(scale - 1.0) > 1e-9:
        rh, rw = max(1, round(height * scale)), max(1, round(width * scale))
    m = max(1, spec.size_multiple)
    # the first resized row whose centre reaches the input row top_row, less the context
    first = math.floor((min(max(top_row, 0), height) + 0.5) * rh / height - 0.5) - CONTEXT_ROWS
    need = rh - max(first, 0)
    crop = spec.crop
    if crop is not None and rh >= crop[0] and rw // m * m == crop[1] and need <= crop[0]:
        ch, cw = crop
        y0, x0 = rh - ch, (rw - cw) // 2
        tiles = []
        if x0 > 0:
            tiles.append((0, 0, x0))
        if x0 + cw < rw:
            tiles.append((rw - m, x0 + cw, rw))
        return FrameGeometry(
            height, width, rh, rw, y0, x0, ch, cw, 0, 0, 0, 0, tuple(tiles), m if tiles else 0
        )
    want = math.ceil(max(need, crop[0] if crop else 0, 1) / m) * m
    ch = want if want <= rh else rh
    cw = rw
    nh, nw = math.ceil(ch / m) * m, math.ceil(cw / m) * m
    top, left = (nh - ch) // 2, (nw - cw) // 2
    return FrameGeometry(
        height, width, rh, rw, rh - ch, 0, ch, cw, top, nh - ch - top, left, nw - cw - left
    )


def adjust_intrinsics(K: np.ndarray, g: FrameGeometry, tile: int | None = None) -> np.ndarray:
    """K of the network input: scaled with the resize, shifted by the crop and the padding
    (``tile``: of the edge tile starting at that resized column instead)."""
    K2 = np.array(K, dtype=np.float64, copy=True)
    if g.resized:
        # Pixel centres scale about the image corner: c' = (c + 0.5) * s - 0.5.
        K2[0, 0] *= g.sx
        K2[0, 1] *= g.sx
        K2[1, 1] *= g.sy
        K2[0, 2] = (K2[0, 2] + 0.5) * g.sx - 0.5
        K2[1, 2] = (K2[1, 2] + 0.5) * g.sy - 0.5
    K2[0, 2] += -tile if tile is not None else g.left - g.x0
    K2[1, 2] += g.top - g.y0
    return K2


def resize_sparse(sparse: torch.Tensor, rh: int, rw: int) -> torch.Tensor:
    """Re-project sparse depth (H x W) onto an rh x rw grid; the nearest return wins a pixel.

    Interpolating a sparse map would average depths with empty pixels; moving each return to
    the pixel its centre falls in keeps every value a real measurement.
    """
    h, w = sparse.shape
    v, u = torch.nonzero(sparse > 0, as_tuple=True)
    d = sparse[v, u]
    rv = ((v.to(torch.float64) + 0.5) * (rh / h)).floor().long().clamp_(0, rh - 1)
    ru = ((u.to(torch.float64) + 0.5) * (rw / w)).floor().long().clamp_(0, rw - 1)
    out = torch.full((rh * rw,), float("inf"), dtype=sparse.dtype, device=sparse.device)
    out.scatter_reduce_(0, rv * rw + ru, d, reduce="amin", include_self=True)
    return torch.where(torch.isinf(out), torch.zeros_like(out), out).view(rh, rw)


# ---------------------------------------------------------------------------------------------
# Inference-time model preparation
# ---------------------------------------------------------------------------------------------


def _fuse(conv: nn.Module, bn: nn.BatchNorm2d) -> nn.Module:
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    return fuse_conv_bn_eval(conv, bn, transpose=isinstance(conv, nn.ConvTranspose2d))


def fold_batchnorm(model: nn.Module) -> int:
    """Fold eval-mode BatchNorm into the conv right before it; returns how many were folded.

    Pairs: adjacent (conv, BN) in an ``nn.Sequential``, and the attribute pairs a module
    declares in ``CONV_BN_PAIRS`` (modules whose forward runs ``bn(conv(x))``). Code that reads
    a folded conv's weight directly must add its bias (BP-Net's propagation does). Saves a full
    pass over every feature map, and a kernel launch, per BN at inference; the weights in the
    file are untouched.
    """
    convs = (nn.Conv2d, nn.ConvTranspose2d)
    folded = 0
    for module in list(model.modules()):
        if isinstance(module, nn.Sequential):
            for i in range(len(module) - 1):
                a, b = module[i], module[i + 1]
                if isinstance(a, convs) and isinstance(b, nn.BatchNorm2d):
                    module[i], module[i + 1] = _fuse(a, b), nn.Identity()
                    folded += 1
        for conv_name, bn_name in getattr(module, "CONV_BN_PAIRS", ()):
            conv, bn = getattr(module, conv_name), getattr(module, bn_name)
            if isinstance(conv, convs) and isinstance(bn, nn.BatchNorm2d):
                setattr(module, conv_name, _fuse(conv, bn))
                setattr(module, bn_name, nn.Identity())
                folded += 1
    return folded


#: NLSPN training arguments (stored in its release under 'args') that change the network's
#: behaviour without changing its weights' shapes, and where the model keeps them. Not
#: 'preserve_input' and 'legacy': the authors switch those on at evaluation only, so the
#: training args of the released weights say nothing about how to run them.
_NLSPN_ARGS = {"prop_time": "prop_time", "conf_prop": "conf_prop"}


def training_settings_mismatch(metadata: dict, net: nn.Module) -> list[str]:
    """Settings recorded in a checkpoint's training args that the built model does not share.

    The key check cannot see these (same shapes), yet e.g. 6 instead of 18 propagation steps
    changes every output; the caller warns so the user can fix the registry settings.
    """
    args = metadata.get("args")
    prop = getattr(net, "prop_layer", None)
    if not isinstance(args, dict) or prop is None:
        return []
    problems = []
    for arg, attr in _NLSPN_ARGS.items():
        if arg in args and getattr(prop, attr) != args[arg]:
            problems.append(
                f"trained with {arg}={args[arg]!r} but the model uses {getattr(prop, attr)!r}"
            )
    if "affinity" in args and args["affinity"] != "TGASS":
        problems.append(f"trained with affinity {args['affinity']!r}; only TGASS is implemented")
    return problems


def resolve_device(device: str, strict: bool = False) -> torch.device:
    """'auto' -> CUDA when present. 'cuda' without CUDA -> the CPU with a warning (a node that
    keeps running slowly beats one that does not start) or, with ``strict`` (training, where
    days on the wrong device are worse than no start), a BackendError."""
    if not device.startswith("cuda:"):
        require_choice("device", device, DEVICES)
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        build = f"torch {torch.__version__}, {'CUDA' if torch.version.cuda else 'CPU-only'} build"
        if strict:
            raise BackendError(f"device {device!r} requested but CUDA is not available ({build})")
        log.warning(
            "device %r requested but CUDA is not available (%s): running on the CPU, which is "
            "much slower; install a CUDA build of torch or set device:=cpu",
            device,
            build,
        )
        return torch.device("cpu")
    return torch.device(device)


# ---------------------------------------------------------------------------------------------
# The backend
# ---------------------------------------------------------------------------------------------


class NetworkBackend(DepthCompletionBackend):
    """A registry network ('bpnet', 'selfdc', 'selfdc_r18') behind ``complete``.

    The checkpoint is required: a network with random weights publishes plausible-looking
    garbage. ``allow_random_weights=True`` exists for tests and benchmarks only.
    """

    def __init__(
        self,
        model: str = "selfdc",
        checkpoint: str | Path | None = None,
        device: str = "auto",
        precision: str = "fp32",
        dataset: str = "kitti",
        compile: bool = False,
        *,
        allow_random_weights: bool = False,
        channels_last: bool | None = None,
        fuse_batchnorm: bool = True,
        net: nn.Module | None = None,
        input_mode: str = "auto",
        input_focal: float = 0.0,
        support: SupportConfig | None = SupportConfig(),
    ) -> None:
        self._set_network(model, dataset, precision, input_mode, input_focal, support)
        self.device = resolve_device(device)
        self.precision = self._check_precision(precision)
        self.checkpoint = Path(checkpoint).expanduser() if checkpoint else None
        if self.checkpoint is None and net is None and not allow_random_weights:
            released = ", ".join(self.spec.released) or "none yet: train one with training/"
            raise BackendError(
                f"model {model!r} needs a checkpoint (parameter 'checkpoint': path to a .pth or "
                f".safetensors file; released weights: {released}). Without one the network "
                "has random weights and would publish garbage; use model:=classical for a "
                "network-free fill."
            )

        self.weights_label = (
            str(self.checkpoint)
            if self.checkpoint
            else "in-memory (training)"
            if net is not None
            else "RANDOM weights (test only)"
        )
        if net is not None:
            # In-memory weights (evaluation during training): a copy, since BN folding and the
            # device/layout changes below must not touch the caller's model.
            net = copy.deepcopy(net).float()
        elif self.checkpoint is not None:
            net = self._load(self.checkpoint)
        else:
            net = self._build()
            log.warning("model %s runs with RANDOM weights (allow_random_weights=True)", model)
        net.eval().requires_grad_(False)
        self.folded = fold_batchnorm(net) if fuse_batchnorm else 0
        # NHWC lets oneDNN (CPU) and cuDNN (tensor cores) pick their fast kernels: on 2 CPU
        # cores it cut the CPU time of selfdc_r18 by a quarter.
        self.channels_last = True if channels_last is None else channels_last
        net = net.to(self.device)
        if self.channels_last:
            net = net.to(memory_format=torch.channels_last)
        self.net: nn.Module = net
        self._forward = self._compile(net) if compile else net
        self.compiled = compile
        self._init_frame_io()

    def _set_network(
        self,
        model: str,
        dataset: str,
        precision: str,
        input_mode: str,
        input_focal: float,
        support: SupportConfig | None,
    ) -> None:
        """The model's spec and input conventions, checked (shared with the ONNX backend,
        whose pre/post-processing is this one's)."""
        try:
            self.spec: ModelSpec = get_model_spec(model)
        except KeyError as e:
            raise BackendError(str(e.args[0])) from None
        require_choice("dataset", dataset, DATASETS)
        require_choice("precision", precision, PRECISIONS)
        require_choice("network_input", input_mode, NETWORK_INPUTS)
        if not (math.isfinite(input_focal) and input_focal >= 0):
            raise BackendError(f"network_focal must be 0 (the weights') or > 0, got {input_focal}")
        self.name = model
        self.dataset = dataset
        self.input_spec = self.spec.input_spec(dataset)
        #: 'native' (the camera's pixels) or 'resize' (scaled so fx becomes input_focal)
        self.input_mode = self.input_spec.default_input if input_mode == "auto" else input_mode
        self.input_focal = float(input_focal) or self.input_spec.focal
        #: how the LiDAR support's top row is found (None: the network sees every row)
        self.support = support

    def _init_frame_io(self) -> None:
        """State of the shared pre/post-processing (normalisation, plans, upload buffers): set
        by every engine that runs through :meth:`prepare_all` / :meth:`restore` (this one and
        ``backends.onnx.OnnxBackend``), from ``input_spec`` and ``device``."""
        s = self.input_spec
        scale = s.input_range / 255.0
        std = torch.tensor(s.std, dtype=torch.float32)
        # (x * range / 255 - mean) / std == x * a + b, one fused pass on the device.
        self._norm_a = (scale / std).view(1, 3, 1, 1).to(self.device)
        self._norm_b = (-torch.tensor(s.mean) / std).view(1, 3, 1, 1).to(self.device)
        self._plans: dict[tuple[int, int], FrameGeometry] = {}  # the last plan per size, to log
        self._host: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}
        self.last_timing: dict[str, float] = {}

    # -- construction helpers -----------------------------------------------------------------

    def _check_precision(self, precision: str) -> str:
        if precision == "fp16" and self.device.type == "cpu":
            log.warning(
                "fp16 is not supported well on the CPU (slow, some ops missing): using fp32"
            )
            return "fp32"
        if (
            precision == "bf16"
            and self.device.type == "cuda"
            and not torch.cuda.is_bf16_supported()
        ):
            raise BackendError(
                f"precision 'bf16' is not supported by {torch.cuda.get_device_name(self.device)}; "
                "use 'fp16' or 'fp32'"
            )
        return precision

    def _build(self) -> nn.Module:
        try:
            return self.spec.build(self.dataset)
        except ImportError as e:
            raise BackendError(f"model {self.name!r} is not available in this install: {e}") from e

    def _load(self, path: Path) -> nn.Module:
        """The model with the file's weights, built on the meta device so that no random
        initialisation runs (seconds for BP-Net's 90 M parameters on a CPU)."""
        with torch.device("meta"):
            net = self._build()
        try:
            ckpt = load_checkpoint(net, path, model_name=self.name, assign=True)
        except CheckpointError as e:
            raise BackendError(str(e)) from e
        if any(t.is_meta for t in (*net.parameters(), *net.buffers())):
            # Tensors outside the state_dict (non-persistent buffers): build for real.
            net = self._build()
            load_checkpoint(net, path, model_name=self.name)
        net = net.float()  # a half-precision file still runs in the precision asked for
        for problem in training_settings_mismatch(ckpt.metadata, net):
            log.warning("checkpoint %s: %s", path, problem)
        return net

    def _compile(self, net: nn.Module):
        try:
            return torch.compile(net, dynamic=False)
        except Exception as e:  # no compiler toolchain, unsupported platform
            log.warning("torch.compile failed (%s); running eagerly", e)
            return net

    def describe(self) -> str:
        weights = self.weights_label
        extra = ", compiled" if self.compiled else ""
        scale = (
            f"resized to fx {self.input_focal:g} px" if self.input_mode == "resize" else "native"
        )
        return (
            f"network {self.name} ({self.dataset} settings, {scale} input) on {self.device} "
            f"{self.precision}{extra}, weights {weights}"
        )

    # -- per-frame ----------------------------------------------------------------------------

    @staticmethod
    def _validate(rgb: np.ndarray, sparse: np.ndarray, K: np.ndarray) -> None:
        if not (isinstance(rgb, np.ndarray) and rgb.ndim == 3 and rgb.shape[2] == 3):
            shape = getattr(rgb, "shape", type(rgb).__name__)
            raise BackendError(f"rgb must be an H x W x 3 array, got {shape}")
        if rgb.dtype != np.uint8:
            raise BackendError(
                f"rgb must be uint8 (0-255), got {rgb.dtype}; convert with "
                "np.clip(img * 255, 0, 255).astype(np.uint8) for 0-1 images"
            )
        if not isinstance(sparse, np.ndarray) or sparse.shape != rgb.shape[:2]:
            shape = getattr(sparse, "shape", type(sparse).__name__)
            raise BackendError(
                f"sparse depth must be H x W like the image {rgb.shape[:2]}, got {shape}; "
                "project the points with the image's own K"
            )
        K = np.asarray(K)
        if K.shape != (3, 3) or not np.all(np.isfinite(K)) or K[0, 0] <= 0 or K[1, 1] <= 0:
            raise BackendError(
                f"K must be a finite 3 x 3 intrinsics matrix with fx, fy > 0, got {K!r}"
            )
        if rgb.shape[0] < 8 or rgb.shape[1] < 8:
            raise BackendError(f"image {rgb.shape[:2]} is too small for a network (need >= 8 x 8)")

    def scale(self, K: np.ndarray) -> float:
        """The resize factor for a camera with intrinsics K (1 with native input)."""
        return 1.0 if self.input_mode == "native" else self.input_focal / float(K[0, 0])

    def top_row(self, sparse: np.ndarray) -> int:
        """The first row the network must cover: the LiDAR support's top (0 without support)."""
        if self.support is None:
            return 0
        return int(support_rows(sparse, self.support)[0].min())

    def plan(self, height: int, width: int, top_row: int = 0, scale: float = 1.0) -> FrameGeometry:
        g = plan_geometry(height, width, self.input_spec, top_row, scale)
        if self._plans.get((height, width)) != g:
            self._plans[(height, width)] = g
            log.info("network input plan for %dx%d: %s", height, width, g)
        return g

    def _upload(self, rgb: np.ndarray, sparse: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Frame to the device; on CUDA through pinned buffers reused frame after frame."""
        if self.device.type == "cpu":
            # Views such as bgr[:, :, ::-1] have negative strides, which torch cannot wrap.
            rgb, sparse = np.ascontiguousarray(rgb), np.ascontiguousarray(sparse)
            return torch.from_numpy(rgb), torch.from_numpy(sparse)
        key = rgb.shape[:2]
        if key not in self._host:
            self._host[key] = (
                torch.empty(rgb.shape, dtype=torch.uint8).pin_memory(),
                torch.empty(sparse.shape, dtype=torch.float32).pin_memory(),
            )
        h_rgb, h_sparse = self._host[key]
        h_rgb.numpy()[...] = rgb
        h_sparse.numpy()[...] = sparse
        return (
            h_rgb.to(self.device, non_blocking=True),
            h_sparse.to(self.device, non_blocking=True),
        )

    def prepare(
        self, rgb: np.ndarray, sparse: np.ndarray, K: np.ndarray
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, FrameGeometry]:
        """Network inputs of the window (image, sparse in network units, K), each with a batch
        dimension, and the plan (its edge tiles: :meth:`prepare_all`)."""
        window, _, g = self.prepare_all(rgb, sparse, K)
        return (*window, g)

    def prepare_all(self, rgb: np.ndarray, sparse: np.ndarray, K: np.ndarray) -> tuple:
        """((image, sparse, K) of the window, (image, sparse, K) of the edge tiles batched, or
        None, plan)."""
        g = self.plan(*sparse.shape, self.top_row(sparse), self.scale(K))
        t_rgb, t_sparse = self._upload(rgb, sparse)
        image = t_rgb.permute(2, 0, 1).unsqueeze(0)
        if g.resized:
            image = F.interpolate(image.float(), size=(g.rh, g.rw), mode="bilinear", antialias=True)
            t_sparse = resize_sparse(t_sparse, g.rh, g.rw)
        rows = slice(g.y0, g.y0 + g.ch)
        window = self._inputs(
            image[:, :, rows, g.x0 : g.x0 + g.cw], t_sparse[rows, g.x0 : g.x0 + g.cw]
        )
        pad = (g.left, g.right, g.top, g.bottom)
        if any(pad):
            # Zero after normalisation: padded pixels look like the mean colour, no depth.
            window = F.pad(window[0], pad), F.pad(window[1], pad)
        window = (*map(self._layout, window), self._intrinsics(K, g, None))
        tiles = None
        if g.tiles:
            parts = [
                self._inputs(
                    image[:, :, rows, x : x + g.tile_width], t_sparse[rows, x : x + g.tile_width]
                )
                for x, _, _ in g.tiles
            ]
            tiles = (
                self._layout(torch.cat([p[0] for p in parts])),
                self._layout(torch.cat([p[1] for p in parts])),
                torch.cat([self._intrinsics(K, g, x) for x, _, _ in g.tiles]),
            )
        return window, tiles, g

    def _inputs(
        self, image: torch.Tensor, sparse: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A window's RGB (1 x 3 x h x w, 0-255) and sparse depth (h x w, metres) -> network
        inputs (normalised; network units)."""
        image = image.float() * self._norm_a + self._norm_b
        dep = sparse.reshape(1, 1, *sparse.shape) * self.input_spec.depth_scale
        return image, dep

    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def _intrinsics(self, K: np.ndarray, g: FrameGeometry, tile: int | None) -> torch.Tensor:
        return torch.from_numpy(adjust_intrinsics(K, g, tile)).float().unsqueeze(0).to(self.device)

    def restore(
        self, pred: torch.Tensor, g: FrameGeometry, tiles: torch.Tensor | None = None
    ) -> np.ndarray:
        """Network output (1 x 1 x nh x nw, network units; ``tiles``: the edge tiles' outputs,
        T x 1 x ch x tile_width) -> H x W metres, 0 where the network saw nothing."""
        return self._to_image(pred, g, tiles, self.input_spec.depth_scale, None)

    def restore_confidence(
        self, conf: torch.Tensor, g: FrameGeometry, tiles: torch.Tensor | None = None
    ) -> np.ndarray:
        """A confidence map of the network input (shaped like :meth:`restore`'s ``pred``) ->
        H x W, 0-1, through exactly the depth's way back (crop, tiles, resampling), so it
        covers the same pixels; 0 where the network saw nothing."""
        return self._to_image(conf, g, tiles, 1.0, 1.0)

    def _to_image(
        self,
        pred: torch.Tensor,
        g: FrameGeometry,
        tiles: torch.Tensor | None,
        divide: float,
        upper: float | None,
    ) -> np.ndarray:
        """:meth:`restore` for any map: divided by ``divide``, clamped to [0, ``upper``]."""
        pred = pred.float()[0, 0, g.top : g.top + g.ch, g.left : g.left + g.cw]
        c0, c1 = g.columns
        if g.tiles:
            # One canvas over the resized columns c0:c1: the window, then each tile's strip.
            canvas = pred.new_zeros((g.ch, c1 - c0))
            canvas[:, g.x0 - c0 : g.x0 - c0 + g.cw] = pred
            for i, (x, lo, hi) in enumerate(g.tiles):
                canvas[:, lo - c0 : hi - c0] = tiles[i, 0, :, lo - x : hi - x].float()
            pred = canvas
        pred = pred / divide
        pred = torch.where(
            torch.isfinite(pred), pred.clamp(min=0, max=upper), torch.zeros_like(pred)
        )
        out = torch.zeros((g.height, g.width), dtype=torch.float32, device=pred.device)
        if not g.resized:
            out[g.y0 : g.y0 + g.ch, c0:c1] = pred
            return out.cpu().numpy()
        # Sample the window's prediction at every input pixel centre that falls inside it.
        dev, cw = pred.device, c1 - c0
        vr = (torch.arange(g.height, device=dev) + 0.5) * g.sy - 0.5 - g.y0
        ur = (torch.arange(g.width, device=dev) + 0.5) * g.sx - 0.5 - c0
        rows = (vr >= -0.5) & (vr <= g.ch - 0.5)
        cols = (ur >= -0.5) & (ur <= cw - 0.5)
        gy = vr[rows].clamp(0, g.ch - 1) * (2.0 / max(g.ch - 1, 1)) - 1.0
        gx = ur[cols].clamp(0, cw - 1) * (2.0 / max(cw - 1, 1)) - 1.0
        grid = torch.stack(torch.meshgrid(gx, gy, indexing="xy"), dim=-1).unsqueeze(0)
        sampled = F.grid_sample(pred[None, None], grid.float(), align_corners=True)[0, 0]
        r_idx, c_idx = torch.nonzero(rows).squeeze(1), torch.nonzero(cols).squeeze(1)
        out[r_idx[:, None], c_idx[None, :]] = sampled
        return out.cpu().numpy()

    @contextlib.contextmanager
    def _tile_threads(self):
        """One CPU thread for the edge tiles: 2 x 352 x 32 pixels are too few to split, and on
        2 busy cores the split cost 3-20x the work (tiles 0.2-1.5 s with 2 threads, 60-90 ms
        with one, against 2.9 s for the window); no effect on a GPU."""
        threads = torch.get_num_threads()
        if self.device.type != "cpu" or threads == 1:
            yield
            return
        torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(threads)

    def _run(self, image: torch.Tensor, dep: torch.Tensor, k_net: torch.Tensor) -> torch.Tensor:
        try:
            return self.spec.predict(self._forward, image, dep, k_net)
        except Exception as e:
            if self._forward is self.net:
                raise
            # torch.compile compiles on the first call: fall back to eager if that fails.
            log.warning("compiled network failed (%s: %s); running eagerly", type(e).__name__, e)
            self._forward, self.compiled = self.net, False
            return self.spec.predict(self._forward, image, dep, k_net)

    @property
    def has_confidence(self) -> bool:
        """The network has a confidence head (NLSPN / SelfDC; not BP-Net, not an ONNX
        export, whose graph returns depth only)."""
        return bool(getattr(self.net, "provides_confidence", False))

    def _run_confidence(
        self, image: torch.Tensor, dep: torch.Tensor, k_net: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Depth and the confidence head's output (both B x 1 x H x W, network input)."""
        try:
            depth, aux = self._forward(image, dep, return_aux=True)
        except Exception as e:
            if self._forward is self.net:
                raise
            log.warning("compiled network failed (%s: %s); running eagerly", type(e).__name__, e)
            self._forward, self.compiled = self.net, False
            depth, aux = self._forward(image, dep, return_aux=True)
        return depth, aux["confidence"]

    def complete(self, rgb: np.ndarray, sparse: np.ndarray, K: np.ndarray) -> np.ndarray:
        return self.complete_batch([(rgb, sparse, K)])[0][0]

    def complete_with_confidence(
        self, rgb: np.ndarray, sparse: np.ndarray, K: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Depth and, for NLSPN / SelfDC, its confidence head mapped back like the depth
        (:meth:`restore_confidence`); None for a network without one (BP-Net, ONNX)."""
        return self.complete_batch([(rgb, sparse, K)], confidence=True)[0]

    def complete_batch(
        self, frames: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]], confidence: bool = False
    ) -> list[tuple[np.ndarray, np.ndarray | None]]:
        """Frames whose windows have the same plan (same size, scale and support's window) go
        through the network as one batch, the others in batches of their own; each result is
        the frame's own window restored, as one frame alone would give it (a batch of one is
        exactly that computation). ``confidence``: the confidence head's map too, where the
        network has one (else None). Sets :attr:`last_batch_sizes`."""
        confidence = confidence and self.has_confidence
        t0 = time.perf_counter()
        results: list = [None] * len(frames)
        with torch.inference_mode():
            prepared = [self._prepare_frame(*frame) for frame in frames]
            groups: dict[FrameGeometry, list[int]] = {}
            for index, (_, _, g) in enumerate(prepared):
                groups.setdefault(g, []).append(index)
            t1 = time.perf_counter()
            sizes = [0] * len(frames)
            for g, members in groups.items():
                outputs = self._run_batch([prepared[i] for i in members], g, confidence)
                for index, output in zip(members, outputs, strict=True):
                    results[index], sizes[index] = output, len(members)
        self.last_batch_sizes = sizes
        t2 = time.perf_counter()
        self.last_timing = {
            "prepare_s": t1 - t0,
            "network_and_restore_s": t2 - t1,
            "frames": len(frames),
            "batches": len(groups),
        }
        return results

    def _prepare_frame(self, rgb: np.ndarray, sparse: np.ndarray, K: np.ndarray) -> tuple:
        """One frame checked, its sparse depth cleaned, and its network inputs (prepare_all)."""
        self._validate(rgb, sparse, K)
        sparse = np.asarray(sparse, dtype=np.float32)
        bad = ~np.isfinite(sparse) | (sparse < 0)
        if bad.any():  # NaN is REP 118's "no data"; negative depth is not a measurement
            sparse = np.where(bad, 0.0, sparse).astype(np.float32)
        return self.prepare_all(rgb, sparse, K)

    def _run_batch(
        self, prepared: list[tuple], g: FrameGeometry, confidence: bool
    ) -> list[tuple[np.ndarray, np.ndarray | None]]:
        """Frames of one plan: windows (and edge tiles) stacked, one forward pass each, every
        frame's part restored."""

        def stacked(parts: list[tuple]) -> tuple:
            if len(parts) == 1:
                return parts[0]
            return tuple(torch.cat(same) for same in zip(*parts, strict=True))

        window = stacked([p[0] for p in prepared])
        tiles = None if prepared[0][1] is None else stacked([p[1] for p in prepared])
        amp = self.precision != "fp32"
        with torch.autocast(self.device.type, dtype=AUTOCAST_DTYPES[self.precision], enabled=amp):
            run = self._run_confidence if confidence else self._run
            pred = run(*window)
            edges = None
            if tiles is not None:
                with self._tile_threads():
                    edges = run(*tiles)
        conf = conf_edges = None
        if confidence:
            pred, conf = pred
            if edges is not None:
                edges, conf_edges = edges
        per_frame = len(g.tiles)
        out = []
        for b in range(len(prepared)):
            own = slice(b * per_frame, (b + 1) * per_frame)
            depth = self.restore(pred[b : b + 1], g, None if edges is None else edges[own])
            frame_conf = None
            if conf is not None:
                tile_conf = None if conf_edges is None else conf_edges[own]
                frame_conf = self.restore_confidence(conf[b : b + 1], g, tile_conf)
            out.append((depth, frame_conf))
        return out
