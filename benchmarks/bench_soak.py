"""Soak: the real 20-frame KITTI bag looped into the node process for minutes; prints JSON.

The bag is written by ``kitti_to_bag`` and played by ``play_bag --loop`` (both real processes
over DDS, reliable QoS), so the stamps jump back 1.9 s every 2 s as with any looped bag. Every
``--sample`` seconds the node's resident memory (/proc) and its own counts (its status line) are
recorded. A second subscriber in this process counts the scans on the wire (play_bag waits for
both subscribers), so a scan the node never got shows up too. Topics are renamed for this run,
so a test elsewhere on the machine that drew the same domain id cannot add frames.

Losses (must be 0): scans rejected or failed, scans the node's counts do not account for, status
lines that do not add up, and scans on the wire the node did not receive. Scans dropped while the
node was busy are by design (newest pair wins) and reported apart.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/bench_soak.py [--minutes 2] [--sample 10]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import rclpy
from machine import machine_info  # benchmarks/machine.py (scripts run from here)
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image, PointCloud2

from depth_completion_ros.tools import kitti_to_bag
from depth_completion_ros.tools.graph import (
    ros_environment,
    start_node_process,
    stop_process,
    use_ros_environment,
)

DEFAULT_DRIVE = (
    Path(__file__).resolve().parents[1].parent
    / "shared/data/kitti_raw_seq/2011_09_26/2011_09_26_drive_0000_sync"
)
IMAGE = "/kitti/camera_color_left/image_raw"
INFO = "/kitti/camera_color_left/camera_info"
POINTS = "/kitti/velo/pointcloud"


def rss_mb(pid: int) -> float | None:
    """Resident memory of a process (VmRSS), in MB; None once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


# The node's status and shutdown lines (DepthCompletionNode.latency_summary). A soak of many
# minutes reads them from the log it keeps anyway; tests read /diagnostics instead.
_SUMMARY = re.compile(
    r"pairs processed (?P<published>\d+), dropped while busy (?P<dropped_busy>\d+), "
    r"rejected (?P<rejected>\d+) \(stamp offset (?P<rejected_offset>\d+), no image "
    r"(?P<rejected_no_image>\d+)\), failed (?P<failed>\d+), waiting (?P<waiting>\d+), "
    r"idle \(no subscriber\) (?P<idle>\d+) = "
    r"(?P<received>\d+) scans received; (?P<images_received>\d+) images received, "
    r"(?P<time_jumps>\d+) time jumps"
)


def parse_summary(line: str) -> dict[str, int] | None:
    """The counts of a status or shutdown line of the node; None if ``line`` holds none."""
    match = _SUMMARY.search(line)
    return {k: int(v) for k, v in match.groupdict().items()} if match else None


def last_counts(log: str, prefix: str) -> dict[str, int] | None:
    """The counts of the last log line that starts its message with ``prefix``."""
    lines = [line for line in log.splitlines() if f"]: {prefix}" in line]
    return parse_summary(lines[-1]) if lines else None


