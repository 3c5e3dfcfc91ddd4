"""DMD3C stage 1: one image + relative depth -> one training sample with simulated LiDAR.

The per-image pipeline (paper, section 3.2), each step a plain function:

1. ``relative_to_metric``: the teacher's relative disparity becomes a plausible metric depth, with
   the scene's depth range sampled per image (``DepthRange``); given metric depth is kept as is.
2. ``sample_intrinsics``: a random pinhole camera, focal length from a sampled horizontal field
   of view, principal point at the image centre (``CameraRange``).
3. ``training.meshing.build_mesh``: back-projection and a surface mesh (grid or Poisson).
4. ``sample_lidar`` + ``simulate_sparse``: a simulated LiDAR (``LidarConfig``: beam pattern, a
   sensor offset from the camera, range limits, dropout, range noise) ray-cast onto the mesh, and
   its hits projected into the image with the node's own ``project_points``.

``make_sample`` chains them; a sample that cannot be made raises ``training.sample.BadSample``
with a cause ('size', 'invalid_depth', 'empty_mesh', 'no_hit') that the job counts.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from depth_completion_ros.depth_io import write_atomic
from depth_completion_ros.projection import ProjectionConfig, project_points
from depth_completion_ros.simulation.lidar import (
    LidarModel,
    RosetteModel,
    cast,
    lidar_pose_in_optical_frame,
    lidar_preset,
    make_raycasting_scene,
)
from training.meshing import MeshConfig, build_mesh, n_triangles
from training.sample import BadSample

SAMPLE_KEYS = ("rgb", "sparse", "target", "K")
INPUT_KINDS = ("disparity", "depth", "metric")


@dataclass(frozen=True)
class DepthRange:
    """How relative disparity becomes metric depth (see ``relative_to_metric``)."""

    near_m: tuple[float, float] = (1.0, 8.0)  # depth of the near quantile, log-uniform
    far_m: tuple[float, float] = (20.0, 100.0)  # depth of the far quantile, log-uniform
    quantiles: tuple[float, float] = (0.02, 0.98)  # disparity quantiles mapped to far, near
    sky_fraction: float = 0.02  # disparity below this x the near quantile = sky (invalid)
    min_ratio: float = 3.0  # far is at least near x this

    def __post_init__(self) -> None:
        for name, (lo, hi) in (("near_m", self.near_m), ("far_m", self.far_m)):
            if not 0 < lo <= hi:
                raise ValueError(f"DepthRange.{name}={(lo, hi)} must satisfy 0 < low <= high")
        if not 0.0 <= self.quantiles[0] < self.quantiles[1] <= 1.0:
            raise ValueError(f"DepthRange.quantiles={self.quantiles} must be 0 <= lo < hi <= 1")
        if self.min_ratio < 1.0:
            raise ValueError(f"DepthRange.min_ratio={self.min_ratio} must be >= 1")


@dataclass(frozen=True)
class CameraRange:
    """Random pinhole cameras: fx = fy from a uniform horizontal field of view (degrees)."""

    hfov_deg: tuple[float, float] = (55.0, 95.0)

    def __post_init__(self) -> None:
        lo, hi = self.hfov_deg
        if not 0 < lo <= hi < 180:
            raise ValueError(f"CameraRange.hfov_deg={self.hfov_deg} must lie in (0, 180)")


@dataclass(frozen=True)
class LidarConfig:
    """The simulated sensor. ``offset_m``: uniform ranges of the LiDAR's position in the camera
    optical frame (x right, y down, z forward), e.g. KITTI's is about (0, -0.08, -0.27)."""

    sensor: str = "hdl64"
    offset_m: tuple[tuple[float, float], ...] = ((-0.2, 0.2), (-0.3, 0.0), (-0.3, 0.1))
    range_noise_std: float = 0.01  # metres, Gaussian
    dropout_prob: float = 0.05  # lost returns
    min_range: float | None = None  # metres; None = the sensor's own
    max_range: float | None = None
    fov_margin_deg: float = 10.0  # a spinning sensor is cast only over the camera's view + this

    def __post_init__(self) -> None:
        lidar_preset(self.sensor)  # raises for an unknown name
        if len(self.offset_m) != 3 or any(lo > hi for lo, hi in self.offset_m):
            raise ValueError(f"LidarConfig.offset_m={self.offset_m}: three (low, high) ranges")


