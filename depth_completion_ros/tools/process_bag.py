"""Offline processing: a bag in, the same bag plus dense depth out, with the node's own code path.

No DDS: messages are read from the bag, paired with :class:`StampPairer`, converted with
``messages.py`` and run through :class:`DepthPipeline` built from the node's parameters by
:func:`pipeline_from_parameters`, so for the same bag the depth equals what the node publishes.
The output bag (and the optional KITTI PNG folder) appear only once complete.
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from depth_completion_ros import cli_help, node_setup, odometry
from depth_completion_ros.bag_io import (
    BagError,
    BagReader,
    BagWriter,
    connection_definitions,
    from_ros,
    parse_tf_message,
    to_ros,
)
from depth_completion_ros.calibration import (
    CalibrationError,
)
from depth_completion_ros.depth_io import write_kitti_depth
from depth_completion_ros.messages import (
    MessageError,
    camera_info_to_camera,
    image_to_rgb,
    pointcloud2_to_array,
    stamp_to_nanoseconds,
    stamp_to_seconds,
)
from depth_completion_ros.pairing import StampPairer
from depth_completion_ros.pipeline import DepthPipeline, InputError

DEFAULT_TOPICS = {
    "image": "/kitti/camera_color_left/image_raw",
    "camera_info": "/kitti/camera_color_left/camera_info",
    "points": "/kitti/velo/pointcloud",
}


# A node parameter given to the tool is unknown or unusable; the message names the parameter.
ParameterError = cli_help.ParameterError


# --- the node's parameters -> the pipeline (shared by node and tool) -------------------------


def node_defaults() -> dict[str, object]:
    """The node's parameter defaults, from its own declaration table."""
    from depth_completion_ros.node import PARAMETERS

    return {p.name: p.default for p in PARAMETERS}


def load_parameters(params_file: str | Path | None, overrides: dict[str, object]) -> dict:
    """Node defaults <- a ``--params-file`` YAML (as the node reads it) <- overrides."""
    config = node_defaults()
    if params_file:
        path = Path(params_file)
        try:
            document = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise ParameterError(f"cannot read parameter file {path}: {exc}") from exc
        sections = [
            v["ros__parameters"]
            for v in (document or {}).values()
            if isinstance(v, dict) and "ros__parameters" in v
        ]
        if not sections:
            raise ParameterError(f"{path}: no '<node>: ros__parameters:' section")
        config.update(cli_help.check_parameters(sections[0], str(path)))
    config.update(cli_help.check_parameters(overrides, "-p"))
    for name in cli_help.ROS_BUILTIN_PARAMETERS:
        config.pop(name, None)  # use_sim_time etc. mean nothing offline
    cli_help.check_depth_range(config)
    return config


def pipeline_from_parameters(config: dict) -> DepthPipeline:
    """The node's pipeline for these parameters (shared code: node_setup)."""
    try:
        return node_setup.pipeline_from_parameters(config)
    except node_setup.ConfigurationError as exc:
        raise ParameterError(str(exc)) from exc


def extrinsics_from_parameters(config: dict) -> np.ndarray | None:
    """LiDAR -> camera optical transform from calibration_dir or extrinsics, as the node does."""
    try:
        return node_setup.extrinsics_from_parameters(config)[0]
    except node_setup.ConfigurationError as exc:
        raise ParameterError(str(exc)) from exc


output_messages = node_setup.output_messages


OUTPUT_TYPES = {
    "depth/image": "sensor_msgs/msg/Image",
    "depth/camera_info": "sensor_msgs/msg/CameraInfo",
    "depth/points": "sensor_msgs/msg/PointCloud2",
    "sparse_depth/image": "sensor_msgs/msg/Image",
    "depth/colored": "sensor_msgs/msg/Image",
}


# --- static TF from the bag (used when no calibration parameter is given) --------------------


