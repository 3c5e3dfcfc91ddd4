"""The smoke runs of both methods end to end on the real frames (training.smoke): data jobs,
training, export, and the node's own path on the trained weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from training.smoke import main

pytestmark = pytest.mark.slow


def _falls(losses: list[float]) -> bool:
    k = max(1, len(losses) // 3)
    return sum(losses[-k:]) / k < sum(losses[:k]) / k


def test_dmd3c_smoke_trains_both_stages_and_the_node_runs_the_weights(
    data_root: Path, kitti_raw_seq: Path, ros_domain_id: int, tmp_path
):
    assert main(["dmd3c", "--out", str(tmp_path), "--data", str(data_root)]) == 0
    summary = json.loads((tmp_path / "dmd3c" / "summary.json").read_text())
    assert len(summary["stage1_losses"]) == 8 and _falls(summary["stage1_losses"])
    assert len(summary["stage2_losses"]) == 8 and _falls(summary["stage2_losses"])
    node = summary["node"]
    assert "bpnet" in node["backend"] and "run_stage2" in node["backend"]
    assert node["valid_fraction"] > 0.3 and node["median_depth_m"] > 0
    stage1 = tmp_path / "dmd3c" / "stage1"
    assert len(list(stage1.rglob("*.npz"))) == 3
    _node_publishes_depth_with(Path(summary["weights"]), kitti_raw_seq, ros_domain_id, tmp_path)


def _node_publishes_depth_with(weights: Path, kitti_raw_seq: Path, domain: int, tmp_path) -> None:
    """The trained weights in the node process (model:=bpnet), one real frame over DDS."""
    import numpy as np
    from ros_graph import node_graph

    from depth_completion_ros.kitti import KittiDrive
    from depth_completion_ros.messages import image_to_depth, stamp_to_nanoseconds
    from depth_completion_ros.tools.graph import SensorFrame, frame_messages

    drive = KittiDrive(kitti_raw_seq / "2011_09_26_drive_0000_sync")
    f = drive.frame(drive.frame_ids[0])
    frame = SensorFrame(7_000.0 + f.stamp, f.rgb, f.points, drive.calibration.camera)
    parameters = {
        "calibration_dir": str(drive.calibration_dir),
        "model": "bpnet",
        "checkpoint": str(weights),
        "device": "cpu",
        "input_reliability": "reliable",
    }
    with node_graph(parameters, domain, tmp_path) as graph:
        result = graph.player.play([frame], graph.executor, timeout=180.0)
        log = graph.log()
    key = stamp_to_nanoseconds(frame_messages(frame)[0].header.stamp)
    msg = result.outputs.get(key, {}).get("depth/image")
    assert msg is not None, log
    assert "bpnet" in log and str(weights) in log
    assert np.isfinite(image_to_depth(msg)).mean() > 0.3


def test_selfdc_smoke_on_a_real_bag_lowers_the_holdout_error(data_root: Path, tmp_path):
    assert main(["selfdc", "--out", str(tmp_path), "--data", str(data_root)]) == 0
    summary = json.loads((tmp_path / "selfdc" / "summary.json").read_text())
    assert _falls(summary["losses"])
    holdout = summary["holdout_mm"]
    assert holdout["trained"]["holdout_mae_mm"] < holdout["initial_weights"]["holdout_mae_mm"]
    assert holdout["trained"]["pixels"] > 0
