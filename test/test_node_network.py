"""The node with a network backend, end to end over DDS on a real KITTI frame.

Random weights saved by the test (there are no released weights here): this checks the plumbing
(checkpoint loading in the node process, crop, intrinsics, output size and stamps), not accuracy.
"""

from __future__ import annotations

import numpy as np
import torch
from ros_graph import node_graph

from depth_completion_ros.kitti import KittiDrive
from depth_completion_ros.messages import image_to_depth, stamp_to_nanoseconds
from depth_completion_ros.networks.registry import build_model
from depth_completion_ros.tools.graph import SensorFrame, frame_messages


def test_selfdc_r18_backend_over_dds(kitti_raw_seq, ros_domain_id, tmp_path):
    torch.manual_seed(0)
    checkpoint = tmp_path / "selfdc_r18_random.pth"
    torch.save({"net": build_model("selfdc_r18").state_dict(), "epoch": 0}, checkpoint)
    drive = KittiDrive(kitti_raw_seq / "2011_09_26_drive_0000_sync")
    frames = [
        SensorFrame(5_000.0 + f.stamp, f.rgb, f.points, drive.calibration.camera)
        for f in (drive.frame(i) for i in drive.frame_ids[:2])
    ]
    parameters = {
        "calibration_dir": str(drive.calibration_dir),
        "model": "selfdc_r18",
        "checkpoint": str(checkpoint),
        "device": "cpu",
        "input_reliability": "reliable",
    }
    with node_graph(parameters, ros_domain_id, tmp_path) as graph:
        result = graph.player.play(frames, graph.executor, timeout=60.0)
        log = graph.log()
    assert "selfdc_r18" in log  # the start-up line names the network backend
    height, width = drive.calibration.camera.height, drive.calibration.camera.width
    for frame in frames:
        key = stamp_to_nanoseconds(frame_messages(frame)[0].header.stamp)
        msg = result.outputs.get(key, {}).get("depth/image")
        assert msg is not None, log
        assert (msg.width, msg.height, msg.encoding) == (width, height, "32FC1")
        depth = image_to_depth(msg)
        # KITTI crop: the bottom 352 rows x centred 1216 columns carry estimates, the rest NaN
        crop = depth[height - 352 :, (width - 1216) // 2 : (width - 1216) // 2 + 1216]
        assert np.isfinite(crop).mean() > 0.5
        assert np.isnan(depth[: height - 352]).all()


def test_network_without_checkpoint_refuses_to_start(tmp_path, ros_domain_id):
    """Random weights would publish garbage: no checkpoint, no start, and the message says why."""
    import subprocess
    import sys

    from depth_completion_ros.tools.graph import ros_environment

    result = subprocess.run(
        [sys.executable, "-m", "depth_completion_ros.node", "--ros-args", "-p", "model:=selfdc"],
        env=ros_environment(ros_domain_id),
        capture_output=True,
        text=True,
        timeout=60,
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "checkpoint" in output and "random" in output.lower(), output


def test_slow_backend_drops_old_pairs_instead_of_queueing(
    kitti_raw_seq, ros_domain_id, tmp_path, r18_weights
):
    """Input faster than completion: only the newest pair is worked on; the rest are counted."""
    import re

    checkpoint = r18_weights
    drive = KittiDrive(kitti_raw_seq / "2011_09_26_drive_0000_sync")
    base = drive.frame(drive.frame_ids[0])
    frames = [
        SensorFrame(6_000.0 + 0.1 * i, base.rgb, base.points, drive.calibration.camera)
        for i in range(10)
    ]
    parameters = {
        "calibration_dir": str(drive.calibration_dir),
        "model": "selfdc_r18",
        "checkpoint": str(checkpoint),
        "device": "cpu",
        "input_reliability": "reliable",
        "input_depth": 20,
    }
    with node_graph(parameters, ros_domain_id, tmp_path) as graph:
        for frame in frames:  # ~0.8 s of work each on CPU, published without waiting
            graph.player.publish_frame(frame)
            graph.spin_for(0.02)
        # the last pair is always completed: it is never replaced
        last = stamp_to_nanoseconds(frame_messages(frames[-1])[0].header.stamp)
        deadline = 30.0
        while deadline > 0 and "depth/image" not in graph.player.result.outputs.get(last, {}):
            graph.spin_for(0.2)
            deadline -= 0.2
    log = graph.log()
    match = re.search(r"stopping: pairs processed (\d+), dropped while busy (\d+)", log)
    assert match, log
    processed, dropped = int(match.group(1)), int(match.group(2))
    assert dropped >= 3 and processed + dropped == len(frames), log
    assert "depth/image" in graph.player.result.outputs.get(last, {}), log
