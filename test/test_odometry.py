"""nav_msgs/Odometry -> the LiDAR's motion: the frame's oxts motion from an Odometry in any frame,
and unusable odometry (missing, stale, unknown frame, NaN) refused with its cause."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from nav_msgs.msg import Odometry

from depth_completion_ros.calibration import load_kitti_calibration
from depth_completion_ros.kitti import oxts_motion, read_oxts, read_velo_imu
from depth_completion_ros.messages import make_header
from depth_completion_ros.odometry import NoMotion, scan_motion

STAMP_NS = 1316995200_500_000_000  # the frame's (synthesised) stamp
BASE, LIDAR, OPTICAL = "base_link", "velodyne", "camera_color_left_optical"


def _odometry(child: str, linear, angular, stamp_ns: int = STAMP_NS) -> Odometry:
    msg = Odometry(header=make_header(stamp_ns, "world"), child_frame_id=child)
    twist = msg.twist.twist
    twist.linear.x, twist.linear.y, twist.linear.z = (float(v) for v in linear)
    twist.angular.x, twist.angular.y, twist.angular.z = (float(v) for v in angular)
    return msg


@pytest.fixture
def frame(kitti_drive_dir: Path, kitti_calib_dir: Path):
    """The frame's oxts packet, its motion (kitti.oxts_motion) and the rotations LiDAR <- frame,
    from the calibration files."""
    oxts = kitti_drive_dir / "oxts" / "data" / "0000000005.txt"
    T_velo_imu = read_velo_imu(kitti_calib_dir)
    R_cam_velo = load_kitti_calibration(kitti_calib_dir, 2).T_cam_lidar[:3, :3]
    rotations = {(BASE, LIDAR): T_velo_imu[:3, :3], (OPTICAL, LIDAR): np.linalg.inv(R_cam_velo)}
    return read_oxts(oxts), oxts_motion(oxts, T_velo_imu), rotations


def test_odometry_in_any_frame_gives_the_oxts_motion(frame) -> None:
    """The same twist published in base_link (as kitti_to_bag does), in the camera's optical
    frame (axes permuted: a wrong rotation or yaw axis shows) or in the LiDAR's own frame gives
    the motion kitti.oxts_motion computes from the oxts file."""
    packet, expected, rotations = frame
    velocity_base, angular_base = packet[8:11], packet[20:23]
    R_velo_base = rotations[(BASE, LIDAR)]
    R_velo_optical = rotations[(OPTICAL, LIDAR)]
    R_optical_base = np.linalg.inv(R_velo_optical) @ R_velo_base
    expressed = {
        BASE: (velocity_base, angular_base),
        OPTICAL: (R_optical_base @ velocity_base, R_optical_base @ angular_base),
        LIDAR: (R_velo_base @ velocity_base, R_velo_base @ angular_base),
    }
    asked = []

    def rotation(child: str, lidar: str):
        asked.append(child)
        return rotations.get((child, lidar))

    for child, (linear, angular) in expressed.items():
        scan = make_header(STAMP_NS + 30_000_000, LIDAR)  # 30 ms after the odometry
        motion = scan_motion(_odometry(child, linear, angular), scan, rotation, "/odom")
        np.testing.assert_allclose(motion.velocity, expected.velocity, atol=1e-9)
        np.testing.assert_allclose(motion.yaw_rate, expected.yaw_rate, atol=1e-12)
    assert asked == [BASE, OPTICAL]  # the LiDAR's own frame needs no transform
    assert abs(expected.velocity[0]) > 12.0 and expected.yaw_rate < -0.02  # 12.9 m/s, turning


@pytest.mark.parametrize(
    ("case", "cause", "words"),
    [
        ("missing", "none", "no odometry received on /odom"),
        ("stale", "stale", "-0.600 s from the scan's stamp"),
        ("future", "stale", "+0.700 s"),
        ("frame", "frame", "in frame 'imu', the cloud in 'velodyne'"),
        ("nan", "nan", "non-finite"),
    ],
)
def test_unusable_odometry_is_refused_with_its_cause(case: str, cause: str, words: str) -> None:
    odometry = {
        "missing": None,
        "stale": _odometry(LIDAR, (10, 0, 0), (0, 0, 0.1), STAMP_NS + 600_000_000),
        "future": _odometry(LIDAR, (10, 0, 0), (0, 0, 0.1), STAMP_NS - 700_000_000),
        "frame": _odometry("imu", (10, 0, 0), (0, 0, 0.1)),
        "nan": _odometry(LIDAR, (np.nan, 0, 0), (0, 0, 0.1)),
    }[case]
    scan = make_header(STAMP_NS, LIDAR)
    with pytest.raises(NoMotion) as error:
        scan_motion(odometry, scan, lambda child, lidar: None, "/odom")
    assert error.value.cause == cause and words in str(error.value), str(error.value)
    # 0.45 s apart is still the sweep's odometry
    fresh = _odometry(LIDAR, (10, 0, 0), (0, 0, 0.1), STAMP_NS - 450_000_000)
    motion = scan_motion(fresh, scan, lambda child, lidar: None, "/odom")
    assert motion.velocity == (10.0, 0.0, 0.0) and motion.yaw_rate == pytest.approx(0.1)
