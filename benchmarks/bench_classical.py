"""The classical fill against IP-Basic's reference ``fill_in_fast``, same input, same process; JSON.

Inputs (the real KITTI frame, drive 0001 frame 5): KITTI's own ``velodyne_raw`` map, the node's
own projection of the raw scan (projection.py, default occlusion filter), and the same deskewed
with the frame's odometry (oxts velocity and yaw rate; KITTI's map is motion-corrected). Each is
filled by our ClassicalBackend and, with ``--ip-basic DIR`` (a checkout of kujason/ip_basic; its
code is imported at run time, never copied here), by IP-Basic's ``fill_in_fast`` with its
defaults (diamond kernel, no extrapolation, bilateral blur). Timings alternate the two methods
run by run, so both see the same load; IP-Basic fills its argument in place, so it gets a copy
made outside the timed region (in its favour). Errors: depth_completion_ros.metrics (KITTI devkit
definitions, holes filled as the devkit does) against KITTI's ground truth.

Usage: python benchmarks/bench_classical.py [--ip-basic ~/ip_basic] [--repeats 50]
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import machine_info  # noqa: E402

from depth_completion_ros.backends.classical import ClassicalBackend  # noqa: E402
from depth_completion_ros.calibration import load_kitti_calibration  # noqa: E402
from depth_completion_ros.depth_io import read_kitti_depth, read_rgb  # noqa: E402
from depth_completion_ros.kitti import oxts_motion, read_velo_imu, read_velodyne_bin  # noqa: E402
from depth_completion_ros.metrics import kitti_metrics  # noqa: E402
from depth_completion_ros.projection import deskew, project_points  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DRIVE = "2011_09_26_drive_0001_sync"


def load_fill_in_fast(checkout: Path) -> Callable:
    """IP-Basic's ``depth_map_utils.fill_in_fast`` from a local checkout."""
    for folder in (checkout / "ip_basic", checkout):
        if (folder / "depth_map_utils.py").is_file():
            sys.path.insert(0, str(folder))
            return importlib.import_module("depth_map_utils").fill_in_fast
    raise SystemExit(f"--ip-basic {checkout}: no depth_map_utils.py there or in ip_basic/")


def dc_path(frame: Path, release: str, kind: str) -> Path:
    return frame / release / "train" / DRIVE / "proj_depth" / kind / "image_02" / "0000000005.png"


def summary(times: list[float]) -> dict[str, float]:
    return {
        "median_ms": round(float(np.median(times)), 3),
        "p90_ms": round(float(np.percentile(times, 90)), 3),
        "min_ms": round(float(np.min(times)), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ip-basic", type=Path, default=None, help="kujason/ip_basic checkout")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    args = parser.parse_args()
    fill_in_fast = load_fill_in_fast(args.ip_basic.expanduser()) if args.ip_basic else None

    frame = args.data / "kitti_dc_frame"
    calibration = load_kitti_calibration(frame / "raw" / "2011_09_26", 2)
    camera = calibration.camera
    raw_drive = frame / "raw" / "2011_09_26" / DRIVE
    rgb = read_rgb(raw_drive / "image_02" / "data" / "0000000005.png")
    scan = read_velodyne_bin(raw_drive / "velodyne_points" / "data" / "0000000005.bin")
    gt = read_kitti_depth(dc_path(frame, "data_depth_annotated", "groundtruth"))
    motion = oxts_motion(
        raw_drive / "oxts" / "data" / "0000000005.txt",
        read_velo_imu(frame / "raw" / "2011_09_26"),
    )
    inputs = {
        "kitti_velodyne_raw": read_kitti_depth(
            dc_path(frame, "data_depth_velodyne", "velodyne_raw")
        ),
        "node_projection_of_raw_scan": project_points(
            scan, calibration.T_cam_lidar, camera.P, camera.width, camera.height
        ),
        "node_projection_of_deskewed_scan": project_points(
            deskew(scan, motion.velocity, motion.yaw_rate, motion.sweep_period),
            calibration.T_cam_lidar,
            camera.P,
            camera.width,
            camera.height,
        ),
    }
    ours = ClassicalBackend()
    K = camera.intrinsics

    results = {}
    for name, sparse in inputs.items():
        sparse = np.ascontiguousarray(sparse, dtype=np.float32)
        methods: dict[str, Callable[[], np.ndarray]] = {
            "ours": lambda sparse=sparse: ours.complete(rgb, sparse, K)
        }
        if fill_in_fast is not None:
            methods["ip_basic"] = lambda sparse=sparse: fill_in_fast(sparse.copy())
        entry: dict[str, dict] = {m: {} for m in methods}
        for method, run in methods.items():
            entry[method]["errors"] = {
                k: round(v, 3) for k, v in kitti_metrics(run(), gt).items() if k != "pixels"
            }
        times: dict[str, list[float]] = {m: [] for m in methods}
        copies = {"ip_basic": lambda sparse=sparse: sparse.copy()}
        for i in range(args.warmup + args.repeats):
            for method in methods:
                if method == "ip_basic":
                    given = copies[method]()
                    t0 = time.perf_counter()
                    fill_in_fast(given)
                else:
                    t0 = time.perf_counter()
                    methods[method]()
                elapsed = (time.perf_counter() - t0) * 1e3
                if i >= args.warmup:
                    times[method].append(elapsed)
        for method in methods:
            entry[method]["time"] = summary(times[method])
        if fill_in_fast is not None:
            entry["time_ratio_ours_over_ip_basic"] = round(
                float(np.median(times["ours"]) / np.median(times["ip_basic"])), 3
            )
            entry["errors_ours_minus_ip_basic"] = {
                k: round(entry["ours"]["errors"][k] - entry["ip_basic"]["errors"][k], 3)
                for k in entry["ours"]["errors"]
            }
        entry["input_pixels"] = int((sparse > 0).sum())
        results[name] = entry

    print(
        json.dumps(
            {
                "benchmark": "classical_fill_vs_ip_basic",
                "machine": machine_info(),
                "settings": {
                    "repeats": args.repeats,
                    "warmup": args.warmup,
                    "image": [camera.width, camera.height],
                    "ip_basic": str(args.ip_basic) if args.ip_basic else None,
                    "ip_basic_call": "fill_in_fast(depth.copy()) with its defaults",
                    "ground_truth_pixels": int((gt > 0).sum()),
                },
                "results": results,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
