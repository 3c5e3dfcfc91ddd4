"""Camera models and camera-LiDAR extrinsics: KITTI calibration files, parameters, CameraInfo.

Conventions (used everywhere in the package):
  * ``T_cam_lidar`` is a 4x4 matrix taking points from the LiDAR (cloud) frame into the frame in
    which the camera's projection matrix ``P`` is applied: the camera's optical frame
    (z forward, x right, y down; REP 103) for a monocular camera.
  * ``P`` is applied as ROS's image_geometry applies a CameraInfo's P to rectified images:
    ``(u w, v w, w) = P @ (x, y, z, 1)``; ``w`` is the depth along the optical axis.

KITTI stores ``P_rect_0i`` relative to the rectified reference camera 0. We fold the camera's offset
(``K^-1 P[:, 3]``) into the extrinsics, so the camera model is ``P = [K | 0]`` in that camera's own
optical frame, as ROS expects for a monocular camera, and projection is bit-for-bit KITTI's
``P_rect_0i @ R_rect_00 @ Tr_velo_to_cam``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from depth_completion_ros.distortion import DistortionError, Lens, SensorWindow, is_distorted


class CalibrationError(ValueError):
    """Calibration input is missing or malformed; the message names the file/key and the fix."""


@dataclass(frozen=True)
class PinholeCamera:
    """The camera of one image: its size, the 3x4 projection matrix P, K, D, R.

    ``rectified`` (the default): the image is rectified and P projects onto it (image_geometry's
    ``project3dToPixel``; D and R only describe the raw image). ``rectified=False``: the image
    is the raw one and points land on it through K and the distortion D
    (:mod:`depth_completion_ros.distortion`). width, height, K and P are those of the image as
    published: with binning or a roi, ``sensor`` keeps what the CameraInfo said (full resolution,
    binning, roi) so the camera_info published with the depth is the one that came in.
    """

    width: int
    height: int
    P: np.ndarray  # 3x4 float64
    K: np.ndarray = field(default=None)  # 3x3; defaults to P[:, :3]
    D: np.ndarray = field(default_factory=lambda: np.zeros(5))
    R: np.ndarray = field(default_factory=lambda: np.eye(3))
    distortion_model: str = "plumb_bob"
    rectified: bool = True
    sensor: SensorWindow | None = None

    def __post_init__(self) -> None:
        P = np.asarray(self.P, dtype=np.float64).reshape(3, 4)
        object.__setattr__(self, "P", P)
        K = P[:, :3].copy() if self.K is None else np.asarray(self.K, np.float64).reshape(3, 3)
        object.__setattr__(self, "K", K)
        if self.width <= 0 or self.height <= 0:
            raise CalibrationError(f"camera size must be positive, got {self.width}x{self.height}")
        if not self.rectified:
            if K[0, 0] <= 0 or K[1, 1] <= 0:
                raise CalibrationError(
                    f"K has non-positive focal lengths (fx={K[0, 0]}, fy={K[1, 1]}): a raw "
                    "image (camera_model raw) is projected with K and D; publish a calibrated "
                    "CameraInfo"
                )
            object.__setattr__(self, "_lens", self._make_lens())
        elif P[0, 0] <= 0 or P[1, 1] <= 0:
            raise CalibrationError(
                f"projection matrix has non-positive focal lengths (fx={P[0, 0]}, fy={P[1, 1]}): "
                "the camera is uncalibrated; publish a calibrated CameraInfo (P must be set)"
            )

    def _make_lens(self) -> Lens | None:
        if not is_distorted(self.D):
            return None
        try:
            return Lens.from_camera(self.K, self.D, self.distortion_model)
        except DistortionError as exc:
            raise CalibrationError(str(exc)) from exc

    @property
    def intrinsics(self) -> np.ndarray:
        """The 3x3 matrix networks take: the rectified fx, fy, cx, cy from P; for a raw image
        K (its pinhole part)."""
        return (self.P[:, :3] if self.rectified else self.K).copy()

    @property
    def projection(self) -> np.ndarray:
        """The 3x4 matrix points are projected with: P, or [K | 0] for a raw image (before
        :attr:`lens` adds the distortion)."""
        if self.rectified:
            return self.P
        return np.hstack([self.K, np.zeros((3, 1))])

    @property
    def lens(self) -> Lens | None:
        """The distortion a raw image's pixels follow (None: rectified, or D all zero)."""
        return None if self.rectified else self.__dict__.get("_lens")


def parse_kitti_calib_file(path: str | Path) -> dict[str, np.ndarray]:
    """Read a KITTI ``key: v1 v2 ...`` calibration file into arrays (non-numeric keys skipped)."""
    path = Path(path)
    if not path.is_file():
        raise CalibrationError(
            f"calibration file not found: {path} (point calibration_dir at the KITTI date folder "
            "that holds calib_cam_to_cam.txt and calib_velo_to_cam.txt)"
        )
    values: dict[str, np.ndarray] = {}
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        key, sep, rest = line.partition(":")
        if not sep:
            raise CalibrationError(f"{path}:{number}: expected 'key: values', got {line[:60]!r}")
        if key.strip() == "calib_time":
            continue
        try:
            values[key.strip()] = np.array([float(v) for v in rest.split()], dtype=np.float64)
        except ValueError as exc:
            raise CalibrationError(
                f"{path}:{number}: non-numeric value for {key!r}: {exc}"
            ) from exc
    return values


