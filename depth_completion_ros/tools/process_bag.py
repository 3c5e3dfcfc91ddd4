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
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from depth_completion_ros import cli_help
from depth_completion_ros.bag_io import (
    TF_TYPE,
    BagError,
    BagReader,
    BagWriter,
    connection_definitions,
    decode,
    from_ros,
    to_ros,
)
from depth_completion_ros.calibration import CalibrationError
from depth_completion_ros.depth_io import write_kitti_depth
from depth_completion_ros.deskew import OdometryBuffer
from depth_completion_ros.frame import (
    OUTPUTS,
    FrameInputs,
    FrameOutput,
    FrameProcessor,
    FrameSource,
)
from depth_completion_ros.kitti import KITTI_BAG_TOPICS
from depth_completion_ros.messages import (
    IMAGE_TYPES,
    stamp_to_nanoseconds,
    stamp_to_seconds,
    transport_topic,
)
from depth_completion_ros.pairing import StampPairer
from depth_completion_ros.parameters import (
    ParameterError,
    camera_configs,
    load_parameters,
    parse_assignment,
)
from depth_completion_ros.transforms import TransformBuffer, TransformSource

#: the input topics of a kitti_to_bag bag
DEFAULT_TOPICS = {role: KITTI_BAG_TOPICS[role] for role in ("image", "camera_info", "points")}
#: what the tool tells the user when no transform relates the cloud to the image
EXTRINSICS_FIX = "pass --calibration-dir or -p extrinsics:=[...], or record /tf_static and /tf"
TF_STATIC = "/tf_static"
TF_TOPICS = ("/tf", TF_STATIC)
#: most pairs held back waiting for /tf to reach their scan's stamp (bounds memory when the
#: bag's clock and the stamps differ)
TF_WAIT_PAIRS = 4


# --- processing -----------------------------------------------------------------------------


@dataclass
class ProcessReport:
    processed: int = 0
    failed: int = 0
    failures: list[str] = field(default_factory=list)  # the first messages, as examples
    failed_by_stage: dict[str, int] = field(default_factory=dict)
    paired: int = 0
    rejected_offset: int = 0
    no_image: int = 0
    stamps: list[int] = field(default_factory=list)
    offset_note: str = ""  # set when scans found no image within max_time_offset
    not_deskewed: dict[str, int] = field(default_factory=dict)  # odometry_topic set: per cause
    deskew_notes: dict[str, str] = field(default_factory=dict)  # the first message per cause


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


