"""Export an RGB-D sequence (image, dense depth, intrinsics, stamps) from a processed bag or live.

Sources:
  bag    a bag with dense depth (written by process_bag)
  live   ``--live``: subscribe to the camera image and the node's depth/image + depth/camera_info,
         pair them by exact stamp (the node stamps its outputs with the image's stamp)
Layouts:
  tum    rgb/<t>.png, depth/<t>.png (uint16, metres x 5000, 0 = none; depth beyond the
         uint16 range, 13.1 m at 5000, is written as 0, not clamped: choose --depth-scale 1000
         or 256 for street scenes), rgb.txt, depth.txt,
         associations.txt (``t rgb/<t>.png t depth/<t>.png``), intrinsics.txt (fx fy cx cy)
  droid  image/NNNNNN.png, depth/NNNNNN.npy (float32 metres, 0 = none), calib.txt (fx fy cx cy,
         what Droid-SLAM's demo reads with --calib), timestamps.txt
Both sources go through the same writers. Frames are written into a hidden temporary folder as
they come, which is renamed into place only when complete (also after Ctrl-C in live mode).
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import cv2
import numpy as np

from depth_completion_ros.bag_io import BagError, BagReader, load_rgbd_frames
from depth_completion_ros.cli_help import DefaultsFormatter
from depth_completion_ros.depth_io import write_rgb

TUM_DEPTH_SCALE = 5000.0
BAG_TOPICS = {
    "image": "/kitti/camera_color_left/image_raw",
    "depth": "/depth/image",
    "camera_info": "/depth/camera_info",
}
LIVE_TOPICS = {"image": "image", "depth": "depth/image", "camera_info": "depth/camera_info"}


class ExportError(RuntimeError):
    """Nothing (or nothing usable) to export; the message says why."""


class _First:
    """Passes frames through and remembers the first one's camera (for the intrinsics file)."""

    def __init__(self, frames: Iterable) -> None:
        self._frames = frames
        self.camera = None
        self.count = 0

    def __iter__(self) -> Iterator:
        for frame in self._frames:
            if self.camera is None:
                self.camera = frame[3]
            self.count += 1
            yield frame


class DepthRange:
    """What the uint16 TUM depth could not hold: pixels beyond 65535 / scale metres."""

    def __init__(self) -> None:
        self.valid = 0
        self.clipped = 0
        self.max_depth = 0.0

    def add(self, depth: np.ndarray, scaled: np.ndarray) -> None:
        finite = np.isfinite(depth) & (depth > 0)
        self.valid += int(finite.sum())
        self.clipped += int((scaled > 65535).sum())
        if finite.any():
            self.max_depth = max(self.max_depth, float(depth[finite].max()))

    def report(self, scale: float) -> str:
        """'' when nothing was clipped; else how many and which --depth-scale keeps them."""
        if not self.clipped:
            return ""
        keeping = suggest_depth_scale(self.max_depth)
        share = 100 * self.clipped / self.valid
        return (
            f"{self.clipped} of {self.valid} depth pixels ({share:.1f} %) "
            f"lie beyond {65535 / scale:.1f} m, the uint16 limit at --depth-scale {scale:g}, and "
            f"were written as 0 (no depth); --depth-scale {keeping:g} keeps all of them "
            f"(up to {65535 / keeping:.1f} m; the farthest was {self.max_depth:.1f} m)"
        )


def suggest_depth_scale(max_depth: float) -> float:
    """The finest common scale (5000, 1000, 500, 256, 100, 10 units/m) whose uint16 range holds
    ``max_depth``; else the exact one."""
    for scale in (TUM_DEPTH_SCALE, 1000.0, 500.0, 256.0, 100.0, 10.0):
        if max_depth * scale <= 65535:
            return scale
    return float(np.floor(65535 / max_depth * 1000) / 1000)


