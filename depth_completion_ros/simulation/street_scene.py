"""A procedural street (road, kerbs, sidewalks, buildings, cars, poles) seen by a KITTI-like rig.

Why: the demo and the tests must run on a fresh machine with no data, and need camera images, a
64-beam scan and *exact* dense ground truth, all consistent with each other. Everything is one
triangle mesh in a world frame (x along the street, y left, z up, ground at z = 0), ray cast
with open3d: one ray per pixel for the camera, the shared ``lidar.cast`` for the LiDAR. Frames
can be written in the KITTI raw layout, so the same readers handle real and synthetic data.
"""

from __future__ import annotations

import datetime as dt
import functools
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import open3d as o3d

from depth_completion_ros.simulation.lidar import (
    T_LIDAR_TO_OPTICAL,
    LidarModel,
    cast,
    rotate_vectors,
)

__all__ = [
    "LABELS",
    "CameraRig",
    "StreetScene",
    "SyntheticFrame",
    "make_sequence",
    "make_street",
    "render_camera",
    "scan_lidar",
    "write_kitti_raw",
]

# Semantic class per pixel / triangle (0 = sky, nothing hit).
LABELS = {
    "sky": 0,
    "road": 1,
    "sidewalk": 2,
    "building": 3,
    "car": 4,
    "pole": 5,
    "sign": 6,
}

# Procedural textures, chosen per triangle and evaluated at the hit point's world coordinates.
_PLAIN, _ROAD, _PAVING, _FACADE, _GLASS = range(5)

_SKY_TOP = np.array([0.36, 0.55, 0.85], dtype=np.float32)
_SKY_HORIZON = np.array([0.78, 0.85, 0.93], dtype=np.float32)
_SUN = np.array([-0.35, 0.45, 0.82]) / np.linalg.norm([-0.35, 0.45, 0.82])
_AMBIENT = 0.35


@dataclass(frozen=True)
class CameraRig:
    """Pinhole camera (image_02) rigidly mounted on the LiDAR like KITTI's.

    Defaults are KITTI's P_rect_02 at 1242x375; cam0 sits 0.27 m ahead of and 0.08 m below the
    LiDAR, cam2 6 cm left of cam0 (``cam0_to_cam2`` is added to cam0 coordinates, KITTI's T_02
    sign). Images are rectified and distortion free. ``lidar_height``: LiDAR above the road.
    """

    width: int = 1242
    height: int = 375
    fx: float = 721.5377
    fy: float = 721.5377
    cx: float = 609.5593
    cy: float = 172.854
    cam0_in_velo: tuple[float, float, float] = (0.27, 0.0, -0.08)
    cam0_to_cam2: tuple[float, float, float] = (0.06, 0.0, 0.0)
    lidar_height: float = 1.73

    def __post_init__(self) -> None:
        if self.width < 1 or self.height < 1:
            raise ValueError(f"Image size must be positive, got {self.width}x{self.height}.")
        if self.fx <= 0 or self.fy <= 0:
            raise ValueError(f"Focal lengths must be > 0, got fx={self.fx}, fy={self.fy}.")

    @classmethod
    def kitti(cls, width: int = 1242, height: int = 375, **kwargs) -> CameraRig:
        """KITTI's cam2 scaled to ``width`` (same horizontal field of view), e.g. 621x188."""
        s = width / 1242.0
        return cls(
            width=width,
            height=height,
            fx=721.5377 * s,
            fy=721.5377 * s,
            cx=609.5593 * s,
            cy=172.854 * height / 375.0,
            **kwargs,
        )

    @property
    def K(self) -> np.ndarray:
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    @property
    def P(self) -> np.ndarray:
        """3x4 projection from cam2's own optical frame: ``P @ T_velo_to_cam`` projects a scan."""
        return np.hstack([self.K, np.zeros((3, 1))])

    @property
    def T_velo_to_cam0(self) -> np.ndarray:
        """KITTI's Tr_velo_to_cam (velodyne -> cam0, R_rect_00 = identity here)."""
        T = T_LIDAR_TO_OPTICAL.copy()
        T[:3, 3] = -T[:3, :3] @ np.asarray(self.cam0_in_velo, dtype=np.float64)
        return T

    @property
    def T_velo_to_cam(self) -> np.ndarray:
        """Velodyne -> cam2 optical frame (z forward, x right, y down)."""
        T = self.T_velo_to_cam0
        T[:3, 3] += np.asarray(self.cam0_to_cam2, dtype=np.float64)
        return T


