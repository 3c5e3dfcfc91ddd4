"""Fuse a processed bag's RGB + dense depth into a TSDF mesh and point cloud.

Poses come from the bag's /tf (world -> base_link, e.g. KITTI oxts written by kitti_to_bag) and
/tf_static, or, when the bag has no /tf (the real KITTI sequence has no oxts), from ICP between
consecutive LiDAR scans. ``--evaluate`` reports how far the in-view LiDAR points lie from the mesh.
When the bag has ``depth/confidence`` (``process_bag -p publish_confidence:=true``), depth pixels
whose confidence is below ``--min-confidence`` are not fused (``fusion.fuse`` says why a gate
and not a weight); ``--no-confidence`` fuses every pixel.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from depth_completion_ros.bag_io import (
    BagError,
    BagReader,
    load_rgbd_frames,
    messages_by_stamp,
    parse_tf_message,
    read_static_transforms,
)
from depth_completion_ros.calibration import CalibrationError, load_kitti_calibration
from depth_completion_ros.cli_help import DefaultsFormatter
from depth_completion_ros.depth_io import write_atomic
from depth_completion_ros.fusion import (
    FusionError,
    PoseTrack,
    fuse,
    icp_odometry,
    point_to_mesh_distances,
)
from depth_completion_ros.messages import (
    image_to_depth,
    pointcloud2_to_array,
)


def camera_poses(
    reader: BagReader,
    frames,
    points_topic: str,
    source: str,
    T_cam_lidar: np.ndarray | None,
) -> tuple[list[np.ndarray], str, dict[int, np.ndarray]]:
    """T_world_cam per frame, the pose source used, and LiDAR scans (world) for evaluation."""
    static = read_static_transforms(reader)
    camera_frame = frames[0][4]
    scans: dict[int, np.ndarray] = {}
    clouds = messages_by_stamp(reader, points_topic) if points_topic in reader.topics else {}
    lidar_frame = next(iter(clouds.values())).header.frame_id if clouds else "velodyne"
    if T_cam_lidar is None and clouds:
        T_cam_lidar = static.lookup(camera_frame, lidar_frame)
    use_tf = source == "tf" or (source == "auto" and "/tf" in reader.topics)
    if use_tf:
        if "/tf" not in reader.topics:
            raise FusionError(f"{reader.path}: --poses tf, but the bag has no /tf topic")
        track: dict[tuple[str, str], list] = {}
        for m in reader.messages(["/tf"]):
            for tf in parse_tf_message(m.data):
                track.setdefault((tf.parent, tf.child), []).append(tf)
        if not track:
            raise FusionError(f"{reader.path}: /tf holds no transforms")
        (world, moving), items = next(iter(track.items()))
        T_moving_cam = static.lookup(moving, camera_frame)
        if T_moving_cam is None:
            raise FusionError(
                f"{reader.path}: /tf_static does not connect '{moving}' to '{camera_frame}'"
            )
        poses = PoseTrack([t.stamp_ns for t in items], [t.T for t in items])
        result = [poses.at(f[0]) @ T_moving_cam for f in frames]
        if clouds and T_cam_lidar is not None:
            for f, T in zip(frames, result, strict=True):
                if f[0] in clouds:
                    scans[f[0]] = _to_world(clouds[f[0]], T @ T_cam_lidar)
        return result, f"TF {world} -> {moving}", scans
    if not clouds:
        raise FusionError(
            f"{reader.path}: no /tf and no {points_topic} for ICP odometry: no poses to fuse with"
        )
    if T_cam_lidar is None:
        raise FusionError(
            f"{reader.path}: cannot relate '{lidar_frame}' to '{camera_frame}': no /tf_static "
            "path; pass --calibration-dir"
        )
    stamps = [f[0] for f in frames if f[0] in clouds]
    if len(stamps) != len(frames):
        raise FusionError(f"{reader.path}: some depth frames have no scan on {points_topic}")
    raw = [pointcloud2_to_array(clouds[s]) for s in stamps]
    T_world_lidar = icp_odometry(raw)
    T_lidar_cam = np.linalg.inv(T_cam_lidar)
    for s, points, T in zip(stamps, raw, T_world_lidar, strict=True):
        scans[s] = _transform(points, T)
    return [T @ T_lidar_cam for T in T_world_lidar], "LiDAR ICP odometry", scans


def _transform(points: np.ndarray, T: np.ndarray) -> np.ndarray:
    return points[:, :3].astype(np.float64) @ T[:3, :3].T + T[:3, 3]


def _to_world(cloud, T_world_lidar: np.ndarray) -> np.ndarray:
    return _transform(pointcloud2_to_array(cloud), T_world_lidar)


def in_view(points_world: np.ndarray, camera, T_world_cam: np.ndarray, max_depth: float):
    """The points a frame's camera sees within ``max_depth`` (for evaluation)."""
    cam = _transform(points_world, np.linalg.inv(T_world_cam))
    z = cam[:, 2]
    keep = (z > 1.0) & (z < max_depth)
    uv = cam[keep] @ camera.intrinsics.T
    u, v = uv[:, 0] / uv[:, 2], uv[:, 1] / uv[:, 2]
    inside = (u >= 0) & (u < camera.width) & (v >= 0) & (v < camera.height)
    return points_world[keep][inside]