@dataclass(frozen=True)
class Stage1Config:
    depth: DepthRange = field(default_factory=DepthRange)
    camera: CameraRange = field(default_factory=CameraRange)
    lidar: LidarConfig = field(default_factory=LidarConfig)
    mesh: MeshConfig = field(default_factory=MeshConfig)
    intrinsics: tuple[float, ...] | None = None  # a fixed 3x3 K (row-major) instead of sampling


def image_rng(seed: int, key: str) -> np.random.Generator:
    """The random stream of one image: the same whatever worker, rank or order processes it."""
    return np.random.default_rng([int(seed), zlib.crc32(key.encode())])


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def relative_to_metric(
    disparity: np.ndarray, rng: np.random.Generator, config: DepthRange = DepthRange()
) -> tuple[np.ndarray, dict[str, float]]:
    """Relative disparity (any affine scale, larger = nearer) -> metric depth, 0 = invalid.

    Depth = 1 / (a * n + b) with n the disparity normalised to [0, 1] between its low and high
    quantiles, so the high quantile lands at a sampled ``near`` and the low one at a sampled
    ``far``: b = 1/far, a = 1/near - 1/far. Affine in disparity, which is the freedom a relative
    (affine-invariant) disparity leaves. Pixels whose disparity is below ``sky_fraction`` of the
    high quantile (sky, for Depth Anything V2) are invalid: no mesh there, no target.
    """
    disparity = np.asarray(disparity, dtype=np.float32)
    finite = np.isfinite(disparity)
    if not finite.any():
        raise BadSample("invalid_depth", "the relative depth map has no finite value")
    q_hi = float(np.quantile(disparity[finite], config.quantiles[1]))
    if not q_hi > 0:
        raise BadSample("invalid_depth", "the relative disparity is not positive anywhere")
    valid = finite & (disparity > config.sky_fraction * q_hi)
    lo, hi = (float(q) for q in np.quantile(disparity[valid], config.quantiles))
    if not hi > lo:
        raise BadSample("invalid_depth", "the relative depth map is flat (one value everywhere)")
    near = _log_uniform(rng, *config.near_m)
    far = max(_log_uniform(rng, *config.far_m), near * config.min_ratio)
    b = 1.0 / far
    a = 1.0 / near - b
    n = np.clip((disparity - lo) / (hi - lo), 0.0, 1.0)
    depth = np.zeros_like(disparity)
    depth[valid] = 1.0 / (a * n[valid] + b)
    return depth, {"near_m": near, "far_m": far}


def depth_to_disparity(depth: np.ndarray) -> np.ndarray:
    """Depth (0 = invalid) -> 1/depth (0 = invalid): a non-metric depth map's relative form."""
    depth = np.asarray(depth, dtype=np.float32)
    out = np.zeros_like(depth)
    ok = np.isfinite(depth) & (depth > 0)
    out[ok] = 1.0 / depth[ok]
    return out


def sample_intrinsics(
    width: int, height: int, rng: np.random.Generator, config: CameraRange = CameraRange()
) -> np.ndarray:
    """A pinhole K: fx = fy = (W/2) / tan(hfov/2), principal point at the image centre."""
    hfov = np.deg2rad(rng.uniform(*config.hfov_deg))
    f = (width / 2.0) / np.tan(hfov / 2.0)
    return np.array([[f, 0.0, (width - 1) / 2.0], [0.0, f, (height - 1) / 2.0], [0.0, 0.0, 1.0]])


def horizontal_fov_deg(K: np.ndarray, width: int) -> float:
    """Twice the wider of the two half-angles from the optical axis to the image's side edges."""
    left = np.arctan((K[0, 2] + 0.5) / K[0, 0])
    right = np.arctan((width - 0.5 - K[0, 2]) / K[0, 0])
    return float(np.rad2deg(2.0 * max(left, right)))