@dataclass
class SyntheticFrame:
    """One camera image + LiDAR scan + exact dense ground truth.

    ``points``: (N, 4) float32 x, y, z, intensity in the velodyne frame (KITTI .bin layout).
    ``depth_gt``: z along cam2's optical axis in metres, 0 for sky. ``P @ T_velo_to_cam``
    projects ``points`` into ``rgb``; pixel (row i, col j) is centred at (u, v) = (j, i), so a
    projected point belongs to pixel ``round(v), round(u)``. ``semantic`` uses ``LABELS``.
    ``T_world_velo``: the LiDAR's pose in the street's world frame.
    """

    rgb: np.ndarray
    depth_gt: np.ndarray
    points: np.ndarray
    K: np.ndarray
    P: np.ndarray
    T_velo_to_cam: np.ndarray
    stamp: float
    semantic: np.ndarray
    T_world_velo: np.ndarray


class _MeshBuilder:
    """Collects boxes and quads with per-triangle albedo, texture and label."""

    # Two triangles per face of a box, indexing corners by bits (x, y, z) = (1, 2, 4).
    _BOX_FACES = np.array(
        [
            [0, 2, 6], [0, 6, 4], [1, 5, 7], [1, 7, 3],  # -x, +x
            [0, 4, 5], [0, 5, 1], [2, 3, 7], [2, 7, 6],  # -y, +y
            [0, 1, 3], [0, 3, 2], [4, 6, 7], [4, 7, 5],  # -z, +z
        ]
    )  # fmt: skip

    def __init__(self) -> None:
        self.vertices: list[np.ndarray] = []
        self.triangles: list[np.ndarray] = []
        self.albedo: list[np.ndarray] = []
        self.material: list[np.ndarray] = []
        self.label: list[np.ndarray] = []
        self._n_vertices = 0

    def _add(self, verts: np.ndarray, tris: np.ndarray, albedo, material: int, label: int) -> None:
        self.vertices.append(verts)
        self.triangles.append(tris + self._n_vertices)
        self._n_vertices += len(verts)
        n = len(tris)
        self.albedo.append(np.tile(np.asarray(albedo, dtype=np.float32), (n, 1)))
        self.material.append(np.full(n, material, dtype=np.uint8))
        self.label.append(np.full(n, label, dtype=np.uint8))

    def box(self, lo, hi, albedo, material: int, label: int) -> None:
        """Axis-aligned box from corner ``lo`` to ``hi``; faces wound with outward normals."""
        lo, hi = np.asarray(lo, float), np.asarray(hi, float)
        bits = (np.arange(8)[:, None] >> np.arange(3)[None, :]) & 1
        verts = np.where(bits == 1, hi, lo)
        tris = self._BOX_FACES.copy()
        v = verts[tris]
        normal = np.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0])
        outward = np.einsum("ij,ij->i", normal, v.mean(axis=1) - (lo + hi) / 2) > 0
        tris[~outward] = tris[~outward][:, ::-1]
        self._add(verts, tris, albedo, material, label)

    def quad_z(
        self,
        x0: float,
        x1: float,
        y0: float,
        y1: float,
        z: float,
        albedo,
        material,
        label,
    ):
        """Horizontal rectangle facing up."""
        verts = np.array([[x0, y0, z], [x1, y0, z], [x1, y1, z], [x0, y1, z]], dtype=float)
        self._add(verts, np.array([[0, 1, 2], [0, 2, 3]]), albedo, material, label)


