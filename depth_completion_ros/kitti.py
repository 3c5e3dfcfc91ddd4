"""Reading KITTI raw synced drives: frames, scans, timestamps, oxts, calibration.

The demo, the bag converter and the tests read real and synthetic drives through this module.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from depth_completion_ros.calibration import (
    CalibrationError,
    KittiCalibration,
    load_kitti_calibration,
    parse_kitti_calib_file,
)
from depth_completion_ros.depth_io import read_kitti_depth, read_rgb
from depth_completion_ros.projection import SensorMotion

#: topic names of a bag written by ``kitti_to_bag`` (colour camera 2, the Velodyne, OXTS)
KITTI_BAG_TOPICS = {
    "image": "/kitti/camera_color_left/image_raw",
    "camera_info": "/kitti/camera_color_left/camera_info",
    "points": "/kitti/velo/pointcloud",
    "odometry": "/kitti/oxts/odom",
}

KITTI_RATE_HZ = 10.0


class KittiError(ValueError):
    """A KITTI folder is incomplete or malformed; the message names the path."""


def read_velodyne_bin(path: str | Path) -> np.ndarray:
    """KITTI ``.bin`` scan -> N x 4 float32 (x, y, z, reflectance) in the Velodyne frame."""
    path = Path(path)
    raw = np.fromfile(path, dtype="<f4")
    if raw.size % 4:
        raise KittiError(f"{path}: size {raw.size * 4} bytes is not a multiple of 16 (x,y,z,r)")
    return raw.reshape(-1, 4)


def parse_timestamps(path: str | Path) -> np.ndarray:
    """KITTI ``timestamps.txt`` (``YYYY-MM-DD HH:MM:SS.fffffffff`` per line) -> float seconds."""
    stamps = []
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        line = line.strip()
        if not line:
            continue
        try:
            day, clock = line.split(" ")
            main, _, fraction = clock.partition(".")
            base = dt.datetime.strptime(f"{day} {main}", "%Y-%m-%d %H:%M:%S")
            base = base.replace(tzinfo=dt.timezone.utc)
            stamps.append(base.timestamp() + float(f"0.{fraction or '0'}"))
        except ValueError as exc:
            raise KittiError(f"{path}:{number}: bad timestamp {line!r} ({exc})") from exc
    return np.array(stamps, dtype=np.float64)


#: indices in an oxts packet (KITTI devkit readme, dataformat.txt): velocities forward, left, up
#: (m/s) and angular rates about the same axes (rad/s), in the IMU frame (base_link)
OXTS_VELOCITY = slice(8, 11)  # vf, vl, vu
OXTS_ANGULAR_RATE = slice(20, 23)  # wf, wl, wu


def read_oxts(path: str | Path) -> np.ndarray:
    """One oxts packet -> its 30 values (lat, lon, alt, roll, pitch, yaw, ..., vf, vl, vu, ...)."""
    path = Path(path)
    try:
        values = np.array(path.read_text().split(), dtype=np.float64)
    except ValueError as exc:
        raise KittiError(f"{path}: non-numeric oxts value ({exc})") from exc
    if values.size < 6:
        raise KittiError(f"{path}: {values.size} values, an oxts packet has 30")
    return values


def read_velo_imu(calib_dir: str | Path) -> np.ndarray | None:
    """velodyne <- IMU 4x4 from ``calib_imu_to_velo.txt``, or None when the file is missing."""
    path = Path(calib_dir) / "calib_imu_to_velo.txt"
    if not path.is_file():
        return None
    values = parse_kitti_calib_file(path)
    if "R" not in values or "T" not in values or values["R"].size != 9:
        raise CalibrationError(f"{path}: needs keys R (9 values) and T (3 values)")
    T_velo_imu = np.eye(4)
    T_velo_imu[:3, :3] = values["R"].reshape(3, 3)
    T_velo_imu[:3, 3] = values["T"]
    return T_velo_imu


def oxts_motion(path: str | Path, T_velo_imu: np.ndarray) -> SensorMotion:
    """The LiDAR's motion for :func:`~depth_completion_ros.projection.deskew` from one oxts
    packet: its velocity and angular rate rotated from the IMU into the Velodyne frame."""
    packet = read_oxts(path)
    if packet.size < OXTS_ANGULAR_RATE.stop:
        raise KittiError(f"{path}: {packet.size} values, an oxts packet has 30")
    R = np.asarray(T_velo_imu, np.float64)[:3, :3]
    velocity = R @ packet[OXTS_VELOCITY]
    angular = R @ packet[OXTS_ANGULAR_RATE]
    return SensorMotion(velocity=tuple(float(v) for v in velocity), yaw_rate=float(angular[2]))


@dataclass
class KittiFrame:
    index: int
    stamp: float
    rgb: np.ndarray
    points: np.ndarray  # N x 4 float32, velodyne frame
    ground_truth: np.ndarray | None  # H x W metres, 0 = none


class KittiDrive:
    """A ``<date>/<date>_drive_XXXX_sync`` folder with its date folder's calibration."""

    def __init__(self, drive_dir: str | Path, camera_index: int = 2, calib_dir: str | Path = ""):
        self.drive_dir = Path(drive_dir)
        if not self.drive_dir.is_dir():
            raise KittiError(f"KITTI drive folder not found: {self.drive_dir}")
        self.camera_index = camera_index
        self.image_dir = self.drive_dir / f"image_{camera_index:02d}" / "data"
        self.velodyne_dir = self.drive_dir / "velodyne_points" / "data"
        for folder in (self.image_dir, self.velodyne_dir):
            if not folder.is_dir():
                raise KittiError(f"missing {folder} (expected KITTI raw 'sync' layout)")
        self.calibration_dir = Path(calib_dir or self.drive_dir.parent)
        self.calibration: KittiCalibration = load_kitti_calibration(
            self.calibration_dir, camera_index
        )
        scans = {int(p.stem) for p in self.velodyne_dir.glob("*.bin")}
        images = {int(p.stem) for p in self.image_dir.glob("*.png")}
        self.frame_ids = sorted(scans & images)
        if not self.frame_ids:
            raise KittiError(f"{self.drive_dir}: no frame has both a .bin scan and a .png image")
        self.stamps, self.stamps_synthesised = self._load_stamps()

    def _load_stamps(self) -> tuple[dict[int, float], bool]:
        for folder in (self.image_dir.parent, self.velodyne_dir.parent):
            path = folder / "timestamps.txt"
            if path.is_file():
                stamps = parse_timestamps(path)
                if len(stamps) > max(self.frame_ids):
                    return {i: float(stamps[i]) for i in self.frame_ids}, False
        return {i: i / KITTI_RATE_HZ for i in self.frame_ids}, True

    def ground_truth_path(self, frame_id: int) -> Path | None:
        """KITTI depth-completion ground truth for this frame, if it is found beside the drive."""
        name = f"image_{self.camera_index:02d}/{frame_id:010d}.png"
        candidates = [self.drive_dir / "proj_depth" / "groundtruth" / name]
        # the depth-completion release lives in a sibling tree: data_depth_annotated/<split>/<drive>
        root = self.drive_dir.parents[2] if len(self.drive_dir.parents) > 2 else None
        if root is not None:
            for split in ("train", "val"):
                candidates.append(
                    root
                    / "data_depth_annotated"
                    / split
                    / self.drive_dir.name
                    / "proj_depth"
                    / "groundtruth"
                    / name
                )
        return next((p for p in candidates if p.is_file()), None)

    def __len__(self) -> int:
        return len(self.frame_ids)

    def frame(self, frame_id: int) -> KittiFrame:
        gt_path = self.ground_truth_path(frame_id)
        return KittiFrame(
            index=frame_id,
            stamp=self.stamps[frame_id],
            rgb=read_rgb(self.image_dir / f"{frame_id:010d}.png"),
            points=read_velodyne_bin(self.velodyne_dir / f"{frame_id:010d}.bin"),
            ground_truth=read_kitti_depth(gt_path) if gt_path else None,
        )

    def frames(self):
        for frame_id in self.frame_ids:
            yield self.frame(frame_id)
