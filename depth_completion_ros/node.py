"""The ROS 2 node: camera + LiDAR in, dense depth and a coloured point cloud out.

Callbacks only buffer messages and pair them by stamp; one worker thread runs the newest pair
through :class:`~depth_completion_ros.frame.FrameProcessor`, the per-frame step that
``process_bag`` runs too (older pairs are dropped and counted), so a slow network never builds a
queue. Every bad input is logged once per cause
(throttled per cause key, not by text) and skipped; the node keeps running. Every scan received
is accounted for: published + dropped while busy + rejected + failed + waiting = received, in the
status line, on ``/diagnostics`` (where diagnostic_msgs is installed) and at shutdown.
"""

from __future__ import annotations

import functools
import signal
import sys
import threading
import time

import rclpy
import rclpy.executors
from rcl_interfaces.msg import (
    FloatingPointRange,
    IntegerRange,
    ParameterDescriptor,
    ParameterType,
    SetParametersResult,
)
from rclpy.clock import Clock, ClockType
from rclpy.exceptions import InvalidParameterTypeException, InvalidParameterValueException
from rclpy.lifecycle import LifecycleNode, TransitionCallbackReturn
from rclpy.lifecycle import State as LifecycleState
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.qos_overriding_options import QoSOverridingOptions
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2

from depth_completion_ros import parameters
from depth_completion_ros.camera_channel import CameraChannel
from depth_completion_ros.deskew import OdometryBuffer
from depth_completion_ros.frame import (
    OUTPUTS,
    FrameInputs,
    FrameOutcome,
    FrameProcessor,
    FrameSource,
    extrinsics_from_parameters,
    process_together,
)
from depth_completion_ros.messages import MESSAGE_CLASSES, stamp_to_seconds, transport_topic
from depth_completion_ros.pairing import Pair
from depth_completion_ros.transforms import NoTransforms, TransformBuffer

#: what the node tells the user when no transform relates the cloud to the image
EXTRINSICS_FIX = (
    "set 'calibration_dir' (KITTI) or 'extrinsics' (4x4, 3x4 or x y z qx qy qz qw), or publish "
    "the transform on /tf_static or /tf (e.g. robot_state_publisher, static_transform_publisher)"
)


def _descriptor(param: parameters.Parameter) -> ParameterDescriptor:
    """The ROS descriptor of a table entry: rclpy then refuses out-of-range values itself."""
    descriptor = ParameterDescriptor(description=param.help_text(), read_only=param.read_only)
    if param.float_range:
        descriptor.floating_point_range = [
            FloatingPointRange(from_value=param.float_range[0], to_value=param.float_range[1])
        ]
    if param.int_range:
        descriptor.integer_range = [
            IntegerRange(from_value=param.int_range[0], to_value=param.int_range[1], step=1)
        ]
    if param.string_array:
        descriptor.type = ParameterType.PARAMETER_STRING_ARRAY
    elif isinstance(param.default, list):
        descriptor.type = ParameterType.PARAMETER_DOUBLE_ARRAY
    return descriptor


def _reliability(name: str) -> ReliabilityPolicy:
    return ReliabilityPolicy.RELIABLE if name == "reliable" else ReliabilityPolicy.BEST_EFFORT


def _subscribe_tf(node: Node, buffer: TransformBuffer) -> bool:
    """Feed ``buffer`` from /tf_static (reliable, transient_local: a late joiner still gets
    every static transform, as tf2_ros' listener subscribes) and /tf; False when tf2_msgs is
    not installed (scripts/build_tf2_msgs.py builds it into a venv without a ROS 2 distro)."""
    try:
        from tf2_msgs.msg import TFMessage
    except ImportError:
        return False
    static_qos = QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=100,
        reliability=ReliabilityPolicy.RELIABLE,
        durability=DurabilityPolicy.TRANSIENT_LOCAL,
    )
    dynamic_qos = QoSProfile(
        history=HistoryPolicy.KEEP_LAST, depth=100, reliability=ReliabilityPolicy.RELIABLE
    )
    node.create_subscription(
        TFMessage, "/tf_static", lambda msg: buffer.add_message(msg, static=True), static_qos
    )
    node.create_subscription(
        TFMessage, "/tf", lambda msg: buffer.add_message(msg, static=False), dynamic_qos
    )
    return True


