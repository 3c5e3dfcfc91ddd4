"""The classical (IP-Basic style) fill on the real KITTI frame, scored against KITTI's ground truth."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from depth_completion_ros.backends.classical import ClassicalBackend
from depth_completion_ros.depth_io import read_kitti_depth, read_rgb
from depth_completion_ros.metrics import kitti_metrics
from depth_completion_ros.projection import ProjectionConfig, project_points


@pytest.fixture(scope="module")
def frame(kitti_scan, kitti_calibration, kitti_image_path: Path, kitti_groundtruth_path: Path):
    """(rgb, sparse from the node's own projection, K, ground truth)."""
    camera = kitti_calibration.camera
    sparse = project_points(
        kitti_scan,
        kitti_calibration.T_cam_lidar,
        camera.P,
        camera.width,
        camera.height,
        ProjectionConfig(),
    )
    return (
        read_rgb(kitti_image_path),
        sparse,
        camera.intrinsics,
        read_kitti_depth(kitti_groundtruth_path),
    )


@pytest.fixture(scope="module")
def dense(frame) -> np.ndarray:
    rgb, sparse, K, _ = frame
    return ClassicalBackend().complete(rgb, sparse, K)


def test_kitti_metrics_against_ground_truth(frame, dense: np.ndarray) -> None:
    gt = frame[3]
    metrics = kitti_metrics(dense, gt)
    print(
        f"classical fill on KITTI drive 0001 frame 5: RMSE {metrics['rmse_mm']:.1f} mm, "
        f"MAE {metrics['mae_mm']:.1f} mm, iRMSE {metrics['irmse_1_per_km']:.3f}, "
        f"iMAE {metrics['imae_1_per_km']:.3f} 1/km over {metrics['pixels']} pixels"
    )
    assert metrics["rmse_mm"] <= 1200.0
    assert metrics["mae_mm"] <= 330.0
    assert metrics["pixels"] == int((gt > 0).sum())


def test_output_dtype_shape_and_coverage(frame, dense: np.ndarray) -> None:
    rgb, sparse, _, gt = frame
    assert dense.shape == sparse.shape == rgb.shape[:2] and dense.dtype == np.float32
    assert np.isfinite(dense).all() and dense.min() >= 0.0
    assert (dense[gt > 0] > 0).mean() > 0.99  # nearly every ground-truth pixel gets an estimate
    assert dense.max() <= 100.0 + 1e-3


def test_agrees_with_the_lidar_at_lidar_pixels(frame, dense: np.ndarray) -> None:
    sparse = frame[1]
    at_lidar = sparse > 0
    diff = np.abs(dense[at_lidar] - sparse[at_lidar])
    print(f"median |dense - lidar| at LiDAR pixels: {np.median(diff):.4f} m")
    assert np.median(diff) < 0.05


def test_empty_sparse_gives_zeros(frame) -> None:
    rgb, sparse, K, _ = frame
    out = ClassicalBackend().complete(rgb, np.zeros_like(sparse), K)
    assert out.shape == sparse.shape and out.dtype == np.float32 and not out.any()


def test_without_extrapolation_sky_stays_empty(frame) -> None:
    rgb, sparse, K, _ = frame
    out = ClassicalBackend(extrapolate_top=False).complete(rgb, sparse, K)
    assert not out[:20].any()  # above the highest LiDAR return there is no estimate
    assert (out[200:] > 0).mean() > 0.99


def test_filling_only_the_scan_rows_equals_filling_the_whole_image(frame, kitti_frame) -> None:
    """complete() skips the rows the dilations cannot reach; the whole-image fill is the same."""
    rgb, sparse, K, _ = frame
    for depth in (sparse, kitti_frame[1]):
        for extrapolate in (True, False):
            backend = ClassicalBackend(extrapolate_top=extrapolate)
            whole = backend._fill(
                np.asarray(depth, np.float32), 0, depth.shape[0], np.zeros(depth.shape, np.float32)
            )
            assert whole.any()
            np.testing.assert_array_equal(backend.complete(rgb, depth, K), whole)


def test_reused_buffers_do_not_leak_between_frames(frame, kitti_frame) -> None:
    """One backend over different frames (and sizes) gives what fresh backends give, and every
    result is the caller's own array."""
    rgb, sparse, K, _ = frame
    shifted = np.zeros_like(sparse)
    shifted[60:] = sparse[:-60]  # returns higher up: a different band of rows
    small = np.ascontiguousarray(sparse[100:300, 200:900])
    backend = ClassicalBackend()
    results = [backend.complete(rgb, s, K) for s in (sparse, shifted, small, kitti_frame[1])]
    for s, got in zip((sparse, shifted, small, kitti_frame[1]), results, strict=True):
        np.testing.assert_array_equal(got, ClassicalBackend().complete(rgb, s, K))
    assert not np.shares_memory(results[0], results[1])
