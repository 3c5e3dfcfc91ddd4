"""Dense mapping: RGB + dense depth into an open3d TSDF volume, with poses from TF or LiDAR ICP.

Why here and not in the node: fusion needs every frame's pose, which comes after the fact (TF or
odometry recorded in a bag, or scan-to-scan ICP when a sequence has neither, like the real KITTI
extract). Plain numpy/open3d; ROS types stay in the tools.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np


class FusionError(ValueError):
    """Fusion cannot proceed; the message says which input is missing or unusable."""


# --- poses ----------------------------------------------------------------------------------


class PoseTrack:
    """Stamped 4x4 poses with interpolation (linear translation, slerp rotation)."""

    def __init__(self, stamps_ns: Sequence[int], poses: Sequence[np.ndarray]) -> None:
        if len(stamps_ns) == 0:
            raise FusionError("no poses")
        order = np.argsort(np.asarray(stamps_ns))
        self.stamps = np.asarray(stamps_ns, dtype=np.int64)[order]
        self.poses = np.asarray(poses, dtype=np.float64)[order]

    def at(self, stamp_ns: int, tolerance_ns: int = 200_000_000) -> np.ndarray:
        """Pose at ``stamp_ns``; FusionError if it lies further than ``tolerance_ns`` outside."""
        from scipy.spatial.transform import Rotation, Slerp

        s = self.stamps
        if stamp_ns < s[0] - tolerance_ns or stamp_ns > s[-1] + tolerance_ns:
            raise FusionError(
                f"no pose near {stamp_ns / 1e9:.3f} s (poses cover {s[0] / 1e9:.3f}"
                f"-{s[-1] / 1e9:.3f} s)"
            )
        if len(s) == 1 or stamp_ns <= s[0]:
            return self.poses[0].copy()
        if stamp_ns >= s[-1]:
            return self.poses[-1].copy()
        k = int(np.searchsorted(s, stamp_ns))
        a, b = self.poses[k - 1], self.poses[k]
        w = (stamp_ns - s[k - 1]) / max(1, s[k] - s[k - 1])
        rotations = Rotation.from_matrix(np.stack([a[:3, :3], b[:3, :3]]))
        T = np.eye(4)
        T[:3, :3] = Slerp([0.0, 1.0], rotations)([w]).as_matrix()[0]
        T[:3, 3] = (1 - w) * a[:3, 3] + w * b[:3, 3]
        return T


def icp_odometry(
    scans: Sequence[np.ndarray],
    voxel: float = 0.3,
    max_distance: float = 1.0,
    max_range: float = 60.0,
) -> list[np.ndarray]:
    """Consecutive LiDAR scans -> poses T_world_lidar (world = the first scan's frame).

    Point-to-plane ICP between each scan and the previous one, started from the previous motion
    (constant velocity), on voxel-downsampled points within ``max_range``.
    """
    import open3d as o3d

    def cloud(points: np.ndarray):
        xyz = np.asarray(points, dtype=np.float64)[:, :3]
        xyz = xyz[np.isfinite(xyz).all(axis=1) & (np.linalg.norm(xyz, axis=1) < max_range)]
        pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(xyz)).voxel_down_sample(voxel)
        pcd.estimate_normals(o3d.geometry.KDTreeSearchParamHybrid(radius=voxel * 3, max_nn=30))
        return pcd

    if not scans:
        raise FusionError("ICP odometry needs at least one LiDAR scan")
    poses = [np.eye(4)]
    previous = cloud(scans[0])
    motion = np.eye(4)
    estimation = o3d.pipelines.registration.TransformationEstimationPointToPlane()
    criteria = o3d.pipelines.registration.ICPConvergenceCriteria(max_iteration=50)
    for scan in scans[1:]:
        current = cloud(scan)
        result = o3d.pipelines.registration.registration_icp(
            current, previous, max_distance, motion, estimation, criteria
        )
        if result.fitness < 0.3:
            raise FusionError(
                f"ICP between consecutive scans failed (fitness {result.fitness:.2f}): the scans "
                "do not overlap enough; provide poses from TF/odometry"
            )
        motion = np.asarray(result.transformation)
        poses.append(poses[-1] @ motion)
        previous = current
    return poses


# --- TSDF -----------------------------------------------------------------------------------


@dataclass
class FusionResult:
    mesh: object  # open3d.geometry.TriangleMesh
    cloud: object  # open3d.geometry.PointCloud
    frames: int
    #: depth pixels integrated, and those left out for a confidence below ``min_confidence``
    pixels: int = 0
    low_confidence: int = 0


def confident_depth(
    depth: np.ndarray, confidence: np.ndarray | None, min_confidence: float
) -> tuple[np.ndarray, int]:
    """``depth`` (NaN = none) with the pixels whose confidence is below ``min_confidence`` (or
    NaN) set to NaN, and how many valid depth pixels that removed. ``confidence`` None or
    ``min_confidence`` <= 0: unchanged."""
    depth = np.asarray(depth, np.float32)
    if confidence is None or min_confidence <= 0:
        return depth, 0
    with np.errstate(invalid="ignore"):
        drop = ~(np.asarray(confidence) >= min_confidence) & np.isfinite(depth)
    return np.where(drop, np.float32(np.nan), depth), int(np.count_nonzero(drop))


def fuse(
    frames: Iterable[tuple],
    voxel: float = 0.1,
    truncation: float | None = None,
    max_depth: float = 40.0,
    weight_threshold: float = 0.5,
    min_confidence: float = 0.0,
) -> FusionResult:
    """Integrate (rgb, depth metres NaN=none, K 3x3, T_world_cam 4x4[, confidence 0-1 or
    None]) frames into a TSDF.

    open3d's sparse voxel-block grid (tensor API): memory follows the observed surfaces, so a
    street scene 40 m deep fits in a few hundred MB at 10 cm voxels.

    Confidence: open3d's ``integrate`` gives every pixel the same weight (1 per observation)
    and takes no per-pixel weight, and this project has no integrator of its own; so a
    frame's confidence gates its pixels instead of weighting them: depth with confidence below
    ``min_confidence`` is not integrated (:func:`confident_depth`). A gate keeps open3d's fast
    integration and removes exactly the estimates a weight would shrink most (far from any
    return, or doubted by the network), which are the ones that add surfaces where there are
    none. ``min_confidence`` 0 (or no confidence) integrates every valid pixel.
    """
    import open3d as o3d

    core = o3d.core
    grid = o3d.t.geometry.VoxelBlockGrid(
        attr_names=("tsdf", "weight", "color"),
        attr_dtypes=(core.float32, core.float32, core.float32),
        attr_channels=((1), (1), (3)),
        voxel_size=voxel,
        block_resolution=8,
        block_count=20000,
        device=core.Device("CPU:0"),
    )
    trunc_voxels = (truncation or 4 * voxel) / voxel
    count = pixels = low = 0
    for frame in frames:
        rgb, depth, K, T_world_cam = frame[:4]
        confidence = frame[4] if len(frame) > 4 else None
        depth, dropped = confident_depth(depth, confidence, min_confidence)
        low += dropped
        pixels += int(np.count_nonzero(np.isfinite(depth) & (depth > 0)))
        clean = np.ascontiguousarray(np.nan_to_num(depth, nan=0.0))
        depth_image = o3d.t.geometry.Image(core.Tensor(clean))
        color = o3d.t.geometry.Image(
            core.Tensor(np.ascontiguousarray(rgb, dtype=np.float32) / 255.0)
        )
        intrinsic = core.Tensor(np.asarray(K, np.float64))
        extrinsic = core.Tensor(np.linalg.inv(np.asarray(T_world_cam, np.float64)))
        blocks = grid.compute_unique_block_coordinates(
            depth_image, intrinsic, extrinsic, 1.0, max_depth, trunc_voxels
        )
        grid.integrate(
            blocks,
            depth_image,
            color,
            intrinsic,
            intrinsic,
            extrinsic,
            1.0,
            max_depth,
            trunc_voxels,
        )
        count += 1
    if count == 0:
        raise FusionError("no frame to fuse")
    mesh = grid.extract_triangle_mesh(weight_threshold=weight_threshold).to_legacy()
    mesh.compute_vertex_normals()
    cloud = grid.extract_point_cloud(weight_threshold=weight_threshold).to_legacy()
    return FusionResult(mesh=mesh, cloud=cloud, frames=count, pixels=pixels, low_confidence=low)


def point_to_mesh_distances(mesh, points: np.ndarray) -> np.ndarray:
    """Unsigned distance of each point (N x 3, world) to the mesh surface."""
    import open3d as o3d

    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(o3d.t.geometry.TriangleMesh.from_legacy(mesh))
    query = o3d.core.Tensor(np.asarray(points, dtype=np.float32))
    return scene.compute_distance(query).numpy()


__all__ = [
    "FusionError",
    "FusionResult",
    "PoseTrack",
    "confident_depth",
    "fuse",
    "icp_odometry",
    "point_to_mesh_distances",
]