def run(args) -> dict:
    T_cam_lidar = None
    if args.calibration_dir:
        T_cam_lidar = load_kitti_calibration(args.calibration_dir, args.camera_index).T_cam_lidar
    with BagReader(args.bag) as reader:
        frames = load_rgbd_frames(
            reader, args.image_topic, args.depth_topic, args.camera_info_topic
        )
        frames = frames[:: args.stride]
        poses, source, scans = camera_poses(
            reader, frames, args.points_topic, args.poses, T_cam_lidar
        )
        confidence = {}
        use_confidence = not args.no_confidence and args.confidence_topic in reader.topics
        if use_confidence:
            confidence = messages_by_stamp(reader, args.confidence_topic)
    bar = _progress(len(frames), not getattr(args, "no_progress", False))

    def confidence_of(stamp: int):
        msg = confidence.get(stamp)
        return None if msg is None else image_to_depth(msg)

    try:
        result = fuse(
            (
                (f[1], f[2], f[3].intrinsics, T, confidence_of(f[0]))
                for f, T in bar(zip(frames, poses, strict=True))
            ),
            voxel=args.voxel,
            max_depth=args.max_depth,
            min_confidence=args.min_confidence if use_confidence else 0.0,
        )
    finally:
        bar.close()
    import open3d as o3d

    o3d.utility.set_verbosity_level(o3d.utility.VerbosityLevel.Error)  # stdout stays JSON
    if len(result.mesh.triangles) == 0:
        raise FusionError("the TSDF produced an empty mesh (no valid depth in range?)")
    out = Path(args.output)
    mesh_path = write_atomic(
        out / "mesh.ply", lambda tmp: _check(o3d.io.write_triangle_mesh(str(tmp), result.mesh))
    )
    cloud_path = write_atomic(
        out / "cloud.ply", lambda tmp: _check(o3d.io.write_point_cloud(str(tmp), result.cloud))
    )
    summary = {
        "frames": result.frames,
        "pose_source": source,
        "mesh": str(mesh_path),
        "cloud": str(cloud_path),
        "triangles": len(result.mesh.triangles),
        "points": len(result.cloud.points),
        "confidence_topic": args.confidence_topic if use_confidence else None,
        "min_confidence": args.min_confidence if use_confidence else None,
        "fused_pixels": result.pixels,
        "low_confidence_pixels": result.low_confidence,
    }
    if args.evaluate and scans:
        seen = [
            in_view(scans[f[0]], f[3], T, args.max_depth)
            for f, T in zip(frames, poses, strict=True)
            if f[0] in scans
        ]
        distances = point_to_mesh_distances(result.mesh, np.concatenate(seen))
        summary["lidar_points_evaluated"] = int(distances.size)
        summary["median_point_to_mesh_m"] = float(np.median(distances))
        summary["p90_point_to_mesh_m"] = float(np.percentile(distances, 90))
    return summary