class _DepthCompletion:
    """What the plain node and the lifecycle node share: declaring the parameters, building
    the cameras' frame steps around one model, publishers and timers (configure), and the input
    subscriptions (activate). Mixed into rclpy's Node or LifecycleNode."""

    _worker: threading.Thread | None = None  # destroy_node works after a failed init
    _inputs: list = []
    channels: list[CameraChannel] = []

    def _declare_parameters(self) -> None:
        for param in parameters.PARAMETERS:
            value = param.default
            if param.string_array and param.name in self._parameter_overrides:
                value = rclpy.Parameter.Type.STRING_ARRAY  # [] alone would be typed as bytes
            self.declare_parameter(param.name, value, _descriptor(param))

    def _read_parameters(self) -> dict:
        """The table's values and, for each camera of ``cameras``, its own ``NAME.key`` values
        (declared here, defaulting to the camera's defaults), validated together."""
        values = {p.name: self.get_parameter(p.name).value for p in parameters.PARAMETERS}
        for name, override in self._parameter_overrides.items():
            if parameters.camera_parameter(name) is not None:  # checked against 'cameras'
                values[name] = override.value
        # the names must be usable before their parameters are declared
        parameters.check_cameras(parameters.check_parameters({"cameras": values["cameras"]}))
        for camera, config in parameters.camera_configs(values):
            if not camera:
                continue
            for key in parameters.CAMERA_KEYS:
                name = f"{camera}.{key}"
                entry = parameters.table_entry(name)
                if not self.has_parameter(name):
                    self.declare_parameter(name, config[key], _descriptor(entry))
                values[name] = self.get_parameter(name).value
        return parameters.validate(values)

    def _configure(self) -> None:
        """Parameters -> one model and a frame step per camera, pairing, outputs, /diagnostics,
        timers and the worker thread; inputs are subscribed by _subscribe_inputs."""
        self.config = self._read_parameters()
        self._inputs = []
        # guards the pairers, the slot hand-overs and the counts, so a snapshot adds up exactly
        self._lock = threading.Lock()
        self._wake = threading.Event()  # set when any camera has a new pair
        # the recent nav_msgs/Odometry (odometry_topic set): the sweep's motion is interpolated
        self._odometry = OdometryBuffer()
        self._transforms = self._transform_source()
        self._last_warning: dict[str, float] = {}
        output_qos = QoSProfile(
            history=HistoryPolicy.KEEP_LAST,
            depth=self.config["output_depth"],
            reliability=ReliabilityPolicy.RELIABLE,
        )
        overrides = QoSOverridingOptions.with_default_policies()
        self.channels = []
        backend = None  # built by the first camera's frame step, shared by the others
        for name, config in parameters.camera_configs(self.config):
            processor = FrameProcessor(config, self._frame_source(config), self._lock, backend)
            backend = processor.pipeline.backend
            channel = CameraChannel(name, config, processor)
            # every output has a publisher (publish_* can be switched on at runtime); an output
            # is built only while it is enabled and someone subscribes to it
            channel.publishers = {
                topic: self.create_publisher(
                    MESSAGE_CLASSES[kind],
                    channel.output_topic(topic),
                    output_qos,
                    qos_overriding_options=overrides,
                )
                for topic, (kind, _) in OUTPUTS.items()
            }
            self.channels.append(channel)
        self.backend = backend
        self._diagnostics_pub = _diagnostics_publisher(self)
        # on the steady clock: with use_sim_time the node clock stops with the bag's /clock, and
        # the status (and the last counts on /diagnostics) must not stop with it
        self._steady = Clock(clock_type=ClockType.STEADY_TIME)
        self._report_timer = self.create_timer(
            self.config["diagnostics_period"], self._report, clock=self._steady
        )
        # checked often, so the first warning comes no_pair_warning s after the last pair
        self.create_timer(
            min(0.25, self.config["no_pair_warning"] / 4), self._check_pairs, clock=self._steady
        )
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self._running = True
        self._worker = threading.Thread(target=self._work, name="depth_completion", daemon=True)
        self._worker.start()

    def _subscribe_inputs(self) -> None:
        """Each camera's image and camera_info, each LiDAR topic once (its scans go to every
        camera that uses it), and odometry: frames start to flow."""
        input_qos = QoSProfile(
            history=HistoryPolicy.KEEP_LAST,
            depth=self.config["input_depth"],
            reliability=_reliability(self.config["input_reliability"]),
        )
        # QoS as parameters the ROS way: qos_overrides.<topic>.subscription.reliability, ...
        # (input_reliability / input_depth stay the defaults the overrides start from)
        overrides = QoSOverridingOptions.with_default_policies()
        by_points_topic: dict[str, list[CameraChannel]] = {}
        for channel in self.channels:
            config = channel.config
            self._inputs.append(
                self.create_subscription(
                    CompressedImage if config["image_transport"] == "compressed" else Image,
                    self._topic("image_topic", config),
                    functools.partial(self._on_image, channel),
                    input_qos,
                    qos_overriding_options=overrides,
                )
            )
            self._inputs.append(
                self.create_subscription(
                    CameraInfo,
                    self._topic("camera_info_topic", config),
                    functools.partial(self._on_camera_info, channel),
                    input_qos,
                    qos_overriding_options=overrides,
                )
            )
            by_points_topic.setdefault(self._topic("points_topic", config), []).append(channel)
        for topic, channels in by_points_topic.items():
            self._inputs.append(
                self.create_subscription(
                    PointCloud2,
                    topic,
                    functools.partial(self._on_cloud, channels),
                    input_qos,
                    qos_overriding_options=overrides,
                )
            )
        if self.config["odometry_topic"]:
            from nav_msgs.msg import Odometry

            self._inputs.append(
                self.create_subscription(
                    Odometry, self.config["odometry_topic"], self._on_odometry, input_qos
                )
            )

    def _unsubscribe_inputs(self) -> None:
        """No more frames: nothing is processed or published; the model stays loaded."""
        for subscription in self._inputs:
            self.destroy_subscription(subscription)
        self._inputs = []

    def _ready_line(self) -> str:
        cameras = "; ".join(
            f"{channel.label}inputs {self._topic('image_topic', channel.config)}, "
            f"{self._topic('camera_info_topic', channel.config)}, "
            f"{self._topic('points_topic', channel.config)}, outputs "
            f"{self.resolve_topic_name(channel.output_topic('depth/image'))}, ...; extrinsics: "
            f"{self._extrinsics_source(channel)}"
            for channel in self.channels
        )
        shared = f"one model for {len(self.channels)} cameras; " if len(self.channels) > 1 else ""
        return (
            f"ready: {self.backend.describe()}; {shared}{cameras} "
            f"({self.config['input_reliability']}), max_time_offset "
            f"{self.config['max_time_offset']} s; deskewing: {self._deskew_source()}"
        )

    # --- configuration ----------------------------------------------------------------------

    def _transform_source(self):
        """A TransformBuffer fed by /tf_static and /tf when a camera has no fixed extrinsics or
        odometry needs its frame related to the cloud's; else nothing (TF not read)."""
        cameras = parameters.camera_configs(self.config)
        fixed = all(extrinsics_from_parameters(c)[0] is not None for _, c in cameras)
        if fixed and not self.config["odometry_topic"]:
            return NoTransforms("nothing (TF not read: fixed extrinsics and no odometry)")
        buffer = TransformBuffer(tolerance=self.config["transform_tolerance"])
        if _subscribe_tf(self, buffer):
            return buffer
        return NoTransforms(
            "nothing (no TF: tf2_msgs is not installed; run scripts/build_tf2_msgs.py)"
        )

    def _frame_source(self, config: dict) -> FrameSource:
        """A camera's topic names (for messages) and the node's transforms."""
        roles = {
            "image": "image_topic",
            "camera_info": "camera_info_topic",
            "points": "points_topic",
            "odometry": "odometry_topic",
        }
        topics = {
            role: self._topic(key, config) if config[key] else "" for role, key in roles.items()
        }
        return FrameSource(topics, self._transforms, EXTRINSICS_FIX)

    def _on_set_parameters(self, changed: list) -> SetParametersResult:
        """``ros2 param set``: runtime parameters checked by the same table as at start-up and
        applied to the next frame of every camera; anything else, or a bad value, is refused
        with the reason and the running value kept. Parameters rclpy owns (use_sim_time,
        qos_overrides) pass."""
        ours = {p.name: p.value for p in changed if parameters.table_entry(p.name) is not None}
        if not ours:
            return SetParametersResult(successful=True)
        try:
            checked = parameters.check_update(self.config, ours)
        except parameters.ParameterError as exc:
            self.get_logger().warning(f"parameter change refused: {exc}")
            return SetParametersResult(successful=False, reason=str(exc))
        with self._lock:  # the next frame sees all of the change or none of it
            for channel in self.channels:
                channel.config = {**channel.config, **checked}
                channel.processor.reconfigure(channel.config)
                channel.pairer.max_offset = channel.config["max_time_offset"]
                channel.pairer.horizon = max(
                    channel.pairer.horizon, 2.0 * channel.config["max_time_offset"]
                )
            self.config = {**self.config, **checked}
        if "diagnostics_period" in checked:
            self._report_timer.cancel()
            self.destroy_timer(self._report_timer)
            self._report_timer = self.create_timer(
                self.config["diagnostics_period"], self._report, clock=self._steady
            )
        self.get_logger().info(
            "parameters changed: " + ", ".join(f"{k}={v!r}" for k, v in checked.items())
        )
        return SetParametersResult(successful=True)

    def _extrinsics_source(self, channel: CameraChannel) -> str:
        processor = channel.processor
        if processor.fixed_extrinsics is not None:
            return processor.extrinsics_source
        return f"{processor.source.transforms.name}, when the cloud's frame differs"

    def _topic(self, key: str, config: dict | None = None) -> str:
        """A topic parameter (of a camera's ``config``) resolved (namespace, remapping); the
        image topic with image_transport's '/compressed' appended after resolving, as
        image_transport does (so remapping 'image' moves the compressed topic along), when
        image_transport is compressed."""
        config = config or self.config
        name = self.resolve_topic_name(config[key])
        if key == "image_topic":
            name = transport_topic(name, config["image_transport"])
        return name

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

    def _on_camera_info(self, channel: CameraChannel, msg: CameraInfo) -> None:
        channel.last_message["camera_info"] = time.monotonic()
        channel.camera_info = msg

    def _on_odometry(self, msg) -> None:
        self._odometry.add(msg)

    def _on_image(self, channel: CameraChannel, msg: Image | CompressedImage) -> None:
        channel.last_message["image"] = time.monotonic()
        with self._lock:
            self._dispatch(
                channel, channel.pairer.add_image(stamp_to_seconds(msg.header.stamp), msg)
            )
        self._report_pairing(channel)

    def _on_cloud(self, channels: list[CameraChannel], msg: PointCloud2) -> None:
        """A scan for every camera that uses this LiDAR, handed over at once (under one lock
        hold), so the worker finds the cameras' pairs of one scan together and batches them."""
        now, stamp = time.monotonic(), stamp_to_seconds(msg.header.stamp)
        with self._lock:
            for channel in channels:
                channel.last_message["points"] = now
                self._dispatch(channel, channel.pairer.add_cloud(stamp, msg))
        for channel in channels:
            self._report_pairing(channel)

    def _dispatch(self, channel: CameraChannel, pairs: list[Pair[Image, PointCloud2]]) -> None:
        """Hand new pairs to the worker (under ``_lock``: paired and handed over at once)."""
        now = time.monotonic()
        if pairs:
            channel.last_pair_time = now
        for pair in pairs:
            pair.received = now
            channel.slot.put(pair)
        if pairs:
            self._wake.set()

    def _report_pairing(self, channel: CameraChannel) -> None:
        stats, reported, label = channel.pairer.stats, channel.reported, channel.label
        if stats.rejected_offset > reported["offset"]:
            reported["offset"] = stats.rejected_offset
            self._warn(
                f"{channel.name}:pairing:offset",
                f"{label}scan dropped: nearest image is {stats.last_rejected_offset:+.3f} s "
                f"away, more than max_time_offset {channel.config['max_time_offset']} s "
                f"({stats.rejected_offset} so far); are the clocks in sync (use_sim_time for "
                "bags)? raise max_time_offset if the sensors are not triggered together",
            )
        if stats.no_image > reported["no_image"]:
            reported["no_image"] = stats.no_image
            self._warn(
                f"{channel.name}:pairing:no_image",
                f"{label}scan dropped: no image on {self._topic('image_topic', channel.config)} "
                f"at all while {channel.pairer.buffer_size} scans waited ({stats.no_image} so "
                "far); is the camera publishing (topic name, QoS input_reliability)?",
            )
        if stats.time_jumps > reported["jumps"]:
            reported["jumps"] = stats.time_jumps
            self._warn(
                f"{channel.name}:pairing:time_jump",
                f"{label}the {stats.last_jump_stream} stamps jumped by {stats.last_jump:+.3f} s "
                f"(bag looped or a wrong stamp?); pairing goes on, no frame is dropped for it "
                f"({stats.time_jumps} jumps so far)",
                info=True,
            )

    # --- processing -------------------------------------------------------------------------

    def _work(self) -> None:
        """The newest pair of every camera that has one, run together: the frames of cameras
        with one input geometry share a forward pass of the model."""
        while self._running:
            if not self._wake.wait(timeout=0.2):
                continue
            self._wake.clear()
            jobs = [
                (
                    channel.processor,
                    functools.partial(self._take, channel),
                    functools.partial(self._publish, channel),
                )
                for channel in self.channels
            ]
            for channel, outcome in zip(self.channels, process_together(jobs), strict=True):
                if outcome is not None:
                    self._report_outcome(channel, outcome)

    def _take(self, channel: CameraChannel) -> FrameInputs | None:
        """The camera's newest pair with its camera_info and the odometry of now (under the
        lock), and the outputs someone listens to; with no listener the pair is taken and
        counted as idle: no inference runs for nobody (depth_image_proc's lazy subscription,
        by count)."""
        pair = channel.slot.take(timeout=0.0)
        if pair is None:
            return None
        wanted = frozenset(
            topic
            for topic in channel.processor.outputs
            if channel.publishers[topic].get_subscription_count() > 0
        )
        if not wanted:
            channel.idle += 1
            return None
        odometry = self._odometry.snapshot()
        return FrameInputs(
            pair.image, pair.cloud, channel.camera_info, odometry, pair.received, wanted
        )

    def _publish(self, channel: CameraChannel, inputs: FrameInputs, output) -> None:
        for topic, msg in output.messages.items():
            channel.publishers[topic].publish(msg)
        channel.latencies.append(time.monotonic() - inputs.received)

    def _report_outcome(self, channel: CameraChannel, outcome: FrameOutcome) -> None:
        if outcome.failure is not None:
            self._warn(
                f"{channel.name}:{outcome.failure.key}",
                f"{channel.label}skipping frame: {outcome.failure}",
            )
        if outcome.not_deskewed is not None:
            cause = outcome.not_deskewed.cause
            count = channel.processor.accounting.not_deskewed[cause]
            self._warn(
                f"{channel.name}:deskew:{cause}",
                f"{channel.label}scan not deskewed: {outcome.not_deskewed} ({count} so far)",
            )

    # --- diagnostics ------------------------------------------------------------------------

    def _input_state(self, topic: str, last: float) -> str:
        """Publishers the graph lists (a killed one stays listed until its lease ends) and when
        a message last came, which is what tells a live publisher from a dead one."""
        infos = self.get_publishers_info_by_topic(topic)
        if infos:
            kinds = sorted({info.qos_profile.reliability.name.lower() for info in infos})
            listed = f"{len(infos)} publisher(s) listed, {'/'.join(kinds)}"
        else:
            listed = "no publisher"
        heard = f"last message {time.monotonic() - last:.1f} s ago" if last else "no message yet"
        return f"{listed}, {heard}"

    def _check_pairs(self) -> None:
        for channel in self.channels:
            since_pair = time.monotonic() - channel.last_pair_time
            if since_pair < self.config["no_pair_warning"]:
                continue
            stats, config = channel.pairer.stats, channel.config
            offsets = list(stats.recent_offsets)[-5:]
            offset_text = (
                ", ".join(f"{o:+.3f}" for o in offsets) if offsets else "none (no scan+image seen)"
            )
            image_topic = self._topic("image_topic", config)
            points_topic = self._topic("points_topic", config)
            self._warn(
                f"{channel.name}:no_pair",
                f"{channel.label}no synchronised pair for {since_pair:.1f} s: received "
                f"{stats.images} images on {image_topic} "
                f"({self._input_state(image_topic, channel.last_message['image'])}), "
                f"{stats.scans} clouds on {points_topic} "
                f"({self._input_state(points_topic, channel.last_message['points'])}), "
                f"camera_info {'seen' if channel.camera_info else 'not seen'} on "
                f"{self._topic('camera_info_topic', config)}; this node subscribes with "
                f"{self.config['input_reliability']} QoS; recent image-scan offsets (s): "
                f"{offset_text} vs max_time_offset {config['max_time_offset']}. Check topic "
                "names, QoS reliability (input_reliability) and clocks (use_sim_time).",
                period=max(self.config["no_pair_warning"], self.config["diagnostics_period"]),
            )

    def counts(self, channel: CameraChannel | None = None) -> dict[str, int]:
        """Where every scan of ``channel`` (default: the first camera) went; one snapshot (see
        :meth:`CameraChannel.counts`)."""
        with self._lock:
            return (channel or self.channels[0]).counts()

    def _report(self) -> None:
        statuses = []
        for channel in self.channels:
            counts = self.counts(channel)
            if counts["received"] or counts["images_received"]:
                self.get_logger().info(f"status: {self.latency_summary(channel, counts)}")
            if self._diagnostics_pub is not None:  # diagnostic_msgs is installed
                statuses.append(self._diagnostic_status(channel, counts))
        if self._diagnostics_pub is not None:
            from diagnostic_msgs.msg import DiagnosticArray

            msg = DiagnosticArray(status=statuses)
            msg.header.stamp = self.get_clock().now().to_msg()
            self._diagnostics_pub.publish(msg)

    def latency_summary(
        self, channel: CameraChannel | None = None, counts: dict[str, int] | None = None
    ) -> str:
        """Where every scan went, latency percentiles, and what deskewing could not do."""
        channel = channel or self.channels[0]
        return channel.summary(counts or self.counts(channel)) + self._deskew_summary(channel)

    def _deskew_source(self) -> str:
        if not self.config["odometry_topic"]:
            return "off (odometry_topic is '')"
        return f"odometry on {self._topic('odometry_topic')}"

    def _deskew_summary(self, channel: CameraChannel) -> str:
        if not self.config["odometry_topic"]:
            return ""
        with self._lock:  # one snapshot: the worker may add a cause
            counts = dict(channel.processor.accounting.not_deskewed)
        causes = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
        return f"; not deskewed {sum(counts.values())}" + (f" ({causes})" if causes else "")

    def _diagnostic_status(self, channel: CameraChannel, counts: dict[str, int]):
        """One camera's accounting as a DiagnosticStatus (key ``camera`` names it)."""
        from diagnostic_msgs.msg import DiagnosticStatus, KeyValue

        since_pair = time.monotonic() - channel.last_pair_time
        name = f"{self.get_name()}: depth completion" + (f" {channel.name}" if channel.name else "")
        status = DiagnosticStatus(name=name, hardware_id="")
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
        if channel.name:
            values.append(KeyValue(key="camera", value=channel.name))
        status.values = values
        return status

    def _stop_worker(self) -> None:
        """Stop the worker thread and log the totals (once; safe when it never started)."""
        worker = self._worker
        if worker is not None:
            self._running = False
            self._wake.set()
            for channel in self.channels:
                channel.slot.close()
            worker.join(timeout=5.0)
            for channel in self.channels:
                self.get_logger().info(f"stopping: {self.latency_summary(channel)}")
            self._worker = None

    def destroy_node(self) -> None:
        """Stop the worker and log the totals; safe after a failed ``__init__``."""
        self._stop_worker()
        super().destroy_node()


