"""KITTI and NYU metrics on small hand-computed examples, and the devkit's hole filling."""

from __future__ import annotations

import math

import numpy as np
import pytest

from depth_completion_ros.metrics import fill_holes_like_kitti, kitti_metrics, nyu_metrics


def test_kitti_metrics_hand_computed_in_mm_and_per_km() -> None:
    gt = np.array([[10.0, 20.0], [0.0, 40.0]], np.float32)  # one pixel without ground truth
    pred = np.array([[11.0, 18.0], [99.0, 40.0]], np.float32)
    m = kitti_metrics(pred, gt)
    inverse = np.array([1 / 11 - 1 / 10, 1 / 18 - 1 / 20, 0.0])
    assert m["pixels"] == 3
    assert m["mae_mm"] == pytest.approx(1000.0)  # (1 + 2 + 0) / 3 m
    assert m["rmse_mm"] == pytest.approx(math.sqrt(5 / 3) * 1000.0)
    assert m["imae_1_per_km"] == pytest.approx(np.abs(inverse).mean() * 1000.0)
    assert m["irmse_1_per_km"] == pytest.approx(math.sqrt((inverse**2).mean()) * 1000.0)


def test_kitti_metrics_perfect_prediction_is_zero() -> None:
    gt = np.full((4, 5), 7.5, np.float32)
    m = kitti_metrics(gt.copy(), gt)
    assert m["rmse_mm"] == 0.0 and m["mae_mm"] == 0.0 and m["irmse_1_per_km"] == 0.0


def test_kitti_metrics_without_ground_truth_raises() -> None:
    with pytest.raises(ValueError, match="no valid pixels"):
        kitti_metrics(np.ones((2, 2)), np.zeros((2, 2)))


def test_hole_filling_follows_the_devkit() -> None:
    """KITTI devkit io_depth.h interpolateBackground: interior gaps take the smaller (nearer) of
    the two bounding depths, row ends extend outwards, then empty rows at the top and bottom take
    the column's first/last filled value."""
    nan = np.nan
    pred = np.array(
        [
            [0.0, 0.0, 0.0, 0.0, 0.0],  # empty top row: copied from the first filled row
            [0.0, 5.0, 0.0, 0.0, 9.0],  # left end extends 5; the gap takes min(5, 9) = 5
            [4.0, nan, 8.0, 0.0, 0.0],  # NaN counts as a hole; right end extends 8
            [0.0, 0.0, 0.0, 0.0, 0.0],  # empty bottom row: copied from the last filled row
        ],
        np.float32,
    )
    expected = np.array(
        [
            [5.0, 5.0, 5.0, 5.0, 9.0],
            [5.0, 5.0, 5.0, 5.0, 9.0],
            [4.0, 4.0, 8.0, 8.0, 8.0],
            [4.0, 4.0, 8.0, 8.0, 8.0],
        ],
        np.float32,
    )
    np.testing.assert_array_equal(fill_holes_like_kitti(pred), expected)


def test_hole_filling_leaves_full_and_empty_predictions_alone() -> None:
    full = np.arange(1, 13, dtype=np.float32).reshape(3, 4)
    np.testing.assert_array_equal(fill_holes_like_kitti(full), full)
    assert not fill_holes_like_kitti(np.zeros((3, 4))).any()


def test_kitti_metrics_score_filled_holes() -> None:
    gt = np.array([[10.0, 10.0, 10.0]], np.float32)
    pred = np.array([[10.0, 0.0, 12.0]], np.float32)  # the hole takes the nearer 10 m
    m = kitti_metrics(pred, gt)
    assert m["mae_mm"] == pytest.approx(2000.0 / 3)


def test_nyu_metrics_hand_computed() -> None:
    gt = np.array([1.0, 2.0, 4.0, 0.0, 12.0], np.float32)  # 0 and > 10 m are not scored
    pred = np.array([1.1, 3.0, 2.0, 5.0, 12.0], np.float32)
    m = nyu_metrics(pred, gt)
    p, g = np.array([1.1, 3.0, 2.0]), np.array([1.0, 2.0, 4.0])
    assert m["pixels"] == 3
    assert m["rmse_m"] == pytest.approx(math.sqrt(np.mean((p - g) ** 2)), rel=1e-6)
    assert m["rel"] == pytest.approx(np.mean(np.abs(p - g) / g), rel=1e-6)
    # ratios 1.1, 1.5, 2.0 against 1.25, 1.5625, 1.953
    assert m["delta1"] == pytest.approx(1 / 3)
    assert m["delta2"] == pytest.approx(2 / 3)
    assert m["delta3"] == pytest.approx(2 / 3)


def test_nyu_metrics_without_ground_truth_raises() -> None:
    with pytest.raises(ValueError):
        nyu_metrics(np.ones(3), np.zeros(3))