@dataclass
class StreetScene:
    """The street as one mesh with per-triangle albedo (RGB in [0, 1]), texture and label."""

    vertices: np.ndarray
    triangles: np.ndarray
    albedo: np.ndarray
    material: np.ndarray
    label: np.ndarray
    length: float

    def __post_init__(self) -> None:
        self.raycasting = o3d.t.geometry.RaycastingScene()
        self.raycasting.add_triangles(
            o3d.core.Tensor(self.vertices.astype(np.float32)),
            o3d.core.Tensor(self.triangles.astype(np.uint32)),
        )

    def mesh(self) -> o3d.geometry.TriangleMesh:
        """A legacy open3d mesh (for viewing or saving); colours are the plain albedos."""
        mesh = o3d.geometry.TriangleMesh(
            o3d.utility.Vector3dVector(self.vertices.astype(np.float64)),
            o3d.utility.Vector3iVector(self.triangles.astype(np.int32)),
        )
        mesh.compute_vertex_normals()
        return mesh

    def surface_albedo(self, points: np.ndarray, primitive_ids: np.ndarray) -> np.ndarray:
        """Textured albedo (N, 3) float32 at world ``points`` lying on triangles ``primitive_ids``.

        Textures are procedural in world coordinates, so camera and LiDAR agree on them and they
        stay put as the ego moves: lane markings, paving tiles, windows, car glass, fine grain.
        """
        albedo = self.albedo[primitive_ids].copy()
        material = self.material[primitive_ids]
        x, y, z = (points[:, k].astype(np.float64) for k in range(3))
        grain = 0.9 + 0.2 * _hash_noise(np.floor(x * 6), np.floor(y * 6), np.floor(z * 6))
        albedo *= grain[:, None].astype(np.float32)

        road = material == _ROAD
        if road.any():
            xr, yr = x[road], y[road]
            centre = (np.abs(yr) < 0.08) & (np.mod(xr, 6.0) < 3.0)
            lanes = np.abs(np.abs(yr) - 3.5) < 0.08
            albedo[np.flatnonzero(road)[centre | lanes]] = 0.9
        paving = material == _PAVING
        if paving.any():
            grout = (np.mod(x[paving], 0.6) < 0.03) | (np.mod(y[paving], 0.6) < 0.03)
            checker = (np.floor(x[paving] / 0.6) + np.floor(y[paving] / 0.6)) % 2 == 0
            scale = np.where(grout, 0.55, np.where(checker, 0.9, 1.05)).astype(np.float32)
            albedo[paving] *= scale[:, None]
        facade = material == _FACADE
        if facade.any():
            u, v = (
                x[facade] + y[facade],
                z[facade],
            )  # along-wall coordinate on +-x and +-y walls
            window = (np.mod(u, 3.0) > 0.8) & (np.mod(u, 3.0) < 2.2)
            window &= (np.mod(v, 3.2) > 1.0) & (np.mod(v, 3.2) < 2.5) & (v > 1.0)
            ledge = np.mod(v, 3.2) < 0.15
            idx = np.flatnonzero(facade)
            albedo[idx[ledge]] *= 0.7
            albedo[idx[window]] = (0.12, 0.15, 0.2)
        glass = material == _GLASS
        if glass.any():
            pillar = np.mod(x[glass], 1.1) < 0.12
            albedo[np.flatnonzero(glass)[~pillar]] = (0.08, 0.1, 0.13)
        return np.clip(albedo, 0.0, 1.0)


def _hash_noise(ix: np.ndarray, iy: np.ndarray, iz: np.ndarray) -> np.ndarray:
    """Deterministic value noise in [0, 1) per integer lattice cell."""
    h = ix.astype(np.int64) * 73856093 ^ iy.astype(np.int64) * 19349663
    h ^= iz.astype(np.int64) * 83492791
    h = (h ^ (h >> 13)) * 1274126177
    return ((h >> 7) & 0xFFFF).astype(np.float64) / 65536.0


_BUILDING_COLOURS = np.array(
    [
        [0.78, 0.7, 0.58],
        [0.62, 0.33, 0.27],
        [0.6, 0.6, 0.62],
        [0.85, 0.82, 0.72],
        [0.55, 0.62, 0.7],
    ]
)
_CAR_COLOURS = np.array(
    [
        [0.9, 0.9, 0.9],
        [0.08, 0.08, 0.09],
        [0.62, 0.63, 0.66],
        [0.7, 0.1, 0.1],
        [0.12, 0.2, 0.55],
    ]
)