def _write_tum(folder: Path, frames, scale: float = TUM_DEPTH_SCALE) -> DepthRange:
    depth_range = DepthRange()
    (folder / "rgb").mkdir()
    (folder / "depth").mkdir()
    rgb_lines, depth_lines, pairs = ["# timestamp filename"], ["# timestamp filename"], []
    for stamp, rgb, depth, _camera, _frame in frames:
        t = f"{stamp / 1e9:.6f}"
        write_rgb(folder / "rgb" / f"{t}.png", rgb)
        scaled = np.round(np.nan_to_num(depth, nan=0.0, posinf=0.0) * scale)
        depth_range.add(depth, scaled)
        encoded = np.where((scaled > 0) & (scaled <= 65535), scaled, 0).astype(np.uint16)
        cv2.imwrite(str(folder / "depth" / f"{t}.png"), encoded)
        rgb_lines.append(f"{t} rgb/{t}.png")
        depth_lines.append(f"{t} depth/{t}.png")
        pairs.append(f"{t} rgb/{t}.png {t} depth/{t}.png")
    (folder / "rgb.txt").write_text("\n".join(rgb_lines) + "\n")
    (folder / "depth.txt").write_text("\n".join(depth_lines) + "\n")
    (folder / "associations.txt").write_text("\n".join(pairs) + "\n")
    return depth_range


def _write_droid(folder: Path, frames) -> None:
    (folder / "image").mkdir()
    (folder / "depth").mkdir()
    stamps = []
    for index, (stamp, rgb, depth, _camera, _frame) in enumerate(frames):
        write_rgb(folder / "image" / f"{index:06d}.png", rgb)
        np.save(folder / "depth" / f"{index:06d}.npy", np.nan_to_num(depth, nan=0.0))
        stamps.append(f"{stamp / 1e9:.9f}")
    (folder / "timestamps.txt").write_text("\n".join(stamps) + "\n")


def write_sequence(
    frames: Iterable,
    output: str | Path,
    layout: str,
    overwrite: bool = False,
    depth_scale: float = TUM_DEPTH_SCALE,
    log=print,
) -> int:
    """Write (stamp_ns, rgb, depth, camera, frame_id) frames in ``layout``; returns the count.
    TUM depth beyond the uint16 range is written as 0 and ``log`` says how much and which
    ``depth_scale`` would keep it.

    ``frames`` may be a generator that yields as frames arrive (live export): files are written
    one by one into a hidden staging folder, renamed to ``output`` only at the end, so a reader
    never sees a half-written sequence. No frame at all raises ExportError and leaves nothing.
    """
    output = Path(output)
    if output.exists() and not overwrite:
        raise ExportError(f"output folder {output} exists already (use --overwrite)")
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.partial-", dir=output.parent))
    try:
        counted = _First(frames)
        depth_range = None
        if layout == "tum":
            depth_range = _write_tum(staging, counted, depth_scale)
            (staging / "depth_scale.txt").write_text(f"{depth_scale:g}\n")
        elif layout == "droid":
            _write_droid(staging, counted)
        else:
            raise ExportError(f"unknown layout {layout!r} (tum or droid)")
        if counted.camera is None:
            raise ExportError("no frame to export")
        K = counted.camera.intrinsics
        calib = f"{K[0, 0]:.6f} {K[1, 1]:.6f} {K[0, 2]:.6f} {K[1, 2]:.6f}\n"
        (staging / ("intrinsics.txt" if layout == "tum" else "calib.txt")).write_text(calib)
        if output.exists():
            shutil.rmtree(output)
        staging.rename(output)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if depth_range is not None and depth_range.clipped:
        log(f"export_rgbd: warning: {depth_range.report(depth_scale)}")
    return counted.count


def export(
    bag: str | Path,
    output: str | Path,
    layout: str,
    topics: dict[str, str],
    overwrite: bool = False,
    depth_scale: float = TUM_DEPTH_SCALE,
    log=print,
) -> int:
    """Write the bag's sequence; returns the number of frames."""
    if Path(output).exists() and not overwrite:
        raise ExportError(f"output folder {output} exists already (use --overwrite)")
    with BagReader(bag) as reader:
        frames = load_rgbd_frames(reader, topics["image"], topics["depth"], topics["camera_info"])
    return write_sequence(frames, output, layout, overwrite, depth_scale, log)


