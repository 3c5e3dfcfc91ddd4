"""Extrinsics from /tf_static and /tf: the node over DDS with real tf2_msgs/TFMessage messages
(the generated interface where no distro provides it; no mock), and process_bag from a bag's
/tf_static and /tf, through the same TransformBuffer."""

from __future__ import annotations

import numpy as np
import pytest
from ros_graph import node_graph

from depth_completion_ros.bag_io import StampedTransform, from_ros, tf_message_bytes
from depth_completion_ros.calibration import quaternion_to_matrix
from depth_completion_ros.depth_io import read_rgb
from depth_completion_ros.frame import pipeline_from_parameters
from depth_completion_ros.kitti_bag import camera_static_transforms, optical_frame
from depth_completion_ros.messages import image_to_depth, seconds_to_nanoseconds
from depth_completion_ros.parameters import load_parameters
from depth_completion_ros.tools.graph import SensorFrame, frame_messages
from depth_completion_ros.transforms import matrix_to_quaternion

pytest.importorskip("tf2_msgs.msg", reason="tf2_msgs: run scripts/build_tf2_msgs.py")

OPTICAL = optical_frame(2)  # camera_color_left_optical, as kitti_to_bag names it
MOUNT = "lidar_mount"  # a LiDAR frame that moves against velodyne on /tf
STAMP = 1000.0  # the static frame's stamp; the moving one is at STAMP + 1


def yaw(angle: float, t) -> np.ndarray:
    T = np.eye(4)
    c, s = np.cos(angle), np.sin(angle)
    T[:2, :2] = [[c, -s], [s, c]]
    T[:3, 3] = t
    return T


#: velodyne <- lidar_mount at STAMP + 1 -/+ 0.05 s; their interpolation at STAMP + 1 is MIDDLE,
#: which neither sample is (a lookup of the latest or the nearest sample gets another depth)
MOUNT_SAMPLES = [(-0.05, yaw(-0.1, (0.0, 0.0, 0.0))), (0.05, yaw(0.5, (0.2, 0.4, 0.0)))]
MIDDLE = yaw(0.2, (0.1, 0.2, 0.0))


def transformed(points: np.ndarray, T: np.ndarray) -> np.ndarray:
    """N x 4 (x, y, z, intensity) points mapped by T, float32."""
    out = np.array(points, dtype=np.float32)
    out[:, :3] = points[:, :3] @ T[:3, :3].T + T[:3, 3]
    return out


def tf_message(transforms: list[StampedTransform]):
    """bag_io's StampedTransforms as an rclpy tf2_msgs/msg/TFMessage."""
    from geometry_msgs.msg import TransformStamped
    from tf2_msgs.msg import TFMessage

    items = []
    for tf in transforms:
        item = TransformStamped(child_frame_id=tf.child)
        item.header.frame_id = tf.parent
        item.header.stamp.sec, item.header.stamp.nanosec = divmod(tf.stamp_ns, 1_000_000_000)
        r, t = item.transform.rotation, item.transform.translation
        r.x, r.y, r.z, r.w = (float(v) for v in matrix_to_quaternion(tf.T[:3, :3]))
        t.x, t.y, t.z = (float(v) for v in tf.T[:3, 3])
        items.append(item)
    return TFMessage(transforms=items)


def as_tf(T: np.ndarray) -> np.ndarray:
    """T as TF carries it: its rotation through a quaternion (KITTI's R is orthonormal to
    about 1e-6 only, which moves a handful of points by a pixel)."""
    out = np.array(T, dtype=np.float64)
    out[:3, :3] = quaternion_to_matrix(*matrix_to_quaternion(T[:3, :3]))
    return out