def make_street(seed: int = 0, length: float = 200.0) -> StreetScene:
    """A straight street from x = -30 m to ``length`` (plus a closing building row), from a seed.

    Road |y| < 5.5 m: two driving lanes (ego lane centred at y = -1.75) and parking strips;
    kerbs and sidewalks at 0.15 m; buildings from |y| = 8.5 m with varied setback, length and
    height; poles (some with signs) on the sidewalks; cars parked, oncoming, and in the ego lane
    only beyond ``length - 140`` m so the ego never drives into one.
    """
    if length < 60.0:
        raise ValueError(f"length={length} m is too short; use >= 60 m (cars sit up to 60 m).")
    rng = np.random.default_rng(seed)
    b = _MeshBuilder()
    x0, x1 = -30.0, float(length)
    b.quad_z(x0, x1, -5.5, 5.5, 0.0, (0.3, 0.3, 0.32), _ROAD, LABELS["road"])
    for side in (-1.0, 1.0):
        lo, hi = sorted((side * 5.5, side * 5.75))
        b.box(
            (x0, lo, 0.0),
            (x1, hi, 0.15),
            (0.75, 0.75, 0.72),
            _PLAIN,
            LABELS["sidewalk"],
        )
        lo, hi = sorted((side * 5.75, side * 40.0))
        b.box(
            (x0, lo, 0.0),
            (x1, hi, 0.15),
            (0.6, 0.58, 0.54),
            _PAVING,
            LABELS["sidewalk"],
        )
        x = x0
        while x < x1:  # buildings
            lb = rng.uniform(8.0, 25.0)
            near = 8.5 + rng.uniform(0.0, 3.0)
            lo, hi = sorted((side * near, side * (near + 12.0)))
            colour = _BUILDING_COLOURS[rng.integers(len(_BUILDING_COLOURS))]
            colour = colour * rng.uniform(0.9, 1.1)
            b.box((x, lo, 0.0), (x + lb, hi, rng.uniform(6.0, 22.0)), colour, _FACADE, 3)
            x += lb + (rng.uniform(1.0, 5.0) if rng.random() < 0.4 else 0.0)
        x = x0 + rng.uniform(0.0, 10.0)
        while x < x1:  # poles, every other one carrying a sign facing the traffic
            yp = side * 6.3
            b.box((x - 0.08, yp - 0.08, 0.15), (x + 0.08, yp + 0.08, 6.0), (0.5, 0.5, 0.52),
                  _PLAIN, LABELS["pole"])  # fmt: skip
            if rng.random() < 0.5:
                sign = (0.8, 0.1, 0.1) if rng.random() < 0.5 else (0.1, 0.25, 0.8)
                b.box(
                    (x - 0.12, yp - 0.35, 2.2),
                    (x - 0.08, yp + 0.35, 2.9),
                    sign,
                    _PLAIN,
                    6,
                )
            x += rng.uniform(15.0, 30.0)
    b.box((x1, -40.0, 0.0), (x1 + 12.0, 40.0, 25.0), _BUILDING_COLOURS[0], _FACADE, 3)

    lanes = [(-4.5, 3.0), (4.5, 3.0), (1.75, 5.0), (-1.75, max(5.0, x1 - 140.0))]
    for yc, start in lanes:
        x = start + rng.uniform(0.0, 8.0)
        while x < x1 - 10.0:
            _add_car(b, rng, x, yc)
            x += rng.uniform(7.0, 30.0)
    return StreetScene(
        vertices=np.concatenate(b.vertices).astype(np.float32),
        triangles=np.concatenate(b.triangles).astype(np.uint32),
        albedo=np.concatenate(b.albedo),
        material=np.concatenate(b.material),
        label=np.concatenate(b.label),
        length=x1,
    )


def _add_car(b: _MeshBuilder, rng: np.random.Generator, x: float, yc: float) -> None:
    """A car as body, cabin (glass) and four wheels, its rear at ``x``, centred at ``yc``."""
    length, width = rng.uniform(3.9, 4.7), rng.uniform(1.7, 1.9)
    colour = _CAR_COLOURS[rng.integers(len(_CAR_COLOURS))]
    car = LABELS["car"]
    hw = width / 2
    b.box((x, yc - hw, 0.3), (x + length, yc + hw, 1.0), colour, _PLAIN, car)
    b.box((x + 0.25 * length, yc - hw + 0.08, 1.0), (x + 0.8 * length, yc + hw - 0.08, 1.45),
          colour, _GLASS, car)  # fmt: skip
    for wx in (x + 0.5, x + length - 1.2):
        for wy in (yc - hw, yc + hw - 0.22):
            b.box(
                (wx, wy, 0.0),
                (wx + 0.7, wy + 0.22, 0.62),
                (0.05, 0.05, 0.05),
                _PLAIN,
                car,
            )


