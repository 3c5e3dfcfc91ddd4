"""KITTI raw synced drive -> ROS 2 bag (mcap or sqlite3) that ``ros2 bag play`` plays: the
library behind the ``kitti_to_bag`` console script (the demo and training call :func:`convert`).

Frames (REP 103/105), all documented in docs/tools.md:
  world -> base_link            /tf from oxts (ENU, origin at the first fix), when oxts exists,
                                and the same pose with oxts' twist (base_link axes) as
                                nav_msgs/Odometry on /kitti/oxts/odom
  base_link -> velodyne         /tf_static from calib_imu_to_velo.txt (KITTI's IMU is base_link);
                                identity when that file is missing (base_link at the LiDAR)
  velodyne -> camera_color_left -> camera_color_left_optical   (and camera_color_right for cam 3)
Camera bodies are x forward, y left, z up; optical frames z forward, x right, y down. The optical
frame carries the rectified camera, so CameraInfo has P = [K | 0], R = I, D = 0.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from depth_completion_ros.bag_io import (
    BagWriter,
    StampedTransform,
    from_ros,
    qos_profile,
    tf_message_bytes,
)
from depth_completion_ros.calibration import load_kitti_calibration
from depth_completion_ros.depth_io import read_rgb
from depth_completion_ros.kitti import (
    KITTI_BAG_TOPICS,
    KITTI_RATE_HZ,
    OXTS_ANGULAR_RATE,
    OXTS_VELOCITY,
    KittiDrive,
    KittiError,
    parse_timestamps,
    read_oxts,
    read_velo_imu,
    read_velodyne_bin,
)
from depth_completion_ros.messages import (
    camera_to_camera_info,
    make_header,
    numpy_to_image,
    rgb_to_compressed_image,
    seconds_to_nanoseconds,
    transport_topic,
    xyz_array_to_pointcloud2,
)

BASE_FRAME = "base_link"
WORLD_FRAME = "world"
LIDAR_FRAME = "velodyne"
CAMERA_NAMES = {2: "camera_color_left", 3: "camera_color_right"}
LIDAR_TOPIC = KITTI_BAG_TOPICS["points"]
ODOMETRY_TOPIC = KITTI_BAG_TOPICS["odometry"]
EARTH_RADIUS = 6378137.0  # metres, as in the KITTI devkit

#: optical frame axes expressed in the camera body frame (REP 103): columns x_o, y_o, z_o
R_BODY_OPTICAL = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])


def camera_frame(index: int) -> str:
    return CAMERA_NAMES[index]


def optical_frame(index: int) -> str:
    return f"{CAMERA_NAMES[index]}_optical"


def image_topic(index: int) -> str:
    return f"/kitti/{CAMERA_NAMES[index]}/image_raw"


def camera_info_topic(index: int) -> str:
    return f"/kitti/{CAMERA_NAMES[index]}/camera_info"


# --- stamps ---------------------------------------------------------------------------------


def synthetic_epoch(drive_dir: Path) -> float:
    """Midnight UTC of the drive's date (from ``YYYY_MM_DD_drive_...``), else 0.

    Stamps near zero confuse TF (time 0 means "latest"), so synthesised 10 Hz stamps start there.
    """
    try:
        day = dt.datetime.strptime(drive_dir.name[:10], "%Y_%m_%d")
    except ValueError:
        return 0.0
    return day.replace(tzinfo=dt.timezone.utc).timestamp()


def sensor_stamps(folder: Path, frame_ids: list[int], epoch: float) -> tuple[dict[int, int], bool]:
    """Per-frame stamps (ns) from ``folder/timestamps.txt``; 10 Hz from ``epoch`` without it."""
    path = folder / "timestamps.txt"
    if path.is_file():
        stamps = parse_timestamps(path)
        if len(stamps) <= max(frame_ids):
            raise KittiError(f"{path}: {len(stamps)} timestamps, but frame {max(frame_ids)} exists")
        return {i: seconds_to_nanoseconds(stamps[i]) for i in frame_ids}, False
    return {i: seconds_to_nanoseconds(epoch + i / KITTI_RATE_HZ) for i in frame_ids}, True


# --- oxts -----------------------------------------------------------------------------------


def oxts_poses(packets: list[np.ndarray]) -> list[np.ndarray]:
    """oxts packets -> 4x4 world <- base_link poses (KITTI devkit's Mercator projection).

    The Mercator scale comes from the first packet's latitude; the world frame is ENU
    (x east, y north, z up) with its origin at the first packet's position.
    """
    scale = np.cos(np.deg2rad(packets[0][0]))
    poses = []
    for packet in packets:
        lat, lon, alt, roll, pitch, yaw = packet[:6]
        tx = scale * np.deg2rad(lon) * EARTH_RADIUS
        ty = scale * EARTH_RADIUS * np.log(np.tan(np.deg2rad(90.0 + lat) / 2.0))
        cr, sr, cp, sp, cy, sy = (
            np.cos(roll),
            np.sin(roll),
            np.cos(pitch),
            np.sin(pitch),
            np.cos(yaw),
            np.sin(yaw),
        )
        Rx = np.array([[1, 0, 0], [0, cr, -sr], [0, sr, cr]])
        Ry = np.array([[cp, 0, sp], [0, 1, 0], [-sp, 0, cp]])
        Rz = np.array([[cy, -sy, 0], [sy, cy, 0], [0, 0, 1]])
        T = np.eye(4)
        T[:3, :3] = Rz @ Ry @ Rx
        T[:3, 3] = (tx, ty, alt)
        poses.append(T)
    origin = poses[0][:3, 3].copy()
    for T in poses:
        T[:3, 3] -= origin
    return poses


def oxts_odometry(packet: np.ndarray, T_world_base: np.ndarray, stamp_ns: int):
    """nav_msgs/Odometry: world <- base_link pose, twist in base_link (forward, left, up) axes:
    oxts' vf, vl, vu and wf, wl, wu as they are (what the node needs to deskew the scans)."""
    from nav_msgs.msg import Odometry
    from scipy.spatial.transform import Rotation

    if packet.size < OXTS_ANGULAR_RATE.stop:
        raise KittiError(f"oxts packet has {packet.size} values, need 30 (velocities, rates)")
    msg = Odometry(header=make_header(stamp_ns, WORLD_FRAME), child_frame_id=BASE_FRAME)
    pose = msg.pose.pose
    pose.position.x, pose.position.y, pose.position.z = (float(v) for v in T_world_base[:3, 3])
    q = Rotation.from_matrix(T_world_base[:3, :3]).as_quat()  # x, y, z, w
    o = pose.orientation
    o.x, o.y, o.z, o.w = (float(v) for v in q)
    linear, angular = msg.twist.twist.linear, msg.twist.twist.angular
    linear.x, linear.y, linear.z = (float(v) for v in packet[OXTS_VELOCITY])
    angular.x, angular.y, angular.z = (float(v) for v in packet[OXTS_ANGULAR_RATE])
    return msg


# --- static transforms ----------------------------------------------------------------------


def base_to_velodyne(calib_dir: Path) -> tuple[np.ndarray, bool]:
    """base_link (KITTI IMU) <- velodyne, and whether calib_imu_to_velo.txt provided it."""
    T_velo_imu = read_velo_imu(calib_dir)
    if T_velo_imu is None:
        return np.eye(4), False
    return np.linalg.inv(T_velo_imu), True


def camera_static_transforms(T_cam_lidar: np.ndarray, index: int, stamp_ns: int):
    """velodyne -> camera body -> camera optical, from the LiDAR -> optical extrinsics."""
    T_velo_optical = np.linalg.inv(T_cam_lidar)
    T_body_optical = np.eye(4)
    T_body_optical[:3, :3] = R_BODY_OPTICAL
    T_velo_body = T_velo_optical @ np.linalg.inv(T_body_optical)
    return [
        StampedTransform(LIDAR_FRAME, camera_frame(index), stamp_ns, T_velo_body),
        StampedTransform(camera_frame(index), optical_frame(index), stamp_ns, T_body_optical),
    ]


# --- conversion -----------------------------------------------------------------------------


@dataclass
class ConversionReport:
    frames: int
    stamps_synthesised: bool
    has_oxts: bool
    has_imu_calibration: bool
    counts: dict[str, int]


def convert(
    drive_dir: str | Path,
    output: str | Path,
    cameras: tuple[int, ...] = (2, 3),
    calib_dir: str | Path | None = None,
    storage: str = "mcap",
    overwrite: bool = False,
    log=print,
    compress: str | None = None,
    jpeg_quality: int = 95,
) -> ConversionReport:
    """Write one KITTI raw drive into a bag; returns what was written.

    ``compress`` "png" or "jpeg": the images go to image_transport's ``<image>/compressed``
    topic as sensor_msgs/CompressedImage (format "rgb8; <codec> compressed bgr8") instead of
    raw Images. png is lossless (KITTI's own images are png: the bag decodes to exactly the
    source pixels); jpeg is what robots usually record (several times smaller, lossy).
    """
    if compress not in (None, "png", "jpeg"):
        raise ValueError(f"compress must be png or jpeg, got {compress!r}")
    drive_dir = Path(drive_dir)
    calib_dir = Path(calib_dir) if calib_dir else drive_dir.parent
    drive = KittiDrive(drive_dir, camera_index=cameras[0], calib_dir=calib_dir)
    present = [i for i in cameras if (drive_dir / f"image_{i:02d}" / "data").is_dir()]
    calibrations = {i: load_kitti_calibration(calib_dir, i) for i in present}
    frame_ids = drive.frame_ids
    epoch = synthetic_epoch(drive_dir)
    image_stamps, synthesised = {}, False
    for i in present:
        image_stamps[i], flag = sensor_stamps(drive_dir / f"image_{i:02d}", frame_ids, epoch)
        synthesised |= flag
    lidar_stamps, flag = sensor_stamps(drive_dir / "velodyne_points", frame_ids, epoch)
    synthesised |= flag
    if synthesised:
        log(
            f"note: {drive_dir} has no timestamps.txt for some sensors: stamps synthesised at "
            f"{KITTI_RATE_HZ:g} Hz from {dt.datetime.fromtimestamp(epoch, dt.timezone.utc)}"
        )
    oxts_dir = drive_dir / "oxts" / "data"
    oxts_ids = [i for i in frame_ids if (oxts_dir / f"{i:010d}.txt").is_file()]
    T_base_velo, has_imu = base_to_velodyne(calib_dir)
    if not has_imu:
        log(f"note: no {calib_dir / 'calib_imu_to_velo.txt'}: base_link placed at the velodyne")

    first_ns = min(min(lidar_stamps.values()), *(min(s.values()) for s in image_stamps.values()))
    statics = [StampedTransform(BASE_FRAME, LIDAR_FRAME, first_ns, T_base_velo)]
    for i in present:
        statics += camera_static_transforms(calibrations[i].T_cam_lidar, i, first_ns)

    with BagWriter(output, storage=storage, overwrite=overwrite) as bag:
        bag.add_topic("/tf_static", "tf2_msgs/msg/TFMessage", qos_profile("transient_local", 1))
        bag.write("/tf_static", first_ns, tf_message_bytes(statics))
        image_topics = {
            i: transport_topic(image_topic(i), "compressed" if compress else "raw") for i in present
        }
        for i in present:
            kind = "CompressedImage" if compress else "Image"
            bag.add_topic(image_topics[i], f"sensor_msgs/msg/{kind}")
            bag.add_topic(camera_info_topic(i), "sensor_msgs/msg/CameraInfo")
        bag.add_topic(LIDAR_TOPIC, "sensor_msgs/msg/PointCloud2")
        if oxts_ids:
            bag.add_topic("/tf", "tf2_msgs/msg/TFMessage", qos_profile("volatile", 100))
            oxts_stamps, _ = sensor_stamps(drive_dir / "oxts", frame_ids, epoch)
            packets = [read_oxts(oxts_dir / f"{i:010d}.txt") for i in oxts_ids]
            bag.add_topic(ODOMETRY_TOPIC, "nav_msgs/msg/Odometry")
            poses = oxts_poses(packets)
            for i, packet, T in zip(oxts_ids, packets, poses, strict=True):
                tf = StampedTransform(WORLD_FRAME, BASE_FRAME, oxts_stamps[i], T)
                bag.write("/tf", oxts_stamps[i], tf_message_bytes([tf]))
                odometry = oxts_odometry(packet, T, oxts_stamps[i])
                bag.write(ODOMETRY_TOPIC, oxts_stamps[i], from_ros(odometry))
        for number, frame_id in enumerate(frame_ids, start=1):
            # images first, then the scan, in stamp order per frame
            for i in present:
                stamp = image_stamps[i][frame_id]
                rgb = read_rgb(drive_dir / f"image_{i:02d}" / "data" / f"{frame_id:010d}.png")
                header = make_header(stamp, optical_frame(i))
                if compress:
                    image = rgb_to_compressed_image(rgb, compress, header, jpeg_quality)
                else:
                    image = numpy_to_image(rgb, "rgb8", header)
                bag.write(image_topics[i], stamp, from_ros(image))
                info = camera_to_camera_info(calibrations[i].camera, header)
                bag.write(camera_info_topic(i), stamp, from_ros(info))
            stamp = lidar_stamps[frame_id]
            points = read_velodyne_bin(drive.velodyne_dir / f"{frame_id:010d}.bin")
            cloud = xyz_array_to_pointcloud2(points, make_header(stamp, LIDAR_FRAME), True)
            bag.write(LIDAR_TOPIC, stamp, from_ros(cloud))
            if number % 10 == 0 or number == len(frame_ids):
                log(f"  {number}/{len(frame_ids)} frames")
        counts = dict(bag.counts)
    return ConversionReport(len(frame_ids), synthesised, bool(oxts_ids), has_imu, counts)
