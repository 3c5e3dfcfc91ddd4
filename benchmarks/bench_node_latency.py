"""Node latency over DDS between two processes, on the real KITTI sequence; prints JSON.

Two figures: the node's own (scan + image received -> outputs published, from its shutdown
summary) and the round trip seen by the publisher (publish -> dense depth received).

    .venv/bin/python benchmarks/bench_node_latency.py [--model classical] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import tempfile
from pathlib import Path

import numpy as np
import rclpy
from rclpy.executors import SingleThreadedExecutor

from depth_completion_ros.kitti import KittiDrive
from depth_completion_ros.tools.graph import (
    FramePlayer,
    SensorFrame,
    start_node_process,
    stop_process,
    use_ros_environment,
)

DEFAULT_DRIVE = (
    Path(__file__).resolve().parents[1].parent
    / "shared/data/kitti_raw_seq/2011_09_26/2011_09_26_drive_0000_sync"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--drive", default=str(DEFAULT_DRIVE))
    parser.add_argument("--model", default="classical")
    parser.add_argument("--checkpoint", default="")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeats", type=int, default=3, help="passes over the sequence")
    parser.add_argument("--period", type=float, default=0.1, help="s between frames (10 Hz)")
    parser.add_argument("--domain-id", type=int, default=88)
    args = parser.parse_args()

    drive = KittiDrive(args.drive)
    base = [drive.frame(i) for i in drive.frame_ids]
    frames = [
        SensorFrame(10_000.0 + 10.0 * r + f.stamp, f.rgb, f.points, drive.calibration.camera)
        for r in range(args.repeats)
        for f in base
    ]
    parameters = {
        "calibration_dir": str(drive.calibration_dir),
        "model": args.model,
        "checkpoint": args.checkpoint,
        "device": args.device,
        "input_reliability": "reliable",  # measure latency, not best-effort losses
    }
    use_ros_environment(args.domain_id)
    log_path = Path(tempfile.mkdtemp()) / "node.log"
    process = start_node_process(parameters, args.domain_id, log_path)
    rclpy.init()
    player = FramePlayer()
    executor = SingleThreadedExecutor()
    executor.add_node(player)
    try:
        if not player.wait_for_node(executor, 60.0):
            raise SystemExit(f"node did not start: {log_path.read_text()}")
        result = player.play(frames, executor, timeout=60.0, period=args.period)
    finally:
        executor.shutdown()
        player.destroy_node()
        rclpy.try_shutdown()
        stop_process(process)
    log = log_path.read_text()
    match = re.search(r"stopping: .*latency p50 ([\d.]+) ms, p95 ([\d.]+) ms", log)
    round_trip = result.latencies() * 1000.0
    print(
        json.dumps(
            {
                "benchmark": "node_latency_over_dds",
                "machine": {
                    "cpus": os.cpu_count(),
                    "processor": platform.processor() or platform.machine(),
                    "python": platform.python_version(),
                },
                "settings": {
                    "model": args.model,
                    "device": args.device,
                    "frames": len(frames),
                    "image": f"{drive.calibration.camera.width}x{drive.calibration.camera.height}",
                    "period_s": args.period,
                    "transport": "config/fastdds_large_data.xml (shared memory)",
                },
                "frames_out": len(result.depth_at),
                "node_latency_ms": {
                    "p50": float(match.group(1)) if match else None,
                    "p95": float(match.group(2)) if match else None,
                    "definition": "scan+image received by the node -> all outputs published",
                    "target_p50": 60.0 if args.model == "classical" else None,
                },
                "round_trip_ms": {
                    "p50": float(np.percentile(round_trip, 50)),
                    "p95": float(np.percentile(round_trip, 95)),
                    "definition": "player publishes image+cloud -> receives dense depth",
                },
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
