"""The ROS 2 node: camera + LiDAR in, dense depth and a coloured point cloud out.

Callbacks only buffer messages and pair them by stamp; one worker thread runs the newest pair
through :class:`~depth_completion_ros.pipeline.DepthPipeline` (older pairs are dropped and
counted), so a slow network never builds a queue. Every bad input is logged once per cause
(throttled per cause key, not by text) and skipped; the node keeps running. Every scan received
is accounted for: published + dropped while busy + rejected + failed + waiting = received, in the
status line, on ``/diagnostics`` (where diagnostic_msgs is installed) and at shutdown.
"""

from __future__ import annotations

import re
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass

import numpy as np
import rclpy
import rclpy.executors
from rcl_interfaces.msg import (
    FloatingPointRange,
    IntegerRange,
    ParameterDescriptor,
    ParameterType,
)
from rclpy.exceptions import InvalidParameterTypeException, InvalidParameterValueException
from rclpy.node import Node
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image, PointCloud2

from depth_completion_ros import odometry
from depth_completion_ros.backends import DATASETS, DEVICES, MODEL_NAMES, PRECISIONS
from depth_completion_ros.calibration import CalibrationError, extrinsics_from_values
from depth_completion_ros.messages import (
    MessageError,
    camera_info_to_camera,
    image_to_rgb,
    pointcloud2_to_array,
    stamp_to_seconds,
)
from depth_completion_ros.node_setup import (
    ConfigurationError,
    extrinsics_from_parameters,
    output_messages,
    pipeline_from_parameters,
)
from depth_completion_ros.pairing import LatestSlot, Pair, StampPairer
from depth_completion_ros.pipeline import InputError
from depth_completion_ros.projection import SensorMotion


@dataclass(frozen=True)
class _Param:
    name: str
    default: object
    description: str
    choices: tuple[str, ...] = ()
    float_range: tuple[float, float] | None = None
    int_range: tuple[int, int] | None = None
    read_only: bool = True


PARAMETERS: tuple[_Param, ...] = (
    _Param("image_topic", "image", "camera image topic (rgb8, bgr8, mono8, rgba8, bgra8)"),
    _Param("camera_info_topic", "camera_info", "CameraInfo of the image topic"),
    _Param("points_topic", "points", "LiDAR PointCloud2 topic (float32 x, y, z)"),
    _Param(
        "points_scale",
        0.0,
        "metres per unit of the cloud's x, y, z; 0 = float32/float64 fields are metres and "
        "integer fields are refused (0.001 for INT16/INT32 millimetres)",
        float_range=(0.0, 1000.0),
    ),
    _Param(
        "input_reliability",
        "best_effort",
        "QoS reliability of the three subscriptions; must be compatible with the publishers "
        "(best_effort accepts both, reliable needs reliable publishers)",
        choices=("best_effort", "reliable"),
    ),
    _Param(
        "odometry_topic",
        "",
        "nav_msgs/Odometry topic whose twist deskews each scan (its child frame must be the "
        "cloud's frame or reach it through TF); '' = no deskewing",
    ),
    _Param("input_depth", 5, "QoS history depth of the subscriptions", int_range=(1, 100)),
    _Param("output_depth", 2, "QoS history depth of the (reliable) outputs", int_range=(1, 100)),
    _Param(
        "max_time_offset",
        0.05,
        "largest |image stamp - scan stamp| (s) accepted as a pair",
        float_range=(1e-4, 10.0),
    ),
    _Param(
        "calibration_dir",
        "",
        "KITTI date folder with calib_cam_to_cam.txt and calib_velo_to_cam.txt (extrinsics)",
    ),
    _Param("camera_index", 2, "KITTI camera of calibration_dir (0-3)", int_range=(0, 3)),
    _Param(
        "extrinsics",
        [0.0],
        "LiDAR->camera optical transform: 16 (4x4), 12 (3x4) or 7 (x y z qx qy qz qw) values; "
        "[0.0] = unset",
    ),
    _Param("model", "classical", "completion model", choices=MODEL_NAMES),
    _Param("checkpoint", "", "weights file for a network model (.pth/.pt/.safetensors)"),
    _Param("device", "auto", "where a network runs", choices=DEVICES),
    _Param("precision", "fp32", "network precision", choices=PRECISIONS),
    _Param("dataset", "kitti", "input conventions the weights expect", choices=DATASETS),
    _Param("compile", False, "torch.compile the network (slow first frame)"),
    _Param("min_depth", 0.1, "smallest published depth (m)", float_range=(0.0, 1000.0)),
    _Param("max_depth", 100.0, "largest published depth (m)", float_range=(0.1, 1000.0)),
    _Param(
        "occlusion_window",
        12,
        "pixels searched on each side by the occlusion filter (0 = off)",
        int_range=(0, 64),
    ),
    _Param(
        "limit_to_lidar_support",
        True,
        "publish depth only between the highest and lowest LiDAR return of each column band "
        "(NaN above and below: sky, bridges); false = the whole image",
    ),
    _Param(
        "support_band",
        3,
        "columns per band when finding the LiDAR's highest and lowest return (a band needs 2 "
        "returns in itself and its 2 neighbours); about the LiDAR's column spacing in pixels",
        int_range=(1, 256),
    ),
    _Param(
        "support_margin",
        2,
        "pixels published beyond the LiDAR's highest and lowest return",
        int_range=(0, 1000),
    ),
    _Param("publish_points", True, "publish the organised XYZRGB cloud on 'depth/points'"),
    _Param("publish_sparse", False, "publish the projected LiDAR depth on 'sparse_depth/image'"),
    _Param("publish_colored", False, "publish a colour-mapped rgb8 view on 'depth/colored'"),
    _Param(
        "diagnostics_period",
        5.0,
        "seconds between status lines in the log (and /diagnostics messages)",
        float_range=(0.5, 3600.0),
    ),
    _Param(
        "no_pair_warning",
        3.0,
        "warn when no pair has formed for this many seconds",
        float_range=(0.5, 3600.0),
    ),
)