class _StopFlag:
    """SIGINT/SIGTERM end a live export cleanly: the first sets the flag, a second aborts."""

    def __init__(self) -> None:
        self.set = False
        self._previous: dict[int, object] = {}

    def __enter__(self) -> _StopFlag:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, _frame) -> None:
        if self.set:
            raise KeyboardInterrupt
        self.set = True

    def __exit__(self, *exc_info) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def live_frames(
    topics: dict[str, str],
    frames: int = 0,
    timeout: float = 30.0,
    reliability: str = "reliable",
    stop: _StopFlag | None = None,
    log=print,
    domain_id: int | None = None,
) -> Iterator:
    """Yield (stamp_ns, rgb, depth, camera, frame_id) as image, depth and camera_info with the
    same stamp arrive; ends after ``frames`` (0 = no limit), ``timeout`` s without a new frame,
    or when ``stop`` is set. Uses its own rclpy context, so it can run beside other nodes.
    """
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
    from rclpy.signals import SignalHandlerOptions
    from sensor_msgs.msg import CameraInfo, Image

    from depth_completion_ros.messages import (
        camera_info_to_camera,
        image_to_depth,
        image_to_rgb,
        stamp_to_nanoseconds,
    )

    qos = QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=10,
        reliability=ReliabilityPolicy.BEST_EFFORT
        if reliability == "best_effort"
        else ReliabilityPolicy.RELIABLE,
    )
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=domain_id, signal_handler_options=SignalHandlerOptions.NO)
    node = rclpy.create_node("export_rgbd", context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    pending: dict[str, dict[int, object]] = {key: {} for key in topics}

    def store(key: str):
        def callback(msg) -> None:
            buffer = pending[key]
            buffer[stamp_to_nanoseconds(msg.header.stamp)] = msg
            while len(buffer) > 50:  # a topic without partners must not grow without bound
                del buffer[min(buffer)]

        return callback

    kinds = {"image": Image, "depth": Image, "camera_info": CameraInfo}
    for key, topic in topics.items():
        node.create_subscription(kinds[key], topic, store(key), qos)
    log(
        f"export_rgbd: listening on {', '.join(topics.values())} ({reliability}); "
        f"{frames or 'unlimited'} frames, Ctrl-C to finish"
    )
    count = 0
    last = time.monotonic()
    try:
        while (not frames or count < frames) and not (stop is not None and stop.set):
            if time.monotonic() - last > timeout:
                log(f"export_rgbd: no new frame for {timeout:g} s: finishing with {count}")
                break
            executor.spin_once(timeout_sec=0.1)
            complete = sorted(set.intersection(*(set(b) for b in pending.values())))
            for stamp in complete:
                image, depth, info = (
                    pending[k].pop(stamp) for k in ("image", "depth", "camera_info")
                )
                for buffer in pending.values():  # outputs come in stamp order: older ones are lost
                    for old in [s for s in buffer if s < stamp]:
                        del buffer[old]
                camera = camera_info_to_camera(info)
                yield (
                    stamp,
                    image_to_rgb(image),
                    image_to_depth(depth),
                    camera,
                    depth.header.frame_id,
                )
                count += 1
                last = time.monotonic()
                if frames and count >= frames:
                    break
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown(context=context)


def export_live(
    output: str | Path,
    layout: str,
    topics: dict[str, str],
    frames: int = 0,
    timeout: float = 30.0,
    reliability: str = "reliable",
    overwrite: bool = False,
    depth_scale: float = TUM_DEPTH_SCALE,
    log=print,
) -> int:
    """Export frames from live topics; Ctrl-C (or SIGTERM) finishes the export cleanly."""
    if Path(output).exists() and not overwrite:
        raise ExportError(f"output folder {output} exists already (use --overwrite)")
    with _StopFlag() as stop:
        stream = live_frames(topics, frames, timeout, reliability, stop, log)
        return write_sequence(stream, output, layout, overwrite, depth_scale, log)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="export_rgbd",
        usage="export_rgbd [options] BAG OUTPUT\n       export_rgbd --live [options] OUTPUT",
        description="Export image + dense depth + intrinsics + stamps from a processed bag or "
        "live topics in the TUM RGB-D layout or Droid-SLAM's image/depth/calib layout.",
        formatter_class=DefaultsFormatter,
    )
    parser.add_argument(
        "paths",
        nargs="+",
        metavar="PATH",
        help="BAG OUTPUT: a bag with dense depth (written by process_bag) and the folder to "
        "create; with --live only OUTPUT",
    )
    parser.add_argument(
        "--live", action="store_true", help="subscribe to live topics instead of reading a bag"
    )
    parser.add_argument(
        "--layout",
        choices=("tum", "droid"),
        default="tum",
        help="tum: rgb/ + depth/ uint16 PNGs, associations.txt; droid: image/ + depth/*.npy "
        "float32 metres, calib.txt",
    )
    parser.add_argument(
        "--image-topic",
        help="camera image topic (default: /kitti/camera_color_left/image_raw from a bag, "
        "image live)",
    )
    parser.add_argument(
        "--depth-topic",
        help="dense depth topic (default: /depth/image from a bag, depth/image live)",
    )
    parser.add_argument(
        "--camera-info-topic",
        help="depth CameraInfo topic (default: /depth/camera_info from a bag, "
        "depth/camera_info live)",
    )
    parser.add_argument(
        "--depth-scale",
        type=float,
        default=TUM_DEPTH_SCALE,
        help="tum: depth PNG units per metre (5000 = TUM's own, max 13.1 m; 1000: 65.5 m, "
        "256: 256 m); farther depth is written as 0 and counted in a warning",
    )
    parser.add_argument(
        "--frames", type=int, default=0, help="live: stop after N frames (0 = until Ctrl-C)"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        help="live: finish after this many seconds without a new frame",
    )
    parser.add_argument(
        "--reliability",
        choices=("reliable", "best_effort"),
        default="reliable",
        help="live: QoS of the subscriptions (best_effort for best-effort camera drivers)",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing output folder"
    )
    parser.add_argument(
        "--dds-profile",
        choices=("localhost", "robot", "inherit"),
        default="localhost",
        help="live: Fast DDS profile (localhost keeps traffic on this machine; robot reaches "
        "other machines; inherit uses FASTDDS_DEFAULT_PROFILES_FILE as set)",
    )
    args = parser.parse_args(argv)
    expected = 1 if args.live else 2
    if len(args.paths) != expected:
        parser.error("give BAG OUTPUT, or --live OUTPUT")
    if args.frames < 0 or args.timeout <= 0:
        parser.error("--frames must be >= 0 and --timeout > 0")
    if not args.depth_scale > 0:
        parser.error(f"--depth-scale must be positive, got {args.depth_scale:g}")
    defaults = LIVE_TOPICS if args.live else BAG_TOPICS
    topics = {
        "image": args.image_topic or defaults["image"],
        "depth": args.depth_topic or defaults["depth"],
        "camera_info": args.camera_info_topic or defaults["camera_info"],
    }
    output = args.paths[-1]
    try:
        if args.live:
            from depth_completion_ros.tools.graph import use_ros_environment

            use_ros_environment(transport=args.dds_profile)
            count = export_live(
                output,
                args.layout,
                topics,
                args.frames,
                args.timeout,
                args.reliability,
                args.overwrite,
                args.depth_scale,
                log=lambda text: print(text, file=sys.stderr, flush=True),
            )
        else:
            count = export(
                args.paths[0],
                output,
                args.layout,
                topics,
                args.overwrite,
                args.depth_scale,
                log=lambda text: print(text, file=sys.stderr, flush=True),
            )
    except (ExportError, BagError, OSError) as exc:
        print(f"export_rgbd: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("export_rgbd: aborted (second interrupt): nothing written", file=sys.stderr)
        return 130
    print(f"wrote {count} RGB-D frames to {output} ({args.layout} layout)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
