"""fuse_rgbd on the real KITTI sequence: a mesh whose surfaces agree with the LiDAR points."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import open3d as o3d
import pytest

from depth_completion_ros.fusion import PoseTrack
from depth_completion_ros.tools import fuse_rgbd, kitti_to_bag, process_bag


def _processed(tmp_path: Path, drive: Path, calib: Path) -> Path:
    raw, out = tmp_path / "raw", tmp_path / "processed"
    assert kitti_to_bag.main([str(drive), str(raw), "--cameras", "2"]) == 0
    assert (
        process_bag.main([str(raw), str(out), "--calibration-dir", str(calib), "--no-progress"])
        == 0
    )
    return out


def test_icp_fusion_agrees_with_lidar(tmp_path: Path, kitti_raw_seq: Path, capsys) -> None:
    bag = _processed(tmp_path, kitti_raw_seq / "2011_09_26_drive_0000_sync", kitti_raw_seq)
    capsys.readouterr()
    assert fuse_rgbd.main([str(bag), str(tmp_path / "map"), "--evaluate"]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert "fuse_rgbd" in captured.err and "20/20" in captured.err  # the progress bar
    print("fusion summary:", summary)  # the median point-to-mesh distance, for the report
    assert summary["pose_source"] == "LiDAR ICP odometry"  # the sequence has no oxts
    assert summary["frames"] == 20
    mesh = o3d.io.read_triangle_mesh(str(tmp_path / "map" / "mesh.ply"))
    assert len(mesh.triangles) > 10000
    assert (tmp_path / "map" / "cloud.ply").stat().st_size > 0
    assert summary["lidar_points_evaluated"] > 100000
    assert summary["median_point_to_mesh_m"] < 0.15
    # no /tf in this bag: asking for TF poses is a clear error
    assert fuse_rgbd.main([str(bag), str(tmp_path / "tf"), "--poses", "tf"]) == 1
    assert "no /tf" in capsys.readouterr().err
    assert not (tmp_path / "tf" / "mesh.ply").exists()


def test_tf_poses_from_oxts(
    tmp_path: Path, kitti_drive_dir: Path, kitti_calib_dir: Path, capsys
) -> None:
    bag = _processed(tmp_path, kitti_drive_dir, kitti_calib_dir)
    capsys.readouterr()
    assert fuse_rgbd.main([str(bag), str(tmp_path / "map"), "--poses", "tf", "--evaluate"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["pose_source"] == "TF world -> base_link"
    assert summary["median_point_to_mesh_m"] < 0.15


def test_pose_track_interpolates() -> None:
    a, b = np.eye(4), np.eye(4)
    b[:3, 3] = (2.0, 0.0, 0.0)
    b[:3, :3] = [[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]  # 90 degrees about z
    track = PoseTrack([0, 100], [a, b])
    mid = track.at(50)
    np.testing.assert_allclose(mid[:3, 3], (1.0, 0.0, 0.0))
    np.testing.assert_allclose(np.degrees(np.arctan2(mid[1, 0], mid[0, 0])), 45.0)


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--voxel", "-1"], "--voxel must be in (0, 10]"),
        (["--stride", "0"], "--stride must be >= 1"),
        (["--max-depth", "0.2"], "must exceed 4 voxels"),
    ],
)
def test_bad_numbers_are_refused(tmp_path: Path, option: list[str], message: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "depth_completion_ros.tools.fuse_rgbd", "bag", "out", *option],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert not (tmp_path / "out").exists()