def static_edges(reader: BagReader) -> dict[str, tuple[str, np.ndarray]]:
    """child -> (parent, T_parent_child) from the bag's /tf_static (empty when absent)."""
    edges: dict[str, tuple[str, np.ndarray]] = {}
    if "/tf_static" in reader.topics:
        for message in reader.messages(["/tf_static"]):
            for tf in parse_tf_message(message.data):
                edges[tf.child] = (tf.parent, tf.T)
    return edges


def static_transform(
    edges: dict[str, tuple[str, np.ndarray]], source: str, target: str
) -> np.ndarray | None:
    """4x4 taking points from ``source`` into ``target`` through static edges, or None."""

    def to_root(frame: str) -> dict[str, np.ndarray]:
        path, T = {frame: np.eye(4)}, np.eye(4)
        while frame in edges and len(path) < 64:
            frame, T_parent_child = edges[frame]
            T = T_parent_child @ T
            path[frame] = T
        return path

    source_path, target_path = to_root(source), to_root(target)
    common = next((f for f in source_path if f in target_path), None)
    if common is None:
        return None
    return np.linalg.inv(target_path[common]) @ source_path[common]


# --- processing -----------------------------------------------------------------------------


@dataclass
class ProcessReport:
    processed: int = 0
    failed: int = 0
    failures: list[str] = field(default_factory=list)
    paired: int = 0
    rejected_offset: int = 0
    no_image: int = 0
    stamps: list[int] = field(default_factory=list)
    offset_note: str = ""  # set when scans found no image within max_time_offset
    not_deskewed: dict[str, int] = field(default_factory=dict)  # odometry_topic set: per cause
    deskew_notes: dict[str, str] = field(default_factory=dict)  # the first message per cause


def pair_extrinsics(
    T_fixed: np.ndarray | None, edges: dict, source: str, target: str, fix: str
) -> np.ndarray:
    """LiDAR -> camera transform of one pair: the fixed one (calibration or parameters), else
    identity when the cloud is already in the image's frame, else /tf_static's; a
    CalibrationError ending in ``fix`` when none connects them."""
    if T_fixed is not None:
        return T_fixed
    if source == target or not source:
        return np.eye(4)
    T = static_transform(edges, source, target)
    if T is None:
        raise CalibrationError(
            f"the cloud is in frame '{source}', the image in '{target}', and /tf_static does not "
            f"connect them: {fix}"
        )
    return T


def _require_messages(bag, counts: dict[str, int], topics: dict[str, str]) -> None:
    """An empty bag, or one without messages on a needed topic, says so (not "0 scans ...")."""
    empty = [topics[k] for k in ("image", "camera_info", "points") if not counts.get(topics[k])]
    if not empty:
        return
    if not any(counts.values()):
        raise BagError(f"{bag}: the bag is empty (its topics hold no messages)")
    listing = ", ".join(f"{t} ({n})" for t, n in sorted(counts.items()))
    raise BagError(
        f"{bag}: no messages on {', '.join(empty)}; messages per topic: {listing}. "
        "Name other topics with --image-topic/--camera-info-topic/--points-topic"
    )


def offset_note(image_stamps: list[float], cloud_stamps: list[float], max_offset: float) -> str:
    """When scans find no image within ``max_offset``: how far the nearest images were (median)
    and what to do, since a constant offset means the two streams' clocks differ."""
    if not image_stamps or not cloud_stamps:
        return ""
    images = np.sort(np.asarray(image_stamps))
    clouds = np.asarray(cloud_stamps)
    right = np.clip(np.searchsorted(images, clouds), 0, len(images) - 1)
    left = np.clip(right - 1, 0, len(images) - 1)
    offsets = np.where(
        np.abs(images[left] - clouds) < np.abs(images[right] - clouds),
        images[left] - clouds,
        images[right] - clouds,
    )
    far = offsets[np.abs(offsets) > max_offset]
    if far.size == 0:
        return ""
    nearest = float(np.median(far))
    shift = float(np.median(images) - np.median(clouds))
    note = (
        f"{far.size} of {clouds.size} scans have no image within max_time_offset {max_offset:g} s "
        f"(nearest image {nearest:+.3f} s away, median); the image stamps are offset from the "
        f"scan stamps by {shift:+.3f} s (median image stamp - median scan stamp)"
    )
    needed = math.ceil(float(np.abs(far).max()) * 1.1 * 1000) / 1000
    if needed <= 10.0:
        return note + (
            f": if the sensors really are that far apart, pass -p max_time_offset:={needed:g}; "
            "otherwise fix the stamps of one stream"
        )
    return note + (
        ": more than max_time_offset's maximum (10 s), so the two sensors' clocks (or a "
        "re-stamping step) differ; fix the stamps of one stream"
    )


