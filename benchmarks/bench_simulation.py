"""Time the synthetic street: scene build, camera render, LiDAR scan, whole frames; print JSON.

Usage: python benchmarks/bench_simulation.py [--frames 10] [--width 1242 --height 375]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np

from depth_completion_ros.simulation.lidar import LidarModel
from depth_completion_ros.simulation.street_scene import (
    CameraRig,
    make_sequence,
    make_street,
    render_camera,
    scan_lidar,
)


def _median_ms(fn, repeats: int) -> float:
    fn()  # warm-up: caches of ray directions, open3d thread pool
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1e3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--frames", type=int, default=10)
    parser.add_argument("--width", type=int, default=1242)
    parser.add_argument("--height", type=int, default=375)
    args = parser.parse_args()

    rig = CameraRig.kitti(args.width, args.height)
    lidar = LidarModel.hdl64()
    t0 = time.perf_counter()
    scene = make_street(seed=0, length=max(200.0, args.frames + 150.0))
    build_ms = (time.perf_counter() - t0) * 1e3
    pose = np.eye(4)
    pose[:3, 3] = (0.0, -1.75, rig.lidar_height)

    render_ms = _median_ms(lambda: render_camera(scene, rig, pose), 5)
    scan_ms = _median_ms(lambda: scan_lidar(scene, lidar, pose), 5)
    make_sequence(1, seed=0, rig=rig, lidar=lidar, scene=scene)
    t0 = time.perf_counter()
    frames = make_sequence(args.frames, seed=0, rig=rig, lidar=lidar, scene=scene)
    frame_ms = (time.perf_counter() - t0) * 1e3 / args.frames

    counts = np.array([len(f.points) for f in frames])
    in_image = []
    for f in frames:
        cam = np.c_[f.points[:, :3], np.ones(len(f.points))] @ (f.P @ f.T_velo_to_cam).T
        z = cam[:, 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            u, v = cam[:, 0] / z, cam[:, 1] / z
        ok = (z > 0) & (u >= -0.5) & (u < rig.width - 0.5) & (v >= -0.5) & (v < rig.height - 0.5)
        in_image.append(int(ok.sum()))
    print(
        json.dumps(
            {
                "benchmark": "simulation",
                "image": f"{rig.width}x{rig.height}",
                "lidar": lidar.name,
                "lidar_rays": lidar.n_rays,
                "triangles": len(scene.triangles),
                "street_build_ms": round(build_ms, 1),
                "render_camera_ms": round(render_ms, 1),
                "scan_lidar_ms": round(scan_ms, 1),
                "frame_ms": round(frame_ms, 1),
                "frames": args.frames,
                "points_per_frame_mean": int(counts.mean()),
                "points_in_image_mean": int(np.mean(in_image)),
                "gt_density": round(float(np.mean([(f.depth_gt > 0).mean() for f in frames])), 3),
                "cpus": os.cpu_count(),
                "machine": platform.machine(),
            }
        )
    )


if __name__ == "__main__":
    main()
