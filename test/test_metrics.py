"""KITTI and NYU metrics on small hand-computed examples, and the devkit's hole filling."""

from __future__ import annotations

import math

import numpy as np
import pytest

from depth_completion_ros.metrics import (
    fill_holes_like_kitti,
    holdout_metrics,
    kitti_metrics,
    nyu_metrics,
)


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


# --- exact values: inputs and results representable in binary, compared with == -------------


def test_kitti_metrics_exact_in_binary() -> None:
    """Errors of +-4 m whose inverse errors are +-0.125 1/m (1/4 - 1/8): RMSE = MAE = 4000 mm and
    iRMSE = iMAE = 125 1/km; then errors 3, -4, 0, 0 m: RMSE sqrt(25 / 4) = 2.5 m, MAE 7 / 4 m.
    Every intermediate is exact in binary, so the results compare with ==."""
    gt = np.array([[8.0, 4.0, 8.0, 4.0]], np.float32)
    pred = np.array([[4.0, 8.0, 4.0, 8.0]], np.float32)  # errors -4, 4, -4, 4 m
    m = kitti_metrics(pred, gt)
    assert m == {
        "rmse_mm": 4000.0,
        "mae_mm": 4000.0,
        "irmse_1_per_km": 125.0,
        "imae_1_per_km": 125.0,
        "pixels": 4,
    }
    gt = np.array([[10.0, 10.0, 10.0, 10.0]], np.float32)
    pred = np.array([[13.0, 6.0, 10.0, 10.0]], np.float32)  # errors 3, -4, 0, 0 m
    m = kitti_metrics(pred, gt)
    assert m["rmse_mm"] == 2500.0 and m["mae_mm"] == 1750.0


def test_kitti_metrics_score_every_ground_truth_pixel_and_only_those() -> None:
    """gt > 0 is scored, gt == 0 is not; the smallest KITTI depth (1/256 m) counts."""
    gt = np.array([[0.0, 1 / 256, 2.0]], np.float32)
    pred = np.array([[100.0, 1 / 256, 2.0]], np.float32)
    m = kitti_metrics(pred, gt)
    assert m["pixels"] == 2 and m["rmse_mm"] == 0.0 and m["irmse_1_per_km"] == 0.0


def test_kitti_hole_left_empty_counts_as_one_millimetre() -> None:
    """An empty row between filled rows stays empty (the devkit leaves it unscored at -1); here
    it is scored as the 1 mm floor, so a prediction with holes cannot score better."""
    gt = np.array([[2.0], [2.0], [2.0]], np.float32)
    pred = np.array([[2.0], [0.0], [2.0]], np.float32)  # one column: the hole is bounded above
    # and below only, and rows are filled per row first: the middle row has no valid pixel
    filled = fill_holes_like_kitti(pred)
    np.testing.assert_array_equal(filled, [[2.0], [0.0], [2.0]])
    m = kitti_metrics(pred, gt)
    assert m["mae_mm"] == pytest.approx((2.0 - 1e-3) / 3 * 1000.0, rel=1e-15)


def test_hole_filling_row_ends_and_single_valid_pixel() -> None:
    """Holes at column 0 and at the last column take the row's outermost values; a row with a
    single valid pixel becomes that value everywhere."""
    pred = np.array([[0.0, 0.0, 3.0, 0.0, 6.0, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0, 7.0]], np.float32)
    np.testing.assert_array_equal(
        fill_holes_like_kitti(pred), [[3, 3, 3, 3, 6, 6], [7, 7, 7, 7, 7, 7]]
    )


def test_nyu_delta_thresholds_are_strict() -> None:
    """delta_i counts max(p/g, g/p) < 1.25^i (strict, as in Eigen et al.). The ratios below are
    exact in binary: 1.25, 1.5625 = 1.25^2, 1.953125 = 1.25^3, both ways round."""
    gt = np.array([1.0, 1.0, 1.0, 1.25, 1.5625, 1.953125, 1.0, 2.0])
    pred = np.array([1.25, 1.5625, 1.953125, 1.0, 1.0, 1.0, 1.0, 2.0])
    m = nyu_metrics(pred, gt)
    assert m["pixels"] == 8
    # ratio 1: delta1..3; 1.25: delta2, 3; 1.5625: delta3; 1.953125: none
    assert m["delta1"] == 2 / 8
    assert m["delta2"] == 4 / 8
    assert m["delta3"] == 6 / 8


def test_nyu_range_ends_and_clipping_are_exact() -> None:
    """gt == max_depth is scored, the next float above is not; predictions are clipped into
    [1 mm, max_depth] before scoring (16 m -> 10 m: error exactly 2 m)."""
    above = np.nextafter(10.0, 11.0)
    gt = np.array([10.0, above, 8.0, 0.5])
    pred = np.array([10.0, 10.0, 16.0, 0.5])
    m = nyu_metrics(pred, gt)
    assert m["pixels"] == 3
    assert m["rmse_m"] == math.sqrt(4.0 / 3.0)  # errors 0, 2, 0
    assert m["rel"] == (2.0 / 8.0) / 3.0
    assert nyu_metrics(np.array([4.0]), np.array([4.0]), max_depth=4.0)["pixels"] == 1
    assert nyu_metrics(np.array([4.0]), np.array([1.0]), max_depth=4.0)["rmse_m"] == 3.0


def test_holdout_metrics_exact_and_hole_filled() -> None:
    """Held-out returns at 4 of 5 pixels, errors 3, -4, 0, 0 m, in mm as for KITTI; the hole at
    a scored pixel (column 3) takes the nearer neighbour, min(10, 10) m, error 0."""
    holdout = np.array([[10.0, 0.0, 14.0, 10.0, 10.0]], np.float32)
    pred = np.array([[13.0, 2.0, 10.0, 0.0, 10.0]], np.float32)
    m = holdout_metrics(pred, holdout)
    assert m["pixels"] == 4
    assert m["holdout_rmse_mm"] == 2500.0  # sqrt((9 + 16 + 0 + 0) / 4) m
    assert m["holdout_mae_mm"] == 1750.0
    with pytest.raises(ValueError, match="no held-out LiDAR pixels"):
        holdout_metrics(pred, np.zeros_like(holdout))
