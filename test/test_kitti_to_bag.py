"""kitti_to_bag on the real KITTI extracts: every message read back equals its source file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from depth_completion_ros import kitti_bag
from depth_completion_ros.bag_io import BagError, BagReader, parse_tf_message, to_ros
from depth_completion_ros.calibration import (
    extrinsics_from_values,
    load_kitti_calibration,
    parse_kitti_calib_file,
)
from depth_completion_ros.depth_io import read_rgb
from depth_completion_ros.kitti import read_velodyne_bin
from depth_completion_ros.messages import image_to_rgb, pointcloud2_to_array, stamp_to_nanoseconds
from depth_completion_ros.tools import kitti_to_bag

EPOCH_NS = 1316995200 * 10**9  # 2011-09-26 00:00 UTC, the synthesised stamps' origin


@pytest.fixture
def seq_drive(kitti_raw_seq: Path) -> Path:
    """The 20-frame real drive (no oxts), from the conftest's data fixture."""
    return kitti_raw_seq / "2011_09_26_drive_0000_sync"


@pytest.fixture
def dc_drive(kitti_drive_dir: Path) -> Path:
    """The complete KITTI frame's drive (with oxts and calib_imu_to_velo)."""
    return kitti_drive_dir


def _chain(transforms, frames: list[str]) -> np.ndarray:
    """Compose parent->child transforms along a frame path (T maps last frame into first)."""
    by_child = {tf.child: tf for tf in transforms}
    T = np.eye(4)
    for parent, child in zip(frames[:-1], frames[1:], strict=True):
        tf = by_child[child]
        assert tf.parent == parent
        T = T @ tf.T
    return T


def _read_all(bag: Path) -> dict[str, list]:
    out: dict[str, list] = {}
    with BagReader(bag) as reader:
        for m in reader.messages():
            out.setdefault(m.topic, []).append(m)
    return out


def _check_frames(bag: Path, drive: Path, frame_ids: list[int], cameras: list[int]) -> None:
    messages = _read_all(bag)
    calib = drive.parent
    for index in cameras:
        topic = kitti_bag.image_topic(index)
        assert len(messages[topic]) == len(frame_ids)
        calibration = load_kitti_calibration(calib, index)
        P_rect = parse_kitti_calib_file(calib / "calib_cam_to_cam.txt")[f"P_rect_{index:02d}"]
        for frame_id, m, mi in zip(
            frame_ids,
            messages[topic],
            messages[kitti_bag.camera_info_topic(index)],
            strict=True,
        ):
            image = to_ros(m.data, m.msgtype)
            stamp = EPOCH_NS + frame_id * 100_000_000
            assert stamp_to_nanoseconds(image.header.stamp) == stamp == m.timestamp
            assert image.header.frame_id == kitti_bag.optical_frame(index)
            assert image.encoding == "rgb8"
            source = read_rgb(drive / f"image_{index:02d}" / "data" / f"{frame_id:010d}.png")
            np.testing.assert_array_equal(image_to_rgb(image), source)
            info = to_ros(mi.data, mi.msgtype)
            assert stamp_to_nanoseconds(info.header.stamp) == stamp
            assert (info.width, info.height) == (source.shape[1], source.shape[0])
            K = P_rect.reshape(3, 4)[:, :3]
            np.testing.assert_array_equal(np.asarray(info.k).reshape(3, 3), K)
            np.testing.assert_array_equal(
                np.asarray(info.p).reshape(3, 4), np.hstack([K, np.zeros((3, 1))])
            )
            np.testing.assert_array_equal(np.asarray(info.r).reshape(3, 3), np.eye(3))
            assert not np.any(info.d) and info.distortion_model == "plumb_bob"
        # static TF: velodyne -> optical equals the calibration's LiDAR -> camera transform
        statics = parse_tf_message(messages["/tf_static"][0].data)
        T_velo_opt = _chain(
            statics,
            ["velodyne", kitti_bag.camera_frame(index), kitti_bag.optical_frame(index)],
        )
        np.testing.assert_allclose(np.linalg.inv(T_velo_opt), calibration.T_cam_lidar, atol=1e-9)
        # REP 103: the camera body's x axis looks forward like the LiDAR's x axis
        T_velo_body = _chain(statics, ["velodyne", kitti_bag.camera_frame(index)])
        assert T_velo_body[0, 0] > 0.99
    clouds = messages[kitti_bag.LIDAR_TOPIC]
    assert len(clouds) == len(frame_ids)
    for frame_id, m in zip(frame_ids, clouds, strict=True):
        cloud = to_ros(m.data, m.msgtype)
        assert cloud.header.frame_id == "velodyne"
        assert [f.name for f in cloud.fields] == ["x", "y", "z", "intensity"]
        source = read_velodyne_bin(drive / "velodyne_points" / "data" / f"{frame_id:010d}.bin")
        np.testing.assert_array_equal(pointcloud2_to_array(cloud, with_intensity=True), source)


