"""The demo: the node in its own process, a sequence played into it over DDS, results on disk.

Input is a KITTI raw drive folder when given, otherwise a synthetic street scene generated with
open3d ray casting (exact ground truth), so the demo runs on a fresh machine with no data.
Writes to the output folder: ``depth/NNNNNN.png`` (KITTI uint16), ``pictures/NNNNNN.png`` (image,
LiDAR points, dense depth), ``cloud.ply`` (one frame's coloured cloud) and ``summary.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from depth_completion_ros.depth_io import write_atomic, write_kitti_depth, write_ply, write_rgb
from depth_completion_ros.messages import image_to_depth
from depth_completion_ros.metrics import kitti_metrics
from depth_completion_ros.tools.graph import (
    SensorFrame,
    start_node_process,
    stop_process,
    use_ros_environment,
)
from depth_completion_ros.visualization import colorize_depth, draw_sparse, side_by_side

GROUND_TRUTH_MAX_DEPTH = 80.0  # metres; KITTI's ground truth ends near here (5-85 m)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kitti-drive", default="", help="KITTI raw <date>_drive_XXXX_sync folder")
    parser.add_argument("--output", default="output/demo", help="output folder")
    parser.add_argument("--frames", type=int, default=10, help="frames to play (0 = all)")
    parser.add_argument("--model", default="classical", help="node 'model' parameter")
    parser.add_argument("--checkpoint", default="", help="node 'checkpoint' parameter")
    parser.add_argument("--device", default="auto", help="node 'device' parameter")
    parser.add_argument("--domain-id", type=int, default=int(os.environ.get("ROS_DOMAIN_ID", 57)))
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait per frame")
    return parser.parse_args(argv)


def kitti_frames(drive_dir: str, count: int) -> tuple[list[SensorFrame], dict]:
    """Frames and node parameters for a real KITTI drive."""
    from depth_completion_ros.kitti import KittiDrive

    drive = KittiDrive(drive_dir)
    ids = drive.frame_ids[:count] if count else drive.frame_ids
    frames = []
    for frame_id in ids:
        frame = drive.frame(frame_id)
        frames.append(
            SensorFrame(
                frame.stamp,
                frame.rgb,
                frame.points,
                drive.calibration.camera,
                frame.ground_truth,
                name=f"{frame_id:06d}",
            )
        )
    source = f"KITTI drive {drive.drive_dir}" + (
        " (no timestamps.txt: stamps synthesised at 10 Hz)" if drive.stamps_synthesised else ""
    )
    return frames, {"calibration_dir": str(drive.calibration_dir), "source": source}


def synthetic_frames(count: int) -> tuple[list[SensorFrame], dict]:
    """A generated street (ground, cars, walls) with a 64-beam LiDAR and exact depth."""
    from depth_completion_ros.calibration import PinholeCamera
    from depth_completion_ros.simulation.street_scene import make_sequence

    generated = make_sequence(count or 10, seed=0)
    frames = []
    for index, frame in enumerate(generated):
        height, width = frame.depth_gt.shape
        camera = PinholeCamera(width=width, height=height, P=frame.P)
        truth = lidar_covered_truth(frame.depth_gt, frame.points, camera, frame.T_velo_to_cam)
        frames.append(
            SensorFrame(frame.stamp, frame.rgb, frame.points, camera, truth, name=f"{index:06d}")
        )
    extrinsics = [float(v) for v in np.asarray(generated[0].T_velo_to_cam).ravel()]
    return frames, {"extrinsics": extrinsics, "source": "synthetic street scene (open3d)"}


def lidar_covered_truth(
    depth: np.ndarray, points: np.ndarray, camera, T_cam_lidar: np.ndarray
) -> np.ndarray:
    """Ground truth restricted as KITTI's is: where the LiDAR reaches (range, beam fan).

    KITTI's ground truth is accumulated LiDAR, so it has nothing above the top beam or beyond
    ~85 m; scoring the synthetic scene the same way keeps the numbers comparable.
    """
    from depth_completion_ros.projection import project_points

    sparse = project_points(points, T_cam_lidar, camera.P, camera.width, camera.height)
    hit = sparse > 0
    first_row = np.where(hit.any(axis=0), hit.argmax(axis=0), depth.shape[0])
    below_top_beam = np.arange(depth.shape[0])[:, None] >= first_row[None, :]
    keep = below_top_beam & (depth <= GROUND_TRUTH_MAX_DEPTH)
    return np.where(keep, depth, 0.0).astype(np.float32)


def organised_cloud_arrays(msg) -> tuple[np.ndarray, np.ndarray]:
    """Our organised XYZRGB layout -> finite xyz (N x 3) and rgb (N x 3 uint8)."""
    record = np.frombuffer(
        msg.data, dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("rgb", "<u4")]
    )
    xyz = np.stack([record["x"], record["y"], record["z"]], axis=1)
    keep = np.isfinite(xyz).all(axis=1)
    packed = record["rgb"][keep]
    rgb = np.stack([(packed >> 16) & 255, (packed >> 8) & 255, packed & 255], axis=1)
    return xyz[keep], rgb.astype(np.uint8)


def run(args: argparse.Namespace) -> dict:
    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    from depth_completion_ros.tools.graph import FramePlayer

    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    print("[demo] preparing frames ...", flush=True)
    if args.kitti_drive:
        frames, info = kitti_frames(args.kitti_drive, args.frames)
    else:
        frames, info = synthetic_frames(args.frames)
    source = info.pop("source")
    print(f"[demo] {len(frames)} frames from {source}", flush=True)

    parameters = {
        **info,
        "model": args.model,
        "checkpoint": args.checkpoint,
        "device": args.device,
        "publish_sparse": True,
        "input_reliability": "reliable",
    }
    use_ros_environment(args.domain_id)
    node = start_node_process(parameters, args.domain_id, output / "node.log")
    rclpy.init()
    player = FramePlayer()
    executor = SingleThreadedExecutor()
    executor.add_node(player)
    try:
        if not player.wait_for_node(executor, timeout=60.0):
            raise RuntimeError(f"the node did not come up; see {output / 'node.log'}")
        started = time.monotonic()
        result = player.play(
            frames,
            executor,
            wait_topics=("depth/image", "depth/points", "sparse_depth/image"),
            timeout=args.timeout,
        )
        elapsed = time.monotonic() - started
    finally:
        executor.shutdown()
        player.destroy_node()
        rclpy.try_shutdown()
        stop_process(node)

    from depth_completion_ros.messages import stamp_to_nanoseconds  # noqa: F401 (keys)
    from depth_completion_ros.tools.graph import frame_messages

    per_frame, metrics = [], []
    cloud_written = False
    for frame in frames:
        key = stamp_to_nanoseconds(frame_messages(frame)[0].header.stamp)
        outputs = result.outputs.get(key, {})
        if "depth/image" not in outputs:
            per_frame.append({"frame": frame.name, "received": False})
            continue
        dense = image_to_depth(outputs["depth/image"])
        write_kitti_depth(output / "depth" / f"{frame.name}.png", dense)
        sparse = (
            np.nan_to_num(image_to_depth(outputs["sparse_depth/image"]), nan=0.0)
            if "sparse_depth/image" in outputs
            else np.zeros_like(dense)
        )
        picture = side_by_side([frame.rgb, draw_sparse(frame.rgb, sparse), colorize_depth(dense)])
        write_rgb(output / "pictures" / f"{frame.name}.png", picture)
        entry = {
            "frame": frame.name,
            "received": True,
            "valid_fraction": float(np.isfinite(dense).mean()),
        }
        if frame.ground_truth is not None and (frame.ground_truth > 0).any():
            scores = kitti_metrics(np.nan_to_num(dense, nan=0.0), frame.ground_truth)
            entry.update(scores)
            metrics.append(scores)
        if not cloud_written and "depth/points" in outputs:
            xyz, rgb = organised_cloud_arrays(outputs["depth/points"])
            write_ply(output / "cloud.ply", xyz, rgb)
            cloud_written = True
        per_frame.append(entry)

    latencies = result.latencies() * 1000.0
    received = sum(1 for entry in per_frame if entry["received"])
    summary = {
        "source": source,
        "model": args.model,
        "frames_in": len(frames),
        "frames_out": received,
        "seconds": round(elapsed, 3),
        "latency_ms_p50": float(np.percentile(latencies, 50)) if latencies.size else None,
        "latency_ms_p95": float(np.percentile(latencies, 95)) if latencies.size else None,
        "latency_note": "publish of image+cloud -> dense depth received, two processes over DDS",
        "accuracy": (
            {
                key: float(np.mean([m[key] for m in metrics]))
                for key in ("rmse_mm", "mae_mm", "irmse_1_per_km", "imae_1_per_km")
            }
            if metrics
            else None
        ),
        "accuracy_note": "KITTI metrics averaged over frames with ground truth"
        if metrics
        else "no ground truth for this input",
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "frames": per_frame,
    }
    write_atomic(output / "summary.json", lambda tmp: tmp.write_text(json.dumps(summary, indent=2)))
    return summary


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        summary = run(args)
    except Exception as exc:  # noqa: BLE001 - a tool reports and exits non-zero
        print(f"[demo] failed: {exc}", file=sys.stderr)
        return 1
    short = {k: v for k, v in summary.items() if k not in ("frames", "machine")}
    print(json.dumps(short, indent=2))
    print(f"[demo] outputs in {Path(args.output).resolve()}")
    return 0 if summary["frames_out"] == summary["frames_in"] else 1


if __name__ == "__main__":
    sys.exit(main())