def _require(values: dict[str, np.ndarray], key: str, size: int, path: Path) -> np.ndarray:
    if key not in values:
        raise CalibrationError(f"{path}: missing key {key!r}; is this a KITTI calibration file?")
    if values[key].size != size:
        raise CalibrationError(
            f"{path}: key {key!r} has {values[key].size} values, expected {size}"
        )
    return values[key]


@dataclass(frozen=True)
class KittiCalibration:
    """One KITTI camera and the Velodyne-to-camera transform, from a date folder's files."""

    camera: PinholeCamera
    T_cam_lidar: np.ndarray  # 4x4, velodyne -> this camera's rectified optical frame
    camera_index: int


def load_kitti_calibration(calib_dir: str | Path, camera_index: int = 2) -> KittiCalibration:
    """Load KITTI's ``calib_cam_to_cam.txt`` and ``calib_velo_to_cam.txt`` for one camera."""
    calib_dir = Path(calib_dir)
    if not calib_dir.is_dir():
        raise CalibrationError(
            f"calibration folder not found: {calib_dir} (it must hold calib_cam_to_cam.txt and "
            "calib_velo_to_cam.txt, e.g. .../2011_09_26)"
        )
    cam_path = calib_dir / "calib_cam_to_cam.txt"
    velo_path = calib_dir / "calib_velo_to_cam.txt"
    cam = parse_kitti_calib_file(cam_path)
    velo = parse_kitti_calib_file(velo_path)
    suffix = f"{camera_index:02d}"
    P_rect = _require(cam, f"P_rect_{suffix}", 12, cam_path).reshape(3, 4)
    R_rect = _require(cam, "R_rect_00", 9, cam_path).reshape(3, 3)
    size = _require(cam, f"S_rect_{suffix}", 2, cam_path)
    R = _require(velo, "R", 9, velo_path).reshape(3, 3)
    t = _require(velo, "T", 3, velo_path)

    K = P_rect[:, :3]
    offset = np.linalg.solve(K, P_rect[:, 3])  # this camera's centre in rectified cam-0 frame
    T_rect_velo = np.eye(4)
    T_rect_velo[:3, :3] = R_rect @ R
    T_rect_velo[:3, 3] = R_rect @ t
    T_cam_rect = np.eye(4)
    T_cam_rect[:3, 3] = offset
    camera = PinholeCamera(
        width=int(round(size[0])),
        height=int(round(size[1])),
        P=np.hstack([K, np.zeros((3, 1))]),
        D=np.zeros(5),
    )
    return KittiCalibration(camera, T_cam_rect @ T_rect_velo, camera_index)


def quaternion_to_matrix(qx: float, qy: float, qz: float, qw: float) -> np.ndarray:
    """Unit quaternion (x, y, z, w; ROS order) to a 3x3 rotation matrix."""
    q = np.array([qx, qy, qz, qw], dtype=np.float64)
    norm = np.linalg.norm(q)
    if not np.isfinite(norm) or norm < 1e-9:
        raise CalibrationError(f"quaternion {q.tolist()} has zero or invalid norm")
    x, y, z, w = q / norm
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def extrinsics_from_values(values: list[float] | np.ndarray) -> np.ndarray:
    """A 4x4 LiDAR->camera transform from a flat parameter list.

    Accepts 16 values (row-major 4x4), 12 values (row-major 3x4) or 7 values
    (x, y, z, qx, qy, qz, qw: translation + quaternion, as in TF).
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    if not np.all(np.isfinite(v)):
        raise CalibrationError("extrinsics contain NaN or infinite values")
    T = np.eye(4)
    if v.size == 16:
        T = v.reshape(4, 4).copy()
        if not np.allclose(T[3], [0, 0, 0, 1], atol=1e-6):
            raise CalibrationError(f"4x4 extrinsics must end with row 0 0 0 1, got {T[3].tolist()}")
    elif v.size == 12:
        T[:3] = v.reshape(3, 4)
    elif v.size == 7:
        T[:3, :3] = quaternion_to_matrix(*v[3:])
        T[:3, 3] = v[:3]
    else:
        raise CalibrationError(
            f"extrinsics need 16 (4x4), 12 (3x4) or 7 (x y z qx qy qz qw) values, got {v.size}"
        )
    R = T[:3, :3]
    if not np.allclose(R @ R.T, np.eye(3), atol=1e-3) or np.linalg.det(R) < 0:
        raise CalibrationError("extrinsics rotation is not a proper rotation matrix (R R^T != I)")
    return T
