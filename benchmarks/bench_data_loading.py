"""Training data loading speed: KITTI DC samples/s through a DataLoader; prints one JSON.

The real shared frame is repeated ``--frames`` times in a temporary KITTI layout made of symlinks
(the page cache then holds the files, so this measures decoding, projection, crop and
augmentation, not the disk), for both cameras. Each mode reads the train split (352 x 1216 crop,
flip + colour jitter) through ``training.datasets.build_dataset`` with ``--workers`` worker
processes and ``training.sample.collate``; one warm-up pass, then the timed passes.

    .venv/bin/python benchmarks/bench_data_loading.py [--frames 48] [--workers 2] [--batch-size 4]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from machine import machine_info  # benchmarks/machine.py (scripts run from here)
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's training package

from training.datasets import build_dataset  # noqa: E402
from training.sample import collate  # noqa: E402

SOURCE = Path(__file__).resolve().parents[1].parent / "shared/data/kitti_dc_frame"
DRIVE = "2011_09_26_drive_0001_sync"
FRAME = "0000000005"
MODES = {
    "velodyne_raw": {},
    "velodyne_raw_denoise": {"denoise": True},
    "raw_scan": {"input": "raw_scan"},
    "velodyne_raw_full_frame": {"crop": []},
}


def repeated_layout(root: Path, frames: int) -> None:
    """KITTI's layout under ``root`` with the shared frame linked ``frames`` times per camera."""
    raw = root / "raw" / "2011_09_26"
    raw.mkdir(parents=True)
    for name in ("calib_cam_to_cam.txt", "calib_velo_to_cam.txt"):
        os.symlink(SOURCE / "raw" / "2011_09_26" / name, raw / name)
    # target (relative to root, {} = the frame number) -> the shared file it links to
    links = {
        f"raw/2011_09_26/{DRIVE}/velodyne_points/data/{{}}.bin": f"raw/2011_09_26/{DRIVE}/"
        f"velodyne_points/data/{FRAME}.bin",
    }
    for camera in ("image_02", "image_03"):
        image = f"raw/2011_09_26/{DRIVE}/{camera}/data/{{}}.png"
        links[image] = image.format(FRAME)
        for release, kind in (
            ("data_depth_velodyne", "velodyne_raw"),
            ("data_depth_annotated", "groundtruth"),
        ):
            depth = f"{release}/train/{DRIVE}/proj_depth/{kind}/{camera}/{{}}.png"
            links[depth] = depth.format(FRAME)
    for i in range(frames):
        for pattern, source in links.items():
            target = root / pattern.format(f"{i:010d}")
            target.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(SOURCE / source, target)


def measure(root: Path, options: dict, workers: int, batch_size: int, passes: int) -> dict:
    dataset = build_dataset(f"kitti:{root}", "train", options)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=collate,
        shuffle=True,
        persistent_workers=workers > 0,
    )
    skipped = 0
    for batch in loader:  # warm-up: workers start, page cache fills
        skipped += len(batch["skipped"])
    start = time.perf_counter()
    samples = 0
    for _ in range(passes):
        for batch in loader:
            samples += batch["size"]
            skipped += len(batch["skipped"])
    seconds = time.perf_counter() - start
    return {
        "samples": samples,
        "seconds": round(seconds, 3),
        "samples_per_s": round(samples / seconds, 2),
        "skipped": skipped,
        "describe": dataset.describe(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=48, help="frames per camera")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--passes", type=int, default=1, help="timed passes over the data")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    args = parser.parse_args()
    if not SOURCE.is_dir():
        raise SystemExit(f"real KITTI frame not found at {SOURCE} (see shared/data/README.md)")
    torch.manual_seed(0)
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench_data_loading.") as tmp:
        repeated_layout(Path(tmp), args.frames)
        for mode in args.modes:
            results[mode] = measure(
                Path(tmp), MODES[mode], args.workers, args.batch_size, args.passes
            )
    print(
        json.dumps(
            {
                "benchmark": "data_loading",
                "dataset": "kitti train split, the shared frame repeated",
                "frames_per_camera": args.frames,
                "workers": args.workers,
                "batch_size": args.batch_size,
                "results": results,
                "machine": machine_info(),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
