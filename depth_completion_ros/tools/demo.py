"""The demo: a sequence written to a bag, replayed with play_bag into the node over DDS.

Input is a KITTI raw drive folder when given, otherwise a synthetic street scene generated with
open3d ray casting (exact ground truth) and written in the KITTI raw layout, so the demo runs on a
fresh machine with no data. Both go the same way: ``kitti_to_bag`` converts the drive into a bag
(in a temporary folder), the node runs in its own process, ``play_bag`` replays the bag into it
(reliable QoS) from a third process, and a subscriber here collects what the node publishes.
Writes to the output folder: ``depth/NNNNNN.png`` (KITTI uint16), ``pictures/NNNNNN.png`` (titled
panels: image, LiDAR points, dense depth with the region without LiDAR support hatched; a colour
bar in metres), ``cloud.ply`` (one frame's coloured cloud) and ``summary.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from depth_completion_ros import kitti_bag
from depth_completion_ros.bag_io import BagReader
from depth_completion_ros.cli_help import DefaultsFormatter
from depth_completion_ros.depth_io import write_atomic, write_kitti_depth, write_ply, write_rgb
from depth_completion_ros.frame import support_from_parameters
from depth_completion_ros.messages import image_to_depth
from depth_completion_ros.metrics import kitti_metrics
from depth_completion_ros.parameters import defaults as parameter_defaults
from depth_completion_ros.support import outside_support
from depth_completion_ros.tools.graph import (
    ros_environment,
    start_node_process,
    stop_process,
    use_ros_environment,
)
from depth_completion_ros.visualization import demo_picture

GROUND_TRUTH_MAX_DEPTH = 80.0  # metres; KITTI's ground truth ends near here (5-85 m)
IMAGE_TOPIC = kitti_bag.image_topic(2)
INFO_TOPIC = kitti_bag.camera_info_topic(2)
POINTS_TOPIC = kitti_bag.LIDAR_TOPIC
COLLECTED = ("depth/image", "depth/points", "sparse_depth/image")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="depth_completion_demo",
        description=__doc__.splitlines()[0],
        formatter_class=DefaultsFormatter,
    )
    parser.add_argument(
        "--kitti-drive",
        default="",
        help="KITTI raw <date>_drive_XXXX_sync folder (default: a generated synthetic street)",
    )
    parser.add_argument(
        "--output",
        default="",
        help="output folder (default: output/demo for the synthetic street, "
        "output/demo_kitti/<drive> for a KITTI drive, so neither run replaces the other)",
    )
    parser.add_argument("--frames", type=int, default=10, help="frames to play (0 = all)")
    parser.add_argument(
        "--model", default="classical", help="node 'model' parameter (classical, bpnet, selfdc...)"
    )
    parser.add_argument("--checkpoint", help="node 'checkpoint' parameter: weights of a network")
    parser.add_argument("--device", default="auto", help="node 'device' parameter (auto|cpu|cuda)")
    parser.add_argument(
        "--domain-id",
        type=int,
        default=int(os.environ.get("ROS_DOMAIN_ID", 57)),
        help="ROS_DOMAIN_ID of the node, player and collector (DDS stays on this machine)",
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=0.5,
        help="play_bag speed factor (1.0 = the recording's 10 Hz; default 5 Hz, 3x the classical "
        "node's p95 latency on 2 cores). The node keeps only the newest pair, so a model slower "
        "than the frame period drops frames: lower it",
    )
    parser.add_argument(
        "--timeout", type=float, default=60.0, help="seconds to wait for outputs after playing"
    )
    args = parser.parse_args(argv)
    if args.frames < 0 or args.rate <= 0 or args.timeout <= 0:
        parser.error("--frames must be >= 0, --rate and --timeout positive")
    args.checkpoint = args.checkpoint or ""
    if not args.output:
        args.output = (
            f"output/demo_kitti/{Path(args.kitti_drive).resolve().name}"
            if args.kitti_drive
            else "output/demo"
        )
    return args


def log_tail(path: Path, lines: int = 25) -> str:
    """The last lines of a log, indented, for a failure message (not only its path)."""
    try:
        text = path.read_text(errors="replace").rstrip().splitlines()
    except OSError:
        return f"  ({path} could not be read)"
    if not text:
        return f"  ({path} is empty)"
    return "\n".join(f"  | {line}" for line in text[-lines:])


PREVIOUS_OUTPUTS = ("depth", "pictures", "cloud.ply", "summary.json", "node.log")


def clear_previous_run(output: Path, source: str, log=print) -> None:
    """Replace an earlier run's outputs in ``output`` and say so (a run with fewer frames must
    not leave the old run's pictures behind, mixed with the new ones)."""
    summary = output / "summary.json"
    if not any((output / name).exists() for name in PREVIOUS_OUTPUTS):
        return
    previous = "an earlier run"
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        previous = f"the run on {json.loads(summary.read_text())['source']}"
    log(f"[demo] replacing {previous} in {output} with {source} (choose another with --output)")
    for name in PREVIOUS_OUTPUTS:
        path = output / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


