"""One node, two cameras, one model, over DDS: the real KITTI scan seen by image_02 and by a
simulated camera looking backwards; each camera's depth equals what a single-camera node's
frame step makes of it, the two frames of a scan share one forward pass, and the node holds
one model."""

from __future__ import annotations

import time

import numpy as np
import pytest
import rclpy
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from test_cameras import camera_parameters, two_cameras

from depth_completion_ros.frame import FrameInputs, FrameProcessor, FrameSource
from depth_completion_ros.messages import image_to_depth, stamp_to_nanoseconds
from depth_completion_ros.parameters import load_parameters
from depth_completion_ros.tools.graph import (
    SensorFrame,
    frame_messages,
    start_node_process,
    stop_process,
    use_ros_environment,
)
from depth_completion_ros.transforms import NoTransforms

STAMPS = (10.0, 10.2)


@pytest.fixture(scope="module")
def rgb(kitti_image_path):
    from depth_completion_ros.depth_io import read_rgb

    return read_rgb(kitti_image_path)


def _single_camera_depth(weights, T, frame: SensorFrame) -> np.ndarray:
    """What a node with only this camera publishes on depth/image for ``frame``."""
    config = load_parameters(
        overrides={
            "model": "selfdc_r18",
            "checkpoint": str(weights),
            "extrinsics": [float(v) for v in T.ravel()],
        }
    )
    roles = {"image": "image", "camera_info": "camera_info", "points": "points", "odometry": ""}
    processor = FrameProcessor(config, FrameSource(roles, NoTransforms("none"), "set extrinsics"))
    image, info, cloud = frame_messages(frame)
    outcome = processor.process(FrameInputs(image, cloud, info))
    assert outcome.failure is None, outcome.failure
    return image_to_depth(outcome.output.messages["depth/image"])


def test_two_cameras_one_model_over_dds(
    kitti_scan, kitti_calibration, rgb, r18_weights, ros_domain_id, tmp_path
):
    (front, T_front), (rear, T_rear) = two_cameras(kitti_scan, kitti_calibration, rgb)
    flat = camera_parameters(r18_weights, T_front, T_rear)
    parameters = {
        "model": flat["model"],
        "checkpoint": flat["checkpoint"],
        "cameras": flat["cameras"],
        # nested as in a params file: rcl reads them as front.extrinsics, rear.extrinsics
        "front": {"extrinsics": flat["front.extrinsics"]},
        "rear": {"extrinsics": flat["rear.extrinsics"]},
        "input_reliability": "reliable",
        "diagnostics_period": 0.5,
    }
    use_ros_environment(ros_domain_id)
    log_path = tmp_path / "node.log"
    process = start_node_process(parameters, ros_domain_id, log_path)
    context = rclpy.Context()
    rclpy.init(context=context)
    node = rclpy.create_node("two_camera_driver", context=context)
    qos = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
    publishers = {
        "front/image": node.create_publisher(Image, "front/image", qos),
        "front/camera_info": node.create_publisher(CameraInfo, "front/camera_info", qos),
        "rear/image": node.create_publisher(Image, "rear/image", qos),
        "rear/camera_info": node.create_publisher(CameraInfo, "rear/camera_info", qos),
        "points": node.create_publisher(PointCloud2, "points", qos),
    }
    got: dict[str, dict[int, Image]] = {"front": {}, "rear": {}}
    for camera in got:
        node.create_subscription(
            Image,
            f"{camera}/depth/image",
            lambda msg, c=camera: got[c].__setitem__(stamp_to_nanoseconds(msg.header.stamp), msg),
            qos,
        )
    from diagnostic_msgs.msg import DiagnosticArray

    statuses: dict[str, dict[str, str]] = {}

    def on_diagnostics(msg) -> None:
        for status in msg.status:
            values = {kv.key: kv.value for kv in status.values}
            if "camera" in values:
                statuses[values["camera"]] = values

    node.create_subscription(DiagnosticArray, "/diagnostics", on_diagnostics, 10)
    executor = rclpy.executors.SingleThreadedExecutor(context=context)
    executor.add_node(node)

    def spin_until(done, timeout: float) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if done():
                return True
            executor.spin_once(timeout_sec=0.05)
        return done()

    try:
        assert spin_until(
            lambda: (
                all(p.get_subscription_count() for p in publishers.values())
                and node.count_publishers("rear/depth/image") > 0
            ),
            60.0,
        ), log_path.read_text()
        spin_until(lambda: False, 0.5)  # matching is not symmetric: let the node's readers match
        for stamp in STAMPS:
            for camera, frame in (("front", front), ("rear", rear)):
                image, info, _ = frame_messages(
                    SensorFrame(stamp, frame.rgb, kitti_scan, frame.camera)
                )
                publishers[f"{camera}/camera_info"].publish(info)
                publishers[f"{camera}/image"].publish(image)
            spin_until(lambda: False, 0.1)  # the images first: the scan completes both pairs
            publishers["points"].publish(
                frame_messages(SensorFrame(stamp, rgb, kitti_scan, front.camera))[2]
            )
            key = int(round(stamp * 1e9))
            assert spin_until(lambda k=key: k in got["front"] and k in got["rear"], 60.0), (
                log_path.read_text()
            )
        assert spin_until(
            lambda: all(statuses.get(c, {}).get("published") == "2" for c in got), 10.0
        ), statuses
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown(context=context)
        returncode = stop_process(process)
    log = log_path.read_text()
    assert returncode == 0, log
    assert "one model for 2 cameras" in log, log
    for camera, frame, T in (("front", front, T_front), ("rear", rear, T_rear)):
        counts = statuses[camera]
        assert counts["received"] == counts["published"] == "2", counts
        assert counts["failed"] == counts["rejected"] == "0", counts
        # the scan's two frames went through one forward pass together
        assert int(counts["batched"]) >= 1, counts
        expected = _single_camera_depth(r18_weights, T, frame)
        for key, msg in got[camera].items():
            depth = image_to_depth(msg)
            assert msg.header.frame_id == "camera_optical"
            assert np.mean(np.isnan(depth) == np.isnan(expected)) > 0.9999, (camera, key)
            both = np.isfinite(depth) & np.isfinite(expected)
            assert both.mean() > 0.3
            np.testing.assert_allclose(depth[both], expected[both], rtol=1e-4, atol=1e-4)


