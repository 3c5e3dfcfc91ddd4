"""LiDAR -> sparse depth on the real KITTI scan against KITTI's own map, and the rules on synthetic
points: culling, nearest-wins, the occlusion filter, back-projection."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from depth_completion_ros.depth_io import read_kitti_depth
from depth_completion_ros.projection import (
    ProjectionConfig,
    backproject,
    project_points,
    remove_occluded,
)

K = np.array([[500.0, 0.0, 32.0], [0.0, 500.0, 24.0], [0.0, 0.0, 1.0]])
P = np.hstack([K, np.zeros((3, 1))])
W, H = 64, 48
NO_FILTER = ProjectionConfig(occlusion_window=0)


def _match_fraction(a: np.ndarray, b: np.ndarray, radius: int = 1, tol: float = 0.1) -> float:
    """Fraction of a's filled pixels with a filled pixel of b within ``radius`` px and ``tol`` m."""
    ys, xs = np.nonzero(a > 0)
    found = np.zeros(len(ys), bool)
    height, width = a.shape
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            y, x = ys + dy, xs + dx
            inside = (y >= 0) & (y < height) & (x >= 0) & (x < width)
            other = np.zeros(len(ys), np.float32)
            other[inside] = b[y[inside], x[inside]]
            found |= (other > 0) & (np.abs(other - a[ys, xs]) <= tol)
    return float(found.mean())


def test_real_scan_agrees_with_kittis_velodyne_raw(
    kitti_scan: np.ndarray, kitti_calibration, kitti_velodyne_raw_path: Path
) -> None:
    camera = kitti_calibration.camera
    sparse = project_points(
        kitti_scan, kitti_calibration.T_cam_lidar, camera.P, camera.width, camera.height
    )
    kitti = read_kitti_depth(kitti_velodyne_raw_path)
    assert sparse.shape == kitti.shape == (375, 1242) and sparse.dtype == np.float32
    assert 17_000 < (sparse > 0).sum() < 19_200  # 19,168 points land in the image
    kitti_in_ours = _match_fraction(kitti, sparse)
    ours_in_kitti = _match_fraction(sparse, kitti)
    print(f"KITTI pixels matched by ours: {kitti_in_ours:.3f}; ours matched: {ours_in_kitti:.3f}")
    assert kitti_in_ours >= 0.70
    assert ours_in_kitti >= 0.70


def test_points_behind_outside_and_too_far_are_dropped() -> None:
    points = np.array(
        [
            [0.0, 0.0, 10.0],  # centre pixel (32, 24)
            [0.0, 0.0, -10.0],  # behind the camera
            [0.0, 0.0, 0.05],  # closer than min_depth
            [0.0, 0.0, 500.0],  # beyond max_depth
            [10.0, 0.0, 10.0],  # far right of the image
            [0.0, -10.0, 10.0],  # above the image
            [np.nan, 0.0, 10.0],  # invalid
        ],
        np.float32,
    )
    sparse = project_points(points, np.eye(4), P, W, H, NO_FILTER)
    assert np.count_nonzero(sparse) == 1
    assert sparse[24, 32] == pytest.approx(10.0)


def test_pixel_rounding_and_extrinsics() -> None:
    T = np.eye(4)
    T[:3, 3] = (0.0, 0.0, 5.0)  # the LiDAR origin sits 5 m in front of the camera
    u, v, z = 40.0, 10.0, 8.0  # a point that should land on pixel (40, 10) at depth 8 m
    point = np.array([[(u - 32) * z / 500, (v - 24) * z / 500, z - 5.0]], np.float32)
    sparse = project_points(point, T, P, W, H, NO_FILTER)
    assert np.argwhere(sparse > 0).tolist() == [[10, 40]]
    assert sparse[10, 40] == pytest.approx(8.0)


