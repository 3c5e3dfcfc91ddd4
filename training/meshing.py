"""Depth map -> triangle mesh for the stage-1 LiDAR simulation: a grid mesh or Poisson.

Two ways to turn one camera's depth map into a surface a simulated LiDAR can hit:

- ``grid_mesh``: every pixel is a vertex (back-projected with K), each 2x2 block of pixels two
  triangles, and a triangle is dropped where its corners' depths jump (a depth discontinuity is
  an occlusion edge, not a surface). Exact at the pixels, no invented surfaces, and fast.
- ``poisson_mesh``: screened Poisson reconstruction (open3d), as the DMD3C paper does. Poisson
  closes every hole and extends surfaces where there were no points; vertices whose
  reconstruction density (how many input points supported them) falls below a quantile are cut
  away, which removes most of those invented surfaces.

Both return an ``open3d.t.geometry.TriangleMesh`` in the camera optical frame (z forward, x right,
y down), ready for ``depth_completion_ros.simulation.lidar.make_raycasting_scene``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import open3d as o3d

from depth_completion_ros.projection import backproject

MESH_METHODS = ("grid", "poisson")


@dataclass(frozen=True)
class MeshConfig:
    """How a depth map becomes a mesh (see the module docstring)."""

    method: str = "grid"
    grid_max_jump: float = 0.05  # drop a triangle whose max/min corner depth exceeds 1 + this
    grid_stride: int = 2  # every n-th pixel is a vertex (1: exact but ~4x slower ray casting)
    poisson_depth: int = 9  # octree depth: the grid is at most 2^depth cells per side
    poisson_density_quantile: float = 0.05  # cut vertices below this density quantile
    poisson_stride: int = 2  # every n-th pixel becomes a Poisson input point

    def __post_init__(self) -> None:
        if self.method not in MESH_METHODS:
            raise ValueError(f"mesh method '{self.method}' unknown: use one of {MESH_METHODS}")
        if self.grid_max_jump <= 0:
            raise ValueError(f"grid_max_jump={self.grid_max_jump} must be > 0 (relative depth)")
        if self.grid_stride < 1 or self.poisson_stride < 1:
            raise ValueError("grid_stride and poisson_stride must be >= 1 (pixels)")
        if not 1 <= self.poisson_depth <= 14:
            raise ValueError(f"poisson_depth={self.poisson_depth} must be in 1..14")
        if not 0.0 <= self.poisson_density_quantile < 1.0:
            raise ValueError(
                f"poisson_density_quantile={self.poisson_density_quantile} must be in [0, 1)"
            )


def _tensor_mesh(vertices: np.ndarray, triangles: np.ndarray) -> o3d.t.geometry.TriangleMesh:
    mesh = o3d.t.geometry.TriangleMesh()
    mesh.vertex.positions = o3d.core.Tensor(np.ascontiguousarray(vertices, dtype=np.float32))
    mesh.triangle.indices = o3d.core.Tensor(np.ascontiguousarray(triangles, dtype=np.int32))
    return mesh


def grid_mesh(
    depth: np.ndarray, K: np.ndarray, max_jump: float = 0.05, stride: int = 1
) -> o3d.t.geometry.TriangleMesh:
    """Pixels as vertices, two triangles per 2x2 block whose corners are valid and whose depths
    stay within a factor ``1 + max_jump`` of each other.

    Why relative: a depth step of 0.3 m is an occlusion edge at 3 m but the normal spacing of
    ground pixels near the horizon at 60 m. Unused vertices (invalid pixels) are kept at the
    origin rather than re-indexed: the ray caster only sees triangles.
    """
    depth = np.asarray(depth, dtype=np.float32)
    K = np.asarray(K, dtype=np.float64)
    if stride > 1:
        depth = depth[::stride, ::stride]
        K = _strided_K(K, stride)
    points = backproject(depth, K)
    height, width = depth.shape
    valid = depth > 0
    z = np.where(valid, depth, np.float32(np.nan))
    a, b = z[:-1, :-1], z[:-1, 1:]  # top-left, top-right of each 2x2 block
    c, d = z[1:, :-1], z[1:, 1:]  # bottom-left, bottom-right
    limit = np.float32(1.0 + max_jump)
    with np.errstate(invalid="ignore"):
        # NaN propagates through minimum/maximum and compares False: a triangle with an
        # invalid corner is never kept
        lo1 = np.minimum(np.minimum(a, b), c)
        hi1 = np.maximum(np.maximum(a, b), c)
        keep1 = hi1 <= lo1 * limit
        lo2 = np.minimum(np.minimum(b, c), d)
        hi2 = np.maximum(np.maximum(b, c), d)
        keep2 = hi2 <= lo2 * limit
    index = np.arange(height * width, dtype=np.int32).reshape(height, width)
    ia, ib = index[:-1, :-1], index[:-1, 1:]
    ic, id_ = index[1:, :-1], index[1:, 1:]
    tri1 = np.stack([ia[keep1], ic[keep1], ib[keep1]], axis=1)
    tri2 = np.stack([ib[keep2], ic[keep2], id_[keep2]], axis=1)
    vertices = np.nan_to_num(points.reshape(-1, 3), nan=0.0)
    return _tensor_mesh(vertices, np.concatenate([tri1, tri2]))


def _strided_K(K: np.ndarray, stride: int) -> np.ndarray:
    """Intrinsics of ``image[::stride, ::stride]``: sub-sampled pixel i is full pixel i*stride."""
    K = K.copy()
    K[0, 0] /= stride
    K[1, 1] /= stride
    K[0, 2] /= stride
    K[1, 2] /= stride
    return K


def depth_normals(points: np.ndarray) -> np.ndarray:
    """Per-pixel unit normals of an organised H x W x 3 cloud, facing the camera.

    Central differences along rows and columns, crossed; NaN where a neighbour is invalid.
    Elementwise numpy only (no BLAS: see ``lidar.rotate_vectors`` on threads after open3d).
    """
    du = np.full_like(points, np.nan)
    dv = np.full_like(points, np.nan)
    du[:, 1:-1] = points[:, 2:] - points[:, :-2]
    dv[1:-1] = points[2:] - points[:-2]
    n = np.empty_like(points)
    n[..., 0] = du[..., 1] * dv[..., 2] - du[..., 2] * dv[..., 1]
    n[..., 1] = du[..., 2] * dv[..., 0] - du[..., 0] * dv[..., 2]
    n[..., 2] = du[..., 0] * dv[..., 1] - du[..., 1] * dv[..., 0]
    with np.errstate(invalid="ignore", divide="ignore"):
        n /= np.sqrt(n[..., 0] ** 2 + n[..., 1] ** 2 + n[..., 2] ** 2)[..., None]
        facing = n[..., 0] * points[..., 0] + n[..., 1] * points[..., 1]
        facing += n[..., 2] * points[..., 2]
    n[facing > 0] *= -1.0  # towards the camera at the origin
    return n


def poisson_mesh(
    depth: np.ndarray,
    K: np.ndarray,
    octree_depth: int = 9,
    density_quantile: float = 0.05,
    stride: int = 2,
    n_threads: int = 1,
) -> o3d.t.geometry.TriangleMesh:
    """Screened Poisson surface of the back-projected depth map, low-density parts cut away.

    Normals come from the depth map's own pixel grid (exact neighbours, oriented to the camera)
    instead of a k-nearest-neighbour search: faster, and no orientation ambiguity.
    """
    points = backproject(np.asarray(depth, np.float32), np.asarray(K, np.float64))
    normals = depth_normals(points)
    points, normals = points[::stride, ::stride].reshape(-1, 3), normals[::stride, ::stride]
    normals = normals.reshape(-1, 3)
    ok = np.isfinite(points).all(axis=1) & np.isfinite(normals).all(axis=1)
    if np.count_nonzero(ok) < 16:
        return _tensor_mesh(np.zeros((0, 3)), np.zeros((0, 3)))
    cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(points[ok].astype(np.float64)))
    cloud.normals = o3d.utility.Vector3dVector(normals[ok].astype(np.float64))
    with o3d.utility.VerbosityContextManager(o3d.utility.VerbosityLevel.Error):
        mesh, densities = o3d.geometry.TriangleMesh.create_from_point_cloud_poisson(
            cloud, depth=int(octree_depth), n_threads=int(n_threads)
        )
    densities = np.asarray(densities)
    if density_quantile > 0 and densities.size:
        mesh.remove_vertices_by_mask(densities < np.quantile(densities, density_quantile))
    vertices = np.asarray(mesh.vertices)
    triangles = np.asarray(mesh.triangles)
    return _tensor_mesh(vertices, triangles)


def build_mesh(depth: np.ndarray, K: np.ndarray, config: MeshConfig) -> o3d.t.geometry.TriangleMesh:
    """The configured mesh of a metric depth map (0 = invalid) seen through K."""
    if config.method == "grid":
        return grid_mesh(depth, K, config.grid_max_jump, config.grid_stride)
    return poisson_mesh(
        depth, K, config.poisson_depth, config.poisson_density_quantile, config.poisson_stride
    )


def n_triangles(mesh: o3d.t.geometry.TriangleMesh) -> int:
    return int(mesh.triangle.indices.shape[0]) if "indices" in mesh.triangle else 0