@dataclasses.dataclass
class DemoFrame:
    """One played frame: what the collector keys outputs by, and what the pictures need."""

    stamp_ns: int  # the image's stamp in the bag (= the stamp of the node's outputs)
    name: str
    rgb: np.ndarray
    ground_truth: np.ndarray | None


def synthetic_drive(count: int, root: Path) -> Path:
    """A generated street (ground, cars, walls) with a 64-beam LiDAR, as a KITTI raw drive.

    The ground truth written beside it is the exact rendered depth restricted as KITTI's is
    (see :func:`lidar_covered_truth`).
    """
    from depth_completion_ros.calibration import PinholeCamera
    from depth_completion_ros.simulation.street_scene import make_sequence, write_kitti_raw

    generated = make_sequence(count or 10, seed=0)
    restricted = []
    for frame in generated:
        height, width = frame.depth_gt.shape
        camera = PinholeCamera(width=width, height=height, P=frame.P)
        truth = lidar_covered_truth(frame.depth_gt, frame.points, camera, frame.T_velo_to_cam)
        restricted.append(dataclasses.replace(frame, depth_gt=truth))
    return write_kitti_raw(restricted, root)


def drive_subset(drive_dir: Path, frame_ids: list[int], root: Path) -> Path:
    """The first frames of a drive as a drive of links (no data copied), for kitti_to_bag."""
    date_dir = root / drive_dir.parent.name
    subset = date_dir / drive_dir.name
    date_dir.mkdir(parents=True)
    for calib in drive_dir.parent.glob("calib_*.txt"):
        (date_dir / calib.name).symlink_to(calib.resolve())
    for sensor, suffix in (("image_02", ".png"), ("velodyne_points", ".bin"), ("oxts", ".txt")):
        source = drive_dir / sensor
        if not (source / "data").is_dir():
            continue
        (subset / sensor / "data").mkdir(parents=True)
        if (source / "timestamps.txt").is_file():
            (subset / sensor / "timestamps.txt").symlink_to((source / "timestamps.txt").resolve())
        for frame_id in frame_ids:
            name = f"{frame_id:010d}{suffix}"
            if (source / "data" / name).is_file():
                (subset / sensor / "data" / name).symlink_to((source / "data" / name).resolve())
    return subset


def demo_frames(bag: Path, drive) -> list[DemoFrame]:
    """Frames in play order: the bag's image stamps with the drive's images and ground truth."""
    with BagReader(bag) as reader:
        stamps = [m.timestamp for m in reader.messages([IMAGE_TOPIC])]
    if len(stamps) != len(drive.frame_ids):
        raise RuntimeError(f"{bag}: {len(stamps)} images for {len(drive.frame_ids)} frames")
    frames = []
    for stamp, frame_id in zip(stamps, drive.frame_ids, strict=True):
        frame = drive.frame(frame_id)
        frames.append(DemoFrame(stamp, f"{frame_id:06d}", frame.rgb, frame.ground_truth))
    return frames


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