def _descriptor(param: _Param) -> ParameterDescriptor:
    description = param.description
    if param.choices:
        description += f" (one of: {', '.join(param.choices)})"
    descriptor = ParameterDescriptor(description=description, read_only=param.read_only)
    if param.float_range:
        descriptor.floating_point_range = [
            FloatingPointRange(from_value=param.float_range[0], to_value=param.float_range[1])
        ]
    if param.int_range:
        descriptor.integer_range = [
            IntegerRange(from_value=param.int_range[0], to_value=param.int_range[1], step=1)
        ]
    if isinstance(param.default, list):
        descriptor.type = ParameterType.PARAMETER_DOUBLE_ARRAY
    return descriptor


def _reliability(name: str) -> ReliabilityPolicy:
    return ReliabilityPolicy.RELIABLE if name == "reliable" else ReliabilityPolicy.BEST_EFFORT


def _cause_of(text: str) -> str:
    """A message without its numbers and quoted values: the same fault with other values (a
    stamp, a count, a size) shares a key; another fault gets its own."""
    return re.sub(r"'[^']*'|\"[^\"]*\"|[-+]?\d[\d.e+-]*", "#", text)


class FrameFailure(Exception):
    """A frame failed at one input or stage; ``stage`` names it (the throttling key's start)."""

    def __init__(self, stage: str, text: str) -> None:
        super().__init__(text)
        self.stage = stage


def transform_to_matrix(transform) -> np.ndarray:
    """geometry_msgs/Transform -> 4x4 matrix (maps points from the child into the parent frame)."""
    t, q = transform.translation, transform.rotation
    return extrinsics_from_values([t.x, t.y, t.z, q.x, q.y, q.z, q.w])


