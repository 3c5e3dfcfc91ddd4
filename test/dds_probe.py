"""One end of a two-process DDS check: ``pub`` sends organised clouds, ``sub`` counts them.

Run by test/test_dds_locality.py, each end in its own process with the environment from
``graph.ros_environment``, so the sockets the test inspects are exactly those of a graph process.

    python test/dds_probe.py pub COUNT     # 1242 x 375 XYZRGB clouds (7.5 MB) at 10 Hz
    python test/dds_probe.py sub COUNT     # a best-effort and a reliable reader; prints JSON
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
import rclpy
from rclpy.duration import Duration
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import PointCloud2

from depth_completion_ros.messages import make_header, organised_xyzrgb_cloud

TOPIC = "probe/points"
HEIGHT, WIDTH = 375, 1242


def _qos(reliable: bool) -> QoSProfile:
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=5,
        reliability=ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT,
    )


def publish(count: int, timeout: float = 60.0) -> dict:
    node = rclpy.create_node("dds_probe_pub")
    publisher = node.create_publisher(PointCloud2, TOPIC, _qos(True))
    deadline = time.monotonic() + timeout
    while publisher.get_subscription_count() < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)  # let the readers match the writer too
    rng = np.random.default_rng(0)
    xyz = rng.uniform(1, 50, (HEIGHT, WIDTH, 3)).astype(np.float32)
    rgb = rng.integers(0, 255, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    cloud = organised_xyzrgb_cloud(xyz, rgb, make_header(0, "probe"))
    for index in range(count):
        cloud.header = make_header(index + 1, "probe")
        publisher.publish(cloud)
        time.sleep(0.1)
    publisher.wait_for_all_acked(Duration(seconds=10))
    return {
        "sent": count,
        "bytes": len(cloud.data),
        "subscribers": publisher.get_subscription_count(),
    }


def subscribe(count: int, timeout: float = 60.0) -> dict:
    node = rclpy.create_node("dds_probe_sub")
    got = {"best_effort": 0, "reliable": 0}

    def counter(key: str):
        def count_one(_msg) -> None:
            got[key] += 1

        return count_one

    node.create_subscription(PointCloud2, TOPIC, counter("best_effort"), _qos(False), raw=True)
    node.create_subscription(PointCloud2, TOPIC, counter("reliable"), _qos(True), raw=True)
    print("ready", flush=True)
    deadline = time.monotonic() + timeout
    last, last_total = time.monotonic(), 0
    while min(got.values()) < count and time.monotonic() < deadline:
        rclpy.spin_once(node, timeout_sec=0.05)
        if sum(got.values()) != last_total:
            last, last_total = time.monotonic(), sum(got.values())
        if got["reliable"] >= count and time.monotonic() - last > 3.0:
            break  # best-effort samples that did not come by now were lost
    end = time.monotonic() + 0.5
    while time.monotonic() < end:
        rclpy.spin_once(node, timeout_sec=0.05)
    return got


def main(argv: list[str]) -> int:
    role, count = argv[0], int(argv[1])
    rclpy.init()
    try:
        result = publish(count) if role == "pub" else subscribe(count)
    finally:
        rclpy.try_shutdown()
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
