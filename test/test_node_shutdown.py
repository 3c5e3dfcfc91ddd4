"""Clean starts and stops as a launch system drives the node, and a replayed bag on sim time."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image

from depth_completion_ros import kitti_bag
from depth_completion_ros.kitti import KITTI_BAG_TOPICS
from depth_completion_ros.tools.graph import (
    ros_environment,
    start_node_process,
    stop_process,
    use_ros_environment,
)

DRIVE = "2011_09_26_drive_0000_sync"
ROSOUT_ERROR = "Failed to publish log message to rosout"


def _wait_for(path: Path, text: str, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if text in path.read_text(errors="replace"):
            return
        time.sleep(0.1)
    raise AssertionError(f"{text!r} not in the log:\n{path.read_text(errors='replace')}")


@pytest.mark.parametrize(
    "signals",
    [(signal.SIGINT, signal.SIGINT), (signal.SIGTERM,)],
    ids=["two-sigint", "sigterm"],
)
def test_stop_signals_end_the_node_cleanly(ros_domain_id, tmp_path, signals):
    """Ctrl-C under ros2 launch sends two SIGINTs (the terminal's and launch's); launch escalates
    to SIGTERM. Either way: exit 0, no traceback, and the last status line reaches /rosout (the
    context is still valid when the node is destroyed)."""
    log = tmp_path / "node.log"
    process = start_node_process({}, ros_domain_id, log)
    try:
        _wait_for(log, "ready:")
        for number in signals:
            process.send_signal(number)
            time.sleep(0.05)
        process.wait(timeout=20)
    finally:
        stop_process(process)
    text = log.read_text(errors="replace")
    assert process.returncode == 0, text
    assert "stopping:" in text, text
    assert "Traceback" not in text and "KeyboardInterrupt" not in text, text
    assert ROSOUT_ERROR not in text, text


def test_signals_while_exiting_do_not_kill_the_node(ros_domain_id, tmp_path):
    """A SIGINT that lands while the node is already exiting (after its clean-up, during the
    interpreter's shutdown: launch's SIGINT trailing the terminal's) leaves exit code 0, not -2."""
    log = tmp_path / "node.log"
    process = start_node_process({}, ros_domain_id, log)
    try:
        _wait_for(log, "ready:")
        process.send_signal(signal.SIGINT)
        _wait_for(log, "stopping:", timeout=20)
        end = time.monotonic() + 20
        while process.poll() is None and time.monotonic() < end:
            process.send_signal(signal.SIGINT)
            time.sleep(0.002)
    finally:
        stop_process(process)
    text = log.read_text(errors="replace")
    assert process.returncode == 0, text
    assert "Traceback" not in text and "KeyboardInterrupt" not in text, text


def test_bag_replayed_on_sim_time_loses_no_scan(kitti_raw_seq, ros_domain_id, tmp_path):
    """play_bag --clock into a use_sim_time node with the drivers' default (best effort) QoS:
    all 20 scans of the real sequence are published, and the counts on /diagnostics keep coming
    after the bag's /clock stops (the status timers run on the steady clock)."""
    from diagnostic_msgs.msg import DiagnosticArray

    bag = tmp_path / "bag"
    kitti_bag.convert(kitti_raw_seq / DRIVE, bag, cameras=(2,), log=lambda _line: None)
    use_ros_environment(ros_domain_id)
    parameters = {
        "calibration_dir": str(kitti_raw_seq),
        "use_sim_time": True,
        "diagnostics_period": 0.5,
        "image_topic": KITTI_BAG_TOPICS["image"],
        "camera_info_topic": KITTI_BAG_TOPICS["camera_info"],
        "points_topic": KITTI_BAG_TOPICS["points"],
    }
    log = tmp_path / "node.log"
    node = start_node_process(parameters, ros_domain_id, log)
    context = rclpy.Context()
    rclpy.init(context=context)
    listener = rclpy.create_node("diagnostics_listener", context=context)
    counts: list[dict[str, str]] = []
    listener.create_subscription(
        DiagnosticArray,
        "/diagnostics",
        lambda msg: counts.append({kv.key: kv.value for kv in msg.status[0].values}),
        10,
    )
    # a consumer of the depth: without one the node completes nothing (lazy outputs)
    depth = []
    listener.create_subscription(
        Image,
        "depth/image",
        depth.append,
        QoSProfile(depth=30, reliability=ReliabilityPolicy.RELIABLE),
    )
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(listener)
    try:
        _wait_for(log, "ready:")
        play = subprocess.Popen(
            [sys.executable, "-m", "depth_completion_ros.tools.play_bag", str(bag), "--clock"],
            env=ros_environment(ros_domain_id),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        while play.poll() is None:
            executor.spin_once(timeout_sec=0.1)
        end = time.monotonic() + 20.0
        while time.monotonic() < end and not (
            counts and counts[-1]["published"] == "20" and counts[-1]["waiting"] == "0"
        ):
            executor.spin_once(timeout_sec=0.1)
    finally:
        executor.shutdown()
        listener.destroy_node()
        rclpy.try_shutdown(context=context)
        returncode = stop_process(node)
    text = log.read_text(errors="replace")
    assert play.returncode == 0, play.stdout.read()
    assert counts, text
    assert counts[-1]["received"] == counts[-1]["published"] == "20", (counts[-1], text)
    assert len(depth) == 20
    assert returncode == 0 and ROSOUT_ERROR not in text, text