def _collector_class():
    """Built on first use, so importing the demo does not need rclpy."""
    from rclpy.node import Node
    from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import CameraInfo, Image, PointCloud2

    from depth_completion_ros.messages import stamp_to_nanoseconds

    class Collector(Node):
        """Keeps the node's outputs by stamp, and DDS times for latency.

        Latency uses the samples' source (publish) and receive timestamps from the middleware,
        both on this machine's clock, so it does not depend on the order this executor takes
        callbacks in.
        """

        def __init__(self, **kwargs) -> None:
            super().__init__("demo_collector", **kwargs)
            qos = QoSProfile(
                history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.RELIABLE
            )
            self.outputs: dict[int, dict[str, object]] = {}
            self.depth_received: dict[int, int] = {}  # ns
            self.image_sent: dict[int, int] = {}
            self.scan_sent: list[int] = []
            kinds = {"depth/image": Image, "depth/points": PointCloud2}
            for topic in COLLECTED:
                self.create_subscription(kinds.get(topic, Image), topic, self._keep(topic), qos)
            self.create_subscription(Image, IMAGE_TOPIC, self._image, qos)
            self.create_subscription(PointCloud2, POINTS_TOPIC, self._scan, qos)
            # also on camera_info, so that every replayed topic has two readers to wait for
            self.create_subscription(CameraInfo, INFO_TOPIC, lambda msg: None, qos)

        def _keep(self, topic: str):
            def keep(msg, info) -> None:
                key = stamp_to_nanoseconds(msg.header.stamp)
                self.outputs.setdefault(key, {})[topic] = msg
                if topic == "depth/image":
                    self.depth_received[key] = info["received_timestamp"]

            return keep

        def _image(self, msg, info) -> None:
            self.image_sent[stamp_to_nanoseconds(msg.header.stamp)] = info["source_timestamp"]

        def _scan(self, _msg, info) -> None:
            self.scan_sent.append(info["source_timestamp"])

        def node_is_up(self) -> bool:
            """The node publishes its outputs and subscribes to the bag's topics (beside us)."""
            return (
                all(self.count_publishers(topic) > 0 for topic in COLLECTED)
                and self.count_subscribers(IMAGE_TOPIC) >= 2
                and self.count_subscribers(POINTS_TOPIC) >= 2
                and self.count_subscribers(INFO_TOPIC) >= 1
            )

        def complete(self, stamps: list[int]) -> bool:
            return all(set(COLLECTED) <= set(self.outputs.get(s, {})) for s in stamps)

        def latencies(self) -> np.ndarray:
            """Seconds from the later of the image and the newest scan being published to the
            dense depth being received here."""
            values = []
            for key, received in self.depth_received.items():
                scans = [t for t in self.scan_sent if t <= received]
                if key in self.image_sent and scans:
                    values.append((received - max(self.image_sent[key], max(scans))) / 1e9)
            return np.array(values)

    return Collector