def wait_for(text: str, log_path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while text not in log_path.read_text(errors="replace"):
        if time.monotonic() > deadline:
            raise SystemExit(
                f"no {text!r} in the node log after {timeout} s:\n{log_path.read_text()}"
            )
        time.sleep(0.2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--drive", default=str(DEFAULT_DRIVE), help="KITTI raw synced drive")
    parser.add_argument("--minutes", type=float, default=2.0, help="how long the bag loops")
    parser.add_argument("--sample", type=float, default=10.0, help="s between samples")
    parser.add_argument("--rate", type=float, default=1.0, help="play_bag --rate")
    parser.add_argument("--model", default="classical")
    parser.add_argument("--domain-id", type=int, default=89)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench_soak_"))
    bag = work / "bag"
    with open(work / "kitti_to_bag.log", "w") as out:  # its progress lines stay out of the JSON
        saved, sys.stdout = sys.stdout, out
        try:
            if kitti_to_bag.main([args.drive, str(bag), "--cameras", "2"]) != 0:
                raise SystemExit(f"kitti_to_bag failed; see {work / 'kitti_to_bag.log'}")
        finally:
            sys.stdout = saved
    drive = Path(args.drive)
    topics = {bag_topic: f"/soak{os.getpid()}{bag_topic}" for bag_topic in (IMAGE, INFO, POINTS)}
    parameters = {
        "calibration_dir": str(drive.parent),
        "model": args.model,
        "image_topic": topics[IMAGE],
        "camera_info_topic": topics[INFO],
        "points_topic": topics[POINTS],
        "input_reliability": "reliable",  # count the node's losses, not best-effort drops
        "diagnostics_period": args.sample,
    }
    use_ros_environment(args.domain_id)
    log_path = work / "node.log"
    node = start_node_process(parameters, args.domain_id, log_path)
    rclpy.init()
    listener = rclpy.create_node("soak_wire_counter")
    on_wire = [0]

    def count(_msg) -> None:
        on_wire[0] += 1

    qos = QoSProfile(
        history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.RELIABLE
    )
    listener.create_subscription(PointCloud2, topics[POINTS], count, qos, raw=True)
    for topic, kind in ((IMAGE, Image), (INFO, CameraInfo)):  # so play_bag waits for this node
        listener.create_subscription(kind, topics[topic], lambda _msg: None, qos, raw=True)
    player = None
    samples = []
    try:
        wait_for("ready:", log_path, 120.0)
        player = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "depth_completion_ros.tools.play_bag",
                str(bag),
                "--loop",
                "--rate",
                str(args.rate),
                "--reliability",
                "reliable",
                "--topics",
                IMAGE,
                INFO,
                POINTS,
                "--remap",
                *(f"{source}:={target}" for source, target in topics.items()),
                "--wait-for-subscribers",
                "60",
                "--min-subscribers",
                "2",
            ],
            env=ros_environment(args.domain_id),
            stdout=subprocess.DEVNULL,
            stderr=open(work / "play_bag.log", "w"),  # noqa: SIM115 - closed with the process
        )
        start = time.monotonic()
        next_sample = start
        end = start + 60.0 * args.minutes
        while time.monotonic() < end:
            rclpy.spin_once(listener, timeout_sec=0.05)
            if time.monotonic() >= next_sample:
                counts = last_counts(log_path.read_text(errors="replace"), "status: ")
                samples.append(
                    {
                        "t_s": round(time.monotonic() - start, 1),
                        "node_rss_mb": rss_mb(node.pid),
                        "scans_on_wire": on_wire[0],
                        **(counts or {}),
                    }
                )
                next_sample += args.sample
        player.send_signal(2)  # Ctrl-C: play_bag stops publishing
        try:
            player.wait(15)
        except subprocess.TimeoutExpired:
            player.kill()
        drain = time.monotonic() + 3.0  # the node finishes its last pair, this process counts
        while time.monotonic() < drain:
            rclpy.spin_once(listener, timeout_sec=0.05)
        final_rss = rss_mb(node.pid)
    finally:
        if player is not None and player.poll() is None:
            player.kill()
        listener.destroy_node()
        rclpy.try_shutdown()
        returncode = stop_process(node)
        shutil.rmtree(bag, ignore_errors=True)  # 64 MB; the logs stay in the work folder
    log = log_path.read_text(errors="replace")
    final = last_counts(log, "stopping: ")
    if final is None:
        raise SystemExit(f"no shutdown summary in the node log:\n{log[-3000:]}")

    def accounted(c: dict[str, int]) -> int:
        parts = ("published", "dropped_busy", "rejected", "failed", "waiting", "idle")
        return sum(c[k] for k in parts)

    status = [c for line in log.splitlines() if (c := parse_summary(line)) is not None]
    rss = [s["node_rss_mb"] for s in samples if s["node_rss_mb"]] + [final_rss or 0.0]
    after_first_minute = [s["node_rss_mb"] for s in samples if s["t_s"] >= 60 and s["node_rss_mb"]]
    result = {
        "benchmark": "node_soak_looped_kitti_bag",
        "machine": machine_info(),
        "settings": {
            "drive": drive.name,
            "minutes": args.minutes,
            "rate": args.rate,
            "model": args.model,
            "qos": "reliable (play_bag and node)",
            "sample_s": args.sample,
        },
        "node_exit_code": returncode,
        "logs": str(work),
        "scans_on_wire": on_wire[0],
        "final": final,
        "losses": {
            "rejected": final["rejected"],
            "failed": final["failed"],
            "unaccounted": final["received"] - accounted(final),
            "status_lines_not_adding_up": sum(accounted(c) != c["received"] for c in status),
            "on_wire_not_received_by_node": on_wire[0] - final["received"],
        },
        "loops": final["time_jumps"] // 2,
        "published_fraction": round(final["published"] / max(final["received"], 1), 3),
        "node_rss_mb": {
            "first": rss[0],
            "last": rss[-1],
            "max": max(rss),
            "growth_after_first_minute": (
                round(after_first_minute[-1] - after_first_minute[0], 1)
                if len(after_first_minute) > 1
                else None
            ),
        },
        "samples": samples,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
