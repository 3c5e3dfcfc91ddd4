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
    # KITTI prints R and R_rect_00 to 7 significant digits, so R R^T is I only to ~1e-7:
    # measured 4.6e-8 (largest element of R R^T - I on 2011_09_26), bound about 4x that
    np.testing.assert_allclose(R @ R.T, np.eye(3), rtol=0, atol=2e-7)


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
    R = quaternion_to_matrix(0.0, half, 0.0, half)  # 90 degrees about y: z -> x, x -> -z
    np.testing.assert_allclose(R @ [1, 0, 0], [0, 0, -1], atol=1e-15)


def test_quaternion_matches_scipy_on_general_rotations() -> None:
    """Every element of the matrix, on rotations about no particular axis, against scipy's
    independent implementation (same x, y, z, w order); float64 rounding ~1e-16."""
    from scipy.spatial.transform import Rotation

    quaternions = np.random.default_rng(0).normal(size=(20, 4))
    for q in quaternions:
        expected = Rotation.from_quat(q).as_matrix()
        np.testing.assert_allclose(quaternion_to_matrix(*q), expected, rtol=0, atol=1e-15)


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

    from depth_completion_ros.transforms import transform_to_matrix

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


def _write_calibration(folder: Path, P_rect_03: np.ndarray) -> None:
    """A calibration folder with binary-exact numbers: R_rect_00 a 90 degree turn about z,
    velodyne -> cam0 a pure translation, camera 3 with its own P_rect_03 and size."""

    def fmt(values) -> str:
        return " ".join(repr(float(v)) for v in np.ravel(values))

    K2 = np.array([[700.0, 0.0, 600.0], [0.0, 700.0, 180.0], [0.0, 0.0, 1.0]])
    (folder / "calib_cam_to_cam.txt").write_text(
        "calib_time: 09-Jan-2012 13:57:47\n"
        f"R_rect_00: {fmt([[0, -1, 0], [1, 0, 0], [0, 0, 1]])}\n"
        f"S_rect_02: {fmt([1242, 375])}\n"
        f"P_rect_02: {fmt(np.hstack([K2, np.zeros((3, 1))]))}\n"
        f"S_rect_03: {fmt([1224, 370])}\n"
        f"P_rect_03: {fmt(P_rect_03)}\n"
    )
    (folder / "calib_velo_to_cam.txt").write_text(
        f"calib_time: 15-Mar-2012 11:37:16\nR: {fmt(np.eye(3))}\nT: {fmt([0.25, -0.5, 2.0])}\n"
    )


def test_kitti_calibration_exact_in_binary(tmp_path: Path) -> None:
    """Camera 3 (not 2) is picked, its offset K^-1 P[:, 3] = (-0.5, 0.25, 0.125) m is folded
    into T_cam_lidar after R_rect_00, and the size is (width, height): all values exact."""
    K3 = np.array([[512.0, 0.0, 256.0], [0.0, 512.0, 128.0], [0.0, 0.0, 1.0]])
    offset = np.array([-0.5, 0.25, 0.125])
    _write_calibration(tmp_path, np.hstack([K3, (K3 @ offset)[:, None]]))
    calib = load_kitti_calibration(tmp_path, camera_index=3)
    assert (calib.camera.width, calib.camera.height) == (1224, 370)
    np.testing.assert_array_equal(calib.camera.P, np.hstack([K3, np.zeros((3, 1))]))
    expected = np.eye(4)
    expected[:3, :3] = [[0, -1, 0], [1, 0, 0], [0, 0, 1]]  # R_rect_00 @ R (R = I)
    expected[:3, 3] = np.array([0.5, 0.25, 2.0]) + offset  # R_rect_00 @ T, then the offset
    np.testing.assert_array_equal(calib.T_cam_lidar, expected)
    # a LiDAR point lands where KITTI's P_rect_03 @ R_rect_00 @ Tr puts it, exactly: by hand,
    # R_rect_00 (X + T) = (-0.5, 4.25, 1.5), + offset = (-1, 4.5, 1.625), K3 @ that below
    X = np.array([4.0, 1.0, -0.5, 1.0])
    np.testing.assert_array_equal(calib.camera.P @ calib.T_cam_lidar @ X, [-96.0, 2512.0, 1.625])


def test_extrinsics_rotation_tolerance_edges() -> None:
    """R R^T = I within 1e-3: a rotation printed to 7 digits passes (error ~1e-7), one scaled by
    1.001 (R R^T - I = 2e-3) or sheared by 1e-2 does not."""
    R = _rotation_z(0.3)
    printed = np.hstack([np.round(R, 7), np.zeros((3, 1))]).ravel()
    np.testing.assert_array_equal(extrinsics_from_values(printed)[:3, :3], np.round(R, 7))
    for bad in (1.001 * R, R + np.array([[0, 0.01, 0], [0, 0, 0], [0, 0, 0]])):
        with pytest.raises(CalibrationError, match="rotation"):
            extrinsics_from_values(np.hstack([bad, np.zeros((3, 1))]).ravel())
    bottom = np.eye(4)
    bottom[3, 0] = 1e-5  # the bottom row must be 0 0 0 1 within 1e-6
    with pytest.raises(CalibrationError, match="row 0 0 0 1"):
        extrinsics_from_values(bottom.ravel())
    bottom[3, 0] = 1e-7
    assert extrinsics_from_values(bottom.ravel())[3, 0] == 1e-7