class DepthCompletionNode(Node):
    """Subscribes image + camera_info + points, publishes dense depth and a coloured cloud."""

    def __init__(self, **kwargs) -> None:
        self._worker: threading.Thread | None = None  # destroy_node works after a failed init
        super().__init__("depth_completion", **kwargs)
        for param in PARAMETERS:
            self.declare_parameter(param.name, param.default, _descriptor(param))
        self.config = {p.name: self.get_parameter(p.name).value for p in PARAMETERS}
        self._validate_config()

        self.fixed_extrinsics, self._extrinsics_source = extrinsics_from_parameters(self.config)
        self.pipeline = pipeline_from_parameters(self.config)
        self._start_tf()
        backend = self.pipeline.backend

        self.pairer: StampPairer[Image, PointCloud2] = StampPairer(self.config["max_time_offset"])
        self.slot: LatestSlot[Pair[Image, PointCloud2]] = LatestSlot()
        # guards the pairer, the slot hand-over and the counts, so a snapshot adds up exactly
        self._lock = threading.Lock()
        self._camera_info: CameraInfo | None = None
        self._last_warning: dict[str, float] = {}
        self._latencies: deque[float] = deque(maxlen=200)
        self._counts = {"processed": 0, "failed": 0, "in_process": 0}
        now = time.monotonic()
        self._last_pair_time = now
        self._last_message = {"image": 0.0, "camera_info": 0.0, "points": 0.0}
        self._reported_rejections = 0
        self._reported_no_image = 0
        self._reported_jumps = 0
        self._points_scale = self.config["points_scale"] or None
        self._odometry = None  # the latest nav_msgs/Odometry, when odometry_topic is set
        self._not_deskewed: dict[str, int] = {}  # scans processed without deskewing, per cause

        input_qos = QoSProfile(
            history=HistoryPolicy.KEEP_LAST,
            depth=self.config["input_depth"],
            reliability=_reliability(self.config["input_reliability"]),
        )
        output_qos = QoSProfile(
            history=HistoryPolicy.KEEP_LAST,
            depth=self.config["output_depth"],
            reliability=ReliabilityPolicy.RELIABLE,
        )
        self.create_subscription(Image, self.config["image_topic"], self._on_image, input_qos)
        self.create_subscription(
            CameraInfo, self.config["camera_info_topic"], self._on_camera_info, input_qos
        )
        self.create_subscription(
            PointCloud2, self.config["points_topic"], self._on_cloud, input_qos
        )
        if self.config["odometry_topic"]:
            from nav_msgs.msg import Odometry

            self.create_subscription(
                Odometry, self.config["odometry_topic"], self._on_odometry, input_qos
            )
        enabled = {
            "depth/image": (Image, True),
            "depth/camera_info": (CameraInfo, True),
            "depth/points": (PointCloud2, self.config["publish_points"]),
            "sparse_depth/image": (Image, self.config["publish_sparse"]),
            "depth/colored": (Image, self.config["publish_colored"]),
        }
        self._publishers_by_topic = {
            topic: self.create_publisher(kind, topic, output_qos)
            for topic, (kind, on) in enabled.items()
            if on
        }
        self._diagnostics_pub = _diagnostics_publisher(self)
        self.create_timer(self.config["diagnostics_period"], self._report)
        # checked often, so the first warning comes no_pair_warning s after the last pair
        self.create_timer(min(0.25, self.config["no_pair_warning"] / 4), self._check_pairs)

        self._running = True
        self._worker = threading.Thread(target=self._work, name="depth_completion", daemon=True)
        self._worker.start()
        self.get_logger().info(
            f"ready: {backend.describe()}; inputs {self._topic('image_topic')}, "
            f"{self._topic('camera_info_topic')}, {self._topic('points_topic')} "
            f"({self.config['input_reliability']}), max_time_offset "
            f"{self.config['max_time_offset']} s; extrinsics: {self._extrinsics_source}; "
            f"deskewing: {self._deskew_source()}"
        )

    # --- configuration ----------------------------------------------------------------------

    def _validate_config(self) -> None:
        for param in PARAMETERS:
            value = self.config[param.name]
            if param.choices and value not in param.choices:
                raise ConfigurationError(
                    f"parameter '{param.name}' is {value!r}; allowed: {', '.join(param.choices)}"
                )
        if self.config["min_depth"] >= self.config["max_depth"]:
            raise ConfigurationError(
                f"parameters 'min_depth' ({self.config['min_depth']}) must be smaller than "
                f"'max_depth' ({self.config['max_depth']})"
            )

    def _topic(self, key: str) -> str:
        return self.resolve_topic_name(self.config[key])

    # --- logging ----------------------------------------------------------------------------

    def _warn(self, cause: str, text: str, period: float = 5.0, info: bool = False) -> None:
        """One message per cause key, at most every ``period`` seconds."""
        now = time.monotonic()
        if now - self._last_warning.get(cause, -1e9) >= period:
            self._last_warning[cause] = now
            if info:  # rclpy wants one severity per call site
                self.get_logger().info(text)
            else:
                self.get_logger().warning(text)

    # --- callbacks --------------------------------------------------------------------------

    def _on_camera_info(self, msg: CameraInfo) -> None:
        self._last_message["camera_info"] = time.monotonic()
        self._camera_info = msg

    def _on_odometry(self, msg) -> None:
        self._odometry = msg

    def _on_image(self, msg: Image) -> None:
        self._last_message["image"] = time.monotonic()
        with self._lock:
            self._dispatch(self.pairer.add_image(stamp_to_seconds(msg.header.stamp), msg))
        self._report_pairing()

    def _on_cloud(self, msg: PointCloud2) -> None:
        self._last_message["points"] = time.monotonic()
        with self._lock:
            self._dispatch(self.pairer.add_cloud(stamp_to_seconds(msg.header.stamp), msg))
        self._report_pairing()

    def _dispatch(self, pairs: list[Pair[Image, PointCloud2]]) -> None:
        """Hand new pairs to the worker (under ``_lock``: paired and handed over at once)."""
        now = time.monotonic()
        if pairs:
            self._last_pair_time = now
        for pair in pairs:
            pair.received = now
            self.slot.put(pair)

    def _report_pairing(self) -> None:
        stats = self.pairer.stats
        if stats.rejected_offset > self._reported_rejections:
            self._reported_rejections = stats.rejected_offset
            self._warn(
                "pairing:offset",
                f"scan dropped: nearest image is {stats.last_rejected_offset:+.3f} s away, more "
                f"than max_time_offset {self.config['max_time_offset']} s "
                f"({stats.rejected_offset} so far); are the clocks in sync (use_sim_time for "
                "bags)? raise max_time_offset if the sensors are not triggered together",
            )
        if stats.no_image > self._reported_no_image:
            self._reported_no_image = stats.no_image
            self._warn(
                "pairing:no_image",
                f"scan dropped: no image on {self._topic('image_topic')} at all while "
                f"{self.pairer.buffer_size} scans waited ({stats.no_image} so far); is the camera "
                "publishing (topic name, QoS input_reliability)?",
            )
        if stats.time_jumps > self._reported_jumps:
            self._reported_jumps = stats.time_jumps
            self._warn(
                "pairing:time_jump",
                f"the {stats.last_jump_stream} stamps jumped by {stats.last_jump:+.3f} s (bag "
                f"looped or a wrong stamp?); pairing goes on, no frame is dropped for it "
                f"({stats.time_jumps} jumps so far)",
                info=True,
            )

    # --- processing -------------------------------------------------------------------------

    def _work(self) -> None:
        while self._running:
            if not self.slot.wait(timeout=0.2):
                continue
            with self._lock:  # taken and counted as in process at once
                pair = self.slot.take(timeout=0.0)
                self._counts["in_process"] = int(pair is not None)
            if pair is None:
                continue
            outcome = "failed"
            try:
                self._process(pair)
                outcome = "processed"
            except FrameFailure as exc:
                self._warn(f"{exc.stage}:{_cause_of(str(exc))}", f"skipping frame: {exc}")
            finally:
                with self._lock:
                    self._counts[outcome] += 1
                    self._counts["in_process"] = 0

    def _stage(self, stage: str, what: str, run, *args):
        """``run(*args)``, with any failure turned into a FrameFailure naming ``what``."""
        try:
            return run(*args)
        except (InputError, MessageError, CalibrationError) as exc:
            raise FrameFailure(stage, f"{what}: {exc}") from exc
        except Exception as exc:  # noqa: BLE001 - the node must survive any single frame
            raise FrameFailure(
                f"{stage}:{type(exc).__name__}", f"{what}: unexpected error {exc!r}"
            ) from exc

    def _start_tf(self) -> None:
        """TF listener when no fixed extrinsics are set or odometry is used (its child frame ->
        the cloud's), and tf2_ros exists (a ROS distro)."""
        self._tf_buffer = None
        if self.fixed_extrinsics is not None and not self.config["odometry_topic"]:
            return
        try:
            import tf2_ros  # not installable from PyPI: only on a ROS 2 distro
        except ImportError:
            return
        self._tf_buffer = tf2_ros.Buffer()
        self._tf_listener = tf2_ros.TransformListener(self._tf_buffer, self)
        if self.fixed_extrinsics is None:
            self._extrinsics_source = (
                "TF (tf2_ros), when the cloud's frame differs from the image's"
            )

    def _extrinsics_for(self, cloud: PointCloud2, image: Image) -> np.ndarray:
        if self.fixed_extrinsics is not None:
            return self.fixed_extrinsics
        source, target = cloud.header.frame_id, image.header.frame_id
        if source == target or not source:
            return np.eye(4)
        if self._tf_buffer is not None:
            return self._lookup_tf(target, source, cloud.header.stamp)
        raise CalibrationError(
            f"the cloud is in frame '{source}' but the image in '{target}' and no extrinsics "
            "are set (tf2_ros is not installed here): set 'calibration_dir' (KITTI) or "
            "'extrinsics' (4x4, 3x4 or x y z qx qy qz qw)"
        )

    def _lookup_tf(self, target: str, source: str, stamp) -> np.ndarray:
        from rclpy.duration import Duration
        from rclpy.time import Time

        try:
            stamped = self._tf_buffer.lookup_transform(
                target, source, Time.from_msg(stamp), timeout=Duration(seconds=0.05)
            )
        except Exception as exc:  # noqa: BLE001 - tf2 raises several unrelated types
            raise CalibrationError(
                f"no TF from '{source}' to '{target}' at the scan's stamp ({exc}); publish it "
                "(e.g. a static_transform_publisher) or set 'extrinsics'"
            ) from exc
        return transform_to_matrix(stamped.transform)

    def _odometry_rotation(self, child: str, lidar: str) -> np.ndarray | None:
        """Rotation from the odometry's child frame into the cloud's frame, from TF (latest)."""
        if self._tf_buffer is None:
            return None
        from rclpy.time import Time

        try:
            stamped = self._tf_buffer.lookup_transform(lidar, child, Time())
        except Exception:  # noqa: BLE001 - tf2 raises several unrelated types
            return None
        return transform_to_matrix(stamped.transform)[:3, :3]

    def _motion_for(self, cloud: PointCloud2) -> SensorMotion | None:
        """The LiDAR's motion from the latest odometry; None (counted, warned) when unusable."""
        if not self.config["odometry_topic"]:
            return None
        try:
            return odometry.scan_motion(
                self._odometry,
                cloud.header,
                self._odometry_rotation,
                self._topic("odometry_topic"),
            )
        except odometry.NoMotion as exc:
            self._not_deskewed[exc.cause] = self._not_deskewed.get(exc.cause, 0) + 1
            self._warn(
                f"deskew:{exc.cause}",
                f"scan not deskewed: {exc} ({self._not_deskewed[exc.cause]} so far)",
            )
            return None

    def _process(self, pair: Pair[Image, PointCloud2]) -> None:
        info = self._camera_info
        info_topic, image_topic = self._topic("camera_info_topic"), self._topic("image_topic")
        points_topic = self._topic("points_topic")
        if info is None:
            raise FrameFailure(
                "camera_info:none",
                f"no camera_info received yet on {info_topic}; frames are skipped until one "
                "arrives",
            )
        camera = self._stage(
            "camera_info", f"camera_info on {info_topic}", camera_info_to_camera, info
        )
        rgb = self._stage("image", f"image on {image_topic}", image_to_rgb, pair.image)
        points = self._stage(
            "points",
            f"point cloud on {points_topic}",
            pointcloud2_to_array,
            pair.cloud,
            False,
            self._points_scale,
        )
        if pair.cloud.width * pair.cloud.height == 0:
            raise FrameFailure("points:empty", f"empty point cloud on {points_topic}")
        if len(points) == 0:
            raise FrameFailure(
                "points:nan",
                f"point cloud on {points_topic} has {pair.cloud.width * pair.cloud.height} "
                "points, all NaN/inf",
            )
        T = self._stage(
            "extrinsics",
            "extrinsics (calibration_dir/extrinsics/TF)",
            self._extrinsics_for,
            pair.cloud,
            pair.image,
        )
        motion = self._motion_for(pair.cloud)
        result = self._stage(
            "pipeline", "completion", self.pipeline.run, rgb, points, camera, T, motion
        )
        self._stage("publish", "publishing outputs", self._publish, pair.image, camera, rgb, result)
        self._latencies.append(time.monotonic() - pair.received)

    def _publish(self, image: Image, camera, rgb: np.ndarray, result) -> None:
        # outputs carry the camera image's stamp and frame (REP 118)
        outputs = output_messages(image.header, camera, rgb, result, self.pipeline, self.config)
        for topic, msg in outputs.items():
            self._publishers_by_topic[topic].publish(msg)

    # --- diagnostics ------------------------------------------------------------------------

    def _input_state(self, key: str, stream: str) -> str:
        """Publishers the graph lists (a killed one stays listed until its lease ends) and when
        a message last came, which is what tells a live publisher from a dead one."""
        infos = self.get_publishers_info_by_topic(self._topic(key))
        if infos:
            kinds = sorted({info.qos_profile.reliability.name.lower() for info in infos})
            listed = f"{len(infos)} publisher(s) listed, {'/'.join(kinds)}"
        else:
            listed = "no publisher"
        last = self._last_message[stream]
        heard = f"last message {time.monotonic() - last:.1f} s ago" if last else "no message yet"
        return f"{listed}, {heard}"

    def _check_pairs(self) -> None:
        since_pair = time.monotonic() - self._last_pair_time
        if since_pair < self.config["no_pair_warning"]:
            return
        stats = self.pairer.stats
        offsets = list(stats.recent_offsets)[-5:]
        offset_text = (
            ", ".join(f"{o:+.3f}" for o in offsets) if offsets else "none (no scan+image seen)"
        )
        self._warn(
            "no_pair",
            f"no synchronised pair for {since_pair:.1f} s: received {stats.images} images on "
            f"{self._topic('image_topic')} ({self._input_state('image_topic', 'image')}), "
            f"{stats.scans} clouds on {self._topic('points_topic')} "
            f"({self._input_state('points_topic', 'points')}), camera_info "
            f"{'seen' if self._camera_info else 'not seen'} on "
            f"{self._topic('camera_info_topic')}; this node subscribes with "
            f"{self.config['input_reliability']} QoS; recent image-scan offsets (s): "
            f"{offset_text} vs max_time_offset {self.config['max_time_offset']}. Check topic "
            "names, QoS reliability (input_reliability) and clocks (use_sim_time).",
            period=max(self.config["no_pair_warning"], self.config["diagnostics_period"]),
        )

    def counts(self) -> dict[str, int]:
        """Where every scan went: received == published + dropped_busy + rejected + failed +
        waiting (in the pairing buffer, handed to the worker or in process); one snapshot."""
        with self._lock:
            stats = self.pairer.stats
            return {
                "received": stats.scans,
                "published": self._counts["processed"],
                "dropped_busy": self.slot.dropped,
                "rejected": stats.rejected,
                "rejected_offset": stats.rejected_offset,
                "rejected_no_image": stats.no_image,
                "failed": self._counts["failed"],
                "waiting": self.pairer.waiting + self.slot.pending + self._counts["in_process"],
                "images_received": stats.images,
                "time_jumps": stats.time_jumps,
            }

    def _report(self) -> None:
        counts = self.counts()
        if counts["received"] or counts["images_received"]:
            self.get_logger().info(f"status: {self.latency_summary(counts)}")
        if self._diagnostics_pub is not None:
            self._diagnostics_pub.publish(self._diagnostic_array(counts))

    def latency_summary(self, counts: dict[str, int] | None = None) -> str:
        """Where every scan went, and latency percentiles (scan+image received -> published)."""
        c = counts or self.counts()
        latency = np.array(self._latencies) * 1000.0 if self._latencies else np.zeros(1)
        return (
            f"pairs processed {c['published']}, dropped while busy {c['dropped_busy']}, "
            f"rejected {c['rejected']} (stamp offset {c['rejected_offset']}, no image "
            f"{c['rejected_no_image']}), failed {c['failed']}, waiting {c['waiting']} = "
            f"{c['received']} scans received; {c['images_received']} images received, "
            f"{c['time_jumps']} time jumps; latency p50 {np.percentile(latency, 50):.1f} ms, "
            f"p95 {np.percentile(latency, 95):.1f} ms"
        ) + self._deskew_summary()

    def _deskew_source(self) -> str:
        if not self.config["odometry_topic"]:
            return "off (odometry_topic is '')"
        return f"odometry on {self._topic('odometry_topic')}"

    def _deskew_summary(self) -> str:
        if not self.config["odometry_topic"]:
            return ""
        counts = self._not_deskewed.copy()  # one snapshot: the worker may add a cause
        causes = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
        return f"; not deskewed {sum(counts.values())}" + (f" ({causes})" if causes else "")

    def _diagnostic_array(self, counts: dict[str, int]):
        from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

        since_pair = time.monotonic() - self._last_pair_time
        status = DiagnosticStatus(name=f"{self.get_name()}: depth completion", hardware_id="")
        if since_pair >= self.config["no_pair_warning"]:
            status.level = DiagnosticStatus.ERROR
            status.message = f"no synchronised pair for {since_pair:.1f} s"
        elif counts["failed"] or counts["rejected"]:
            status.level = DiagnosticStatus.WARN
            status.message = "some scans rejected or failed (see the log)"
        else:
            status.level = DiagnosticStatus.OK
            status.message = "publishing"
        values = [KeyValue(key=k, value=str(v)) for k, v in counts.items()]
        values.append(KeyValue(key="seconds_since_pair", value=f"{since_pair:.2f}"))
        status.values = values
        msg = DiagnosticArray(status=[status])
        msg.header.stamp = self.get_clock().now().to_msg()
        return msg

    def destroy_node(self) -> None:
        """Stop the worker and log the totals; safe after a failed ``__init__``."""
        worker = getattr(self, "_worker", None)
        if worker is not None:
            self._running = False
            self.slot.close()
            worker.join(timeout=5.0)
            self.get_logger().info(f"stopping: {self.latency_summary()}")
            self._worker = None
        super().destroy_node()


