"""How well the published depth keeps to the LiDAR's support, on real KITTI data; prints JSON.

Everything goes through the node's DepthPipeline (classical backend, node defaults):
- ``above_top_return``: over the 20-frame sequence (kitti_raw_seq), the fraction of published
  pixels above the highest return of their column. A column's top return is taken over a
  ``--top-window``-column neighbourhood (default 5: the top beam's returns are 1-3 px apart in
  the image, so a single column often has none there); window 1 (strict) is reported too.
  Returns are the plain projection of the scan (no occlusion filter).
- ``groundtruth_coverage``: on the real ground-truth frame (drive 0001, frame 5), the fraction of
  KITTI's ground-truth pixels that get a published depth, from the raw scan.
- ``devkit_scores``: KITTI metrics (holes filled as the devkit does) of the published depth and of
  the whole image on that frame: the devkit fills the few ground-truth pixels above the support
  row-wise with the nearer neighbour, so a small margin costs benchmark numbers.
- ``mask_ms``: the time of the support mask alone (median of --repeats) at 1242x375.

Usage: python benchmarks/bench_support.py [--margin 2] [--band 8] [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from scipy.ndimage import minimum_filter1d

sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import machine_info  # noqa: E402

from depth_completion_ros.backends.classical import ClassicalBackend  # noqa: E402
from depth_completion_ros.calibration import load_kitti_calibration  # noqa: E402
from depth_completion_ros.depth_io import read_kitti_depth, read_rgb  # noqa: E402
from depth_completion_ros.kitti import read_velodyne_bin  # noqa: E402
from depth_completion_ros.metrics import kitti_metrics  # noqa: E402
from depth_completion_ros.pipeline import DepthPipeline  # noqa: E402
from depth_completion_ros.projection import ProjectionConfig, project_points  # noqa: E402
from depth_completion_ros.support import SupportConfig, outside_support  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
GT_DRIVE = "2011_09_26_drive_0001_sync"


def top_return_rows(points, calibration, window: int) -> np.ndarray:
    """Per column, the highest row holding a plain projected return within the window."""
    camera = calibration.camera
    hits = (
        project_points(
            points,
            calibration.T_cam_lidar,
            camera.P,
            camera.width,
            camera.height,
            ProjectionConfig(occlusion_window=0),
        )
        > 0
    )
    first = np.where(hits.any(axis=0), hits.argmax(axis=0), camera.height)
    return minimum_filter1d(first, window, mode="nearest") if window > 1 else first


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--band", type=int, default=SupportConfig.band)
    parser.add_argument("--margin", type=int, default=SupportConfig.margin)
    parser.add_argument("--top-window", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()
    support = SupportConfig(band=args.band, margin=args.margin)
    pipeline = DepthPipeline(ClassicalBackend(), support=support)
    full = DepthPipeline(ClassicalBackend(), support=None)

    seq = args.data / "kitti_raw_seq" / "2011_09_26"
    calibration = load_kitti_calibration(seq, 2)
    drive = seq / "2011_09_26_drive_0000_sync"
    above = {args.top_window: 0, 1: 0}
    published = published_full = 0
    scans = sorted((drive / "velodyne_points" / "data").glob("*.bin"))
    for scan_path in scans:
        points = read_velodyne_bin(scan_path)
        rgb = read_rgb(drive / "image_02" / "data" / (scan_path.stem + ".png"))
        result = pipeline.run(rgb, points, calibration.camera, calibration.T_cam_lidar)
        shown = np.isfinite(result.dense)
        published += int(shown.sum())
        rows = np.arange(shown.shape[0])[:, None]
        for window in above:
            top = top_return_rows(points, calibration, window)
            above[window] += int((shown & (rows < top[None, :])).sum())
        dense_full = full.run(rgb, points, calibration.camera, calibration.T_cam_lidar).dense
        published_full += int(np.isfinite(dense_full).sum())

    frame = args.data / "kitti_dc_frame"
    calib_gt = load_kitti_calibration(frame / "raw" / "2011_09_26", 2)
    raw_drive = frame / "raw" / "2011_09_26" / GT_DRIVE
    points = read_velodyne_bin(raw_drive / "velodyne_points" / "data" / "0000000005.bin")
    rgb = read_rgb(raw_drive / "image_02" / "data" / "0000000005.png")
    gt = read_kitti_depth(
        frame
        / "data_depth_annotated"
        / "train"
        / GT_DRIVE
        / "proj_depth"
        / "groundtruth"
        / "image_02"
        / "0000000005.png"
    )
    result = pipeline.run(rgb, points, calib_gt.camera, calib_gt.T_cam_lidar)
    covered = np.isfinite(result.dense[gt > 0])
    whole = full.run(rgb, points, calib_gt.camera, calib_gt.T_cam_lidar).dense
    scores = {
        name: {
            k: round(v, 2)
            for k, v in kitti_metrics(np.nan_to_num(dense, nan=0.0), gt).items()
            if k != "pixels"
        }
        for name, dense in (("published", result.dense), ("whole_image", whole))
    }

    mask = np.empty(result.sparse.shape, dtype=bool)
    times = []
    for _ in range(args.repeats + 5):
        t0 = time.perf_counter()
        outside_support(result.sparse, support, mask)
        times.append((time.perf_counter() - t0) * 1e3)
    print(
        json.dumps(
            {
                "benchmark": "lidar_support",
                "machine": machine_info(),
                "settings": {"band": args.band, "margin": args.margin, "frames": len(scans)},
                "above_top_return": {
                    f"window_{w}_columns": round(count / published, 5) for w, count in above.items()
                },
                "published_fraction": round(published / published_full, 4),
                "groundtruth_coverage": round(float(covered.mean()), 5),
                "groundtruth_pixels": int(covered.size),
                "devkit_scores": scores,
                "mask_ms": round(float(np.median(times[5:])), 3),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