def test_one_model_in_memory_for_two_cameras(kitti_calibration, r18_weights):
    """The node builds the network once: both cameras' frame steps hold the same module."""
    from rclpy.parameter import Parameter

    from depth_completion_ros.node import DepthCompletionNode

    T = kitti_calibration.T_cam_lidar
    flat = camera_parameters(r18_weights, T, T)
    overrides = [Parameter(name, value=value) for name, value in flat.items()]
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=98)
    try:
        node = DepthCompletionNode(context=context, parameter_overrides=overrides)
        try:
            front, rear = node.channels
            assert (front.name, rear.name) == ("front", "rear")
            backend = front.processor.pipeline.backend
            assert rear.processor.pipeline.backend is backend
            assert rear.processor.pipeline is not front.processor.pipeline
            assert node.get_parameter("rear.image_topic").value == "rear/image"
            assert node.get_parameter("front.extrinsics").value == flat["front.extrinsics"]
            topics = dict(node.get_publisher_names_and_types_by_node(node.get_name(), "/"))
            assert "/front/depth/image" in topics and "/rear/depth/points" in topics
            assert "/depth/image" not in topics
        finally:
            node.destroy_node()
    finally:
        rclpy.try_shutdown(context=context)


def test_a_camera_parameter_without_its_camera_stops_the_node():
    """`-p rear.image_topic:=...` without 'rear' in cameras would be ignored by rclpy (never
    declared): the node refuses to start and names it."""
    from rclpy.parameter import Parameter

    from depth_completion_ros.node import DepthCompletionNode
    from depth_completion_ros.parameters import ParameterError

    context = rclpy.Context()
    rclpy.init(context=context, domain_id=97)
    try:
        with pytest.raises(ParameterError, match="'rear.image_topic' is for camera 'rear'"):
            DepthCompletionNode(
                context=context, parameter_overrides=[Parameter("rear.image_topic", value="/x")]
            )
    finally:
        rclpy.try_shutdown(context=context)


def test_status_without_diagnostic_msgs(kitti_calibration, monkeypatch):
    """Where diagnostic_msgs is not installed the node has no /diagnostics publisher; its status
    timer must still log each camera's line instead of failing on the import."""
    import sys

    from rclpy.parameter import Parameter

    from depth_completion_ros.node import DepthCompletionNode

    T = kitti_calibration.T_cam_lidar
    flat = camera_parameters("", T, T) | {"model": "classical"}
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=96)
    try:
        monkeypatch.setitem(sys.modules, "diagnostic_msgs", None)  # import fails as if absent
        monkeypatch.setitem(sys.modules, "diagnostic_msgs.msg", None)
        node = DepthCompletionNode(
            context=context,
            parameter_overrides=[Parameter(k, value=v) for k, v in flat.items()],
        )
        try:
            assert node._diagnostics_pub is None
            node.channels[1].pairer.add_image(1.0, object())  # an image: the status is logged
            node._report()
        finally:
            node.destroy_node()
    finally:
        rclpy.try_shutdown(context=context)