@pytest.fixture(scope="module")
def scene(kitti_scan, kitti_calibration, kitti_image_path):
    """The KITTI frame, its LiDAR -> camera transform as /tf_static carries it, and ``expect``:
    the node's outputs for given points and extrinsics (its default parameters)."""
    rgb = read_rgb(kitti_image_path)
    camera, T = kitti_calibration.camera, kitti_calibration.T_cam_lidar
    pipeline = pipeline_from_parameters(load_parameters(None, {}))

    def expect(points: np.ndarray, T_cam_cloud: np.ndarray):
        return pipeline.run(rgb, np.asarray(points)[:, :3], camera, T_cam_cloud)

    T_velo_body, T_body_optical = (as_tf(tf.T) for tf in _static(T))
    T_tf = np.linalg.inv(T_velo_body @ T_body_optical)
    # the calibration_dir run and the run with the transform as TF carries it: equal depths,
    # the same pixels but for a handful moved by one (quaternion rounding of KITTI's R)
    calibration_run, tf_run = expect(kitti_scan, T), expect(kitti_scan, T_tf)
    assert np.count_nonzero(calibration_run.sparse) > 10_000
    a, b = calibration_run.sparse, tf_run.sparse
    assert np.count_nonzero((a > 0) != (b > 0)) < 20
    both = (a > 0) & (b > 0)
    np.testing.assert_allclose(a[both], b[both], rtol=1e-4)
    return rgb, camera, T, T_tf, expect


def _static(T_cam_lidar: np.ndarray) -> list[StampedTransform]:
    return camera_static_transforms(T_cam_lidar, 2, seconds_to_nanoseconds(STAMP))


def _assert_equal_depth(outputs: dict, expected, what: str, log: str) -> None:
    assert "depth/image" in outputs and "sparse_depth/image" in outputs, f"{what}: {log}"
    sparse = np.nan_to_num(image_to_depth(outputs["sparse_depth/image"]), nan=0.0)
    dense = image_to_depth(outputs["depth/image"])
    np.testing.assert_array_equal(sparse > 0, expected.sparse > 0, err_msg=what)
    np.testing.assert_allclose(sparse, expected.sparse, rtol=1e-5, atol=1e-5, err_msg=what)
    np.testing.assert_allclose(dense, expected.dense, rtol=1e-4, atol=1e-4, err_msg=what)


def test_node_reads_extrinsics_from_tf_over_dds(scene, kitti_scan, ros_domain_id, tmp_path):
    """No extrinsics set: /tf_static as kitti_to_bag writes it gives the calibration_dir depth;
    a moving /tf is interpolated at the scan's stamp; an unrelated frame and an empty frame_id
    are counted as failed:extrinsics, each with a clear message."""
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

    rgb, camera, T, T_tf, expect = scene
    parameters = {"publish_sparse": True, "input_reliability": "reliable"}
    moving_points = transformed(kitti_scan, np.linalg.inv(MIDDLE))
    expected = {
        "static": expect(kitti_scan, T_tf),
        "moving": expect(moving_points, T_tf @ MIDDLE),
    }
    static_qos = QoSProfile(
        depth=1,
        reliability=ReliabilityPolicy.RELIABLE,
        durability=DurabilityPolicy.TRANSIENT_LOCAL,
    )
    frames = [
        ("velodyne", STAMP, kitti_scan, "static"),
        (MOUNT, STAMP + 1, moving_points, "moving"),
        ("unknown_lidar", STAMP + 2, kitti_scan, None),
        ("", STAMP + 3, kitti_scan, None),
    ]
    with node_graph(parameters, ros_domain_id, tmp_path) as graph:
        from tf2_msgs.msg import TFMessage

        player = graph.player
        static_pub = player.create_publisher(TFMessage, "/tf_static", static_qos)
        tf_pub = player.create_publisher(TFMessage, "/tf", 10)
        static_pub.publish(tf_message(_static(T)))
        for offset, M in MOUNT_SAMPLES:
            stamp = seconds_to_nanoseconds(STAMP + 1 + offset)
            tf_pub.publish(tf_message([StampedTransform("velodyne", MOUNT, stamp, M)]))
        graph.spin_for(1.0)  # the transforms arrive before the frames
        for lidar_frame, stamp, points, _ in frames:
            frame = SensorFrame(stamp, rgb, points, camera)
            messages = frame_messages(frame, camera_frame=OPTICAL, lidar_frame=lidar_frame)
            player.publish_frame(frame, messages)
            graph.spin_for(0.2)
        counts = graph.wait_for_counts(
            lambda c: c["received"] >= 4 and c["waiting"] == 0 and c["published"] >= 2
        )
        graph.spin_for(0.5)
    log = graph.log()
    for _, stamp, _, name in frames[:2]:
        outputs = player.result.outputs.get(seconds_to_nanoseconds(stamp), {})
        _assert_equal_depth(outputs, expected[name], f"{name} frame", log)
    assert counts["published"] == 2 and counts["failed:extrinsics"] == 2, (counts, log)
    assert "extrinsics: TF (/tf_static, /tf), when the cloud's frame differs" in log, log
    assert "the cloud is in frame 'unknown_lidar'" in log and "does not connect them" in log, log
    assert "velodyne -> lidar_mount (1000.950 .. 1001.050 s)" in log, log
    assert "header.frame_id is empty" in log and "cloud_in_camera_frame" in log, log


