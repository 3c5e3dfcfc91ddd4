"""ROS's own conventions around the node, over DDS: outputs built only for subscribers,
parameters changed with the parameter service (as `ros2 param set` does), QoS overrides."""

from __future__ import annotations

import time

import numpy as np
import pytest
import rclpy
from rcl_interfaces.msg import Parameter as ParameterMsg
from rcl_interfaces.msg import ParameterType, ParameterValue
from rcl_interfaces.srv import GetParameters, SetParameters
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image, PointCloud2

from depth_completion_ros.kitti import KittiDrive
from depth_completion_ros.messages import image_to_depth
from depth_completion_ros.tools.graph import (
    SensorFrame,
    frame_messages,
    start_node_process,
    stop_process,
    use_ros_environment,
)

DRIVE = "2011_09_26_drive_0000_sync"


class Client:
    """A plain node in the test process: publishes frames, reads /diagnostics, calls the node's
    parameter services, subscribes to depth/image only when asked."""

    def __init__(self) -> None:
        from diagnostic_msgs.msg import DiagnosticArray

        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node("runtime_client", context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        qos = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
        self.image = self.node.create_publisher(Image, "image", qos)
        self.info = self.node.create_publisher(CameraInfo, "camera_info", qos)
        self.cloud = self.node.create_publisher(PointCloud2, "points", qos)
        self.counts: list[dict[str, str]] = []
        self.node.create_subscription(
            DiagnosticArray,
            "/diagnostics",
            lambda m: self.counts.append({kv.key: kv.value for kv in m.status[0].values}),
            10,
        )
        self.depth: list[Image] = []

    def listen_to_depth(self) -> None:
        qos = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
        self.node.create_subscription(Image, "depth/image", self.depth.append, qos)

    def spin(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.executor.spin_once(timeout_sec=0.02)

    def wait(self, done, timeout: float = 20.0) -> dict[str, str]:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.counts and done(self.counts[-1]):
                return self.counts[-1]
            self.spin(0.1)
        return self.counts[-1] if self.counts else {}

    def publish(self, frame: SensorFrame) -> None:
        image, info, cloud = frame_messages(frame)
        self.info.publish(info)
        self.cloud.publish(cloud)
        self.image.publish(image)

    def call(self, service_type, name: str, request):
        client = self.node.create_client(service_type, name)
        assert client.wait_for_service(timeout_sec=20.0), name
        future = client.call_async(request)
        end = time.monotonic() + 20.0
        while not future.done() and time.monotonic() < end:
            self.executor.spin_once(timeout_sec=0.05)
        return future.result()

    def set(self, **values):
        request = SetParameters.Request()
        for name, value in values.items():
            if isinstance(value, float):
                v = ParameterValue(type=ParameterType.PARAMETER_DOUBLE, double_value=value)
            else:
                v = ParameterValue(type=ParameterType.PARAMETER_STRING, string_value=value)
            request.parameters.append(ParameterMsg(name=name, value=v))
        return self.call(SetParameters, "/depth_completion/set_parameters", request).results

    def get(self, name: str):
        request = GetParameters.Request(names=[name])
        return self.call(GetParameters, "/depth_completion/get_parameters", request).values[0]

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)


@pytest.fixture
def running_node(kitti_raw_seq, ros_domain_id, tmp_path):
    """The node (classical fill, KITTI calibration) in its own process, and a client."""
    drive = KittiDrive(kitti_raw_seq / DRIVE)
    use_ros_environment(ros_domain_id)
    parameters = {
        "calibration_dir": str(drive.calibration_dir),
        "input_reliability": "reliable",
        "diagnostics_period": 0.5,
        "publish_points": False,
    }
    log = tmp_path / "node.log"
    process = start_node_process(parameters, ros_domain_id, log)
    client = Client()
    base = drive.frame(drive.frame_ids[0])
    frames = [
        SensorFrame(100.0 + i, base.rgb, base.points, drive.calibration.camera) for i in range(8)
    ]
    try:
        assert client.wait(lambda c: True, timeout=60.0), log.read_text()
        client.spin(1.0)  # the node's subscriptions match the client's publishers
        yield client, frames, log
    finally:
        client.close()
        stop_process(process)


def test_no_subscriber_no_inference_then_lazy_outputs(running_node):
    """With nobody listening to any output, pairs are taken and counted as idle (no inference);
    once depth/image has a subscriber, frames are completed and published again."""
    client, frames, log = running_node
    for frame in frames[:3]:
        client.publish(frame)
        client.spin(0.3)
    counts = client.wait(lambda c: int(c["idle"]) >= 2 and c["waiting"] == "0")
    assert int(counts["idle"]) >= 2 and counts["published"] == "0", (counts, log.read_text())
    client.listen_to_depth()
    client.spin(1.0)
    for frame in frames[3:6]:
        client.publish(frame)
        client.spin(0.5)
    counts = client.wait(lambda c: int(c["published"]) >= 2)
    assert int(counts["published"]) >= 2 and client.depth, (counts, log.read_text())
    parts = ("published", "dropped_busy", "rejected", "failed", "waiting", "idle")
    assert sum(int(counts[k]) for k in parts) == int(counts["received"]), counts


def test_parameters_set_at_runtime_are_checked_by_the_table(running_node):
    """max_depth changes while running (the next frame is clipped to it); a value that breaks
    min_depth < max_depth, an out-of-range value and a read-only parameter are refused with the
    reason, and the running value is kept."""
    client, frames, log = running_node
    ok = client.set(max_depth=20.0)
    assert ok[0].successful, ok[0].reason
    assert client.get("max_depth").double_value == 20.0
    refused = client.set(min_depth=30.0)  # min_depth < max_depth (20) is the table's rule
    assert not refused[0].successful and "must be smaller" in refused[0].reason
    assert client.get("min_depth").double_value == 0.1
    out_of_range = client.set(support_margin=-1.0)
    assert not out_of_range[0].successful
    read_only = client.set(model="bpnet")
    assert not read_only[0].successful and "read-only" in read_only[0].reason.lower()
    client.listen_to_depth()
    client.spin(1.0)
    client.publish(frames[0])
    end = time.monotonic() + 20.0
    while not client.depth and time.monotonic() < end:
        client.spin(0.1)
    assert client.depth, log.read_text()
    depth = image_to_depth(client.depth[-1])
    assert np.nanmax(depth) <= 20.0 and np.isfinite(depth).mean() > 0.2
    assert "parameters changed: max_depth=20.0" in log.read_text()


def test_qos_overrides_are_parameters(kitti_raw_seq, ros_domain_id, tmp_path):
    """qos_overrides.<topic>.subscription.reliability (rclpy's convention) is accepted on the
    command line and changes the subscription's QoS; input_reliability stays the default."""
    use_ros_environment(ros_domain_id)
    log = tmp_path / "node.log"
    process = start_node_process(
        {},
        ros_domain_id,
        log,
        ["-p", "qos_overrides./points.subscription.reliability:=reliable"],
    )
    client = Client()
    try:
        end = time.monotonic() + 60.0
        infos = []
        while time.monotonic() < end:
            infos = client.node.get_subscriptions_info_by_topic("/points")
            if infos and client.node.get_subscriptions_info_by_topic("/image"):
                break
            client.spin(0.2)
        assert infos, log.read_text()
        assert infos[0].qos_profile.reliability == ReliabilityPolicy.RELIABLE
        image = client.node.get_subscriptions_info_by_topic("/image")
        assert image[0].qos_profile.reliability == ReliabilityPolicy.BEST_EFFORT
    finally:
        client.close()
        stop_process(process)


def test_lifecycle_node_transitions(kitti_raw_seq, ros_domain_id, tmp_path):
    """--lifecycle: unconfigured = no inputs; configure loads and warms the model; activate
    subscribes and frames come out; deactivate unsubscribes (no output, model kept); activate
    again works; cleanup and shutdown end cleanly."""
    from lifecycle_msgs.msg import Transition
    from lifecycle_msgs.srv import ChangeState, GetState

    drive = KittiDrive(kitti_raw_seq / DRIVE)
    use_ros_environment(ros_domain_id)
    parameters = {
        "calibration_dir": str(drive.calibration_dir),
        "input_reliability": "reliable",
        "diagnostics_period": 0.5,
    }
    log = tmp_path / "node.log"
    process = start_node_process(parameters, ros_domain_id, log, node_args=("--lifecycle",))
    client = Client()
    base = drive.frame(drive.frame_ids[0])
    frame = SensorFrame(100.0, base.rgb, base.points, drive.calibration.camera)

    def change(transition: int) -> bool:
        request = ChangeState.Request(transition=Transition(id=transition))
        return client.call(ChangeState, "/depth_completion/change_state", request).success

    def state() -> str:
        return client.call(
            GetState, "/depth_completion/get_state", GetState.Request()
        ).current_state.label

    def image_subscribed() -> bool:
        client.spin(0.5)
        return bool(client.node.get_subscriptions_info_by_topic("/image"))

    def one_frame_out(stamp: float) -> bool:
        count = len(client.depth)
        client.publish(SensorFrame(stamp, frame.rgb, frame.points, frame.camera))
        end = time.monotonic() + 10.0
        while len(client.depth) == count and time.monotonic() < end:
            client.spin(0.1)
        return len(client.depth) > count

    try:
        assert state() == "unconfigured", log.read_text()
        assert not image_subscribed()
        assert change(Transition.TRANSITION_CONFIGURE) and state() == "inactive"
        assert "configured:" in log.read_text()
        assert not image_subscribed()  # configured, not active: no inputs yet
        client.listen_to_depth()
        assert change(Transition.TRANSITION_ACTIVATE) and state() == "active"
        assert image_subscribed()
        client.spin(1.0)
        assert one_frame_out(200.0), log.read_text()
        assert change(Transition.TRANSITION_DEACTIVATE) and state() == "inactive"
        assert not image_subscribed()
        assert not one_frame_out(201.0)
        assert change(Transition.TRANSITION_ACTIVATE)
        client.spin(1.0)
        assert one_frame_out(202.0), log.read_text()
        assert change(Transition.TRANSITION_DEACTIVATE)
        assert change(Transition.TRANSITION_CLEANUP) and state() == "unconfigured"
    finally:
        client.close()
        returncode = stop_process(process)
    text = log.read_text()
    assert returncode == 0 and "Traceback" not in text, text
