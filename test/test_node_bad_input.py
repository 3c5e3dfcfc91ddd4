"""Bad input over DDS: one clear log message per cause, and the node keeps running.

Also start-up errors: a bad parameter or calibration stops the node with a message naming it.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from ros_graph import node_graph
from sensor_msgs.msg import PointField

from depth_completion_ros.kitti import KittiDrive
from depth_completion_ros.messages import numpy_to_image, stamp_to_nanoseconds
from depth_completion_ros.tools.graph import SensorFrame, frame_messages, ros_environment

DRIVE = "2011_09_26_drive_0000_sync"


@pytest.fixture(scope="module")
def drive(kitti_raw_seq):
    return KittiDrive(kitti_raw_seq / DRIVE)


def test_bad_inputs_are_reported_and_survived(drive, ros_domain_id, tmp_path):
    base = drive.frame(drive.frame_ids[0])
    camera = drive.calibration.camera
    stamp = [2_000.0]

    def next_frame() -> SensorFrame:
        stamp[0] += 1.0
        return SensorFrame(stamp[0], base.rgb, base.points, camera)

    parameters = {"calibration_dir": str(drive.calibration_dir), "input_reliability": "reliable"}
    with node_graph(parameters, ros_domain_id, tmp_path) as g:
        player = g.player

        def publish(image=None, cloud=None, info=True, frame=None):
            frame = frame or next_frame()
            good_image, good_info, good_cloud = frame_messages(frame)
            if info:
                player.info_pub.publish(good_info)
            player.image_pub.publish(image or good_image)
            player.cloud_pub.publish(cloud or good_cloud)
            return good_image, good_cloud

        def assert_still_working():
            frame = next_frame()
            result = player.play([frame], g.executor, timeout=15.0)
            key = stamp_to_nanoseconds(frame_messages(frame)[0].header.stamp)
            assert "depth/image" in result.outputs.get(key, {}), g.log()

        # no camera_info yet: the node waits, says so, and recovers when one arrives
        publish(info=False)
        assert g.wait_for_log("no camera_info received yet"), g.log()
        assert_still_working()

        def check(cause_text: str, image=None, cloud=None, repeats: int = 3):
            for _ in range(repeats):
                frame = next_frame()
                good_image, good_cloud = frame_messages(frame)[0], frame_messages(frame)[2]
                bad_image = image(good_image) if image else None
                bad_cloud = cloud(good_cloud) if cloud else None
                publish(bad_image, bad_cloud, frame=frame)
                g.spin_for(0.2)
            assert g.wait_for_log(cause_text), f"expected {cause_text!r} in log:\n{g.log()}"
            # throttled: one message for several bad frames in a row
            assert g.log().count(cause_text) == 1, g.log()
            assert_still_working()

        def empty_cloud(msg):
            msg.width, msg.row_step, msg.data = 0, 0, []
            return msg

        def nan_cloud(msg):
            points = np.full((1000, 4), np.nan, np.float32)
            msg.width, msg.row_step = 1000, 1000 * msg.point_step
            msg.data = points.tobytes()
            return msg

        def no_xyz_cloud(msg):
            msg.fields = [
                PointField(name=n, offset=4 * i, datatype=PointField.FLOAT32, count=1)
                for i, n in enumerate(("a", "b", "c", "intensity"))
            ]
            return msg

        def yuv_image(msg):
            msg.encoding = "yuv422"
            return msg

        def half_size_image(msg):
            small = np.ascontiguousarray(base.rgb[::2, ::2])
            return numpy_to_image(small, "rgb8", msg.header)

        check("empty point cloud", cloud=empty_cloud)
        check("all NaN/inf", cloud=nan_cloud)
        check("no x/y/z field", cloud=no_xyz_cloud)
        check("unsupported image encoding 'yuv422'", image=yuv_image)
        check("camera_info says 1242x375", image=half_size_image)

        # stamps further apart than max_time_offset: the scan is dropped, with the offset logged
        stamp[0] += 1.0
        far = SensorFrame(stamp[0], base.rgb, base.points, camera)
        image_msg, info_msg, cloud_msg = frame_messages(far)
        cloud_msg.header.stamp.sec += 0  # same second, but shift by half a second:
        cloud_msg.header.stamp.nanosec = (cloud_msg.header.stamp.nanosec + 500_000_000) % 10**9
        player.info_pub.publish(info_msg)
        player.image_pub.publish(image_msg)
        player.cloud_pub.publish(cloud_msg)
        g.spin_for(0.3)
        assert_still_working()
        assert g.wait_for_log("more than max_time_offset 0.05"), g.log()
        assert g.process.poll() is None, "node died"
    assert g.returncode == 0, g.log()


def run_node(tmp_path, parameters: dict, domain_id: int) -> subprocess.CompletedProcess:
    import yaml

    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"depth_completion": {"ros__parameters": parameters}}))
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "depth_completion_ros.node",
            "--ros-args",
            "--params-file",
            str(params),
        ],
        env=ros_environment(domain_id),
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("parameters", "expected"),
    [
        ({"model": "resnet9000"}, "parameter 'model'"),
        ({"max_time_offset": -1.0}, "max_time_offset"),
        ({"extrinsics": [1.0, 2.0, 3.0]}, "parameter 'extrinsics'"),
        ({"calibration_dir": "/nonexistent/kitti"}, "parameter 'calibration_dir'"),
        ({"min_depth": 50.0, "max_depth": 10.0}, "'min_depth'"),
        ({"model": "bpnet"}, "checkpoint"),
    ],
)
def test_bad_parameters_stop_the_node_naming_them(tmp_path, ros_domain_id, parameters, expected):
    result = run_node(tmp_path, parameters, ros_domain_id)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert expected in output, output


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        (
            {
                "calib_cam_to_cam.txt": None,
                "calib_velo_to_cam.txt": "R: 1 0 0 0 1 0 0 0 1\nT: 0 0 0\n",
            },
            "calib_cam_to_cam.txt",
        ),
        ({"calib_velo_to_cam.txt": "R: 1 0 0 0 1 0 0 0 1\nT: 0 0 zero\n"}, "non-numeric"),
        ({"calib_velo_to_cam.txt": "R: 1 0 0\nT: 0 0 0\n"}, "'R' has 3 values"),
        ({"calib_velo_to_cam.txt": "this is not a calibration file\n"}, "expected 'key: values'"),
    ],
)
def test_missing_or_malformed_calibration(
    tmp_path, ros_domain_id, kitti_calib_dir, files, expected
):
    calib = tmp_path / "calib"
    calib.mkdir()
    for name in ("calib_cam_to_cam.txt", "calib_velo_to_cam.txt"):
        (calib / name).write_text((kitti_calib_dir / name).read_text())
    for name, text in files.items():
        if text is None:
            (calib / name).unlink()
        else:
            (calib / name).write_text(text)
    result = run_node(tmp_path, {"calibration_dir": str(calib)}, ros_domain_id)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert expected in output and "calibration_dir" in output, output