def test_nearest_point_wins_a_pixel() -> None:
    rays = np.array([[0.02, 0.01, 1.0]], np.float32)
    depths = np.array([30.0, 7.0, 12.0, 7.5], np.float32)
    points = rays * depths[:, None]
    for order in (slice(None), slice(None, None, -1)):
        sparse = project_points(points[order], np.eye(4), P, W, H, NO_FILTER)
        assert np.count_nonzero(sparse) == 1
        assert sparse.max() == pytest.approx(7.0)


def test_occlusion_filter_removes_a_point_seen_through_a_near_object() -> None:
    sparse = np.zeros((H, W), np.float32)
    sparse[20, 20:41:2] = 5.0  # a near object, a scan line every 2 px
    sparse[16:25:4, 30] = 5.0  # and above/below
    sparse[20, 31] = 25.0  # the background, visible to the LiDAR between the object's returns
    out = remove_occluded(sparse)
    assert out[20, 31] == 0.0
    np.testing.assert_array_equal(out[sparse == 5.0], 5.0)  # the near object stays
    # without near points on both sides, the far point stays
    one_sided = sparse.copy()
    one_sided[20, 32:41] = 0.0
    one_sided[16:25:4, 30] = 0.0
    assert remove_occluded(one_sided)[20, 31] == 25.0


def test_occlusion_filter_keeps_a_ground_ramp() -> None:
    """Flat ground: depth falls steadily down the image (one row per scan line, dense rows)."""
    height, width, cy, f, camera_height = 375, 200, 180.0, 720.0, 1.65
    sparse = np.zeros((height, width), np.float32)
    for v in range(int(cy) + 11, height):
        sparse[v, ::2] = f * camera_height / (v - cy)  # every row: a dense ramp
    assert sparse.max() < 120.0
    out = remove_occluded(sparse)
    np.testing.assert_array_equal(out, sparse)
    # a KITTI-like ramp: scan lines a few pixels apart, depth 5..60 m
    lines = np.zeros((height, width), np.float32)
    for v in range(200, height, 3):
        lines[v, :] = f * camera_height / (v - cy)
    np.testing.assert_array_equal(remove_occluded(lines), lines)


def test_occlusion_filter_on_the_real_scan_removes_few_points(
    kitti_scan: np.ndarray, kitti_calibration
) -> None:
    camera = kitti_calibration.camera
    args = (kitti_scan, kitti_calibration.T_cam_lidar, camera.P, camera.width, camera.height)
    raw = project_points(*args, NO_FILTER)
    filtered = project_points(*args)
    removed = (raw > 0) & (filtered == 0)
    assert not ((filtered > 0) & (raw == 0)).any()  # the filter only removes
    assert 0 < removed.sum() < 0.05 * (raw > 0).sum()
    np.testing.assert_array_equal(filtered[filtered > 0], raw[filtered > 0])


def test_backproject_inverts_projection(kitti_calibration) -> None:
    camera = kitti_calibration.camera
    rng = np.random.default_rng(3)
    depth = rng.uniform(2.0, 80.0, (camera.height, camera.width)).astype(np.float32)
    depth[rng.random(depth.shape) < 0.3] = 0.0
    depth[0, 0] = np.nan
    xyz = backproject(depth, camera.intrinsics)
    assert xyz.shape == (375, 1242, 3) and xyz.dtype == np.float32
    invalid = ~(depth > 0)
    assert np.isnan(xyz[invalid]).all()
    points = xyz[~invalid]
    sparse = project_points(points, np.eye(4), camera.P, camera.width, camera.height, NO_FILTER)
    np.testing.assert_allclose(sparse, np.where(invalid, 0.0, depth), rtol=1e-6)


def test_empty_scan_gives_empty_map() -> None:
    sparse = project_points(np.zeros((0, 4), np.float32), np.eye(4), P, W, H)
    assert sparse.shape == (H, W) and not sparse.any()