def play_into_node(
    bag: Path, parameters: dict, stamps: list[int], args: argparse.Namespace, output: Path
):
    """Start the node, replay the bag with play_bag, return the collector once all came back."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    use_ros_environment(args.domain_id)
    node = start_node_process(parameters, args.domain_id, output / "node.log")
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=args.domain_id)
    collector = _collector_class()(context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(collector)
    player = None
    try:
        deadline = time.monotonic() + 60.0
        while not collector.node_is_up():
            if node.poll() is not None or time.monotonic() > deadline:
                state = "exited" if node.poll() is not None else "is not up after 60 s"
                raise RuntimeError(
                    f"the node {state}; the end of {output / 'node.log'}:\n"
                    + log_tail(output / "node.log")
                )
            executor.spin_once(timeout_sec=0.05)
        command = [
            sys.executable,
            "-m",
            "depth_completion_ros.tools.play_bag",
            str(bag),
            "--topics",
            IMAGE_TOPIC,
            INFO_TOPIC,
            POINTS_TOPIC,
            "--reliability",
            "reliable",
            "--rate",
            str(args.rate),
            "--wait-for-subscribers",
            "30",
            # the node and the collector both read every input topic: wait for both, since a
            # volatile reader matched late (Fast DDS's next announcement, ~3 s) misses frames
            "--min-subscribers",
            "2",
        ]
        started = time.monotonic()
        print(f"[demo] playing {bag.name} with play_bag at rate {args.rate:g}", flush=True)
        player = subprocess.Popen(
            command,
            env=ros_environment(args.domain_id),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        while player.poll() is None:
            executor.spin_once(timeout_sec=0.01)
        played = player.stdout.read().strip()
        if player.returncode != 0:
            raise RuntimeError(f"play_bag failed ({player.returncode}): {played}")
        print(f"[demo] play_bag: {played.splitlines()[-1] if played else ''}", flush=True)
        deadline = time.monotonic() + args.timeout
        while not collector.complete(stamps) and time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.01)
        elapsed = time.monotonic() - started
        return collector, elapsed
    finally:
        if player is not None and player.poll() is None:
            stop_process(player)
        executor.shutdown()
        collector.destroy_node()
        rclpy.try_shutdown(context=context)
        stop_process(node)


def run(args: argparse.Namespace) -> dict:
    """The demo: input drive -> bag -> the node over DDS -> outputs and summary.json."""
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="depth_completion_demo_") as work:
        bag, drive, frames, source = prepare_input(args, Path(work))
        print(f"[demo] {len(frames)} frames from {source}", flush=True)
        clear_previous_run(output, source, log=lambda text: print(text, flush=True))
        parameters = {
            "calibration_dir": str(drive.calibration_dir),
            "image_topic": IMAGE_TOPIC,
            "camera_info_topic": INFO_TOPIC,
            "points_topic": POINTS_TOPIC,
            "model": args.model,
            "checkpoint": args.checkpoint,
            "device": args.device,
            "publish_sparse": True,
            "input_reliability": "reliable",
        }
        collector, elapsed = play_into_node(
            bag, parameters, [f.stamp_ns for f in frames], args, output
        )
    per_frame, metrics = write_frame_outputs(frames, collector.outputs, output)
    summary = summarize(args, source, frames, per_frame, metrics, collector, elapsed)
    write_atomic(output / "summary.json", lambda tmp: tmp.write_text(json.dumps(summary, indent=2)))
    return summary


def prepare_input(args: argparse.Namespace, work: Path):
    """The input as a kitti_to_bag bag: (bag, drive, frames, description of the source)."""
    from depth_completion_ros.kitti import KittiDrive

    if args.kitti_drive:
        print("[demo] converting the KITTI drive to a bag ...", flush=True)
        drive = KittiDrive(args.kitti_drive)
        if args.frames and args.frames < len(drive.frame_ids):
            drive.frame_ids = drive.frame_ids[: args.frames]
            drive_dir = drive_subset(drive.drive_dir, drive.frame_ids, work / "kitti")
        else:
            drive_dir = drive.drive_dir
        source = f"KITTI drive {drive.drive_dir}"
    else:
        print("[demo] generating a synthetic street as a KITTI drive ...", flush=True)
        drive_dir = synthetic_drive(args.frames, work / "kitti")
        drive = KittiDrive(drive_dir)
        source = "synthetic street scene (open3d)"
    notes: list[str] = []
    bag = work / "bag"
    kitti_bag.convert(drive_dir, bag, cameras=(2,), log=notes.append)
    if any("stamps synthesised" in note for note in notes):
        source += " (no timestamps.txt: stamps synthesised at 10 Hz)"
    return bag, drive, demo_frames(bag, drive), source


def write_frame_outputs(frames, outputs_by_stamp: dict, output: Path) -> tuple[list, list]:
    """Per frame: the depth PNG, the picture, scores against ground truth, and one cloud."""
    # the node runs with its default parameters: the same support rule marks what it left NaN
    support = support_from_parameters(parameter_defaults())
    per_frame, metrics = [], []
    cloud_written = False
    for frame in frames:
        outputs = outputs_by_stamp.get(frame.stamp_ns, {})
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
        unsupported = outside_support(sparse, support)
        picture = demo_picture(frame.rgb, sparse, dense, unsupported, GROUND_TRUTH_MAX_DEPTH)
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
    return per_frame, metrics


def summarize(args, source, frames, per_frame, metrics, collector, elapsed: float) -> dict:
    """summary.json: frames in and out, latency percentiles, accuracy, the machine."""
    latencies = collector.latencies() * 1000.0
    received = sum(1 for entry in per_frame if entry["received"])
    accuracy = None
    if metrics:
        keys = ("rmse_mm", "mae_mm", "irmse_1_per_km", "imae_1_per_km")
        accuracy = {key: float(np.mean([m[key] for m in metrics])) for key in keys}
    return {
        "source": source,
        "model": args.model,
        "input": f"kitti_to_bag -> play_bag (reliable, rate {args.rate:g}) -> node over DDS",
        "frames_in": len(frames),
        "frames_out": received,
        "seconds": round(elapsed, 3),
        "latency_ms_p50": float(np.percentile(latencies, 50)) if latencies.size else None,
        "latency_ms_p95": float(np.percentile(latencies, 95)) if latencies.size else None,
        "latency_note": "play_bag publishes image and scan -> a subscriber beside it receives the "
        "dense depth (DDS source/receive timestamps; node in its own process)",
        "accuracy": accuracy,
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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        summary = run(args)
    except Exception as exc:  # noqa: BLE001 - a tool reports and exits non-zero
        print(f"[demo] failed: {exc}", file=sys.stderr)
        node_log = Path(args.output) / "node.log"
        if node_log.exists() and "node.log" not in str(exc):
            print(f"[demo] the end of {node_log}:\n{log_tail(node_log)}", file=sys.stderr)
        return 1
    short = {k: v for k, v in summary.items() if k not in ("frames", "machine")}
    print(json.dumps(short, indent=2))
    print(f"[demo] outputs in {Path(args.output).resolve()}")
    if summary["frames_out"] == summary["frames_in"]:
        return 0
    node_log = Path(args.output) / "node.log"
    print(
        f"[demo] only {summary['frames_out']} of {summary['frames_in']} frames came back; "
        f"the end of {node_log}:\n{log_tail(node_log)}",
        file=sys.stderr,
    )
    return 1


if __name__ == "__main__":
    sys.exit(main())