def sample_lidar(
    rng: np.random.Generator, config: LidarConfig, K: np.ndarray, width: int
) -> tuple[LidarModel | RosetteModel, np.ndarray]:
    """The sensor of this image and its pose (LiDAR -> camera optical frame)."""
    changes: dict[str, Any] = {
        "range_noise_std": config.range_noise_std,
        "dropout_prob": config.dropout_prob,
    }
    if config.min_range is not None:
        changes["min_range"] = config.min_range
    if config.max_range is not None:
        changes["max_range"] = config.max_range
    model = lidar_preset(config.sensor, **changes)
    if isinstance(model, RosetteModel):
        # non-repetitive: every image sees another stretch of the rosette
        model = model.with_(start_time_s=float(rng.uniform(0.0, 3600.0)))
    else:
        fov = min(360.0, horizontal_fov_deg(K, width) + 2.0 * config.fov_margin_deg)
        model = model.with_(azimuth_fov_deg=fov)
    offset = [rng.uniform(lo, hi) for lo, hi in config.offset_m]
    return model, lidar_pose_in_optical_frame(offset)


def simulate_sparse(
    mesh,
    model: LidarModel | RosetteModel,
    pose: np.ndarray,
    K: np.ndarray,
    width: int,
    height: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, int]:
    """Cast the LiDAR onto the mesh and project the hits as the node does: (sparse, n returns).

    ``pose`` is LiDAR -> camera, which is also the extrinsic ``project_points`` takes, and the
    camera's P is ``[K | 0]``; the node's occlusion filter removes returns the camera cannot see
    from its own viewpoint.
    """
    try:
        scene = make_raycasting_scene(mesh)
    except ValueError as err:
        raise BadSample("empty_mesh", str(err)) from None
    scan = cast(scene, model, pose, rng=rng, nthreads=1)
    if len(scan) == 0:
        raise BadSample("no_hit", "no simulated LiDAR ray hit the mesh within range")
    P = np.hstack([np.asarray(K, np.float64), np.zeros((3, 1))])
    reach = model.max_range + float(np.linalg.norm(pose[:3, 3])) + 1.0
    sparse = project_points(scan.points, pose, P, width, height, ProjectionConfig(max_depth=reach))
    if not np.any(sparse > 0):
        raise BadSample("no_hit", f"none of the {len(scan)} LiDAR returns lands in the image")
    return sparse, len(scan)


