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

import signal
import sys
import threading
import time
from collections import deque

import numpy as np
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
from depth_completion_ros.deskew import OdometryBuffer
from depth_completion_ros.frame import (
    OUTPUTS,
    FrameInputs,
    FrameOutcome,
    FrameProcessor,
    FrameSource,
    extrinsics_from_parameters,
)
from depth_completion_ros.messages import MESSAGE_CLASSES, stamp_to_seconds, transport_topic
from depth_completion_ros.pairing import LatestSlot, Pair, StampPairer
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
    if isinstance(param.default, list):
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
    the frame step, publishers and timers (configure), and the input subscriptions (activate).
    Mixed into rclpy's Node or LifecycleNode."""

    _worker: threading.Thread | None = None  # destroy_node works after a failed init
    _inputs: list = []

    def _declare_parameters(self) -> None:
        for param in parameters.PARAMETERS:
            self.declare_parameter(param.name, param.default, _descriptor(param))

    def _configure(self) -> None:
        """Parameters -> the frame step (the backend loads its weights here), pairing, outputs,
        /diagnostics, timers and the worker thread; inputs are subscribed by _subscribe_inputs."""
        self.config = parameters.validate(
            {p.name: self.get_parameter(p.name).value for p in parameters.PARAMETERS}
        )
        self._inputs = []
        # guards the pairer, the slot hand-over and the counts, so a snapshot adds up exactly
        self._lock = threading.Lock()
        self.processor = FrameProcessor(self.config, self._frame_source(), self._lock)
        self.pipeline = self.processor.pipeline

        self.pairer: StampPairer[Image, PointCloud2] = StampPairer(self.config["max_time_offset"])
        self.slot: LatestSlot[Pair[Image, PointCloud2]] = LatestSlot()
        self._camera_info: CameraInfo | None = None
        # the recent nav_msgs/Odometry (odometry_topic set): the sweep's motion is interpolated
        self._odometry = OdometryBuffer()
        self._last_warning: dict[str, float] = {}
        self._latencies: deque[float] = deque(maxlen=200)
        now = time.monotonic()
        self._last_pair_time = now
        self._last_message = {"image": 0.0, "camera_info": 0.0, "points": 0.0}
        self._reported_rejections = 0
        self._reported_no_image = 0
        self._reported_jumps = 0

        output_qos = QoSProfile(
            history=HistoryPolicy.KEEP_LAST,
            depth=self.config["output_depth"],
            reliability=ReliabilityPolicy.RELIABLE,
        )
        overrides = QoSOverridingOptions.with_default_policies()
        # every output has a publisher (publish_* can be switched on at runtime); an output is
        # built only while it is enabled and someone subscribes to it
        self._publishers_by_topic = {
            topic: self.create_publisher(
                MESSAGE_CLASSES[kind], topic, output_qos, qos_overriding_options=overrides
            )
            for topic, (kind, _) in OUTPUTS.items()
        }
        self._idle = 0  # pairs not processed because nobody subscribed to an enabled output
        self._diagnostics_pub = _diagnostics_publisher(self)
        # on the steady clock: with use_sim_time the node clock stops with the bag's /clock, and
        # the status (and the last counts on /diagnostics) must not stop with it
        self._steady = Clock(clock_type=ClockType.STEADY_TIME)
        steady = self._steady
        self._report_timer = self.create_timer(
            self.config["diagnostics_period"], self._report, clock=steady
        )
        # checked often, so the first warning comes no_pair_warning s after the last pair
        self.create_timer(
            min(0.25, self.config["no_pair_warning"] / 4), self._check_pairs, clock=steady
        )

        self.add_on_set_parameters_callback(self._on_set_parameters)
        self._running = True
        self._worker = threading.Thread(target=self._work, name="depth_completion", daemon=True)
        self._worker.start()

    def _subscribe_inputs(self) -> None:
        """image, camera_info, points (and odometry): frames start to flow."""
        input_qos = QoSProfile(
            history=HistoryPolicy.KEEP_LAST,
            depth=self.config["input_depth"],
            reliability=_reliability(self.config["input_reliability"]),
        )
        # QoS as parameters the ROS way: qos_overrides.<topic>.subscription.reliability, ...
        # (input_reliability / input_depth stay the defaults the overrides start from)
        overrides = QoSOverridingOptions.with_default_policies()
        self._inputs.append(
            self.create_subscription(
                CompressedImage if self._compressed() else Image,
                self._topic("image_topic"),
                self._on_image,
                input_qos,
                qos_overriding_options=overrides,
            )
        )
        self._inputs.append(
            self.create_subscription(
                CameraInfo,
                self.config["camera_info_topic"],
                self._on_camera_info,
                input_qos,
                qos_overriding_options=overrides,
            )
        )
        self._inputs.append(
            self.create_subscription(
                PointCloud2,
                self.config["points_topic"],
                self._on_cloud,
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
        return (
            f"ready: {self.pipeline.backend.describe()}; inputs {self._topic('image_topic')}, "
            f"{self._topic('camera_info_topic')}, {self._topic('points_topic')} "
            f"({self.config['input_reliability']}), max_time_offset "
            f"{self.config['max_time_offset']} s; extrinsics: {self._extrinsics_source()}; "
            f"deskewing: {self._deskew_source()}"
        )

    # --- configuration ----------------------------------------------------------------------

    def _frame_source(self) -> FrameSource:
        """Topic names for messages, and a TransformBuffer fed by /tf_static and /tf when no
        fixed extrinsics are set or odometry needs its frame related to the cloud's."""
        config = self.config
        fixed = extrinsics_from_parameters(config)[0] is not None
        transforms = NoTransforms("nothing (TF not read: fixed extrinsics and no odometry)")
        if not fixed or config["odometry_topic"]:
            buffer = TransformBuffer(tolerance=config["transform_tolerance"])
            if _subscribe_tf(self, buffer):
                transforms = buffer
            else:
                transforms = NoTransforms(
                    "nothing (no TF: tf2_msgs is not installed; run scripts/build_tf2_msgs.py)"
                )
        roles = {
            "image": "image_topic",
            "camera_info": "camera_info_topic",
            "points": "points_topic",
            "odometry": "odometry_topic",
        }
        topics = {role: self._topic(key) if config[key] else "" for role, key in roles.items()}
        return FrameSource(topics, transforms, EXTRINSICS_FIX)

    def _on_set_parameters(self, changed: list) -> SetParametersResult:
        """``ros2 param set``: runtime parameters checked by the same table as at start-up and
        applied to the next frame; anything else, or a bad value, is refused with the reason and
        the running value kept. Parameters rclpy owns (use_sim_time, qos_overrides) pass."""
        ours = {p.name: p.value for p in changed if p.name in parameters.TABLE}
        if not ours:
            return SetParametersResult(successful=True)
        try:
            checked = parameters.check_update(self.config, ours)
        except parameters.ParameterError as exc:
            self.get_logger().warning(f"parameter change refused: {exc}")
            return SetParametersResult(successful=False, reason=str(exc))
        config = {**self.config, **checked}
        with self._lock:  # the next frame sees all of the change or none of it
            self.processor.reconfigure(config)
            self.pipeline = self.processor.pipeline
            self.pairer.max_offset = config["max_time_offset"]
            self.pairer.horizon = max(self.pairer.horizon, 2.0 * config["max_time_offset"])
            self.config = config
        if "diagnostics_period" in checked:
            self._report_timer.cancel()
            self.destroy_timer(self._report_timer)
            self._report_timer = self.create_timer(
                config["diagnostics_period"], self._report, clock=self._steady
            )
        self.get_logger().info(
            "parameters changed: " + ", ".join(f"{k}={v!r}" for k, v in checked.items())
        )
        return SetParametersResult(successful=True)

    def _extrinsics_source(self) -> str:
        if self.processor.fixed_extrinsics is not None:
            return self.processor.extrinsics_source
        return f"{self.processor.source.transforms.name}, when the cloud's frame differs"

    def _compressed(self) -> bool:
        return self.config["image_transport"] == "compressed"

    def _topic(self, key: str) -> str:
        """A topic parameter resolved (namespace, remapping); the image topic with
        image_transport's '/compressed' appended after resolving, as image_transport does (so
        remapping 'image' moves the compressed topic along), when image_transport is compressed."""
        name = self.resolve_topic_name(self.config[key])
        if key == "image_topic":
            name = transport_topic(name, self.config["image_transport"])
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

    def _on_camera_info(self, msg: CameraInfo) -> None:
        self._last_message["camera_info"] = time.monotonic()
        self._camera_info = msg

    def _on_odometry(self, msg) -> None:
        self._odometry.add(msg)

    def _on_image(self, msg: Image | CompressedImage) -> None:
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
            outcome = self.processor.take_and_process(self._take, self._publish)
            if outcome is not None:
                self._report_outcome(outcome)

    def _take(self) -> FrameInputs | None:
        """The newest pair with the camera_info and odometry of now (under the lock), and the
        outputs someone listens to; with no listener the pair is taken and counted as idle:
        no inference runs for nobody (depth_image_proc's lazy subscription, by count)."""
        pair = self.slot.take(timeout=0.0)
        if pair is None:
            return None
        wanted = frozenset(
            topic
            for topic in self.processor.outputs
            if self._publishers_by_topic[topic].get_subscription_count() > 0
        )
        if not wanted:
            self._idle += 1
            return None
        odometry = self._odometry.snapshot()
        return FrameInputs(
            pair.image, pair.cloud, self._camera_info, odometry, pair.received, wanted
        )

    def _publish(self, inputs: FrameInputs, output) -> None:
        for topic, msg in output.messages.items():
            self._publishers_by_topic[topic].publish(msg)
        self._latencies.append(time.monotonic() - inputs.received)

    def _report_outcome(self, outcome: FrameOutcome) -> None:
        if outcome.failure is not None:
            self._warn(outcome.failure.key, f"skipping frame: {outcome.failure}")
        if outcome.not_deskewed is not None:
            cause = outcome.not_deskewed.cause
            count = self.processor.accounting.not_deskewed[cause]
            self._warn(
                f"deskew:{cause}", f"scan not deskewed: {outcome.not_deskewed} ({count} so far)"
            )

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
        waiting (in the pairing buffer, handed to the worker or in process) + idle (nobody
        subscribed to an output); one snapshot."""
        with self._lock:
            stats = self.pairer.stats
            frames = self.processor.accounting
            counts = {
                "received": stats.scans,
                "published": frames.processed,
                "dropped_busy": self.slot.dropped,
                "rejected": stats.rejected,
                "rejected_offset": stats.rejected_offset,
                "rejected_no_image": stats.no_image,
                "failed": frames.failed,
                "waiting": self.pairer.waiting + self.slot.pending + frames.in_process,
                "idle": self._idle,
                "images_received": stats.images,
                "time_jumps": stats.time_jumps,
            }
            counts.update({f"failed:{k}": v for k, v in sorted(frames.failed_by_stage.items())})
            counts.update({f"not_deskewed:{k}": v for k, v in sorted(frames.not_deskewed.items())})
            return counts

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
            f"{c['rejected_no_image']}), failed {c['failed']}, waiting {c['waiting']}, "
            f"idle (no subscriber) {c['idle']} = "
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
        with self._lock:  # one snapshot: the worker may add a cause
            counts = dict(self.processor.accounting.not_deskewed)
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

    def _stop_worker(self) -> None:
        """Stop the worker thread and log the totals (once; safe when it never started)."""
        worker = self._worker
        if worker is not None:
            self._running = False
            self.slot.close()
            worker.join(timeout=5.0)
            self.get_logger().info(f"stopping: {self.latency_summary()}")
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
            self.pipeline.backend.warm_up()
        except parameters.ParameterError as exc:
            self.get_logger().error(f"cannot configure: {exc}")
            self._release(before)
            return TransitionCallbackReturn.FAILURE
        self._made = {kind: now - before[kind] for kind, now in self._entities().items()}
        self.get_logger().info(f"configured: {self.pipeline.backend.describe()}")
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
