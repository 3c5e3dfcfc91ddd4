"""Export the networks to ONNX, for ONNX Runtime and TensorRT (``runtime:=onnxruntime``).

What the graph holds: the network from its normalised inputs to the final depth map (B x 1 x
H x W, network units), with the weights of any checkpoint the node loads (loaded, and their
BatchNorms folded, by :class:`~depth_completion_ros.backends.network.NetworkBackend`). What it
does not hold, and the caller computes (``backends.onnx.OnnxBackend`` does, through the same
code as the torch backend):

* the pre- and post-processing: window/tiles, resize, colour normalisation, depth units, K
  following the window, the way back to the camera's pixels (``NetworkBackend.prepare_all`` /
  ``restore``);
* BP-Net's nearest-valid-pixel search (``networks.sparse_ops.nearest_valid_pixels``): which
  pixels are nearest depends on where the LiDAR returns fall, a data-dependent search that no
  ONNX op expresses. Its results enter as 12 extra inputs, for levels l = 0..5 (H_l = H / 2^l):
  ``offsets_l`` (B x 2 x 4 x H_l x W_l float32, neighbour minus pixel, x then y) and
  ``indices_l`` (B x 4 x H_l x W_l int64, flat index y * W_l + x), from
  :func:`~depth_completion_ros.networks.bpnet.precompute_neighbours` (the masks per level
  depend on the sparse input only, so nothing the graph computes is needed first).

Inputs: ``image`` (B x 3 x H x W, normalised), ``sparse`` (B x 1 x H x W, network units), and for
BP-Net ``K`` (B x 3 x 3) and the neighbour inputs. Output: ``depth``. Batch, height and width are
dynamic by default (H, W multiples of 32 for every model here); ``dynamic=False`` fixes them.
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from depth_completion_ros.backends.base import BackendError
from depth_completion_ros.networks.bpnet import NUM_OUTPUTS, precompute_neighbours

log = logging.getLogger(__name__)

#: ONNX opset of the exports (GridSample with 4-D inputs needs >= 16; TensorRT 10 reads 18)
OPSET = 18
#: prefix of the metadata keys an export carries (read back by the ONNX backend)
META_PREFIX = "depth_completion_ros."
#: relative difference (max |onnx - torch| / max |torch|) an fp32 export must stay within
PARITY_TOLERANCE = 1e-4
#: the size an export is traced at when none is given (KITTI's depth-completion crop)
DEFAULT_SIZE = (352, 1216)


class ExportError(RuntimeError):
    """An export cannot be made or does not match its torch model; the message says why."""


def neighbour_names(level: int) -> tuple[str, str]:
    return f"offsets_{level}", f"indices_{level}"


def input_names(needs_intrinsics: bool) -> list[str]:
    """The graph's input names, in order."""
    if not needs_intrinsics:
        return ["image", "sparse"]
    names = ["image", "sparse", "K"]
    for level in range(NUM_OUTPUTS):
        names += neighbour_names(level)
    return names


def neighbour_inputs(dep: torch.Tensor) -> dict[str, np.ndarray]:
    """BP-Net's extra inputs for sparse depth ``dep`` (B x 1 x H x W, network units): each
    level's 4 nearest valid pixels, searched outside the graph."""
    b, _, h, w = dep.shape
    feeds = {}
    for level, (offsets, indices) in enumerate(precompute_neighbours(dep.float())):
        hl, wl = h >> level, w >> level
        o_name, i_name = neighbour_names(level)
        feeds[o_name] = offsets.reshape(b, 2, offsets.shape[2], hl, wl).numpy()
        feeds[i_name] = indices.reshape(b, indices.shape[1], hl, wl).numpy()
    return feeds


class _DepthOnly(nn.Module):
    """image, sparse -> depth (the SelfDC networks)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, image: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        out = self.net(image, sparse)
        return out[-1] if isinstance(out, list | tuple) else out


class _BPNetWithNeighbours(nn.Module):
    """image, sparse, K and the 12 neighbour inputs -> the finest depth (BP-Net)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(  # noqa: PLR0913 - one named input per graph input
        self,
        image: torch.Tensor,
        sparse: torch.Tensor,
        K: torch.Tensor,  # noqa: N803
        offsets_0: torch.Tensor,
        indices_0: torch.Tensor,
        offsets_1: torch.Tensor,
        indices_1: torch.Tensor,
        offsets_2: torch.Tensor,
        indices_2: torch.Tensor,
        offsets_3: torch.Tensor,
        indices_3: torch.Tensor,
        offsets_4: torch.Tensor,
        indices_4: torch.Tensor,
        offsets_5: torch.Tensor,
        indices_5: torch.Tensor,
    ) -> torch.Tensor:
        pairs = (
            (offsets_0, indices_0),
            (offsets_1, indices_1),
            (offsets_2, indices_2),
            (offsets_3, indices_3),
            (offsets_4, indices_4),
            (offsets_5, indices_5),
        )
        flat = [(o.flatten(3), i.flatten(2)) for o, i in pairs]
        return self.net(image, sparse, K, flat)[-1]


