"""KITTI calibration loading and extrinsics from parameters, on the real KITTI files."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from depth_completion_ros.calibration import (
    CalibrationError,
    PinholeCamera,
    extrinsics_from_values,
    load_kitti_calibration,
    parse_kitti_calib_file,
    quaternion_to_matrix,
)


def _read_kitti_file(path: Path) -> dict[str, np.ndarray]:
    """An independent reader for KITTI's ``key: numbers`` files (not the package's parser)."""
    out = {}
    for line in path.read_text().splitlines():
        key, value = line.split(":", 1)
        if key != "calib_time":
            out[key] = np.array(value.split(), dtype=np.float64)
    return out


@pytest.mark.parametrize("camera_index", [2, 3])
def test_kitti_projection_reproduces_kittis_formula(
    kitti_calib_dir: Path, kitti_scan: np.ndarray, camera_index: int
) -> None:
    cam = _read_kitti_file(kitti_calib_dir / "calib_cam_to_cam.txt")
    velo = _read_kitti_file(kitti_calib_dir / "calib_velo_to_cam.txt")
    P_rect = cam[f"P_rect_0{camera_index}"].reshape(3, 4)
    R_rect = np.eye(4)
    R_rect[:3, :3] = cam["R_rect_00"].reshape(3, 3)
    Tr = np.eye(4)
    Tr[:3, :3] = velo["R"].reshape(3, 3)
    Tr[:3, 3] = velo["T"]
    X = np.hstack([kitti_scan[:, :3].astype(np.float64), np.ones((len(kitti_scan), 1))]).T
    kitti = P_rect @ R_rect @ Tr @ X

    calib = load_kitti_calibration(kitti_calib_dir, camera_index)
    K = calib.camera.P[:, :3]
    np.testing.assert_array_equal(calib.camera.P[:, 3], 0.0)  # [K | 0]: a ROS monocular P
    np.testing.assert_array_equal(K, P_rect[:, :3])
    ours = calib.camera.P @ calib.T_cam_lidar @ X
    np.testing.assert_allclose(ours, kitti, rtol=1e-12, atol=1e-9)
    front = kitti[2] > 1.0
    uv_kitti = kitti[:2, front] / kitti[2, front]
    uv_ours = ours[:2, front] / ours[2, front]
    assert np.abs(uv_ours - uv_kitti).max() < 1e-9  # pixels agree to far below a pixel
    assert (calib.camera.width, calib.camera.height) == (1242, 375)
    assert calib.camera_index == camera_index
    R = calib.T_cam_lidar[:3, :3]
    np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-5)


def test_parse_skips_calib_time_and_reads_numbers(kitti_calib_dir: Path) -> None:
    values = parse_kitti_calib_file(kitti_calib_dir / "calib_velo_to_cam.txt")
    assert "calib_time" not in values
    assert values["T"].tolist() == [-4.069766e-03, -7.631618e-02, -2.717806e-01]
    assert values["R"].shape == (9,)


# --- malformed input ------------------------------------------------------------------------


@pytest.fixture
def calib_copy(kitti_calib_dir: Path, tmp_path: Path) -> Path:
    """A writable copy of the two calibration files."""
    for name in ("calib_cam_to_cam.txt", "calib_velo_to_cam.txt"):
        shutil.copy(kitti_calib_dir / name, tmp_path / name)
    return tmp_path


def test_copy_loads(calib_copy: Path) -> None:
    assert load_kitti_calibration(calib_copy).camera.width == 1242


def test_missing_folder_and_file(calib_copy: Path) -> None:
    with pytest.raises(CalibrationError, match="folder not found"):
        load_kitti_calibration(calib_copy / "nope")
    (calib_copy / "calib_velo_to_cam.txt").unlink()
    with pytest.raises(CalibrationError, match="calib_velo_to_cam.txt"):
        load_kitti_calibration(calib_copy)


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


def test_garbage_line_names_file_and_line(calib_copy: Path) -> None:
    path = calib_copy / "calib_velo_to_cam.txt"
    _edit(path, "delta_f:", "this is not a calibration line\ndelta_f:")
    with pytest.raises(CalibrationError, match=r"calib_velo_to_cam\.txt:4"):
        load_kitti_calibration(calib_copy)


def test_non_numeric_value_names_key(calib_copy: Path) -> None:
    _edit(calib_copy / "calib_cam_to_cam.txt", "R_rect_00: 9.999239e-01", "R_rect_00: 9.99x")
    with pytest.raises(CalibrationError, match="R_rect_00"):
        load_kitti_calibration(calib_copy)


def test_missing_key_names_file_and_key(calib_copy: Path) -> None:
    path = calib_copy / "calib_cam_to_cam.txt"
    lines = [ln for ln in path.read_text().splitlines() if not ln.startswith("P_rect_02")]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(CalibrationError, match=r"calib_cam_to_cam\.txt.*P_rect_02"):
        load_kitti_calibration(calib_copy, 2)
    assert load_kitti_calibration(calib_copy, 3).camera_index == 3  # other cameras still load


def test_wrong_value_count_names_key(calib_copy: Path) -> None:
    _edit(calib_copy / "calib_velo_to_cam.txt", "T: -4.069766e-03 ", "T: ")
    with pytest.raises(CalibrationError, match=r"'T' has 2 values, expected 3"):
        load_kitti_calibration(calib_copy)


# --- extrinsics from parameters -------------------------------------------------------------


def _rotation_z(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def test_extrinsics_from_16_12_and_7_values_agree() -> None:
    T = np.eye(4)
    T[:3, :3] = _rotation_z(0.3)
    T[:3, 3] = (0.5, -1.0, 2.0)
    np.testing.assert_array_equal(extrinsics_from_values(T.ravel()), T)
    np.testing.assert_array_equal(extrinsics_from_values(T[:3].ravel().tolist()), T)
    quaternion = [0.0, 0.0, math.sin(0.15), math.cos(0.15)]  # x y z w: 0.3 rad about z
    np.testing.assert_allclose(extrinsics_from_values([0.5, -1.0, 2.0, *quaternion]), T, atol=1e-12)


def test_quaternion_order_is_x_y_z_w() -> None:
    half = math.sqrt(0.5)
    R = quaternion_to_matrix(half, 0.0, 0.0, half)  # 90 degrees about x: y -> z
    np.testing.assert_allclose(R @ [0, 1, 0], [0, 0, 1], atol=1e-12)
    np.testing.assert_allclose(quaternion_to_matrix(0, 0, 0, 2.0), np.eye(3))  # normalised


@pytest.mark.parametrize(
    "values, match",
    [
        ([1.0] * 5, "got 5"),
        ([0.0] * 13, "got 13"),
        ([0, 0, 0, 0, 0, 0, 0], "norm"),
        ([0, 0, 0, float("nan"), 0, 0, 1], "NaN"),
        (np.r_[np.eye(3, 4).ravel()[:11], np.inf], "NaN"),
        ((2 * np.eye(4)).ravel(), "row 0 0 0 1"),
        (np.hstack([2 * np.eye(3), np.zeros((3, 1))]).ravel(), "rotation"),
        (np.hstack([np.diag([1.0, 1.0, -1.0]), np.zeros((3, 1))]).ravel(), "rotation"),
        (np.hstack([np.ones((3, 3)), np.zeros((3, 1))]).ravel(), "rotation"),
    ],
)
def test_bad_extrinsics_raise(values, match: str) -> None:
    with pytest.raises(CalibrationError, match=match):
        extrinsics_from_values(values)


def test_pinhole_camera_rejects_uncalibrated() -> None:
    with pytest.raises(CalibrationError, match="focal"):
        PinholeCamera(640, 480, np.zeros((3, 4)))
    with pytest.raises(CalibrationError, match="size"):
        PinholeCamera(0, 480, np.eye(3, 4))
    camera = PinholeCamera(640, 480, [[500, 0, 320, 0], [0, 505, 240, 0], [0, 0, 1, 0]])
    np.testing.assert_array_equal(camera.intrinsics, [[500, 0, 320], [0, 505, 240], [0, 0, 1]])


def test_tf_transform_message_to_matrix() -> None:
    """The node's TF path turns geometry_msgs/Transform into the 4x4 it projects with."""
    from geometry_msgs.msg import Transform

    from depth_completion_ros.node import transform_to_matrix

    msg = Transform()
    msg.translation.x, msg.translation.y, msg.translation.z = 0.1, -0.2, 0.3
    half = np.sqrt(0.5)
    msg.rotation.x, msg.rotation.y, msg.rotation.z, msg.rotation.w = (
        0.0,
        0.0,
        half,
        half,
    )  # 90 deg z
    T = transform_to_matrix(msg)
    np.testing.assert_allclose(T @ [1.0, 0.0, 0.0, 1.0], [0.1, 0.8, 0.3, 1.0], atol=1e-12)