def _check_metadata(bag: Path, storage: str, topics: dict[str, str]) -> None:
    meta = yaml.safe_load((bag / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    assert meta["version"] == 8
    assert meta["storage_identifier"] == storage
    files = meta["relative_file_paths"]
    assert files == [f"{bag.name}.{'mcap' if storage == 'mcap' else 'db3'}"]
    assert (bag / files[0]).is_file()
    recorded = {
        t["topic_metadata"]["name"]: t["topic_metadata"] for t in meta["topics_with_message_count"]
    }
    assert {name: t["type"] for name, t in recorded.items()} == topics
    for t in recorded.values():
        assert t["serialization_format"] == "cdr"
        assert t["type_description_hash"].startswith("RIHS01_")
        assert yaml.safe_load(t["offered_qos_profiles"])[0]["reliability"] == 1
    tf_static_qos = yaml.safe_load(recorded["/tf_static"]["offered_qos_profiles"])[0]
    assert tf_static_qos["durability"] == 1  # transient local, like a latched tf_static


def test_sequence_to_mcap(tmp_path: Path, seq_drive: Path) -> None:
    bag = tmp_path / "seq"
    assert kitti_to_bag.main([str(seq_drive), str(bag), "--cameras", "2"]) == 0
    _check_metadata(
        bag,
        "mcap",
        {
            "/tf_static": "tf2_msgs/msg/TFMessage",
            "/kitti/camera_color_left/image_raw": "sensor_msgs/msg/Image",
            "/kitti/camera_color_left/camera_info": "sensor_msgs/msg/CameraInfo",
            "/kitti/velo/pointcloud": "sensor_msgs/msg/PointCloud2",
        },
    )
    _check_frames(bag, seq_drive, list(range(20)), [2])
    # a second run refuses to overwrite, and leaves no partial folder behind
    assert kitti_to_bag.main([str(seq_drive), str(bag), "--cameras", "2"]) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seq"]


def test_dc_frame_with_oxts_to_sqlite(tmp_path: Path, dc_drive: Path) -> None:
    bag = tmp_path / "dc"
    assert kitti_to_bag.main([str(dc_drive), str(bag), "--storage", "sqlite3"]) == 0
    _check_metadata(
        bag,
        "sqlite3",
        {
            "/tf_static": "tf2_msgs/msg/TFMessage",
            "/tf": "tf2_msgs/msg/TFMessage",
            "/kitti/camera_color_left/image_raw": "sensor_msgs/msg/Image",
            "/kitti/camera_color_left/camera_info": "sensor_msgs/msg/CameraInfo",
            "/kitti/camera_color_right/image_raw": "sensor_msgs/msg/Image",
            "/kitti/camera_color_right/camera_info": "sensor_msgs/msg/CameraInfo",
            "/kitti/velo/pointcloud": "sensor_msgs/msg/PointCloud2",
            "/kitti/oxts/odom": "nav_msgs/msg/Odometry",
        },
    )
    _check_frames(bag, dc_drive, [5], [2, 3])
    messages = _read_all(bag)
    # base_link -> velodyne is the inverse of calib_imu_to_velo's velodyne <- imu transform
    imu = parse_kitti_calib_file(dc_drive.parent / "calib_imu_to_velo.txt")
    statics = parse_tf_message(messages["/tf_static"][0].data)
    T_base_velo = _chain(statics, ["base_link", "velodyne"])
    np.testing.assert_allclose(T_base_velo[:3, :3].T, imu["R"].reshape(3, 3), atol=1e-9)
    np.testing.assert_allclose(-T_base_velo[:3, :3].T @ T_base_velo[:3, 3], imu["T"], atol=1e-9)
    # /tf from oxts: world -> base_link, first fix is the origin, rotation from roll/pitch/yaw
    (tf,) = parse_tf_message(messages["/tf"][0].data)
    assert (tf.parent, tf.child) == ("world", "base_link")
    assert tf.stamp_ns == EPOCH_NS + 500_000_000
    np.testing.assert_allclose(tf.T[:3, 3], 0.0, atol=1e-9)
    roll, pitch, yaw = np.loadtxt(dc_drive / "oxts" / "data" / "0000000005.txt")[3:6]
    heading = tf.T[:3, 0]  # the vehicle's forward axis in ENU
    np.testing.assert_allclose(np.arctan2(heading[1], heading[0]), yaw, atol=1e-9)
    np.testing.assert_allclose(-np.arcsin(heading[2]), pitch, atol=1e-9)
    # the same pose as nav_msgs/Odometry, with oxts' velocities and rates as the base_link twist
    (message,) = messages["/kitti/oxts/odom"]
    odom = to_ros(message.data, message.msgtype)
    assert (odom.header.frame_id, odom.child_frame_id) == ("world", "base_link")
    assert stamp_to_nanoseconds(odom.header.stamp) == message.timestamp == tf.stamp_ns
    packet = np.loadtxt(dc_drive / "oxts" / "data" / "0000000005.txt")
    linear, angular = odom.twist.twist.linear, odom.twist.twist.angular
    assert [linear.x, linear.y, linear.z] == list(packet[8:11])  # vf, vl, vu
    assert [angular.x, angular.y, angular.z] == list(packet[20:23])  # wf, wl, wu
    position, q = odom.pose.pose.position, odom.pose.pose.orientation
    pose = extrinsics_from_values([position.x, position.y, position.z, q.x, q.y, q.z, q.w])
    np.testing.assert_allclose(pose, tf.T, atol=1e-9)


def test_bad_inputs(tmp_path: Path, dc_drive: Path) -> None:
    # missing calibration: the error names the file, exit status non-zero, nothing written
    drive = tmp_path / "2011_09_26" / "2011_09_26_drive_0001_sync"
    for sub in ("image_02/data", "velodyne_points/data"):
        (drive / sub).mkdir(parents=True)
    (drive / "image_02/data/0000000000.png").write_bytes(
        (dc_drive / "image_02/data/0000000005.png").read_bytes()
    )
    (drive / "velodyne_points/data/0000000000.bin").write_bytes(
        (dc_drive / "velodyne_points/data/0000000005.bin").read_bytes()
    )
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "depth_completion_ros.tools.kitti_to_bag",
            str(drive),
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    assert "calib_cam_to_cam.txt" in result.stderr
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob(".out*"))

    # a truncated bag is reported as damaged, naming the bag
    bag = tmp_path / "dc"
    assert kitti_to_bag.main([str(dc_drive), str(bag)]) == 0
    storage = bag / "dc.mcap"
    storage.write_bytes(storage.read_bytes()[: storage.stat().st_size // 2])
    with pytest.raises(BagError, match=str(bag)), BagReader(bag) as reader:
        list(reader.messages())
    with pytest.raises(BagError, match="not a ROS 2 bag"):
        BagReader(tmp_path)
