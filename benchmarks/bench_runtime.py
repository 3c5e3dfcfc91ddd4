"""Time the runtime path on the real KITTI frame and print one JSON object.

Items (targets from the issue, 2 CPU cores): projection of the 120k-point scan into 1242x375,
PointCloud2 -> numpy, dense depth -> organised XYZRGB PointCloud2 (backproject + message),
classical fill, the mask of pixels without LiDAR support, and numpy -> 32FC1 Image. Each item:
median and p95 of ``--repeats`` runs after ``--warmup`` runs.

Usage: python benchmarks/bench_runtime.py [--repeats 50] [--warmup 5] [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from depth_completion_ros.backends.classical import ClassicalBackend
from depth_completion_ros.calibration import load_kitti_calibration
from depth_completion_ros.depth_io import read_rgb
from depth_completion_ros.kitti import read_velodyne_bin
from depth_completion_ros.messages import (
    numpy_to_image,
    organised_xyzrgb_cloud,
    pointcloud2_to_array,
    xyz_array_to_pointcloud2,
)
from depth_completion_ros.projection import ProjectionConfig, backproject, project_points
from depth_completion_ros.support import SupportConfig, outside_support

REPO = Path(__file__).resolve().parents[1]
DRIVE = "2011_09_26_drive_0001_sync"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _time(fn: Callable[[], object], repeats: int, warmup: int) -> dict[str, float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return {
        "median_ms": round(float(np.median(times)), 3),
        "p95_ms": round(float(np.percentile(times, 95)), 3),
        "min_ms": round(float(np.min(times)), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    args = parser.parse_args()

    frame = args.data / "kitti_dc_frame" / "raw" / "2011_09_26"
    calib = load_kitti_calibration(frame, 2)
    camera = calib.camera
    scan = read_velodyne_bin(frame / DRIVE / "velodyne_points" / "data" / "0000000005.bin")
    rgb = read_rgb(frame / DRIVE / "image_02" / "data" / "0000000005.png")
    config = ProjectionConfig()
    width, height = camera.width, camera.height

    def project() -> np.ndarray:
        return project_points(scan, calib.T_cam_lidar, camera.P, width, height, config)

    sparse = project()
    backend = ClassicalBackend()
    dense = backend.complete(rgb, sparse, camera.intrinsics)
    mask = np.empty(sparse.shape, dtype=bool)  # reused, as the pipeline does
    cloud_msg = xyz_array_to_pointcloud2(scan)  # x, y, z, intensity float32, 16-byte points

    def depth_to_cloud() -> object:
        return organised_xyzrgb_cloud(backproject(dense, camera.intrinsics), rgb)

    items = {
        "project_points": (project, 5.0),
        "pointcloud2_to_array": (lambda: pointcloud2_to_array(cloud_msg), 1.0),
        "depth_to_xyzrgb_cloud": (depth_to_cloud, 15.0),
        "classical_fill": (lambda: backend.complete(rgb, sparse, camera.intrinsics), 20.0),
        "lidar_support_mask": (lambda: outside_support(sparse, SupportConfig(), mask), 5.0),
        "numpy_to_image_32FC1": (lambda: numpy_to_image(dense, "32FC1"), None),
    }
    results = {}
    for name, (fn, target) in items.items():
        stats = _time(fn, args.repeats, args.warmup)
        stats["target_ms"] = target
        stats["meets_target"] = None if target is None else stats["median_ms"] <= target
        results[name] = stats

    print(
        json.dumps(
            {
                "benchmark": "runtime",
                "machine": {
                    "cpu_model": _cpu_model(),
                    "cpu_count": os.cpu_count(),
                    "affinity": len(os.sched_getaffinity(0)),
                    "python": platform.python_version(),
                    "numpy": np.__version__,
                    "opencv": cv2.__version__,
                    "opencv_threads": cv2.getNumThreads(),
                },
                "settings": {
                    "repeats": args.repeats,
                    "warmup": args.warmup,
                    "image": [width, height],
                    "scan_points": int(len(scan)),
                    "points_in_image": int((sparse > 0).sum()),
                    "projection": config.__dict__,
                    "cloud_point_step": int(cloud_msg.point_step),
                },
                "results": results,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