def _topic(namespace: str, relative: str) -> str:
    return "/" + "/".join(p for p in (namespace.strip("/"), relative) if p)


def process(
    input_bag: str | Path,
    output_bag: str | Path,
    config: dict,
    topics: dict[str, str] = DEFAULT_TOPICS,
    namespace: str = "",
    kitti_dir: str | Path | None = None,
    storage: str = "mcap",
    copy_input: bool = True,
    overwrite: bool = False,
    progress: bool = True,
) -> ProcessReport:
    """Read ``input_bag``, write ``output_bag`` with the depth outputs added."""
    pipeline = pipeline_from_parameters(config)
    T_fixed = extrinsics_from_parameters(config)
    report = ProcessReport()
    odometry_topic = config["odometry_topic"]
    pairer: StampPairer = StampPairer(float(config["max_time_offset"]))
    with BagReader(input_bag) as reader:
        reader.require(
            {
                topics["image"]: "sensor_msgs/msg/Image",
                topics["camera_info"]: "sensor_msgs/msg/CameraInfo",
                topics["points"]: "sensor_msgs/msg/PointCloud2",
            }
        )
        definitions = connection_definitions(reader)
        counts = reader.message_counts
        _require_messages(input_bag, counts, topics)
        if odometry_topic in reader.topics:
            reader.require({odometry_topic: "nav_msgs/msg/Odometry"})
        elif odometry_topic:  # processed without deskewing, and reported
            report.deskew_notes["none"] = (
                f"{input_bag} has no topic {odometry_topic!r} (parameter odometry_topic); its "
                f"topics: {', '.join(sorted(reader.topics))}"
            )
        inputs = set(topics.values()) | ({odometry_topic} & set(counts))
        total = sum(counts.values()) if copy_input else sum(counts[t] for t in inputs)
        edges = static_edges(reader) if T_fixed is None or odometry_topic else {}

        def extrinsics(cloud, image) -> np.ndarray:
            try:
                return pair_extrinsics(
                    T_fixed,
                    edges,
                    cloud.header.frame_id,
                    image.header.frame_id,
                    "pass --calibration-dir or -p extrinsics:=[...]",
                )
            except CalibrationError as exc:
                raise CalibrationError(f"{input_bag}: {exc}") from None

        latest: dict[str, object] = {"odometry": None}  # the last Odometry read from the bag

        def rotation(child: str, lidar: str) -> np.ndarray | None:
            T = static_transform(edges, child, lidar)
            return None if T is None else T[:3, :3]

        def motion(cloud):
            """The scan's motion from the latest odometry (None: not deskewed, reported)."""
            if not odometry_topic:
                return None
            try:
                return odometry.scan_motion(
                    latest["odometry"], cloud.header, rotation, odometry_topic
                )
            except odometry.NoMotion as exc:
                report.not_deskewed[exc.cause] = report.not_deskewed.get(exc.cause, 0) + 1
                report.deskew_notes.setdefault(exc.cause, str(exc))
                return None

        png_staging: Path | None = None
        if kitti_dir:
            kitti_dir = Path(kitti_dir)
            if kitti_dir.exists() and not overwrite:
                raise BagError(f"output folder {kitti_dir} exists already (use --overwrite)")
            kitti_dir.parent.mkdir(parents=True, exist_ok=True)
            png_staging = Path(
                tempfile.mkdtemp(prefix=f".{kitti_dir.name}.partial-", dir=kitti_dir.parent)
            )
        try:
            with BagWriter(output_bag, storage=storage, overwrite=overwrite) as writer:
                wanted = None if copy_input else inputs
                if copy_input:
                    for topic, (msgtype, msgdef, digest) in definitions.items():
                        qos = reader.qos(topic)
                        writer.add_topic(topic, msgtype, qos[0] if qos else None, msgdef, digest)
                camera_info = None
                bar = _progress(total, progress)
                stamps_lines: list[str] = []

                def handle(pairs, timestamp: int) -> None:
                    for pair in pairs:
                        try:
                            if camera_info is None:
                                raise InputError(
                                    f"no camera_info on {topics['camera_info']} before this pair"
                                )
                            camera = camera_info_to_camera(camera_info)
                            rgb = image_to_rgb(pair.image)
                            points = pointcloud2_to_array(
                                pair.cloud, scale=config["points_scale"] or None
                            )
                            if len(points) == 0:
                                raise InputError(f"empty point cloud on {topics['points']}")
                            T = extrinsics(pair.cloud, pair.image)
                            result = pipeline.run(rgb, points, camera, T, motion(pair.cloud))
                        except (InputError, MessageError, CalibrationError) as exc:
                            report.failed += 1
                            if len(report.failures) < 20:
                                report.failures.append(str(exc))
                            continue
                        outputs = output_messages(
                            pair.image.header, camera, rgb, result, pipeline, config
                        )
                        for relative, msg in outputs.items():
                            topic = _topic(namespace, relative)
                            writer.add_topic(topic, OUTPUT_TYPES[relative])
                            writer.write(topic, timestamp, from_ros(msg))
                        stamp = stamp_to_nanoseconds(pair.image.header.stamp)
                        report.stamps.append(stamp)
                        if png_staging is not None:
                            name = f"{report.processed:010d}.png"
                            write_kitti_depth(png_staging / name, result.dense)
                            stamps_lines.append(f"{name} {stamp / 1e9:.9f}")
                        report.processed += 1

                last_timestamp = 0
                image_stamps: list[float] = []
                cloud_stamps: list[float] = []
                for message in reader.messages(wanted):
                    bar.update(1)
                    last_timestamp = message.timestamp
                    if copy_input:
                        writer.write(message.topic, message.timestamp, message.data)
                    if message.topic == odometry_topic:
                        latest["odometry"] = to_ros(message.data, message.msgtype)
                    elif message.topic == topics["camera_info"]:
                        camera_info = to_ros(message.data, message.msgtype)
                    elif message.topic == topics["image"]:
                        image = to_ros(message.data, message.msgtype)
                        image_stamps.append(stamp_to_seconds(image.header.stamp))
                        handle(
                            pairer.add_image(stamp_to_seconds(image.header.stamp), image),
                            message.timestamp,
                        )
                    elif message.topic == topics["points"]:
                        cloud = to_ros(message.data, message.msgtype)
                        cloud_stamps.append(stamp_to_seconds(cloud.header.stamp))
                        handle(
                            pairer.add_cloud(stamp_to_seconds(cloud.header.stamp), cloud),
                            message.timestamp,
                        )
                handle(pairer.flush(), last_timestamp)
                bar.close()
                stats = pairer.stats
                report.paired, report.rejected_offset = stats.paired, stats.rejected_offset
                report.no_image = stats.no_image
                report.offset_note = offset_note(
                    image_stamps, cloud_stamps, float(config["max_time_offset"])
                )
                if report.processed == 0:
                    reasons = (
                        "; ".join(report.failures[:3])
                        or report.offset_note
                        or (
                            f"{stats.rejected_offset} scans had no image within max_time_offset "
                            f"{config['max_time_offset']} s, {stats.no_image} had no image at all"
                        )
                    )
                    raise BagError(
                        f"{input_bag}: no frame could be processed from {topics['image']} + "
                        f"{topics['points']}: {reasons}"
                    )
            if png_staging is not None:
                (png_staging / "timestamps.txt").write_text("\n".join(stamps_lines) + "\n")
                if kitti_dir.exists():
                    shutil.rmtree(kitti_dir)
                png_staging.rename(kitti_dir)
                png_staging = None
        finally:
            if png_staging is not None:
                shutil.rmtree(png_staging, ignore_errors=True)
    return report


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int, enabled: bool):
    if not enabled:
        return _NoBar()
    try:
        from tqdm import tqdm
    except ImportError:
        return _NoBar()
    return tqdm(total=total, unit="msg", desc="process_bag", file=sys.stderr)


