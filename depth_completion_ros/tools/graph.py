"""Run the node as its own process and talk to it over DDS: used by the demo, tools and tests.

``ros_environment`` sets what every process of the graph needs: the shipped Fast DDS profile
(shared memory for multi-megabyte images, all traffic kept on this machine) and an isolated
domain id.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml
from rclpy.node import Node
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2
from std_msgs.msg import Header

from depth_completion_ros.calibration import PinholeCamera
from depth_completion_ros.frame import OUTPUTS
from depth_completion_ros.messages import (
    MESSAGE_CLASSES,
    camera_to_camera_info,
    make_header,
    numpy_to_image,
    rgb_to_compressed_image,
    seconds_to_nanoseconds,
    stamp_to_nanoseconds,
    xyz_array_to_pointcloud2,
)

DDS_PROFILES = {
    "localhost": "config/fastdds_large_data.xml",
    "robot": "config/fastdds_robot.xml",
}


def dds_profile_path(profile: str = "localhost") -> str:
    """The shipped Fast DDS profile for ``profile`` (localhost or robot) as an absolute path."""
    from depth_completion_ros.resources import package_file

    if profile not in DDS_PROFILES:
        raise ValueError(f"unknown DDS profile {profile!r}; one of: {', '.join(DDS_PROFILES)}")
    return str(package_file(DDS_PROFILES[profile]))


def ros_environment(
    domain_id: int | None = None, base: dict | None = None, transport: str = "localhost"
) -> dict[str, str]:
    """Environment for one process of the graph (publisher and subscriber alike).

    ``transport``:
      "localhost" (default; "profile" is the same): config/fastdds_large_data.xml, shared memory
        plus UDP bound to 127.0.0.1 and unicast discovery on 127.0.0.1, so no DDS packet leaves
        the machine and multi-megabyte messages still arrive whole;
      "robot": config/fastdds_robot.xml, the same shared memory plus UDP and multicast discovery
        on every interface, for graphs that other machines read;
      "inherit": the caller's own Fast DDS settings, unchanged.
    Static peers and a discovery range from the caller's environment are dropped for
    "localhost": rmw_fastrtps would add them to the profile's discovery, pointing it off the host.
    """
    env = dict(os.environ if base is None else base)
    env.setdefault("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
    if transport == "profile":
        transport = "localhost"
    if transport in DDS_PROFILES:
        env.pop("FASTDDS_BUILTIN_TRANSPORTS", None)
        env["FASTDDS_DEFAULT_PROFILES_FILE"] = dds_profile_path(transport)
        if transport == "localhost":
            for key in ("ROS_STATIC_PEERS", "ROS_AUTOMATIC_DISCOVERY_RANGE", "ROS_LOCALHOST_ONLY"):
                env.pop(key, None)
    elif transport != "inherit":
        raise ValueError(f"unknown transport {transport!r}; one of: localhost, robot, inherit")
    env["PYTHONUNBUFFERED"] = "1"
    if domain_id is not None:
        env["ROS_DOMAIN_ID"] = str(domain_id)
    return env


def use_ros_environment(domain_id: int | None = None, transport: str = "localhost") -> None:
    """Apply :func:`ros_environment` to this process (before ``rclpy.init``)."""
    env = ros_environment(domain_id, transport=transport)
    for key in set(os.environ) - set(env):
        del os.environ[key]
    os.environ.update(env)


def start_node_process(
    parameters: dict,
    domain_id: int,
    log_path: str | Path,
    extra_args: list[str] | None = None,
    transport: str = "localhost",
    node_args: tuple[str, ...] = (),
) -> subprocess.Popen:
    """Start ``depth_completion_node`` in its own process with a generated parameter file
    (``node_args`` go before ``--ros-args``, e.g. ``("--lifecycle",)``)."""
    params_file = Path(tempfile.mkstemp(prefix="depth_completion_", suffix=".yaml")[1])
    params_file.write_text(yaml.safe_dump({"depth_completion": {"ros__parameters": parameters}}))
    command = [
        sys.executable,
        "-m",
        "depth_completion_ros.node",
        *node_args,
        "--ros-args",
        "--params-file",
        str(params_file),
        *(extra_args or []),
    ]
    log = open(log_path, "w")  # noqa: SIM115 - owned by the process' lifetime
    return subprocess.Popen(
        command,
        env=ros_environment(domain_id, transport=transport),
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def stop_process(process: subprocess.Popen, timeout: float = 10.0) -> int:
    """SIGINT (a clean rclpy shutdown), then kill if it hangs."""
    if process.poll() is None:
        process.send_signal(2)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


@dataclass
class SensorFrame:
    """One camera image + LiDAR scan, as a driver would publish them."""

    stamp: float
    rgb: np.ndarray  # H x W x 3 uint8
    points: np.ndarray  # N x 4 float32 (x, y, z, intensity), LiDAR frame
    camera: PinholeCamera
    ground_truth: np.ndarray | None = None  # H x W metres, 0 = none
    name: str = ""


def header(stamp: float, frame_id: str) -> Header:
    """Header for a stamp in float seconds."""
    return make_header(seconds_to_nanoseconds(stamp), frame_id)


def frame_messages(
    frame: SensorFrame,
    camera_frame: str = "camera_optical",
    lidar_frame: str = "velodyne",
    codec: str | None = None,
) -> tuple[Image | CompressedImage, CameraInfo, PointCloud2]:
    """The three messages a camera + LiDAR driver pair would publish for one frame (``codec``
    jpeg or png: the image as image_transport's compressed CompressedImage)."""
    if codec:
        image = rgb_to_compressed_image(frame.rgb, codec, header(frame.stamp, camera_frame))
    else:
        image = numpy_to_image(frame.rgb, "rgb8", header(frame.stamp, camera_frame))
    info = camera_to_camera_info(frame.camera, header(frame.stamp, camera_frame))
    cloud = xyz_array_to_pointcloud2(frame.points, header(frame.stamp, lidar_frame))
    return image, info, cloud


#: the node's outputs (relative topic -> message class), from the frame step's own list
OUTPUT_TOPICS = {topic: MESSAGE_CLASSES[kind] for topic, (kind, _) in OUTPUTS.items()}


@dataclass
class PlayResult:
    """What came back, keyed by output stamp (ns), and when it came."""

    outputs: dict[int, dict[str, object]] = field(default_factory=dict)
    sent_at: dict[int, float] = field(default_factory=dict)
    depth_at: dict[int, float] = field(default_factory=dict)

    def latencies(self) -> np.ndarray:
        """Publish-to-depth-received seconds per frame (both ends in this process)."""
        return np.array(
            [self.depth_at[k] - self.sent_at[k] for k in self.depth_at if k in self.sent_at]
        )


class FramePlayer(Node):
    """Publishes sensor frames like drivers do and collects the node's outputs."""

    def __init__(
        self,
        reliable_inputs: bool = True,
        name: str = "frame_player",
        image_codec: str | None = None,
        **kwargs,
    ) -> None:
        """``image_codec`` jpeg or png: images go out compressed on 'image/compressed' (the
        node with image_transport compressed); None: raw Images on 'image'."""
        super().__init__(name, **kwargs)
        self.image_codec = image_codec
        qos = QoSProfile(
            history=HistoryPolicy.KEEP_LAST,
            depth=5,
            reliability=ReliabilityPolicy.RELIABLE
            if reliable_inputs
            else ReliabilityPolicy.BEST_EFFORT,
        )
        if image_codec:
            self.image_pub = self.create_publisher(CompressedImage, "image/compressed", qos)
        else:
            self.image_pub = self.create_publisher(Image, "image", qos)
        self.info_pub = self.create_publisher(CameraInfo, "camera_info", qos)
        self.cloud_pub = self.create_publisher(PointCloud2, "points", qos)
        out_qos = QoSProfile(
            history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.RELIABLE
        )
        self.result = PlayResult()
        for topic, kind in OUTPUT_TOPICS.items():
            self.create_subscription(kind, topic, self._collector(topic), out_qos)

    def _collector(self, topic: str):
        def collect(msg) -> None:
            key = stamp_to_nanoseconds(msg.header.stamp)
            self.result.outputs.setdefault(key, {})[topic] = msg
            if topic == "depth/image":
                self.result.depth_at[key] = time.monotonic()

        return collect

    def wait_for_node(self, executor, timeout: float = 30.0) -> bool:
        """Wait until the node subscribes to all three inputs (DDS discovery)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if (
                all(
                    p.get_subscription_count() > 0
                    for p in (self.image_pub, self.info_pub, self.cloud_pub)
                )
                and self.count_publishers("depth/image") > 0
            ):
                # matching is not symmetric: the node's readers may not have matched our
                # writers yet (a first camera_info sent now could be lost); let them catch up
                settle = time.monotonic() + 0.5
                while time.monotonic() < settle:
                    executor.spin_once(timeout_sec=0.05)
                return True
            executor.spin_once(timeout_sec=0.05)
        return False

    def publish_frame(self, frame: SensorFrame, messages=None) -> int:
        image, info, cloud = messages or frame_messages(frame, codec=self.image_codec)
        key = stamp_to_nanoseconds(image.header.stamp)
        self.result.sent_at[key] = time.monotonic()
        self.info_pub.publish(info)
        self.image_pub.publish(image)
        self.cloud_pub.publish(cloud)
        return key

    def play(
        self,
        frames,
        executor,
        wait_topics: tuple[str, ...] = ("depth/image",),
        timeout: float = 10.0,
        period: float = 0.0,
    ) -> PlayResult:
        """Publish frames one by one; wait for each frame's outputs (or ``timeout``)."""
        for frame in frames:
            started = time.monotonic()
            key = self.publish_frame(frame)
            deadline = started + timeout
            while time.monotonic() < deadline:
                got = self.result.outputs.get(key, {})
                if all(topic in got for topic in wait_topics):
                    break
                executor.spin_once(timeout_sec=0.01)
            while time.monotonic() < started + period:
                executor.spin_once(timeout_sec=0.005)
        # let late messages of the last frame arrive
        end = time.monotonic() + 0.3
        while time.monotonic() < end:
            executor.spin_once(timeout_sec=0.02)
        return self.result