class DepthCompletionNode(_DepthCompletion, Node):
    """The node: configured and subscribed at construction (the default)."""

    def __init__(self, **kwargs) -> None:
        Node.__init__(self, parameters.NODE_NAME, **kwargs)
        self._declare_parameters()
        self._configure()
        self._subscribe_inputs()
        self.get_logger().info(self._ready_line())


class DepthCompletionLifecycleNode(_DepthCompletion, LifecycleNode):
    """The node as a managed (lifecycle) node, so a system manager brings the graph up in order:
    configure loads and warms the model and creates the outputs; activate subscribes the inputs;
    deactivate unsubscribes them (nothing is processed or published, the model stays loaded);
    cleanup releases everything configure made."""

    def __init__(self, **kwargs) -> None:
        LifecycleNode.__init__(self, parameters.NODE_NAME, **kwargs)
        self._declare_parameters()
        self._made: dict[str, set] = {}

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        before = self._entities()
        try:
            self._configure()
            self.backend.warm_up()
        except parameters.ParameterError as exc:
            self.get_logger().error(f"cannot configure: {exc}")
            self._release(before)
            return TransitionCallbackReturn.FAILURE
        self._made = {kind: now - before[kind] for kind, now in self._entities().items()}
        self.get_logger().info(f"configured: {self.backend.describe()}")
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._subscribe_inputs()
        self.get_logger().info(self._ready_line())
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._unsubscribe_inputs()
        self.get_logger().info(f"deactivated: {self.latency_summary()}")
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_worker()
        self._release(self._made)
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._unsubscribe_inputs()
        self._stop_worker()
        return TransitionCallbackReturn.SUCCESS

    def _entities(self) -> dict[str, set]:
        return {
            "publishers": set(self.publishers),
            "subscriptions": set(self.subscriptions),
            "timers": set(self.timers),
        }

    def _release(self, made: dict[str, set]) -> None:
        for publisher in made.get("publishers", ()):
            self.destroy_publisher(publisher)
        for subscription in made.get("subscriptions", ()):
            self.destroy_subscription(subscription)
        for timer in made.get("timers", ()):
            self.destroy_timer(timer)
        self._made = {}


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