def _remove_occluded_by_definition(sparse: np.ndarray, config: ProjectionConfig) -> np.ndarray:
    """The filter written out pixel by pixel: per side, the nearest point in a 3-pixel band."""
    reach, out = config.occlusion_window, sparse.copy()
    height, width = sparse.shape
    far = np.where(sparse > 0, sparse, np.inf)
    for y, x in zip(*np.nonzero(sparse > 0), strict=True):
        rows = slice(max(y - 1, 0), y + 2)
        cols = slice(max(x - 1, 0), x + 2)
        bands = {
            "left": far[rows, max(x - reach, 0) : x],
            "right": far[rows, x + 1 : x + reach + 1],
            "up": far[max(y - reach, 0) : y, cols],
            "down": far[y + 1 : y + reach + 1, cols],
        }
        limit = {
            side: (band.min() if band.size else np.inf) * (1 + config.occlusion_relative)
            + config.occlusion_absolute
            for side, band in bands.items()
        }
        d = sparse[y, x]
        if (d > limit["left"] and d > limit["right"]) or (d > limit["up"] and d > limit["down"]):
            out[y, x] = 0.0
    return out


@pytest.mark.parametrize("window", [1, 3, 12])
def test_occlusion_filter_matches_its_definition(window: int) -> None:
    rng = np.random.default_rng(window)
    sparse = rng.uniform(1.0, 60.0, (40, 70)).astype(np.float32)
    sparse[rng.random(sparse.shape) < 0.8] = 0.0
    config = ProjectionConfig(occlusion_window=window)
    expected = _remove_occluded_by_definition(sparse, config)
    assert (expected != sparse).any()  # the example does exercise the filter
    np.testing.assert_array_equal(remove_occluded(sparse, config), expected)


def test_in_place_occlusion_filter_equals_the_copying_one(kitti_scan, kitti_calibration) -> None:
    """project_points filters its own array in place; the result must equal a filtered copy."""
    from depth_completion_ros.projection import ProjectionConfig, project_points, remove_occluded

    camera = kitti_calibration.camera
    raw = project_points(
        kitti_scan,
        kitti_calibration.T_cam_lidar,
        camera.P,
        camera.width,
        camera.height,
        ProjectionConfig(occlusion_window=0),
    )
    filtered = project_points(
        kitti_scan, kitti_calibration.T_cam_lidar, camera.P, camera.width, camera.height
    )
    copy = remove_occluded(raw)
    assert (raw > 0).sum() > (filtered > 0).sum()  # the filter removed something; raw untouched
    np.testing.assert_array_equal(filtered, copy)


def _backproject_reference(depth: np.ndarray, K: np.ndarray) -> np.ndarray:
    """Back-projection the plain way: a z image with NaN holes, then x and y from it (in float64,
    as K's entries make it, rounded to float32 once)."""
    height, width = depth.shape
    z = np.where(depth > 0, depth, np.nan).astype(np.float32)
    xs = ((np.arange(width, dtype=np.float32) - K[0, 2]) / K[0, 0])[None, :]
    ys = ((np.arange(height, dtype=np.float32) - K[1, 2]) / K[1, 1])[:, None]
    return np.stack([z * xs, z * ys, z], axis=-1).astype(np.float32)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_backproject_bits_match_the_plain_computation(kitti_calibration, dtype) -> None:
    camera = kitti_calibration.camera
    rng = np.random.default_rng(5)
    depth = rng.uniform(0.5, 90.0, (camera.height, camera.width)).astype(dtype)
    depth[rng.random(depth.shape) < 0.2] = 0.0
    depth[rng.random(depth.shape) < 0.05] = np.nan
    depth[rng.random(depth.shape) < 0.05] = -1.0  # negative: no point either
    depth[0, :3] = (1e-300 if dtype == np.float64 else 1e-30, np.inf, -0.0)
    got = backproject(depth, camera.intrinsics)
    expected = _backproject_reference(depth, camera.intrinsics)
    assert got.dtype == np.float32 and got.shape == (camera.height, camera.width, 3)
    np.testing.assert_array_equal(got.view(np.uint32), expected.view(np.uint32))


