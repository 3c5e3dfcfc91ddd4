"""Evaluation: the node's backends over a split, scored with the devkits' definitions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from depth_completion_ros.backends import make_backend
from depth_completion_ros.depth_io import read_kitti_depth, read_rgb
from depth_completion_ros.metrics import holdout_metrics, kitti_metrics
from training.evaluate import main


def test_classical_on_the_real_frame_gives_exactly_the_metrics_modules_numbers(
    kitti_dc_frame: Path,
    kitti_image_path,
    kitti_velodyne_raw_path,
    kitti_groundtruth_path,
    kitti_calibration,
    tmp_path: Path,
    capsys,
):
    out = tmp_path / "eval.json"
    pngs = tmp_path / "png"
    code = main(
        [
            "--model",
            "classical",
            "--data",
            f"kitti:{kitti_dc_frame}",
            "--split",
            "train",
            "--option",
            "cameras=[2]",
            "--json",
            str(out),
            "--save-png",
            str(pngs),
        ]
    )
    assert code == 0
    result = json.loads(out.read_text())

    # The same frame computed here without the training package.
    rgb = read_rgb(kitti_image_path)
    sparse = read_kitti_depth(kitti_velodyne_raw_path)
    gt = read_kitti_depth(kitti_groundtruth_path)
    dense = make_backend("classical").complete(rgb, sparse, kitti_calibration.camera.K)
    expected = kitti_metrics(dense, gt)
    assert result["images"] == 1
    for key in ("rmse_mm", "mae_mm", "irmse_1_per_km", "imae_1_per_km", "pixels"):
        assert result[key] == expected[key], key
    table = capsys.readouterr().out
    assert "RMSE [mm]" in table and f"{expected['rmse_mm']:.2f}" in table

    # Submission PNG: the full-size prediction in KITTI's uint16 format.
    saved = sorted(pngs.glob("*.png"))
    assert len(saved) == 1
    back = read_kitti_depth(saved[0])
    assert back.shape == gt.shape
    np.testing.assert_allclose(back, np.round(dense * 256) / 256, atol=0)


def test_nyu_folder_is_scored_with_nyu_metrics(nyu_frames: Path, tmp_path: Path):
    out = tmp_path / "nyu.json"
    code = main(
        [
            "--model",
            "classical",
            "--data",
            f"nyu:{nyu_frames}",
            "--split",
            "val",
            "--json",
            str(out),
        ]
    )
    assert code == 0
    result = json.loads(out.read_text())
    assert result["images"] >= 2
    assert 0 < result["rmse_m"] < 3.0
    assert 0 <= result["delta3"] <= 1 and result["delta1"] <= result["delta2"] <= result["delta3"]


def test_unknown_dataset_kind_exits_with_a_message(capsys):
    assert main(["--model", "classical", "--data", "kitty:/x", "--split", "val"]) == 2
    assert "kitty" in capsys.readouterr().err


def test_holdout_metrics_by_hand():
    pred = np.array([[1.0, 2.0], [4.0, 0.0]], np.float32)  # one hole, filled as the devkit does
    ref = np.array([[1.5, 0.0], [3.0, 2.0]], np.float32)
    # The hole at (1, 1) takes its left neighbour 4.0 (row fill); errors -0.5, +1.0, +2.0 m.
    m = holdout_metrics(pred, ref)
    assert m["pixels"] == 3
    assert m["holdout_mae_mm"] == pytest.approx(1000 * (0.5 + 1.0 + 2.0) / 3)
    assert m["holdout_rmse_mm"] == pytest.approx(1000 * np.sqrt((0.25 + 1.0 + 4.0) / 3))