def _require_image_topic(reader: BagReader, topic: str) -> None:
    """A raw image topic that the bag holds only compressed says how to read it."""
    compressed = transport_topic(topic, "compressed")
    if topic not in reader.topics and compressed in reader.topics:
        raise BagError(
            f"{reader.path}: no topic {topic!r}, but {compressed!r} "
            f"({reader.topics[compressed]}): pass -p image_transport:=compressed (or "
            f"--image-topic {compressed})"
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


def frame_source(
    reader: BagReader, topics: dict[str, str], odometry_topic: str, tolerance: float = 0.1
) -> FrameSource:
    """The bag's side of the frame step: its topic names and the node's TransformBuffer, given
    the bag's /tf_static now (latched: a node gets it at once, whenever it was recorded); the
    bag's /tf and /tf_static messages are fed to it again in bag order by :func:`feed_tf`."""
    buffer = TransformBuffer("the bag's /tf_static and /tf", tolerance=tolerance)
    if TF_STATIC in reader.topics:
        for message in reader.messages([TF_STATIC]):
            feed_tf(buffer, message)
    return FrameSource({**topics, "odometry": odometry_topic}, buffer, EXTRINSICS_FIX)


def feed_tf(buffer: TransformSource, message) -> None:
    """A bag's /tf or /tf_static message into the buffer, as the node's subscriptions do."""
    if isinstance(buffer, TransformBuffer):
        buffer.add_message(decode(message.data, TF_TYPE), static=message.topic == TF_STATIC)


class _OutputSink:
    """Where processed frames go: the output bag, and optionally a KITTI PNG folder."""

    def __init__(self, writer: BagWriter, namespace: str, png_dir: Path | None) -> None:
        self.writer = writer
        self.namespace = namespace
        self.png_dir = png_dir
        self.stamps: list[int] = []
        self.png_lines: list[str] = []
        self.timestamp = 0  # bag time of the message that completed the pair

    def emit(self, inputs: FrameInputs, output: FrameOutput) -> None:
        for relative, msg in output.messages.items():
            topic = _topic(self.namespace, relative)
            self.writer.add_topic(topic, OUTPUTS[relative][0])
            self.writer.write(topic, self.timestamp, from_ros(msg))
        stamp = stamp_to_nanoseconds(inputs.image.header.stamp)
        if self.png_dir is not None:
            name = f"{len(self.stamps):010d}.png"
            write_kitti_depth(self.png_dir / name, output.result.dense)
            self.png_lines.append(f"{name} {stamp / 1e9:.9f}")
        self.stamps.append(stamp)


class _StagedFolder:
    """A folder written under a temporary name beside ``target`` and renamed into place only
    by :meth:`commit`, so a failed run leaves no half-written output."""

    def __init__(self, target: str | Path | None, overwrite: bool) -> None:
        self.target = Path(target) if target else None
        self.path: Path | None = None
        if self.target is None:
            return
        if self.target.exists() and not overwrite:
            raise BagError(f"output folder {self.target} exists already (use --overwrite)")
        self.target.parent.mkdir(parents=True, exist_ok=True)
        self.path = Path(
            tempfile.mkdtemp(prefix=f".{self.target.name}.partial-", dir=self.target.parent)
        )

    def commit(self) -> None:
        if self.path is None:
            return
        if self.target.exists():
            shutil.rmtree(self.target)
        self.path.rename(self.target)
        self.path = None

    def discard(self) -> None:
        if self.path is not None:
            shutil.rmtree(self.path, ignore_errors=True)
            self.path = None


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
    """Read ``input_bag``, write ``output_bag`` with the depth outputs added.

    Frames go through :class:`FrameProcessor` as in the node: a bad frame is counted by cause
    and skipped; the run fails (BagError) only when the bag itself is unusable or no frame at
    all could be processed.
    """
    odometry_topic = config["odometry_topic"]
    report = ProcessReport()
    topics = {**topics, "image": transport_topic(topics["image"], config["image_transport"])}
    with BagReader(input_bag) as reader:
        _require_image_topic(reader, topics["image"])
        reader.require(
            {
                topics["image"]: IMAGE_TYPES,
                topics["camera_info"]: "sensor_msgs/msg/CameraInfo",
                topics["points"]: "sensor_msgs/msg/PointCloud2",
            }
        )
        definitions = connection_definitions(reader)
        counts = reader.message_counts
        _require_messages(input_bag, counts, topics)
        if odometry_topic in reader.topics:
            reader.require({odometry_topic: "nav_msgs/msg/Odometry"})
        source = frame_source(reader, topics, odometry_topic, config["transform_tolerance"])
        processor = FrameProcessor(config, source)
        if odometry_topic and odometry_topic not in reader.topics:  # processed, reported
            processor.accounting.deskew_notes["none"] = (
                f"{input_bag} has no topic {odometry_topic!r} (parameter odometry_topic); its "
                f"topics: {', '.join(sorted(reader.topics))}"
            )
        inputs = set(topics.values()) | ({odometry_topic} & set(counts))
        total = sum(counts.values()) if copy_input else sum(counts[t] for t in inputs)
        pngs = _StagedFolder(kitti_dir, overwrite)
        try:
            with BagWriter(output_bag, storage=storage, overwrite=overwrite) as writer:
                if copy_input:
                    for topic, (msgtype, msgdef, digest) in definitions.items():
                        qos = reader.qos(topic)
                        writer.add_topic(topic, msgtype, qos[0] if qos else None, msgdef, digest)
                sink = _OutputSink(writer, namespace, pngs.path)
                read = _read_pairs(
                    reader,
                    writer if copy_input else None,
                    topics,
                    odometry_topic,
                    total,
                    progress,
                    processor,
                    sink,
                )
                _fill_report(report, processor, read, sink, config)
                if report.processed == 0:
                    raise BagError(
                        f"{input_bag}: no frame could be processed from {topics['image']} + "
                        f"{topics['points']}: {_no_frame_reason(report, config)}"
                    )
            if pngs.path is not None:
                (pngs.path / "timestamps.txt").write_text("\n".join(sink.png_lines) + "\n")
            pngs.commit()
        finally:
            pngs.discard()
    return report


@dataclass
class _ReadResult:
    """What reading the bag found besides the processed frames: pairing counts and stamps."""

    pairer: StampPairer
    image_stamps: list[float]
    cloud_stamps: list[float]


def _read_pairs(
    reader: BagReader,
    copy_to: BagWriter | None,
    topics: dict[str, str],
    odometry_topic: str,
    total: int,
    progress: bool,
    processor: FrameProcessor,
    sink: _OutputSink,
) -> _ReadResult:
    """Every message in bag order: copied, and pairs formed and processed as they complete
    (with /tf in the bag, once /tf reaches the scan's stamp: see ``release``)."""
    pairer: StampPairer = StampPairer(float(processor.config["max_time_offset"]))
    latest: dict[str, object] = {"camera_info": None}
    odometry = OdometryBuffer()  # the motion during a sweep is interpolated between messages
    image_stamps: list[float] = []
    cloud_stamps: list[float] = []
    transforms = processor.source.transforms
    wait_for_tf = "/tf" in reader.topics and isinstance(transforms, TransformBuffer)
    tolerance = round(float(processor.config["transform_tolerance"]) * 1e9)  # ns
    pending: deque[tuple[FrameInputs, int, int]] = deque()  # (frame, bag time, scan stamp)

    def release(now: int | None) -> None:
        """Process the waiting pairs whose scan /tf has caught up with: a bag records the /tf
        sample after a scan's stamp after the scan, and interpolation needs it. A pair waits
        until every moving transform has a sample at or after its stamp, the bag's clock is
        transform_tolerance past it, or TF_WAIT_PAIRS pairs wait; all go at the end (None)."""
        while pending:
            frame, timestamp, stamp = pending[0]
            waits = wait_for_tf and now is not None and len(pending) <= TF_WAIT_PAIRS
            if waits and transforms.newest_ns() < stamp and now < stamp + tolerance:
                return
            pending.popleft()
            sink.timestamp = timestamp
            processor.process(frame, sink.emit)

    def handle(pairs, timestamp: int) -> None:
        for pair in pairs:
            frame = FrameInputs(pair.image, pair.cloud, latest["camera_info"], odometry.snapshot())
            pending.append((frame, timestamp, stamp_to_nanoseconds(pair.cloud.header.stamp)))
        release(timestamp)

    bar = _progress(total, progress)
    last_timestamp = 0
    wanted = None if copy_to is not None else {*topics.values(), odometry_topic, *TF_TOPICS}
    for message in reader.messages(wanted):
        bar.update(1)
        last_timestamp = message.timestamp
        if copy_to is not None:
            copy_to.write(message.topic, message.timestamp, message.data)
        if message.topic in TF_TOPICS:  # in bag order, before the frames that need them
            feed_tf(transforms, message)
            release(message.timestamp)
        elif message.topic == odometry_topic:
            odometry.add(to_ros(message.data, message.msgtype))
        elif message.topic == topics["camera_info"]:
            latest["camera_info"] = to_ros(message.data, message.msgtype)
        elif message.topic == topics["image"]:
            image = to_ros(message.data, message.msgtype)
            image_stamps.append(stamp_to_seconds(image.header.stamp))
            handle(pairer.add_image(image_stamps[-1], image), message.timestamp)
        elif message.topic == topics["points"]:
            cloud = to_ros(message.data, message.msgtype)
            cloud_stamps.append(stamp_to_seconds(cloud.header.stamp))
            handle(pairer.add_cloud(cloud_stamps[-1], cloud), message.timestamp)
    handle(pairer.flush(), last_timestamp)
    release(None)
    bar.close()
    return _ReadResult(pairer, image_stamps, cloud_stamps)


def _fill_report(
    report: ProcessReport,
    processor: FrameProcessor,
    read: _ReadResult,
    sink: _OutputSink,
    config: dict,
) -> None:
    frames, stats = processor.accounting, read.pairer.stats
    report.processed, report.failed = frames.processed, frames.failed
    report.failures = list(frames.failure_examples)
    report.failed_by_stage = dict(frames.failed_by_stage)
    report.not_deskewed = dict(frames.not_deskewed)
    report.deskew_notes = dict(frames.deskew_notes)
    report.paired, report.rejected_offset = stats.paired, stats.rejected_offset
    report.no_image = stats.no_image
    report.stamps = sink.stamps
    report.offset_note = offset_note(
        read.image_stamps, read.cloud_stamps, float(config["max_time_offset"])
    )


def _no_frame_reason(report: ProcessReport, config: dict) -> str:
    return (
        "; ".join(report.failures[:3])
        or report.offset_note
        or (
            f"{report.rejected_offset} scans had no image within max_time_offset "
            f"{config['max_time_offset']} s, {report.no_image} had no image at all"
        )
    )


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
    try:
        return parse_assignment(text)
    except ParameterError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _camera(
    config: dict, camera: str | None, given: dict[str, str | None], namespace: str
) -> tuple[dict, dict[str, str], str]:
    """The parameters, bag topics and output namespace of the camera to process: the only one,
    or ``camera`` of the parameters' ``cameras`` (its own topics unless given on the command
    line, which otherwise default to the node's: image, camera_info, points)."""
    cameras = dict(camera_configs(config))
    if camera is None:
        if config["cameras"]:
            raise ParameterError(
                f"the parameters list cameras {config['cameras']}: choose one with --camera "
                "NAME (process_bag runs one camera per run)"
            )
        own = config
    elif camera not in cameras:
        raise ParameterError(
            f"--camera {camera}: not in the parameters' cameras {config['cameras'] or '[]'}"
        )
    else:
        own = cameras[camera]
        namespace = namespace or own["output_namespace"]
    keys = {"image": "image_topic", "camera_info": "camera_info_topic", "points": "points_topic"}
    topics = {
        role: given[role] or (own[key] if camera else DEFAULT_TOPICS[role])
        for role, key in keys.items()
    }
    return own, topics, namespace


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
        "else the bag's /tf_static and /tf)",
    )
    parser.add_argument(
        "--image-topic",
        help=f"camera image topic in the bag (default {DEFAULT_TOPICS['image']}, or the "
        "camera's with --camera): sensor_msgs/Image or CompressedImage (with -p "
        "image_transport:=compressed, '<topic>/compressed' is read)",
    )
    parser.add_argument(
        "--camera-info-topic",
        help=f"CameraInfo topic in the bag (default {DEFAULT_TOPICS['camera_info']})",
    )
    parser.add_argument(
        "--points-topic",
        help=f"PointCloud2 topic in the bag (default {DEFAULT_TOPICS['points']})",
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
    parser.add_argument(
        "--camera",
        help="with parameters that list 'cameras': the one to process (its own parameters, and "
        "its topics and output namespace unless given here); one camera per run",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    args = parser.parse_args(argv)
    overrides = dict(args.param)
    if args.calibration_dir:
        overrides["calibration_dir"] = args.calibration_dir
    given = {
        "image": args.image_topic,
        "camera_info": args.camera_info_topic,
        "points": args.points_topic,
    }
    try:
        config = load_parameters(args.params_file, overrides)
        config, topics, namespace = _camera(config, args.camera, given, args.namespace)
        report = process(
            args.input,
            args.output,
            config,
            topics,
            namespace,
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