def test_deskew_without_motion_changes_nothing(kitti_scan) -> None:
    from depth_completion_ros.projection import deskew

    out = deskew(kitti_scan, (0.0, 0.0, 0.0))
    np.testing.assert_array_equal(out, kitti_scan)
    assert out.dtype == np.float32 and not np.shares_memory(out, kitti_scan)


def test_deskew_restores_a_wall_seen_while_moving() -> None:
    """A wall 10 m ahead, scanned clockwise while driving at 15 m/s and turning: each point is
    seen from where the sensor was at its moment; deskew brings them back onto the wall."""
    from depth_completion_ros.projection import deskew

    period, velocity, yaw_rate = 0.1, np.array([15.0, 0.5, 0.0]), 0.3
    azimuth = np.radians(np.linspace(-40.0, 40.0, 81))
    wall = np.stack(
        [np.full_like(azimuth, 10.0), 10.0 * np.tan(azimuth), np.zeros_like(azimuth)], 1
    )
    seconds = -azimuth / (2 * np.pi) * period  # clockwise: the left side (+y) is seen first
    angle = -yaw_rate * seconds  # the sensor's frame at that moment, seen from the reference
    shifted = wall - velocity * seconds[:, None]
    seen = np.stack(
        [
            np.cos(angle) * shifted[:, 0] - np.sin(angle) * shifted[:, 1],
            np.sin(angle) * shifted[:, 0] + np.cos(angle) * shifted[:, 1],
            shifted[:, 2],
        ],
        1,
    )
    assert np.abs(seen[:, 0] - 10.0).max() > 0.1  # the skew is there
    restored = deskew(seen, velocity, yaw_rate, period)
    np.testing.assert_allclose(restored[:, 0], 10.0, atol=0.01)
    np.testing.assert_allclose(restored[:, 1], wall[:, 1], atol=0.01)


def test_deskewed_scan_matches_kittis_map_and_fills_better(
    kitti_scan,
    kitti_calibration,
    kitti_drive_dir: Path,
    kitti_calib_dir: Path,
    kitti_velodyne_raw_path: Path,
    kitti_groundtruth_path: Path,
    kitti_image_path: Path,
) -> None:
    """KITTI's own sparse map is motion-corrected: with the frame's odometry (12.9 m/s), our
    projection lands on the same pixels with the same depth, and the fill's error drops."""
    from depth_completion_ros.backends.classical import ClassicalBackend
    from depth_completion_ros.depth_io import read_rgb
    from depth_completion_ros.kitti import oxts_motion, read_velo_imu
    from depth_completion_ros.metrics import kitti_metrics
    from depth_completion_ros.pipeline import DepthPipeline

    camera, T = kitti_calibration.camera, kitti_calibration.T_cam_lidar
    pipeline = DepthPipeline(ClassicalBackend())
    kitti = read_kitti_depth(kitti_velodyne_raw_path)
    gt = read_kitti_depth(kitti_groundtruth_path)
    rgb = read_rgb(kitti_image_path)
    motion = oxts_motion(
        kitti_drive_dir / "oxts" / "data" / "0000000005.txt", read_velo_imu(kitti_calib_dir)
    )
    scores = {}
    for name, given in (("still", None), ("deskewed", motion)):
        sparse = pipeline.sparse_depth(kitti_scan, camera, T, given)
        same = (sparse > 0) & (kitti > 0) & (np.abs(sparse - kitti) < 0.05)
        dense = pipeline.backend.complete(rgb, sparse, camera.intrinsics)
        scores[name] = (same.sum() / (kitti > 0).sum(), kitti_metrics(dense, gt)["mae_mm"])
    print(f"same pixel and depth as KITTI's map, MAE of the fill: {scores}")
    assert scores["still"][0] < 0.3 and scores["deskewed"][0] > 0.8
    assert scores["deskewed"][1] <= 270.0 < scores["still"][1]