_SUMMARY = re.compile(
    r"pairs processed (?P<published>\d+), dropped while busy (?P<dropped_busy>\d+), "
    r"rejected (?P<rejected>\d+) \(stamp offset (?P<rejected_offset>\d+), no image "
    r"(?P<rejected_no_image>\d+)\), failed (?P<failed>\d+), waiting (?P<waiting>\d+) = "
    r"(?P<received>\d+) scans received; (?P<images_received>\d+) images received, "
    r"(?P<time_jumps>\d+) time jumps"
)


def parse_summary(line: str) -> dict[str, int] | None:
    """The counts of a status or shutdown line (:meth:`DepthCompletionNode.latency_summary`),
    for tests and benchmarks that read the node's log; None if ``line`` holds none."""
    match = _SUMMARY.search(line)
    return {k: int(v) for k, v in match.groupdict().items()} if match else None


def _diagnostics_publisher(node: Node):
    """A publisher on /diagnostics when diagnostic_msgs is installed (not on every PyPI set-up)."""
    try:
        from diagnostic_msgs.msg import DiagnosticArray
    except ImportError:
        node.get_logger().info(
            "diagnostic_msgs is not installed: status in the log only, nothing on /diagnostics"
        )
        return None
    return node.create_publisher(DiagnosticArray, "/diagnostics", 10)


def main(args: list[str] | None = None) -> int:
    """Console script ``depth_completion_node``: init, spin, clean shutdown."""
    from depth_completion_ros.cli_help import prepare_node_arguments

    args = prepare_node_arguments(args)  # --help, unknown/bad -p values: one line, before rclpy
    rclpy.init(args=args)
    node = None
    try:
        try:
            node = DepthCompletionNode()
        except (
            ConfigurationError,
            InvalidParameterValueException,
            InvalidParameterTypeException,
        ) as exc:
            rclpy.logging.get_logger("depth_completion").fatal(f"cannot start: {exc}")
            return 2
        except (KeyboardInterrupt, rclpy.executors.ExternalShutdownException):
            raise
        except Exception as exc:  # noqa: BLE001 - one line naming the fault, not a traceback
            rclpy.logging.get_logger("depth_completion").fatal(
                f"cannot start: unexpected {type(exc).__name__}: {exc}"
            )
            return 1
        rclpy.spin(node)
    except (KeyboardInterrupt, rclpy.executors.ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
