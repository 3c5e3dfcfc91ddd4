"""Export an RGB-D sequence (image, dense depth, intrinsics, stamps) from a processed bag.

Layouts:
  tum    rgb/<t>.png, depth/<t>.png (uint16, metres x 5000, 0 = none; depth beyond the
         uint16 range, 13.1 m at 5000, is written as 0, not clamped: choose --depth-scale 1000
         or 256 for street scenes), rgb.txt, depth.txt,
         associations.txt (``t rgb/<t>.png t depth/<t>.png``), intrinsics.txt (fx fy cx cy)
  droid  image/NNNNNN.png, depth/NNNNNN.npy (float32 metres, 0 = none), calib.txt (fx fy cx cy,
         what Droid-SLAM's demo reads with --calib), timestamps.txt
The folder appears only when complete.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

from depth_completion_ros.bag_io import BagError, BagReader
from depth_completion_ros.depth_io import write_rgb
from depth_completion_ros.tools.fuse_rgbd import load_frames

TUM_DEPTH_SCALE = 5000.0


def _write_tum(folder: Path, frames, scale: float = TUM_DEPTH_SCALE) -> None:
    (folder / "rgb").mkdir()
    (folder / "depth").mkdir()
    rgb_lines, depth_lines, pairs = ["# timestamp filename"], ["# timestamp filename"], []
    for stamp, rgb, depth, _camera, _frame in frames:
        t = f"{stamp / 1e9:.6f}"
        write_rgb(folder / "rgb" / f"{t}.png", rgb)
        scaled = np.round(np.nan_to_num(depth, nan=0.0) * scale)
        encoded = np.where((scaled > 0) & (scaled <= 65535), scaled, 0).astype(np.uint16)
        cv2.imwrite(str(folder / "depth" / f"{t}.png"), encoded)
        rgb_lines.append(f"{t} rgb/{t}.png")
        depth_lines.append(f"{t} depth/{t}.png")
        pairs.append(f"{t} rgb/{t}.png {t} depth/{t}.png")
    (folder / "rgb.txt").write_text("\n".join(rgb_lines) + "\n")
    (folder / "depth.txt").write_text("\n".join(depth_lines) + "\n")
    (folder / "associations.txt").write_text("\n".join(pairs) + "\n")


def _write_droid(folder: Path, frames) -> None:
    (folder / "image").mkdir()
    (folder / "depth").mkdir()
    stamps = []
    for index, (stamp, rgb, depth, _camera, _frame) in enumerate(frames):
        write_rgb(folder / "image" / f"{index:06d}.png", rgb)
        np.save(folder / "depth" / f"{index:06d}.npy", np.nan_to_num(depth, nan=0.0))
        stamps.append(f"{stamp / 1e9:.9f}")
    (folder / "timestamps.txt").write_text("\n".join(stamps) + "\n")


def export(
    bag: str | Path,
    output: str | Path,
    layout: str,
    topics: dict[str, str],
    overwrite: bool = False,
    depth_scale: float = TUM_DEPTH_SCALE,
) -> int:
    """Write the sequence; returns the number of frames."""
    output = Path(output)
    if output.exists() and not overwrite:
        raise BagError(f"output folder {output} exists already (use --overwrite)")
    with BagReader(bag) as reader:
        frames = load_frames(reader, topics["image"], topics["depth"], topics["camera_info"])
    K = frames[0][3].intrinsics
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.partial-", dir=output.parent))
    try:
        if layout == "tum":
            _write_tum(staging, frames, depth_scale)
            (staging / "depth_scale.txt").write_text(f"{depth_scale:g}\n")
        else:
            _write_droid(staging, frames)
        calib = f"{K[0, 0]:.6f} {K[1, 1]:.6f} {K[0, 2]:.6f} {K[1, 2]:.6f}\n"
        (staging / ("intrinsics.txt" if layout == "tum" else "calib.txt")).write_text(calib)
        if output.exists():
            shutil.rmtree(output)
        staging.rename(output)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return len(frames)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="export_rgbd",
        description="Export image + dense depth + intrinsics + stamps from a processed bag in the "
        "TUM RGB-D layout or Droid-SLAM's image/depth/calib layout.",
    )
    parser.add_argument("bag", help="bag with dense depth (written by process_bag)")
    parser.add_argument("output", help="folder to create")
    parser.add_argument("--layout", choices=("tum", "droid"), default="tum")
    parser.add_argument("--image-topic", default="/kitti/camera_color_left/image_raw")
    parser.add_argument("--depth-topic", default="/depth/image")
    parser.add_argument("--camera-info-topic", default="/depth/camera_info")
    parser.add_argument(
        "--depth-scale",
        type=float,
        default=TUM_DEPTH_SCALE,
        help="tum: depth PNG units per metre (5000 = TUM's own, max 13.1 m)",
    )
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    topics = {
        "image": args.image_topic,
        "depth": args.depth_topic,
        "camera_info": args.camera_info_topic,
    }
    try:
        count = export(args.bag, args.output, args.layout, topics, args.overwrite, args.depth_scale)
    except (BagError, OSError) as exc:
        print(f"export_rgbd: error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {count} RGB-D frames to {args.output} ({args.layout} layout)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