def test_node_takes_an_empty_frame_id_as_the_camera_frame_when_told(
    scene, kitti_scan, ros_domain_id, tmp_path
):
    rgb, camera, T, _, expect = scene
    parameters = {
        "publish_sparse": True,
        "input_reliability": "reliable",
        "cloud_in_camera_frame": True,
    }
    frame = SensorFrame(STAMP, rgb, transformed(kitti_scan, T), camera)
    expected = expect(frame.points, np.eye(4))
    with node_graph(parameters, ros_domain_id, tmp_path) as graph:
        messages = frame_messages(frame, camera_frame=OPTICAL, lidar_frame="")
        graph.player.publish_frame(frame, messages)
        counts = graph.settled_counts(received=1)
        graph.spin_for(0.5)
    log = graph.log()
    assert counts["published"] == 1 and counts["failed"] == 0, (str(counts), log)
    outputs = graph.player.result.outputs.get(seconds_to_nanoseconds(STAMP), {})
    _assert_equal_depth(outputs, expected, "cloud in the camera frame", log)


def test_process_bag_reads_tf_static_and_tf(scene, kitti_scan, tmp_path):
    """The same TransformBuffer offline: /tf_static (wherever it was recorded) and a moving /tf
    from the bag, in bag order, the frame waiting for the /tf sample after its stamp, give the
    calibration_dir depth."""
    from depth_completion_ros.bag_io import BagReader, BagWriter, qos_profile, to_ros
    from depth_completion_ros.tools import process_bag

    rgb, camera, T, T_tf, expect = scene
    topics = {"image": "/camera/image", "camera_info": "/camera/camera_info", "points": "/points"}
    bag = tmp_path / "tf_bag"
    frame = SensorFrame(STAMP + 1, rgb, transformed(kitti_scan, np.linalg.inv(MIDDLE)), camera)
    expected = expect(frame.points, T_tf @ MIDDLE)
    image, info, cloud = frame_messages(frame, camera_frame=OPTICAL, lidar_frame=MOUNT)
    first = seconds_to_nanoseconds(STAMP)
    with BagWriter(bag) as writer:
        writer.add_topic("/tf_static", "tf2_msgs/msg/TFMessage", qos_profile("transient_local", 1))
        writer.add_topic("/tf", "tf2_msgs/msg/TFMessage", qos_profile("volatile", 100))
        writer.add_topic(topics["image"], "sensor_msgs/msg/Image")
        writer.add_topic(topics["camera_info"], "sensor_msgs/msg/CameraInfo")
        writer.add_topic(topics["points"], "sensor_msgs/msg/PointCloud2")
        # recorded after the frame: latched, it holds from the start (as the node's
        # transient_local subscription gets it whenever it was published)
        writer.write("/tf_static", first + 5 * 10**9, tf_message_bytes(_static(T)))
        for offset, M in MOUNT_SAMPLES:
            stamp = seconds_to_nanoseconds(STAMP + 1 + offset)
            writer.write(
                "/tf", stamp, tf_message_bytes([StampedTransform("velodyne", MOUNT, stamp, M)])
            )
        stamp = seconds_to_nanoseconds(frame.stamp)
        writer.write(topics["camera_info"], stamp, from_ros(info))
        writer.write(topics["image"], stamp, from_ros(image))
        writer.write(topics["points"], stamp + 1, from_ros(cloud))
    config = load_parameters(None, {"publish_sparse": True})
    report = process_bag.process(bag, tmp_path / "out", config, topics, progress=False)
    assert report.processed == 1 and report.failed == 0, report
    with BagReader(tmp_path / "out") as reader:
        outputs = {
            m.topic.lstrip("/"): to_ros(m.data, m.msgtype)
            for m in reader.messages(["/depth/image", "/sparse_depth/image"])
        }
    _assert_equal_depth(outputs, expected, "process_bag with /tf", str(report))