class StopRequest:
    """SIGINT/SIGTERM handled by the node itself: the first asks the spin loop to stop, later ones
    (a terminal's Ctrl-C and launch's SIGINT arrive together) are noted and ignored, so the
    clean-up is never interrupted and runs while the context is still valid (the last status
    line reaches /rosout; rclpy's own handler shut the context down first)."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.signals = 0

    def install(self) -> None:
        for number in (signal.SIGINT, signal.SIGTERM):
            signal.signal(number, self._handle)

    def _handle(self, _number, _frame) -> None:
        self.signals += 1
        self.event.set()

    @staticmethod
    def ignore_late_signals() -> None:
        """After the clean-up: a signal that comes now (the second SIGINT of a Ctrl-C under
        launch, 50 ms behind the first) is ignored. Python's finalisation puts the default
        handler back for every signal with a Python handler, so such a signal would otherwise
        kill the exiting process (exit -2 instead of 0); an ignored one stays ignored."""
        for number in (signal.SIGINT, signal.SIGTERM):
            signal.signal(number, signal.SIG_IGN)


def main(args: list[str] | None = None) -> int:
    """Console script ``depth_completion_node``: init, spin until SIGINT/SIGTERM (or an external
    shutdown), destroy the node while the context is valid, then shut down."""
    from rclpy.signals import SignalHandlerOptions

    from depth_completion_ros.cli_help import prepare_node_arguments

    args = prepare_node_arguments(args)  # --help, unknown/bad -p values: one line, before rclpy
    ros_start = args.index("--ros-args") if "--ros-args" in args else len(args)
    lifecycle = "--lifecycle" in args[1:ros_start]
    stop = StopRequest()
    stop.install()
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    node = None
    executor = rclpy.executors.SingleThreadedExecutor()
    try:
        try:
            node = DepthCompletionLifecycleNode() if lifecycle else DepthCompletionNode()
        except (
            parameters.ParameterError,
            InvalidParameterValueException,
            InvalidParameterTypeException,
        ) as exc:
            rclpy.logging.get_logger("depth_completion").fatal(f"cannot start: {exc}")
            return 2
        except rclpy.executors.ExternalShutdownException:
            raise
        except Exception as exc:  # noqa: BLE001 - one line naming the fault, not a traceback
            rclpy.logging.get_logger("depth_completion").fatal(
                f"cannot start: unexpected {type(exc).__name__}: {exc}"
            )
            return 1
        executor.add_node(node)
        while not stop.event.is_set() and rclpy.ok():
            executor.spin_once(timeout_sec=0.1)
    except rclpy.executors.ExternalShutdownException:
        pass
    finally:
        executor.shutdown(timeout_sec=1.0)
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
        stop.ignore_late_signals()
    return 0


if __name__ == "__main__":
    sys.exit(main())