class _Progress:
    """tqdm on stderr around an iterable (stdout stays the JSON summary); silent without tqdm."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total, self.enabled, self._bar = total, enabled, None

    def __call__(self, iterable):
        if not self.enabled:
            return iterable
        try:
            from tqdm import tqdm
        except ImportError:
            return iterable
        self._bar = tqdm(
            iterable, total=self.total, unit="frame", desc="fuse_rgbd", file=sys.stderr
        )
        return self._bar

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def _progress(total: int, enabled: bool) -> _Progress:
    return _Progress(total, enabled)


def _check(ok: bool) -> None:
    if not ok:
        raise OSError("open3d could not write the file")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fuse_rgbd",
        description="Fuse RGB + dense depth from a processed bag into a TSDF mesh and cloud "
        "(open3d); prints a JSON summary on stdout, progress on stderr.",
        formatter_class=DefaultsFormatter,
    )
    parser.add_argument("bag", help="bag with dense depth (written by process_bag)")
    parser.add_argument("output", help="folder for mesh.ply and cloud.ply")
    parser.add_argument(
        "--image-topic", default="/kitti/camera_color_left/image_raw", help="camera image topic"
    )
    parser.add_argument("--depth-topic", default="/depth/image", help="dense depth topic (32FC1)")
    parser.add_argument(
        "--camera-info-topic", default="/depth/camera_info", help="the depth's CameraInfo topic"
    )
    parser.add_argument(
        "--points-topic",
        default="/kitti/velo/pointcloud",
        help="LiDAR topic (ICP poses and --evaluate)",
    )
    parser.add_argument(
        "--poses",
        choices=("auto", "tf", "icp"),
        default="auto",
        help="camera poses: tf from /tf (+ /tf_static), icp between consecutive LiDAR scans, "
        "auto: /tf when the bag has it, else ICP",
    )
    parser.add_argument(
        "--calibration-dir",
        help="KITTI calibration folder for the LiDAR -> camera transform (default: /tf_static)",
    )
    parser.add_argument(
        "--camera-index", type=int, default=2, help="KITTI camera of --calibration-dir (0-3)"
    )
    parser.add_argument("--voxel", type=float, default=0.1, help="TSDF voxel size in metres (> 0)")
    parser.add_argument(
        "--max-depth", type=float, default=40.0, help="depth beyond this (m) is not fused"
    )
    parser.add_argument("--stride", type=int, default=1, help="use every n-th frame (>= 1)")
    parser.add_argument(
        "--confidence-topic",
        default="/depth/confidence",
        help="per-pixel 0-1 confidence of the depth (32FC1, process_bag -p "
        "publish_confidence:=true); used when the bag has it",
    )
    parser.add_argument(
        "--min-confidence",
        type=float,
        default=0.2,
        help="depth pixels with a lower confidence are not fused (0.2: about 8 px from the "
        "nearest LiDAR return with the classical fill's exp(-d / 5 px))",
    )
    parser.add_argument(
        "--no-confidence",
        action="store_true",
        help="fuse every depth pixel, even when the bag has a confidence topic",
    )
    parser.add_argument(
        "--evaluate", action="store_true", help="report LiDAR point-to-mesh distances"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    return parser


def check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Numbers open3d would otherwise fail on with a traceback (or fuse into garbage)."""
    if not args.voxel > 0 or args.voxel > 10:
        parser.error(f"--voxel must be in (0, 10] metres, got {args.voxel:g} (try 0.05-0.2)")
    if not args.max_depth > 0:
        parser.error(f"--max-depth must be positive, got {args.max_depth:g}")
    if args.max_depth <= 4 * args.voxel:
        parser.error(
            f"--max-depth {args.max_depth:g} m must exceed 4 voxels ({4 * args.voxel:g} m)"
        )
    if args.stride < 1:
        parser.error(f"--stride must be >= 1, got {args.stride}")
    if not 0 <= args.min_confidence <= 1:
        parser.error(f"--min-confidence must be in [0, 1], got {args.min_confidence:g}")
    if not 0 <= args.camera_index <= 3:
        parser.error(f"--camera-index must be 0-3 (KITTI cameras), got {args.camera_index}")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_arguments(parser, args)
    try:
        summary = run(args)
    except (BagError, FusionError, CalibrationError, OSError) as exc:
        print(f"fuse_rgbd: error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
