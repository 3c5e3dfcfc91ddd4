"""``kitti_to_bag``: a KITTI raw synced drive -> a ROS 2 bag.

The conversion, its frames and topics are in :mod:`depth_completion_ros.kitti_bag` (and
docs/tools.md); this module is only the command line.
"""

from __future__ import annotations

import argparse
import sys

from depth_completion_ros.bag_io import BagError
from depth_completion_ros.calibration import CalibrationError
from depth_completion_ros.cli_help import DefaultsFormatter
from depth_completion_ros.kitti import KittiError
from depth_completion_ros.kitti_bag import CAMERA_NAMES, convert


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="kitti_to_bag",
        description="Convert a KITTI raw synced drive folder into a ROS 2 bag (mcap by default).",
        formatter_class=DefaultsFormatter,
    )
    parser.add_argument("drive", help="…/<date>/<date>_drive_XXXX_sync folder")
    parser.add_argument("output", help="bag folder to create")
    parser.add_argument(
        "--calib-dir", default=None, help="folder with the calib_*.txt files (default: drive/..)"
    )
    parser.add_argument(
        "--cameras",
        default="2,3",
        help="colour cameras to include, comma separated (those present are written)",
    )
    parser.add_argument(
        "--storage", choices=("mcap", "sqlite3"), default="mcap", help="bag storage format"
    )
    parser.add_argument(
        "--compress",
        action="store_true",
        help="write the images as sensor_msgs/CompressedImage on image_transport's "
        "'<image>/compressed' topic (format: --compress-format)",
    )
    parser.add_argument(
        "--compress-format",
        choices=("png", "jpeg"),
        default="png",
        help="codec of --compress: png is lossless (KITTI's own images are png, so the bag "
        "decodes to exactly the source pixels and the depth equals the raw bag's); jpeg is what "
        "robots usually record (several times smaller, lossy)",
    )
    parser.add_argument(
        "--jpeg-quality", type=int, default=95, help="jpeg quality (1-100) with --compress jpeg"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output bag")
    args = parser.parse_args(argv)
    try:
        cameras = tuple(int(c) for c in args.cameras.split(","))
        if not cameras or any(c not in CAMERA_NAMES for c in cameras):
            raise ValueError
    except ValueError:
        parser.error(f"--cameras must list 2 and/or 3, got {args.cameras!r}")
    if not 1 <= args.jpeg_quality <= 100:
        parser.error(f"--jpeg-quality must be 1-100, got {args.jpeg_quality}")
    try:
        report = convert(
            args.drive,
            args.output,
            cameras,
            args.calib_dir,
            args.storage,
            args.overwrite,
            compress=args.compress_format if args.compress else None,
            jpeg_quality=args.jpeg_quality,
        )
    except (KittiError, CalibrationError, BagError, FileNotFoundError) as exc:
        print(f"kitti_to_bag: error: {exc}", file=sys.stderr)
        return 1
    topics = ", ".join(f"{t} ({n})" for t, n in report.counts.items())
    print(f"wrote {args.output}: {report.frames} frames; {topics}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