def example_inputs(
    needs_intrinsics: bool, height: int, width: int, batch: int = 1, seed: int = 0
) -> dict[str, torch.Tensor]:
    """Inputs to trace with: a random image and ~5 % of pixels with depth (a LiDAR-like
    density, so every level of BP-Net has valid pixels), K of a KITTI-like camera."""
    g = torch.Generator().manual_seed(seed)
    image = torch.randn(batch, 3, height, width, generator=g)
    hit = torch.rand(batch, 1, height, width, generator=g) < 0.05
    sparse = torch.where(hit, 1.0 + 79.0 * torch.rand(hit.shape, generator=g), 0.0)
    inputs = {"image": image, "sparse": sparse}
    if needs_intrinsics:
        K = torch.tensor([[721.5, 0.0, width / 2], [0.0, 721.5, height / 2], [0.0, 0.0, 1.0]])
        inputs["K"] = K.expand(batch, 3, 3).contiguous()
        inputs.update({k: torch.from_numpy(v) for k, v in neighbour_inputs(sparse).items()})
    return inputs


def _dynamic_shapes(needs_intrinsics: bool, multiple: int) -> dict[str, Any]:
    from torch.export import Dim

    batch = Dim("batch", min=1, max=64)
    # sides as multiples of the network's size rule: derived dims keep every level's size
    # H / 2^l an exact expression of the same symbol
    h, w = Dim("h", min=1, max=16384 // multiple), Dim("w", min=1, max=16384 // multiple)
    shapes: dict[str, Any] = {
        "image": {0: batch, 2: multiple * h, 3: multiple * w},
        "sparse": {0: batch, 2: multiple * h, 3: multiple * w},
    }
    if needs_intrinsics:
        shapes["K"] = {0: batch}
        for level in range(NUM_OUTPUTS):
            o_name, i_name = neighbour_names(level)
            s = multiple >> level
            shapes[o_name] = {0: batch, 3: s * h, 4: s * w}
            shapes[i_name] = {0: batch, 2: s * h, 3: s * w}
    return shapes


def export_network(
    net: nn.Module,
    needs_intrinsics: bool,
    output: str | Path,
    height: int,
    width: int,
    *,
    dynamic: bool = True,
    size_multiple: int = 32,
    metadata: dict[str, str] | None = None,
    optimize: bool = False,
) -> dict[str, Any]:
    """Write ``net`` (eval mode, float32, on the CPU) as an ONNX file traced at height x width.

    torch.onnx's dynamo exporter (torch.export): the TorchScript one traced BP-Net to a graph
    3e-4 away from torch. ``optimize`` runs onnxscript's optimiser (slower export; ONNX Runtime
    and TensorRT optimise the graph themselves). Returns what was written.
    """
    if height % size_multiple or width % size_multiple:
        raise ExportError(
            f"export size {height} x {width} must be multiples of {size_multiple} "
            "(the network's size rule)"
        )
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    wrapper = (_BPNetWithNeighbours if needs_intrinsics else _DepthOnly)(net).eval()
    inputs = example_inputs(needs_intrinsics, height, width)
    shapes = _dynamic_shapes(needs_intrinsics, size_multiple) if dynamic else None
    t0 = time.perf_counter()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter's deprecation and axis-name chatter
        try:
            program = torch.onnx.export(
                wrapper,
                (),
                kwargs=inputs,
                dynamo=True,
                dynamic_shapes=shapes,
                input_names=list(inputs),
                output_names=["depth"],
                opset_version=OPSET,
                optimize=optimize,
                verbose=False,
            )
        except Exception as e:
            raise ExportError(f"torch.onnx.export failed: {type(e).__name__}: {e}") from e
    import onnx

    model = program.model_proto
    meta = {"dynamic": str(bool(dynamic)).lower(), "traced_size": f"{height}x{width}"}
    meta.update(metadata or {})
    for key, value in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = META_PREFIX + key, str(value)
    # one file while it fits protobuf's 2 GB (BP-Net: 360 MB of float32 weights)
    onnx.save_model(model, str(output))
    return {
        "output": str(output),
        "bytes": output.stat().st_size,
        "export_s": round(time.perf_counter() - t0, 1),
        "inputs": list(inputs),
        "dynamic": bool(dynamic),
    }


def read_metadata(path: str | Path) -> dict[str, str]:
    """The ``depth_completion_ros.*`` metadata of an export (without the prefix)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return {
        p.key[len(META_PREFIX) :]: p.value
        for p in model.metadata_props
        if p.key.startswith(META_PREFIX)
    }


def export_model(
    model: str,
    checkpoint: str | Path | None,
    output: str | Path,
    height: int = DEFAULT_SIZE[0],
    width: int = DEFAULT_SIZE[1],
    *,
    dataset: str = "kitti",
    dynamic: bool = True,
    allow_random_weights: bool = False,
    optimize: bool = False,
) -> dict[str, Any]:
    """Load ``checkpoint`` as the node does (any file it loads) and export it; the file
    records the model, dataset settings and weights it came from."""
    from depth_completion_ros.backends.network import NetworkBackend

    backend = NetworkBackend(
        model=model,
        checkpoint=checkpoint or None,
        device="cpu",
        dataset=dataset,
        channels_last=False,
        allow_random_weights=allow_random_weights,
    )
    metadata = {
        "model": model,
        "dataset": dataset,
        "weights": backend.weights_label,
        "torch": torch.__version__,
        "inputs": json.dumps(input_names(backend.spec.needs_intrinsics)),
    }
    info = export_network(
        backend.net,
        backend.spec.needs_intrinsics,
        output,
        height,
        width,
        dynamic=dynamic,
        size_multiple=backend.input_spec.size_multiple,
        metadata=metadata,
        optimize=optimize,
    )
    return {"model": model, "dataset": dataset, "weights": backend.weights_label, **info}


def relative_difference(result: np.ndarray, reference: np.ndarray) -> float:
    """max |result - reference| / max |reference| (0 for two all-zero maps)."""
    result, reference = np.asarray(result, np.float64), np.asarray(reference, np.float64)
    scale = float(np.abs(reference).max()) if reference.size else 0.0
    diff = float(np.abs(result - reference).max()) if reference.size else 0.0
    return diff / scale if scale > 0 else diff


def check_parity(
    onnx_backend: Any,
    torch_backend: Any,
    rgb: np.ndarray,
    sparse: np.ndarray,
    K: np.ndarray,
    tolerance: float = PARITY_TOLERANCE,
) -> dict[str, Any]:
    """Both backends on one frame (the same pre/post-processing, so the same network input):
    the relative difference of their outputs, and whether it is within ``tolerance``."""
    reference = torch_backend.complete(rgb, sparse, K)
    result = onnx_backend.complete(rgb, sparse, K)
    rel = relative_difference(result, reference)
    return {
        "relative_difference": rel,
        "max_abs_m": float(np.abs(result - reference).max()),
        "tolerance": tolerance,
        "ok": bool(rel <= tolerance),
    }


def require_parity(report: dict[str, Any]) -> None:
    if not report["ok"]:
        raise BackendError(
            f"the export differs from the torch model by {report['relative_difference']:.3g} "
            f"(relative; tolerance {report['tolerance']:.0e}): the graph does not compute what "
            "the network does"
        )


def synthetic_frame(height: int, width: int, seed: int = 0) -> tuple[np.ndarray, ...]:
    """A random RGB frame with ~5 % LiDAR-like depth (1-80 m) and a KITTI-like K."""
    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    hit = rng.random((height, width)) < 0.05
    sparse = np.where(hit, rng.uniform(1.0, 80.0, (height, width)), 0.0).astype(np.float32)
    K = np.array([[721.5, 0.0, width / 2], [0.0, 721.5, height / 2], [0.0, 0.0, 1.0]])
    return rgb, sparse, K


def verify_export(
    model: str,
    checkpoint: str | Path | None,
    onnx_path: str | Path,
    dataset: str = "kitti",
    frame: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    *,
    allow_random_weights: bool = False,
) -> dict[str, Any]:
    """Parity of an export with the torch model it came from, both on the CPU through the same
    pre/post-processing, on ``frame`` (rgb, sparse, K) or a synthetic one of the traced size."""
    from depth_completion_ros.backends.network import NetworkBackend
    from depth_completion_ros.backends.onnx import OnnxBackend

    if frame is None:
        h, w = (int(v) for v in read_metadata(onnx_path)["traced_size"].split("x"))
        frame = synthetic_frame(h, w)
    reference = NetworkBackend(
        model=model,
        checkpoint=checkpoint or None,
        device="cpu",
        dataset=dataset,
        allow_random_weights=allow_random_weights,
    )
    onnx_backend = OnnxBackend(model=model, checkpoint=onnx_path, device="cpu", dataset=dataset)
    return check_parity(onnx_backend, reference, *frame)
