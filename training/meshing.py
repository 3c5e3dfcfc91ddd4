"""Depth map -> triangle mesh for the stage-1 LiDAR simulation: a grid mesh or Poisson.

Two ways to turn one camera's depth map into a surface a simulated LiDAR can hit:

- ``grid_mesh``: every pixel is a vertex (back-projected with K), each 2x2 block of pixels two
  triangles, and a triangle is dropped where an edge crosses a depth discontinuity (an occlusion
  edge, not a surface). Exact at the pixels, no invented surfaces, and fast.
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
    grid_max_jump: float = 0.05  # an edge whose corner depths differ by > this factor - 1 ...
    grid_smooth_ratio: float = 3.0  # ... and whose inverse-depth step is > this x its neighbours'
    grid_stride: int = 2  # every n-th pixel is a vertex (1: exact but ~4x slower ray casting)
    poisson_depth: int = 9  # octree depth: the grid is at most 2^depth cells per side
    poisson_density_quantile: float = 0.05  # cut vertices below this density quantile
    poisson_stride: int = 2  # every n-th pixel becomes a Poisson input point

    def __post_init__(self) -> None:
        if self.method not in MESH_METHODS:
            raise ValueError(f"mesh method '{self.method}' unknown: use one of {MESH_METHODS}")
        if self.grid_max_jump <= 0:
            raise ValueError(f"grid_max_jump={self.grid_max_jump} must be > 0 (relative depth)")
        if self.grid_smooth_ratio < 1:
            raise ValueError(f"grid_smooth_ratio={self.grid_smooth_ratio} must be >= 1")
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


def _edge_jumps(
    z: np.ndarray, max_jump: float, smooth_ratio: float, dr: int, dc: int
) -> np.ndarray:
    """Which pixel-to-pixel edges, from (r, c) to (r + dr, c + dc), cross a depth discontinuity.

    An edge is a jump when its corners' depths differ by more than a factor ``1 + max_jump``
    *and* its step in inverse depth is more than ``smooth_ratio`` times the smaller of the two
    steps just before and after it along the same direction. Why the second test: a plane is
    affine in inverse depth across the image, so on the ground near the horizon every step is
    large in relative terms but equal to its neighbours (kept), while an occlusion edge is a
    spike among small steps (cut). Returns an H x W bool array indexed by the edge's start pixel.
    """
    height, width = z.shape
    pad = 2
    zp = np.full((height + 2 * pad, width + 2 * pad), np.nan, dtype=np.float32)
    zp[pad : pad + height, pad : pad + width] = z
    with np.errstate(divide="ignore", invalid="ignore"):
        qp = 1.0 / zp

        def shifted(array: np.ndarray, k: int) -> np.ndarray:
            r0, c0 = pad + k * dr, pad + k * dc
            return array[r0 : r0 + height, c0 : c0 + width]

        step = shifted(qp, 1) - shifted(qp, 0)
        before = np.abs(shifted(qp, 0) - shifted(qp, -1))
        after = np.abs(shifted(qp, 2) - shifted(qp, 1))
        z0, z1 = shifted(zp, 0), shifted(zp, 1)
        relative = np.maximum(z0, z1) > np.minimum(z0, z1) * np.float32(1.0 + max_jump)
        # fmin ignores a missing neighbour; with none at all the comparison is False: a spike
        smooth = np.abs(step) <= np.float32(smooth_ratio) * np.fmin(before, after)
    return relative & ~smooth


def grid_mesh(
    depth: np.ndarray,
    K: np.ndarray,
    max_jump: float = 0.05,
    stride: int = 1,
    smooth_ratio: float = 3.0,
) -> o3d.t.geometry.TriangleMesh:
    """Pixels as vertices, two triangles per 2x2 block, kept where all three corners are valid and
    none of the triangle's edges is a depth discontinuity (``_edge_jumps``).

    Why a relative threshold: a depth step of 0.3 m is an occlusion edge at 3 m but the normal
    spacing of neighbouring pixels on a far wall seen at an angle. Unused vertices (invalid
    pixels) stay at the origin rather than being re-indexed: the ray caster only sees triangles.
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
    right = _edge_jumps(z, max_jump, smooth_ratio, 0, 1)  # (r, c) - (r, c + 1)
    down = _edge_jumps(z, max_jump, smooth_ratio, 1, 0)  # (r, c) - (r + 1, c)
    anti = _edge_jumps(z, max_jump, smooth_ratio, 1, -1)  # (r, c) - (r + 1, c - 1)
    ok_a, ok_b = valid[:-1, :-1], valid[:-1, 1:]  # corners of each 2x2 block: a b
    ok_c, ok_d = valid[1:, :-1], valid[1:, 1:]  #                              c d
    diagonal = ~anti[:-1, 1:]  # b - c, shared by both triangles
    keep1 = ok_a & ok_b & ok_c & ~right[:-1, :-1] & ~down[:-1, :-1] & diagonal
    keep2 = ok_b & ok_c & ok_d & ~down[:-1, 1:] & ~right[1:, :-1] & diagonal
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
        return grid_mesh(
            depth, K, config.grid_max_jump, config.grid_stride, config.grid_smooth_ratio
        )
    return poisson_mesh(
        depth, K, config.poisson_depth, config.poisson_density_quantile, config.poisson_stride
    )


def n_triangles(mesh: o3d.t.geometry.TriangleMesh) -> int:
    return int(mesh.triangle.indices.shape[0]) if "indices" in mesh.triangle else 0
