"""TransformBuffer (the node's and process_bag's TF) and the one extrinsics rule, without ROS."""

from __future__ import annotations

from types import SimpleNamespace as NS

import numpy as np
import pytest

from depth_completion_ros.calibration import CalibrationError, quaternion_to_matrix
from depth_completion_ros.transforms import (
    TransformBuffer,
    matrix_to_quaternion,
    pair_extrinsics,
    stamp_to_ns,
)

SEC = 1_000_000_000


def yaw(angle: float, t=(0.0, 0.0, 0.0)) -> np.ndarray:
    T = np.eye(4)
    c, s = np.cos(angle), np.sin(angle)
    T[:2, :2] = [[c, -s], [s, c]]
    T[:3, 3] = t
    return T


def tf_message(parent: str, child: str, T: np.ndarray, stamp_ns: int):
    """A TFMessage as rclpy and rosbags present it (attributes only)."""
    x, y, z, w = matrix_to_quaternion(T[:3, :3])
    stamp = NS(sec=stamp_ns // SEC, nanosec=stamp_ns % SEC)
    item = NS(
        header=NS(stamp=stamp, frame_id=parent),
        child_frame_id=child,
        transform=NS(
            translation=NS(x=T[0, 3], y=T[1, 3], z=T[2, 3]), rotation=NS(x=x, y=y, z=z, w=w)
        ),
    )
    return NS(transforms=[item])


def test_static_tree_lookup_through_common_ancestor():
    buffer = TransformBuffer()
    A, B = yaw(0.3, (1, 2, 3)), yaw(-1.1, (0.5, 0, -2))
    buffer.add_message(tf_message("base_link", "velodyne", A, 0), static=True)
    buffer.add_message(tf_message("base_link", "camera", B, 0), static=True)
    T = buffer.lookup("camera", "velodyne", NS(sec=5, nanosec=0))
    np.testing.assert_allclose(T, np.linalg.inv(B) @ A, atol=1e-12)
    assert buffer.lookup("camera", "elsewhere") is None
    assert "base_link -> camera (static)" in buffer.describe()


def test_dynamic_edge_is_interpolated_at_the_stamp():
    buffer = TransformBuffer(tolerance=0.05)
    buffer.add_message(tf_message("odom", "base", yaw(0.0, (0, 0, 0)), 10 * SEC), static=False)
    buffer.add_message(tf_message("odom", "base", yaw(0.4, (2, 0, 0)), 11 * SEC), static=False)
    T = buffer.lookup("odom", "base", 10 * SEC + SEC // 4)
    np.testing.assert_allclose(T, yaw(0.1, (0.5, 0, 0)), atol=1e-9)  # slerp + linear
    np.testing.assert_allclose(buffer.lookup("odom", "base"), yaw(0.4, (2, 0, 0)), atol=1e-9)
    # within the tolerance outside the samples: the nearest one
    np.testing.assert_allclose(buffer.lookup("odom", "base", 11.04), yaw(0.4, (2, 0, 0)), atol=1e-9)
    with pytest.raises(CalibrationError, match="newest sample is 0.200 s older"):
        buffer.lookup("odom", "base", 11.2)
    with pytest.raises(CalibrationError, match="before its oldest sample"):
        buffer.lookup("odom", "base", 9.5)


def test_dynamic_edges_above_the_common_ancestor_are_not_needed():
    """A stale world -> base_link does not stop base_link's children being related."""
    buffer = TransformBuffer()
    buffer.add_message(tf_message("world", "base_link", yaw(1.0), 1 * SEC), static=False)
    buffer.add_message(tf_message("base_link", "velodyne", yaw(0.2), 0), static=True)
    buffer.add_message(tf_message("base_link", "cam", yaw(-0.2), 0), static=True)
    T = buffer.lookup("cam", "velodyne", 100 * SEC)
    np.testing.assert_allclose(T, yaw(0.4), atol=1e-12)


def test_history_is_bounded_and_restarts_when_time_goes_back():
    buffer = TransformBuffer(cache_time=1.0)
    for i in range(50):
        buffer.set_transform("a", "b", i * SEC // 10, (i, 0, 0), (0, 0, 0, 1), static=False)
    assert len(buffer.edges["b"].stamps) == 11  # the last second
    buffer.set_transform("a", "b", 0, (7, 0, 0), (0, 0, 0, 1), static=False)  # bag looped
    assert buffer.edges["b"].stamps == [0]
    np.testing.assert_allclose(buffer.lookup("a", "b")[:3, 3], (7, 0, 0))


def test_bad_transforms_are_refused_and_counted():
    buffer = TransformBuffer()
    assert not buffer.set_transform("", "b", 0, (0, 0, 0), (0, 0, 0, 1), static=True)
    assert not buffer.set_transform("a", "a", 0, (0, 0, 0), (0, 0, 0, 1), static=True)
    assert not buffer.set_transform("a", "b", 0, (np.nan, 0, 0), (0, 0, 0, 1), static=True)
    assert not buffer.set_transform("a", "b", 0, (0, 0, 0), (0, 0, 0, 0), static=True)
    assert buffer.rejected == 4 and len(buffer) == 0
    assert "refused" in buffer.describe()


def test_stamps_and_quaternions():
    assert stamp_to_ns(None) is None and stamp_to_ns(NS(sec=0, nanosec=0)) is None
    assert stamp_to_ns(NS(sec=3, nanosec=5)) == 3 * SEC + 5
    assert stamp_to_ns(1.5) == 3 * SEC // 2
    rng = np.random.default_rng(0)
    for _ in range(20):
        q = rng.normal(size=4)
        q /= np.linalg.norm(q)
        R = quaternion_to_matrix(*q)
        np.testing.assert_allclose(quaternion_to_matrix(*matrix_to_quaternion(R)), R, atol=1e-12)


def test_pair_extrinsics_refuses_an_empty_frame_id_unless_told():
    buffer = TransformBuffer()
    with pytest.raises(CalibrationError, match="frame_id is empty.*cloud_in_camera_frame"):
        pair_extrinsics(None, buffer, "", "cam", "fix it")
    np.testing.assert_array_equal(
        pair_extrinsics(None, buffer, "", "cam", "fix", cloud_in_camera_frame=True), np.eye(4)
    )
    fixed = yaw(0.5)
    assert pair_extrinsics(fixed, buffer, "", "cam", "fix") is fixed  # fixed extrinsics win
    with pytest.raises(CalibrationError, match="does not connect them .no transform received"):
        pair_extrinsics(None, buffer, "velodyne", "cam", "fix it")