def parse_override(text: str) -> tuple[str, object]:
    """``name:=value`` (as in ``--ros-args -p``) -> (name, YAML-parsed value)."""
    name, sep, value = text.partition(":=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected name:=value, got {text!r}")
    return name, yaml.safe_load(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="process_bag",
        description="Run the depth completion node's pipeline over a bag, without DDS, and write "
        "a new bag with dense depth, camera info and point clouds added.",
        formatter_class=cli_help.DefaultsFormatter,
    )
    parser.add_argument("input", help="input bag folder")
    parser.add_argument("output", help="output bag folder to create")
    parser.add_argument(
        "--params-file", help="node parameter YAML, as the node reads it (e.g. config/kitti.yaml)"
    )
    parser.add_argument(
        "-p",
        "--param",
        action="append",
        type=parse_override,
        default=[],
        metavar="NAME:=VALUE",
        help="override a node parameter (repeatable); checked like the node checks it "
        "(depth_completion_node --help lists them)",
    )
    parser.add_argument(
        "--calibration-dir",
        help="KITTI date folder, shortcut for -p calibration_dir:=DIR (default: the params, "
        "else the bag's /tf_static)",
    )
    parser.add_argument(
        "--image-topic", default=DEFAULT_TOPICS["image"], help="camera image topic in the bag"
    )
    parser.add_argument(
        "--camera-info-topic",
        default=DEFAULT_TOPICS["camera_info"],
        help="CameraInfo topic in the bag",
    )
    parser.add_argument(
        "--points-topic", default=DEFAULT_TOPICS["points"], help="PointCloud2 topic in the bag"
    )
    parser.add_argument(
        "--namespace", default="", help="prefix of the output topics (default: /depth/image ...)"
    )
    parser.add_argument(
        "--kitti-depth-dir",
        help="also write KITTI uint16 depth PNGs (metres x 256) and timestamps.txt here",
    )
    parser.add_argument(
        "--storage", choices=("mcap", "sqlite3"), default="mcap", help="output bag format"
    )
    parser.add_argument(
        "--outputs-only",
        action="store_true",
        help="write only the depth outputs, not a copy of the input topics",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing output bag / PNG folder"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    args = parser.parse_args(argv)
    overrides = dict(args.param)
    if args.calibration_dir:
        overrides["calibration_dir"] = args.calibration_dir
    topics = {
        "image": args.image_topic,
        "camera_info": args.camera_info_topic,
        "points": args.points_topic,
    }
    try:
        config = load_parameters(args.params_file, overrides)
        report = process(
            args.input,
            args.output,
            config,
            topics,
            args.namespace,
            args.kitti_depth_dir,
            args.storage,
            not args.outputs_only,
            args.overwrite,
            not args.no_progress,
        )
    except (BagError, ParameterError, CalibrationError) as exc:
        print(f"process_bag: error: {exc}", file=sys.stderr)
        return 1
    print(
        f"wrote {args.output}: {report.processed} frames with depth "
        f"({report.failed} failed, {report.rejected_offset} scans without an image in time)"
    )
    for failure in report.failures[:5]:
        print(f"  skipped: {failure}", file=sys.stderr)
    if report.offset_note:
        print(f"  note: {report.offset_note}", file=sys.stderr)
    for cause, count in report.not_deskewed.items():
        print(f"  not deskewed: {count} scans: {report.deskew_notes[cause]}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