@functools.lru_cache(maxsize=4)
def _pixel_rays(rig: CameraRig) -> np.ndarray:
    """(H*W, 3) camera-frame ray directions with unit z, so a ray's hit distance *is* its depth."""
    u, v = np.meshgrid(np.arange(rig.width), np.arange(rig.height))
    dirs = np.stack(
        [(u - rig.cx) / rig.fx, (v - rig.cy) / rig.fy, np.ones_like(u, dtype=float)],
        axis=-1,
    ).reshape(-1, 3)
    dirs = dirs.astype(np.float32)
    dirs.flags.writeable = False
    return dirs


def _shade(
    scene: StreetScene,
    hit_points: np.ndarray,
    prim: np.ndarray,
    normals: np.ndarray,
    dirs,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per hit: textured albedo (N, 3), Lambertian light (N,) and cosine of incidence (N,)."""
    albedo = scene.surface_albedo(hit_points, prim)
    facing = np.where(np.einsum("ij,ij->i", normals, dirs) > 0, -1.0, 1.0).astype(np.float32)
    n = normals * facing[:, None]
    light = _AMBIENT + (1.0 - _AMBIENT) * np.clip(
        np.einsum("ij,j->i", n, _SUN.astype(np.float32)), 0.0, 1.0
    )
    cos_inc = np.abs(np.einsum("ij,ij->i", n, dirs)) / np.linalg.norm(dirs, axis=1)
    return albedo, light, cos_inc


def render_camera(
    scene: StreetScene, rig: CameraRig, T_world_velo: np.ndarray, nthreads: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ray cast one ray per pixel: (rgb uint8 HxWx3, depth float32 HxW metres, semantic uint8)."""
    T_world_cam = T_world_velo @ np.linalg.inv(rig.T_velo_to_cam)
    dirs_cam = _pixel_rays(rig)
    dirs = rotate_vectors(dirs_cam, T_world_cam[:3, :3])
    rays = np.empty((dirs.shape[0], 6), dtype=np.float32)
    rays[:, :3] = T_world_cam[:3, 3]
    rays[:, 3:] = dirs
    hits = scene.raycasting.cast_rays(o3d.core.Tensor.from_numpy(rays), nthreads=nthreads)
    t_hit = hits["t_hit"].numpy()
    hit = np.flatnonzero(np.isfinite(t_hit))
    prim = hits["primitive_ids"].numpy()[hit]
    points = rays[hit, :3] + dirs[hit] * t_hit[hit, None]
    albedo, light, _ = _shade(
        scene, points, prim, hits["primitive_normals"].numpy()[hit], dirs[hit]
    )

    h, w = rig.height, rig.width
    rows = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None]
    sky = _SKY_TOP + (_SKY_HORIZON - _SKY_TOP) * np.clip(rows * 1.6, 0.0, 1.0)
    rgb = np.repeat(sky, w, axis=0).reshape(h * w, 3)
    rgb[hit] = albedo * light[:, None]
    depth = np.zeros(h * w, dtype=np.float32)
    depth[hit] = t_hit[hit]
    semantic = np.zeros(h * w, dtype=np.uint8)
    semantic[hit] = scene.label[prim]
    rgb8 = np.clip(rgb * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return rgb8.reshape(h, w, 3), depth.reshape(h, w), semantic.reshape(h, w)


def scan_lidar(
    scene: StreetScene,
    model: LidarModel,
    T_world_velo: np.ndarray,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """(N, 4) float32 KITTI-style points; intensity = textured luminance x cos(incidence)."""
    scan = cast(scene.raycasting, model, T_world_velo, rng=rng)
    dirs = rotate_vectors(scan.xyz, T_world_velo[:3, :3])
    world = dirs + T_world_velo[:3, 3].astype(np.float32)
    albedo, _, cos_inc = _shade(scene, world, scan.primitive_ids, scan.normals, dirs)
    reflect = np.einsum("ij,j->i", albedo, np.array([0.299, 0.587, 0.114], dtype=np.float32))
    scan.points[:, 3] = np.clip(reflect * cos_inc, 0.0, 1.0)
    return scan.points


def make_sequence(
    n_frames: int,
    seed: int = 0,
    *,
    speed: float = 1.0,
    rate_hz: float = 10.0,
    rig: CameraRig | None = None,
    lidar: LidarModel | None = None,
    start_stamp: float = 1317042000.0,
    scene: StreetScene | None = None,
) -> list[SyntheticFrame]:
    """The ego drives along the ego lane, ``speed`` metres per frame at ``rate_hz``.

    Deterministic from ``seed`` (scene layout and per-frame LiDAR noise). ``start_stamp`` is
    2011-09-26 13:00:00 UTC by default, like a KITTI recording.
    """
    if n_frames < 1:
        raise ValueError(f"n_frames={n_frames} must be >= 1.")
    if rate_hz <= 0:
        raise ValueError(f"rate_hz={rate_hz} must be > 0.")
    rig = rig or CameraRig()
    lidar = lidar or LidarModel.hdl64()
    travel = speed * (n_frames - 1)
    scene = scene or make_street(seed, length=max(200.0, travel + 150.0))
    if travel > scene.length - 150.0:
        raise ValueError(
            f"The sequence drives {travel:.0f} m but the street ends at {scene.length:.0f} m; "
            f"pass a longer scene (make_street(length=...)) or fewer frames."
        )
    frames = []
    for i in range(n_frames):
        T_world_velo = np.eye(4)
        T_world_velo[:3, 3] = (speed * i, -1.75, rig.lidar_height)
        rng = np.random.default_rng([seed, i])
        frames.append(render_frame(scene, rig, lidar, T_world_velo, start_stamp + i / rate_hz, rng))
    return frames


def render_frame(
    scene: StreetScene,
    rig: CameraRig,
    lidar: LidarModel,
    T_world_velo: np.ndarray,
    stamp: float,
    rng: np.random.Generator,
) -> SyntheticFrame:
    """Camera image, LiDAR scan and exact depth with the LiDAR at ``T_world_velo`` (any pose:
    make_sequence's straight drive, or a test's own trajectory)."""
    rgb, depth, semantic = render_camera(scene, rig, T_world_velo)
    return SyntheticFrame(
        rgb=rgb,
        depth_gt=depth,
        points=scan_lidar(scene, lidar, T_world_velo, rng=rng),
        K=rig.K,
        P=rig.P,
        T_velo_to_cam=rig.T_velo_to_cam,
        stamp=stamp,
        semantic=semantic,
        T_world_velo=T_world_velo,
    )


# --- KITTI raw layout ---------------------------------------------------------------------------

_KITTI_CAM_OFFSETS = {0: (0.0, 0.0, 0.0), 1: (-0.54, 0.0, 0.0), 3: (-0.47, 0.0, 0.0)}


def _fmt(values) -> str:
    """KITTI's number format: %e, space separated (``+ 0.0`` turns -0.0 into 0.0)."""
    return " ".join(f"{float(v) + 0.0:e}" for v in np.asarray(values, dtype=np.float64).ravel())


def _kitti_timestamp(stamp: float) -> str:
    """``2011-09-26 13:02:25.964389445`` (UTC), microsecond precision padded to nanoseconds."""
    sec = int(np.floor(stamp))
    micros = round((stamp - sec) * 1e6)
    sec, micros = (sec + 1, 0) if micros >= 1_000_000 else (sec, micros)
    t = dt.datetime.fromtimestamp(sec, tz=dt.UTC)
    return f"{t:%Y-%m-%d %H:%M:%S}.{micros * 1000:09d}"


def _calib_time(stamp: float) -> str:
    months = [
        "Jan",
        "Feb",
        "Mar",
        "Apr",
        "May",
        "Jun",
        "Jul",
        "Aug",
        "Sep",
        "Oct",
        "Nov",
        "Dec",
    ]
    t = dt.datetime.fromtimestamp(int(stamp), tz=dt.UTC)
    return f"{t.day:02d}-{months[t.month - 1]}-{t.year} {t:%H:%M:%S}"


def write_kitti_raw(
    frames: list[SyntheticFrame],
    root: str | Path,
    date: str = "2011_09_26",
    drive: int = 1,
    cam0_to_cam2: tuple[float, float, float] = (0.06, 0.0, 0.0),
) -> Path:
    """Write frames in the KITTI raw layout (+ KITTI depth-completion ground truth); returns the
    drive folder ``<root>/<date>/<date>_drive_XXXX_sync``.

    Calibration follows KITTI's chain: ``P_rect_02 @ R_rect_00 @ Tr_velo_to_cam`` equals the
    frames' ``P @ T_velo_to_cam`` (Tr goes to cam0, P_rect_02 carries the cam0 -> cam2 offset).
    Ground truth: ``proj_depth/groundtruth/image_02/%010d.png``, uint16 = metres * 256, 0 = none
    (depths beyond 255.99 m are written as 0).
    """
    if not frames:
        raise ValueError("write_kitti_raw needs at least one frame.")
    f0 = frames[0]
    h, w = f0.depth_gt.shape
    for f in frames:
        same = np.allclose(f.K, f0.K) and np.allclose(f.T_velo_to_cam, f0.T_velo_to_cam)
        if not same or f.depth_gt.shape != (h, w) or not np.allclose(f.P[:, 3], 0.0):
            raise ValueError(
                "All frames of a KITTI drive share one calibration and image size, with P = "
                "K [I | 0]; split the sequence by calibration and write one drive per part."
            )
    root = Path(root)
    date_dir = root / date
    drive_dir = date_dir / f"{date}_drive_{drive:04d}_sync"
    K = f0.K
    offsets = {**_KITTI_CAM_OFFSETS, 2: tuple(cam0_to_cam2)}
    T_velo_to_cam0 = f0.T_velo_to_cam.copy()
    T_velo_to_cam0[:3, 3] -= np.asarray(cam0_to_cam2, dtype=np.float64)

    lines = [f"calib_time: {_calib_time(f0.stamp)}", f"corner_dist: {_fmt([0.0995])}"]
    for i in range(4):
        t = np.asarray(offsets[i], dtype=np.float64)
        P_rect = np.hstack([K, (K @ t)[:, None]])
        lines += [
            f"S_0{i}: {_fmt([w, h])}",
            f"K_0{i}: {_fmt(K)}",
            f"D_0{i}: {_fmt(np.zeros(5))}",
            f"R_0{i}: {_fmt(np.eye(3))}",
            f"T_0{i}: {_fmt(t)}",
            f"S_rect_0{i}: {_fmt([w, h])}",
            f"R_rect_0{i}: {_fmt(np.eye(3))}",
            f"P_rect_0{i}: {_fmt(P_rect)}",
        ]
    date_dir.mkdir(parents=True, exist_ok=True)
    (date_dir / "calib_cam_to_cam.txt").write_text("\n".join(lines) + "\n")
    (date_dir / "calib_velo_to_cam.txt").write_text(
        f"calib_time: {_calib_time(f0.stamp)}\n"
        f"R: {_fmt(T_velo_to_cam0[:3, :3])}\n"
        f"T: {_fmt(T_velo_to_cam0[:3, 3])}\n"
        f"delta_f: {_fmt([0, 0])}\n"
        f"delta_c: {_fmt([0, 0])}\n"
    )

    image_dir = drive_dir / "image_02" / "data"
    velo_dir = drive_dir / "velodyne_points" / "data"
    gt_dir = drive_dir / "proj_depth" / "groundtruth" / "image_02"
    for d in (image_dir, velo_dir, gt_dir):
        d.mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(frames):
        name = f"{i:010d}"
        if not cv2.imwrite(str(image_dir / f"{name}.png"), cv2.cvtColor(f.rgb, cv2.COLOR_RGB2BGR)):
            raise OSError(f"Could not write {image_dir / name}.png")
        np.ascontiguousarray(f.points, dtype=np.float32).tofile(velo_dir / f"{name}.bin")
        gt = np.round(f.depth_gt.astype(np.float64) * 256.0)
        gt = np.where((gt > 0) & (gt <= 65535), gt, 0).astype(np.uint16)
        if not cv2.imwrite(str(gt_dir / f"{name}.png"), gt):
            raise OSError(f"Could not write {gt_dir / name}.png")
    stamps = "".join(_kitti_timestamp(f.stamp) + "\n" for f in frames)
    (drive_dir / "image_02" / "timestamps.txt").write_text(stamps)
    (drive_dir / "velodyne_points" / "timestamps.txt").write_text(stamps)
    return drive_dir