def make_sample(
    rgb: np.ndarray,
    depth_input: np.ndarray,
    kind: str,
    rng: np.random.Generator,
    config: Stage1Config = Stage1Config(),
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """One stage-1 sample from an image and its depth input, plus facts for the manifest.

    ``kind``: 'disparity' (a teacher's relative inverse depth), 'depth' (a depth map of unknown
    scale: inverted, then rescaled like a disparity) or 'metric' (kept as it is: ``target`` equals
    the input).
    """
    if kind not in INPUT_KINDS:
        raise ValueError(f"kind '{kind}' unknown: use one of {INPUT_KINDS}")
    height, width = rgb.shape[:2]
    depth_input = np.asarray(depth_input, dtype=np.float32)
    if depth_input.shape != (height, width):
        raise BadSample(
            "size",
            f"the {'teacher' if kind == 'disparity' else 'depth'} map is "
            f"{depth_input.shape[1] if depth_input.ndim == 2 else depth_input.shape}x"
            f"{depth_input.shape[0]} but the image is {width}x{height}: give maps at the image's "
            f"own size",
        )
    info: dict[str, Any] = {}
    if kind == "metric":
        target = np.where(np.isfinite(depth_input) & (depth_input > 0), depth_input, 0.0)
        target = target.astype(np.float32)
        if not np.any(target > 0):
            raise BadSample("invalid_depth", "the depth map has no valid (> 0) pixel")
    else:
        disparity = depth_input if kind == "disparity" else depth_to_disparity(depth_input)
        target, info = relative_to_metric(disparity, rng, config.depth)
    if config.intrinsics is not None:
        K = np.asarray(config.intrinsics, dtype=np.float64).reshape(3, 3)
    else:
        K = sample_intrinsics(width, height, rng, config.camera)
    mesh = build_mesh(target, K, config.mesh)
    if n_triangles(mesh) == 0:
        raise BadSample(
            "empty_mesh",
            f"the {config.mesh.method} mesh has no triangles (too few neighbouring valid pixels)",
        )
    model, pose = sample_lidar(rng, config.lidar, K, width)
    sparse, n_returns = simulate_sparse(mesh, model, pose, K, width, height, rng)
    sample = {
        "rgb": np.ascontiguousarray(rgb, dtype=np.uint8),
        "sparse": sparse.astype(np.float32),
        "target": target,
        "K": K.astype(np.float32),
    }
    info.update(
        density=float(np.count_nonzero(sparse) / sparse.size),
        returns=n_returns,
        hfov_deg=horizontal_fov_deg(K, width),
        lidar=model.name,
        lidar_offset_m=[round(float(v), 4) for v in pose[:3, 3]],
        triangles=n_triangles(mesh),
    )
    return sample, info


def fidelity(sparse: np.ndarray, depth: np.ndarray) -> dict[str, float]:
    """Simulated ranges against the input depth at the hit pixels (where both are valid):
    median and 95th percentile of |sparse - depth| / depth, and the fraction within 2 %."""
    both = (sparse > 0) & (depth > 0)
    if not both.any():
        return {"points": 0, "median_rel": float("nan"), "p95_rel": float("nan"), "within_2pct": 0}
    rel = np.abs(sparse[both] - depth[both]) / depth[both]
    return {
        "points": int(both.sum()),
        "median_rel": float(np.median(rel)),
        "p95_rel": float(np.quantile(rel, 0.95)),
        "within_2pct": float(np.mean(rel <= 0.02)),
    }


# --- files ---------------------------------------------------------------------------------------


def read_depth_map(path: Path, scale: float = 1000.0) -> np.ndarray:
    """A depth map file -> float32 H x W (0 = invalid): ``.npy`` as stored (metres), a 16-bit
    ``.png`` divided by ``scale`` (1000: millimetres)."""
    path = Path(path)
    if path.suffix == ".npy":
        try:
            depth = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as err:
            raise BadSample(
                "unreadable_depth_map", f"cannot read depth map {path}: {err}"
            ) from None
    else:
        depth = cv2.imread(str(path), cv2.IMREAD_ANYDEPTH)
        if depth is None:
            raise BadSample("unreadable_depth_map", f"cannot read depth map {path} (not an image?)")
        if depth.dtype != np.uint16:
            raise BadSample(
                "unreadable_depth_map",
                f"{path}: a depth PNG must be 16-bit, got {depth.dtype} (8-bit?)",
            )
        depth = depth.astype(np.float32) / np.float32(scale)
    depth = np.squeeze(depth)
    if depth.ndim != 2 or not np.issubdtype(depth.dtype, np.number):
        raise BadSample(
            "unreadable_depth_map", f"{path}: a depth map must be H x W numbers, got {depth.shape}"
        )
    return np.nan_to_num(depth.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)


def find_depth_map(depth_dir: Path, rel: Path) -> Path | None:
    """The depth map of image ``rel`` (relative path, suffix dropped): ``<dir>/<rel>.npy|.png``,
    else ``<dir>/<stem>.npy|.png``."""
    for base in (Path(depth_dir) / rel, Path(depth_dir) / rel.name):
        for suffix in (".npy", ".png"):
            candidate = base.parent / (base.name + suffix)
            if candidate.is_file():
                return candidate
    return None


def read_intrinsics(path: Path) -> np.ndarray:
    """A 3x3 K from ``.npy`` (3x3) or ``.json`` (``fx``, ``fy``, ``cx``, ``cy``)."""
    path = Path(path)
    if path.suffix == ".npy":
        K = np.load(path, allow_pickle=False).astype(np.float64)
    else:
        data = json.loads(path.read_text())
        K = np.array(
            [[data["fx"], 0.0, data["cx"]], [0.0, data["fy"], data["cy"]], [0.0, 0.0, 1.0]]
        )
    if K.shape != (3, 3) or not (K[0, 0] > 0 and K[1, 1] > 0):
        raise ValueError(f"{path}: intrinsics must be a 3x3 K with fx, fy > 0, got {K.tolist()}")
    return K


def write_sample(path: Path, sample: dict[str, np.ndarray]) -> Path:
    """One sample as a compressed .npz, written atomically (a killed job leaves no half file)."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **{key: sample[key] for key in SAMPLE_KEYS})

    return write_atomic(path, write)


def read_sample(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {key: data[key] for key in SAMPLE_KEYS}
