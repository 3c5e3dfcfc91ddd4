"""A spinning multi-beam LiDAR simulated by ray casting onto any triangle mesh (open3d).

Written once for two users: the synthetic street scene of the demo, and DMD3C stage 1, which casts
a simulated LiDAR from the origin onto a Poisson mesh of a monocular depth prediction. So nothing
here knows what the mesh is: it takes a mesh (or a prepared ``RaycastingScene``), a beam pattern and
a pose, and returns KITTI-like points.

Frames: the LiDAR frame is KITTI's velodyne frame (x forward, y left, z up). ``cast`` scans are
instantaneous; ``cast_sweep`` fires each ray at its own time from a moving sensor (motion
distortion, with per-point times), and ``driver_records`` lays points out as the drivers do
(Ouster ``t``, Hesai ``timestamp``, Velodyne ``time``, Livox).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import open3d as o3d

__all__ = [
    "LIDAR_PRESETS",
    "T_LIDAR_TO_OPTICAL",
    "LidarModel",
    "LidarScan",
    "DRIVER_LAYOUTS",
    "RosetteModel",
    "cast",
    "cast_sweep",
    "driver_records",
    "lidar_pose_in_optical_frame",
    "lidar_preset",
    "make_raycasting_scene",
    "range_image",
    "ray_directions",
    "rotate_vectors",
    "sweep_times",
]

# Takes points from a LiDAR frame (x forward, y left, z up) into an optical frame (z forward,
# x right, y down) with the same origin. Stage 1 scans meshes built in camera coordinates, so its
# LiDAR pose is this matrix (see ``lidar_pose_in_optical_frame``).
T_LIDAR_TO_OPTICAL = np.array(
    [
        [0.0, -1.0, 0.0, 0.0],
        [0.0, 0.0, -1.0, 0.0],
        [1.0, 0.0, 0.0, 0.0],
        [0.0, 0.0, 0.0, 1.0],
    ]
)


def rotate_vectors(vectors: np.ndarray, rotation: np.ndarray) -> np.ndarray:
    """``vectors @ rotation.T`` for (N, 3) float32 vectors, without BLAS.

    Why: right after an open3d ray cast its worker threads still spin, and a BLAS matmul that
    starts its own threads then runs ~15x slower on a 2-core machine; einsum stays single-threaded.
    """
    return np.einsum("ij,kj->ik", vectors, np.asarray(rotation, dtype=vectors.dtype))


def lidar_pose_in_optical_frame(
    translation: Sequence[float] = (0.0, 0.0, 0.0),
) -> np.ndarray:
    """Pose (LiDAR -> mesh frame) of an upright LiDAR in a mesh given in camera coordinates.

    Why: stage-1 meshes are back-projected depth maps (z forward, y down); a LiDAR mounted level
    with the camera sits at ``translation`` (optical frame) looking along +z. The same matrix is
    the LiDAR -> camera extrinsic that projects the scan back into the image
    (``projection.project_points(scan.points, pose, K|0, ...)``).
    """
    pose = T_LIDAR_TO_OPTICAL.copy()
    pose[:3, 3] = np.asarray(translation, dtype=np.float64)
    return pose


@dataclass(frozen=True)
class LidarModel:
    """Beam pattern and range behaviour of a spinning LiDAR.

    ``elevations_deg``: one angle per beam (positive = up), any order; scans keep that order in
    ``LidarScan.ring``. Azimuth columns run from the left edge of the field of view to the right
    (counter-clockwise angle decreasing), centred on ``azimuth_center_deg`` (0 = +x, forward).
    """

    elevations_deg: tuple[float, ...]
    azimuth_resolution_deg: float = 0.1728
    azimuth_fov_deg: float = 360.0
    azimuth_center_deg: float = 0.0
    min_range: float = 0.9
    max_range: float = 120.0
    range_noise_std: float = 0.0
    dropout_prob: float = 0.0
    seed: int | None = None
    name: str = field(default="custom", compare=False)

    def __post_init__(self) -> None:
        elev = tuple(float(e) for e in np.asarray(self.elevations_deg, dtype=np.float64).ravel())
        object.__setattr__(self, "elevations_deg", elev)
        if not elev:
            raise ValueError("LidarModel needs at least one beam elevation angle (degrees).")
        if not all(-90.0 <= e <= 90.0 for e in elev):
            raise ValueError(
                f"LidarModel elevations must lie in [-90, 90] degrees, got "
                f"[{min(elev)}, {max(elev)}]; pass degrees, not radians."
            )
        if not 0.0 < self.azimuth_resolution_deg <= self.azimuth_fov_deg:
            raise ValueError(
                f"azimuth_resolution_deg={self.azimuth_resolution_deg} must be > 0 and no more "
                f"than azimuth_fov_deg={self.azimuth_fov_deg}."
            )
        if not 0.0 < self.azimuth_fov_deg <= 360.0:
            raise ValueError(f"azimuth_fov_deg={self.azimuth_fov_deg} must be in (0, 360].")
        if not 0.0 <= self.min_range < self.max_range:
            raise ValueError(
                f"Need 0 <= min_range < max_range, got min_range={self.min_range}, "
                f"max_range={self.max_range} (metres)."
            )
        if self.range_noise_std < 0.0:
            raise ValueError(f"range_noise_std={self.range_noise_std} must be >= 0 (metres).")

    @classmethod
    def from_elevations(cls, elevations_deg: Sequence[float] | np.ndarray, **kwargs) -> LidarModel:
        """Any sensor, or a random beam pattern (stage 1), from its beam elevation angles."""
        return cls(
            elevations_deg=tuple(np.asarray(elevations_deg, dtype=float).ravel()),
            **kwargs,
        )

    @classmethod
    def uniform(cls, n_beams: int, upper_deg: float, lower_deg: float, **kwargs) -> LidarModel:
        """Evenly spaced beams from ``upper_deg`` down to ``lower_deg``."""
        if n_beams < 1:
            raise ValueError(f"n_beams={n_beams} must be >= 1.")
        kwargs.setdefault("name", f"uniform{n_beams}")
        return cls.from_elevations(np.linspace(upper_deg, lower_deg, n_beams), **kwargs)

    @classmethod
    def hdl64(cls, **kwargs) -> LidarModel:
        """Velodyne HDL-64E as mounted on KITTI: 64 beams, +2 to -24.9 deg, ~2083 columns.

        Two laser blocks like the real sensor: the upper 32 beams are packed tighter (~1/3 deg)
        than the lower 32 (~1/2 deg).
        """
        upper = np.linspace(2.0, -8.33, 32)
        lower = np.linspace(-8.87, -24.9, 32)
        kwargs.setdefault("name", "hdl64")
        kwargs.setdefault("azimuth_resolution_deg", 0.1728)
        kwargs.setdefault("max_range", 120.0)
        return cls.from_elevations(np.concatenate([upper, lower]), **kwargs)

    @classmethod
    def vlp16(cls, **kwargs) -> LidarModel:
        """Velodyne VLP-16: 16 beams from +15 to -15 deg every 2 deg, 0.2 deg at 10 Hz."""
        kwargs.setdefault("name", "vlp16")
        kwargs.setdefault("azimuth_resolution_deg", 0.2)
        kwargs.setdefault("min_range", 0.5)
        kwargs.setdefault("max_range", 100.0)
        return cls.from_elevations(np.arange(15.0, -15.5, -2.0), **kwargs)

    @classmethod
    def hdl32(cls, **kwargs) -> LidarModel:
        """Velodyne HDL-32E: 32 beams from +10.67 to -30.67 deg (4/3 deg apart), 0.16 deg."""
        kwargs.setdefault("name", "hdl32")
        kwargs.setdefault("azimuth_resolution_deg", 0.16)
        kwargs.setdefault("min_range", 1.0)
        kwargs.setdefault("max_range", 100.0)
        return cls.from_elevations(np.linspace(10.67, -30.67, 32), **kwargs)

    @classmethod
    def vls128(cls, **kwargs) -> LidarModel:
        """A 128-beam sensor like the Velodyne VLS-128: +15 to -25 deg, 0.2 deg azimuth.

        The real sensor packs its beams tighter near the horizon; an even spacing (0.31 deg) keeps
        the model simple and is what most simulators use.
        """
        kwargs.setdefault("name", "vls128")
        kwargs.setdefault("azimuth_resolution_deg", 0.2)
        kwargs.setdefault("max_range", 200.0)
        return cls.from_elevations(np.linspace(15.0, -25.0, 128), **kwargs)

    @classmethod
    def os128(cls, **kwargs) -> LidarModel:
        """An Ouster OS1-128-like sensor: 128 beams from +22.5 to -22.5 deg, 1024 columns."""
        kwargs.setdefault("name", "os128")
        kwargs.setdefault("azimuth_resolution_deg", 360.0 / 1024)
        kwargs.setdefault("min_range", 0.5)
        kwargs.setdefault("max_range", 120.0)
        return cls.from_elevations(np.linspace(22.5, -22.5, 128), **kwargs)

    @classmethod
    def pandar64(cls, **kwargs) -> LidarModel:
        """A Hesai Pandar64-like sensor: 64 beams from +15 to -25 deg, 0.2 deg at 10 Hz."""
        kwargs.setdefault("name", "pandar64")
        kwargs.setdefault("azimuth_resolution_deg", 0.2)
        kwargs.setdefault("min_range", 0.3)
        kwargs.setdefault("max_range", 200.0)
        return cls.from_elevations(np.linspace(15.0, -25.0, 64), **kwargs)

    def with_(self, **changes) -> LidarModel:
        """A copy with some fields changed (e.g. ``hdl64().with_(range_noise_std=0.02)``)."""
        return replace(self, **changes)

    @property
    def n_beams(self) -> int:
        return len(self.elevations_deg)

    @property
    def n_columns(self) -> int:
        return max(1, round(self.azimuth_fov_deg / self.azimuth_resolution_deg))

    @property
    def n_rays(self) -> int:
        return self.n_beams * self.n_columns

    def azimuths_deg(self) -> np.ndarray:
        """Column azimuths, left to right, each at the centre of its angular bin."""
        j = np.arange(self.n_columns, dtype=np.float64)
        step = self.azimuth_fov_deg / self.n_columns
        return self.azimuth_center_deg + self.azimuth_fov_deg / 2.0 - (j + 0.5) * step


@dataclass(frozen=True)
class RosetteModel:
    """A non-repetitive solid-state LiDAR (Livox-like): a rosette drawn by two Risley prisms.

    The beam's off-axis angle vector is ``(fov/4) * (exp(i w1 t) + exp(i w2 t))``, with the two
    prisms turning in opposite directions at incommensurate rates, so the pattern never repeats:
    each frame (``n_points`` rays over ``frame_time_s`` from ``start_time_s``) draws a few petals,
    and successive frames (``start_time_s`` advancing) fill the circular field of view. The
    sensor looks along its +x axis (the LiDAR frame's forward). Defaults are Livox-Avia-like:
    70.4 deg field of view, 240k points/s at 10 Hz.

    Compatible with ``cast``: one "beam" (``ring`` = 0) and ``column`` = ray index in time order.
    """

    fov_deg: float = 70.4
    n_points: int = 24000
    frame_time_s: float = 0.1
    start_time_s: float = 0.0
    prism_hz: tuple[float, float] = (131.7, -83.3)
    min_range: float = 1.0
    max_range: float = 200.0
    range_noise_std: float = 0.0
    dropout_prob: float = 0.0
    seed: int | None = None
    name: str = field(default="solid_state", compare=False)

    def __post_init__(self) -> None:
        if not 0.0 < self.fov_deg < 180.0:
            raise ValueError(f"RosetteModel fov_deg={self.fov_deg} must be in (0, 180) degrees.")
        if self.n_points < 1 or self.frame_time_s <= 0.0:
            raise ValueError(
                f"RosetteModel needs n_points >= 1 and frame_time_s > 0, got {self.n_points} "
                f"and {self.frame_time_s}."
            )
        if not 0.0 <= self.min_range < self.max_range:
            raise ValueError(
                f"Need 0 <= min_range < max_range, got min_range={self.min_range}, "
                f"max_range={self.max_range} (metres)."
            )
        if self.range_noise_std < 0.0:
            raise ValueError(f"range_noise_std={self.range_noise_std} must be >= 0 (metres).")

    def with_(self, **changes) -> RosetteModel:
        return replace(self, **changes)

    @property
    def n_beams(self) -> int:
        return 1

    @property
    def n_columns(self) -> int:
        return int(self.n_points)

    @property
    def n_rays(self) -> int:
        return int(self.n_points)

    def directions(self) -> np.ndarray:
        """(n_points, 3) float32 unit rays of this frame, in firing order."""
        t = self.start_time_s + np.arange(self.n_points) * (self.frame_time_s / self.n_points)
        w1, w2 = 2.0 * np.pi * np.asarray(self.prism_hz, dtype=np.float64)
        half = np.deg2rad(self.fov_deg) / 4.0  # each prism deflects by a quarter of the fov
        offset = half * (np.exp(1j * w1 * t) + np.exp(1j * w2 * t))
        theta, phi = np.abs(offset), np.angle(offset)
        dirs = np.stack(
            [np.cos(theta), np.sin(theta) * np.cos(phi), np.sin(theta) * np.sin(phi)], axis=-1
        )
        return dirs.astype(np.float32)


#: ``lidar_preset`` names: beam counts 16/32/64/128 and the solid-state rosette.
LIDAR_PRESETS = ("vlp16", "hdl32", "hdl64", "vls128", "solid_state")
_PRESET_ALIASES = {"16": "vlp16", "32": "hdl32", "64": "hdl64", "128": "vls128"}


def lidar_preset(name: str, **kwargs) -> LidarModel | RosetteModel:
    """A sensor by name: ``vlp16``/``16``, ``hdl32``/``32``, ``hdl64``/``64``,
    ``vls128``/``128`` or ``solid_state``; ``kwargs`` override its fields."""
    key = _PRESET_ALIASES.get(str(name), str(name))
    if key == "solid_state":
        return RosetteModel(**kwargs)
    if key not in LIDAR_PRESETS:
        raise ValueError(
            f"Unknown LiDAR '{name}': choose one of {', '.join(LIDAR_PRESETS)} "
            f"(or 16, 32, 64, 128)."
        )
    return getattr(LidarModel, key)(**kwargs)


@functools.lru_cache(maxsize=16)
def _ray_directions_cached(model: LidarModel) -> np.ndarray:
    elev = np.deg2rad(np.asarray(model.elevations_deg, dtype=np.float64))[:, None]
    azim = np.deg2rad(model.azimuths_deg())[None, :]
    dirs = np.stack(
        np.broadcast_arrays(np.cos(elev) * np.cos(azim), np.cos(elev) * np.sin(azim), np.sin(elev)),
        axis=-1,
    ).reshape(-1, 3)
    dirs = dirs.astype(np.float32)
    dirs.flags.writeable = False
    return dirs


def ray_directions(model: LidarModel | RosetteModel) -> np.ndarray:
    """Unit ray directions, (n_beams * n_columns, 3) float32, in the LiDAR frame.

    Row-major over (beam, column): ``reshape(n_beams, n_columns, 3)`` gives a range-image grid.
    Cached per model and read-only, since every scan of a sequence reuses it (a rosette frame is
    computed afresh: its start time changes every frame).
    """
    if isinstance(model, RosetteModel):
        return model.directions()
    return _ray_directions_cached(model)


@dataclass
class LidarScan:
    """One simulated sweep; all arrays have one row per returned point.

    ``points`` is KITTI's .bin layout: float32 (x, y, z, intensity) in the LiDAR frame, with
    intensity in [0, 1]. ``ring``/``column`` index the beam and azimuth column of each point,
    ``geometry_ids``/``primitive_ids`` the open3d geometry and triangle that was hit, and
    ``normals`` the hit triangle's normal in the scene frame (as open3d returns it).
    """

    points: np.ndarray
    ranges: np.ndarray
    ring: np.ndarray
    column: np.ndarray
    geometry_ids: np.ndarray
    primitive_ids: np.ndarray
    normals: np.ndarray
    #: ``cast_sweep`` only: each point's firing time (s, as given) and where it hit (scene frame)
    times: np.ndarray | None = None
    world: np.ndarray | None = None

    @property
    def xyz(self) -> np.ndarray:
        return self.points[:, :3]

    @property
    def intensity(self) -> np.ndarray:
        return self.points[:, 3]

    def __len__(self) -> int:
        return int(self.points.shape[0])


def make_raycasting_scene(
    mesh: o3d.geometry.TriangleMesh | o3d.t.geometry.TriangleMesh,
) -> o3d.t.geometry.RaycastingScene:
    """A RaycastingScene holding one mesh (geometry id 0); build once, cast many times."""
    if isinstance(mesh, o3d.geometry.TriangleMesh):
        if len(mesh.triangles) == 0:
            raise ValueError("The mesh has no triangles: nothing for the LiDAR to hit.")
        mesh = o3d.t.geometry.TriangleMesh.from_legacy(mesh)
    if not isinstance(mesh, o3d.t.geometry.TriangleMesh):
        raise TypeError(
            f"Expected an open3d TriangleMesh (legacy or tensor) or a RaycastingScene, got "
            f"{type(mesh).__name__}."
        )
    vertices = mesh.vertex.positions.to(o3d.core.Dtype.Float32)
    triangles = mesh.triangle.indices.to(o3d.core.Dtype.UInt32)
    if triangles.shape[0] == 0:
        raise ValueError("The mesh has no triangles: nothing for the LiDAR to hit.")
    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(vertices, triangles)
    return scene


def _as_scene(
    scene_or_mesh: o3d.t.geometry.RaycastingScene
    | o3d.geometry.TriangleMesh
    | o3d.t.geometry.TriangleMesh,
) -> o3d.t.geometry.RaycastingScene:
    if isinstance(scene_or_mesh, o3d.t.geometry.RaycastingScene):
        return scene_or_mesh
    return make_raycasting_scene(scene_or_mesh)


def _check_pose(pose: np.ndarray | None) -> np.ndarray:
    if pose is None:
        return np.eye(4)
    pose = np.asarray(pose, dtype=np.float64)
    if pose.shape != (4, 4):
        raise ValueError(f"pose must be a 4x4 LiDAR-to-scene transform, got shape {pose.shape}.")
    rot = pose[:3, :3]
    if not np.allclose(rot @ rot.T, np.eye(3), atol=1e-5) or np.linalg.det(rot) < 0:
        raise ValueError("pose[:3, :3] must be a proper rotation (orthonormal, det +1).")
    return pose


def cast(
    scene_or_mesh: o3d.t.geometry.RaycastingScene
    | o3d.geometry.TriangleMesh
    | o3d.t.geometry.TriangleMesh,
    model: LidarModel | RosetteModel,
    pose: np.ndarray | None = None,
    *,
    rng: np.random.Generator | None = None,
    nthreads: int = 0,
) -> LidarScan:
    """Scan a mesh with a LiDAR at ``pose`` (4x4 LiDAR -> scene frame, identity = origin).

    Rays that hit nothing, or whose (noisy) range falls outside [min_range, max_range], are
    dropped, and so is each return with probability ``model.dropout_prob`` (lost returns, as on
    dark or specular surfaces). Range noise is Gaussian with ``model.range_noise_std``. Both draw
    from ``rng`` when given (use one per frame for a sequence), else from a fresh generator seeded
    with ``model.seed``.
    Intensity is the cosine of the incidence angle, a mesh-agnostic stand-in for reflectance
    (callers that know materials may overwrite ``points[:, 3]``).
    """
    scene = _as_scene(scene_or_mesh)
    pose = _check_pose(pose)
    dirs_local = ray_directions(model)
    dirs_scene = rotate_vectors(dirs_local, pose[:3, :3])
    origin = pose[:3, 3].astype(np.float32)
    rays = np.empty((dirs_local.shape[0], 6), dtype=np.float32)
    rays[:, :3] = origin
    rays[:, 3:] = dirs_scene
    hits = scene.cast_rays(o3d.core.Tensor.from_numpy(rays), nthreads=nthreads)
    t_hit = hits["t_hit"].numpy()

    ranges = t_hit.astype(np.float32, copy=True)
    finite = np.isfinite(ranges)
    gen = rng if rng is not None else np.random.default_rng(model.seed)
    if model.range_noise_std > 0.0:
        noise = gen.normal(0.0, model.range_noise_std, size=ranges.shape)
        ranges[finite] += noise[finite].astype(np.float32)
    valid = finite & (ranges >= model.min_range) & (ranges <= model.max_range)
    if model.dropout_prob > 0.0:
        valid &= gen.random(ranges.shape) >= model.dropout_prob
    keep = np.flatnonzero(valid)

    ranges = ranges[keep]
    d_local = dirs_local[keep]
    normals = hits["primitive_normals"].numpy()[keep]
    cos_inc = np.abs(np.einsum("ij,ij->i", normals, dirs_scene[keep]))
    points = np.empty((keep.size, 4), dtype=np.float32)
    points[:, :3] = d_local * ranges[:, None]
    points[:, 3] = np.clip(cos_inc, 0.0, 1.0)
    n_cols = model.n_columns
    return LidarScan(
        points=points,
        ranges=ranges,
        ring=(keep // n_cols).astype(np.int32),
        column=(keep % n_cols).astype(np.int32),
        geometry_ids=hits["geometry_ids"].numpy()[keep],
        primitive_ids=hits["primitive_ids"].numpy()[keep],
        normals=normals,
    )


def range_image(scan: LidarScan, model: LidarModel | RosetteModel) -> np.ndarray:
    """(n_beams, n_columns) float32 ranges in metres, 0 where the ray returned nothing."""
    img = np.zeros((model.n_beams, model.n_columns), dtype=np.float32)
    img[scan.ring, scan.column] = scan.ranges
    return img


# --- a moving sensor, and the drivers' point layouts ----------------------------------------


def sweep_times(
    model: LidarModel, period: float = 0.1, direction: str = "cw", start_deg: float = 180.0
) -> np.ndarray:
    """Seconds from the sweep's start at which each ray of ``ray_directions(model)`` fires.

    The sensor turns ``direction`` ('cw' or 'ccw' seen from above) once per ``period`` and
    starts the sweep facing ``start_deg`` (degrees counter-clockwise from +x; 180 = backwards,
    so the forward direction is mid-sweep, as on KITTI). All beams of a column fire together.
    """
    if direction not in ("cw", "ccw"):
        raise ValueError(f"direction must be 'cw' or 'ccw', got {direction!r}")
    azimuths = model.azimuths_deg()
    turned = (start_deg - azimuths) if direction == "cw" else (azimuths - start_deg)
    column = np.mod(turned, 360.0) / 360.0 * period
    return np.broadcast_to(column[None, :], (model.n_beams, model.n_columns)).reshape(-1)


def cast_sweep(
    scene_or_mesh: o3d.t.geometry.RaycastingScene
    | o3d.geometry.TriangleMesh
    | o3d.t.geometry.TriangleMesh,
    model: LidarModel,
    pose_at,
    times: np.ndarray,
    *,
    rng: np.random.Generator | None = None,
    nthreads: int = 0,
) -> LidarScan:
    """A sweep from a moving sensor: ray ``i`` fires at ``times[i]`` (any clock) from the pose
    ``pose_at(t)`` returns (4x4 LiDAR -> scene for a float t), so each point is where the sensor
    saw it at its own instant, in the sensor's frame of that instant (motion distortion, what
    deskewing undoes). The scan's ``times`` and ``world`` (hit points in the scene frame) are the
    truth to check against; noise and dropout as in :func:`cast`.
    """
    scene = _as_scene(scene_or_mesh)
    times = np.asarray(times, np.float64)
    dirs_local = ray_directions(model)
    if times.shape != (len(dirs_local),):
        raise ValueError(f"need one time per ray ({len(dirs_local)}), got shape {times.shape}")
    unique, inverse = np.unique(times, return_inverse=True)
    poses = np.stack([_check_pose(pose_at(float(t))) for t in unique])
    R, origin = poses[inverse, :3, :3], poses[inverse, :3, 3]
    dirs_scene = np.einsum("nij,nj->ni", R, dirs_local.astype(np.float64))
    rays = np.concatenate([origin, dirs_scene], axis=1).astype(np.float32)
    hits = scene.cast_rays(o3d.core.Tensor.from_numpy(rays), nthreads=nthreads)
    ranges = hits["t_hit"].numpy().astype(np.float32, copy=True)
    finite = np.isfinite(ranges)
    gen = rng if rng is not None else np.random.default_rng(model.seed)
    if model.range_noise_std > 0.0:
        noise = gen.normal(0.0, model.range_noise_std, size=ranges.shape)
        ranges[finite] += noise[finite].astype(np.float32)
    valid = finite & (ranges >= model.min_range) & (ranges <= model.max_range)
    if model.dropout_prob > 0.0:
        valid &= gen.random(ranges.shape) >= model.dropout_prob
    keep = np.flatnonzero(valid)
    ranges = ranges[keep]
    normals = hits["primitive_normals"].numpy()[keep]
    points = np.empty((keep.size, 4), dtype=np.float32)
    points[:, :3] = dirs_local[keep] * ranges[:, None]
    cos_inc = np.abs(np.einsum("ij,ij->i", normals, dirs_scene[keep]))
    points[:, 3] = np.clip(cos_inc, 0.0, 1.0)
    n_cols = model.n_columns
    return LidarScan(
        points=points,
        ranges=ranges,
        ring=(keep // n_cols).astype(np.int32),
        column=(keep % n_cols).astype(np.int32),
        geometry_ids=hits["geometry_ids"].numpy()[keep],
        primitive_ids=hits["primitive_ids"].numpy()[keep],
        normals=normals,
        times=times[keep],
        world=origin[keep] + dirs_scene[keep] * ranges[:, None].astype(np.float64),
    )


def _layout(fields: list[tuple[str, str, int]], itemsize: int) -> np.dtype:
    names, formats, offsets = zip(*fields, strict=True)
    return np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": itemsize})


#: the drivers' PointCloud2 point layouts (little-endian), as numpy dtypes
DRIVER_LAYOUTS: dict[str, np.dtype] = {
    # ouster-ros PointXYZIRT-like (its default "original" layout): t = ns after the stamp
    "ouster": _layout(
        [
            ("x", "<f4", 0),
            ("y", "<f4", 4),
            ("z", "<f4", 8),
            ("intensity", "<f4", 16),
            ("t", "<u4", 20),
            ("reflectivity", "<u2", 24),
            ("ring", "<u2", 26),
            ("ambient", "<u2", 28),
            ("range", "<u4", 32),
        ],
        48,
    ),
    # HesaiLidar_ROS_2.0 / pandar: timestamp = absolute float64 seconds
    "hesai": _layout(
        [
            ("x", "<f4", 0),
            ("y", "<f4", 4),
            ("z", "<f4", 8),
            ("intensity", "<f4", 12),
            ("timestamp", "<f8", 16),
            ("ring", "<u2", 24),
        ],
        32,
    ),
    # velodyne_pointcloud PointXYZIRT: time = float32 seconds relative to the stamp
    "velodyne": _layout(
        [
            ("x", "<f4", 0),
            ("y", "<f4", 4),
            ("z", "<f4", 8),
            ("intensity", "<f4", 12),
            ("ring", "<u2", 16),
            ("time", "<f4", 18),
        ],
        22,
    ),
    # livox_ros_driver2 (xfer_format 0), packed: timestamp = absolute float64 nanoseconds
    "livox": _layout(
        [
            ("x", "<f4", 0),
            ("y", "<f4", 4),
            ("z", "<f4", 8),
            ("intensity", "<f4", 12),
            ("tag", "u1", 16),
            ("line", "u1", 17),
            ("timestamp", "<f8", 18),
        ],
        26,
    ),
    # Livox CustomMsg points as PointCloud2: offset_time = uint32 ns after the stamp
    "livox_custom": _layout(
        [
            ("x", "<f4", 0),
            ("y", "<f4", 4),
            ("z", "<f4", 8),
            ("reflectivity", "u1", 12),
            ("tag", "u1", 13),
            ("line", "u1", 14),
            ("offset_time", "<u4", 16),
        ],
        20,
    ),
}


def driver_records(
    points: np.ndarray,
    times: np.ndarray,
    layout: str,
    stamp_ns: int,
    ring: np.ndarray | None = None,
) -> np.ndarray:
    """N points (x, y, z[, intensity]) seen at ``times`` (s relative to the header stamp
    ``stamp_ns``) as one driver's records (:data:`DRIVER_LAYOUTS`), the time in that driver's
    field, unit and reference. Fields the simulator does not know are 0."""
    points = np.asarray(points)
    times = np.asarray(times, np.float64)
    out = np.zeros(len(points), DRIVER_LAYOUTS[layout])
    for column, name in enumerate("xyz"):
        out[name] = points[:, column]
    if "intensity" in out.dtype.names and points.shape[1] > 3:
        out["intensity"] = points[:, 3]
    if ring is not None and "ring" in out.dtype.names:
        out["ring"] = ring
    if layout == "ouster":
        out["t"] = np.round(times * 1e9).astype(np.uint32)
    elif layout == "hesai":
        out["timestamp"] = stamp_ns * 1e-9 + times
    elif layout == "velodyne":
        out["time"] = times.astype(np.float32)
    elif layout == "livox":
        out["timestamp"] = (stamp_ns + np.round(times * 1e9).astype(np.int64)).astype(np.float64)
    else:
        out["offset_time"] = np.round(times * 1e9).astype(np.uint32)
    return out
