"""Bad input over DDS: one clear log message per cause, and the node keeps running.

Also start-up errors: a bad parameter or calibration stops the node with a message naming it.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time

import numpy as np
import pytest
import rclpy
from rclpy.parameter import Parameter
from ros_graph import node_graph
from sensor_msgs.msg import PointField

from depth_completion_ros.kitti import KittiDrive
from depth_completion_ros.messages import image_to_depth, numpy_to_image, stamp_to_nanoseconds
from depth_completion_ros.node import DepthCompletionNode
from depth_completion_ros.parameters import ParameterError
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

        def check(cause_text: str, image=None, cloud=None, info=None, repeats: int = 3):
            for _ in range(repeats):
                frame = next_frame()
                good_image, good_info, good_cloud = frame_messages(frame)
                if info:
                    player.info_pub.publish(info(good_info))
                bad_image = image(good_image) if image else None
                bad_cloud = cloud(good_cloud) if cloud else None
                publish(bad_image, bad_cloud, info=not info, frame=frame)
                g.spin_for(0.2)
            assert g.wait_for_log(cause_text), f"expected {cause_text!r} in log:\n{g.log()}"
            # throttled: one message for several bad frames in a row
            assert g.log().count(cause_text) == 1, g.log()
            assert_still_working()

        def empty_cloud(msg):
            msg.width, msg.row_step, msg.data = 0, 0, []
            return msg

        def nan_cloud(msg, size: int = 1000):
            points = np.full((size, 4), np.nan, np.float32)
            msg.width, msg.row_step = size, size * msg.point_step
            msg.data = points.tobytes()
            return msg

        sizes = iter(range(2000, 2100))

        def nan_cloud_of_size(msg):
            return nan_cloud(msg, next(sizes))

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

        def int16_cloud(msg):
            mm = np.clip(np.round(base.points[:, :3] * 1000.0), -32767, 32767).astype("<i2")
            msg.fields = [
                PointField(name=n, offset=2 * i, datatype=PointField.INT16, count=1)
                for i, n in enumerate(("x", "y", "z"))
            ]
            msg.point_step, msg.width = 6, len(mm)
            msg.row_step, msg.data = 6 * len(mm), mm.tobytes()
            return msg

        def float64_z_past_the_record(msg):
            msg.fields[2].datatype, msg.fields[2].offset = PointField.FLOAT64, 12
            return msg

        def nan_p_info(msg):
            p = np.array(msg.p)
            p[2] = np.nan
            msg.p = p
            return msg

        check("empty point cloud", cloud=empty_cloud)
        check("all NaN/inf", cloud=nan_cloud)
        # the numbers differ from frame to frame: still one message for the cause
        check("points, all NaN/inf", cloud=nan_cloud_of_size, repeats=3)
        check("point field 'x' is INT16: integer coordinates", cloud=int16_cloud)
        check("point field 'z' (FLOAT64, 8 bytes at offset 12)", cloud=float64_z_past_the_record)
        check("camera_info field 'p' holds NaN/inf at p[2]", info=nan_p_info)

        # two faults in turn: each is reported (a shared key silenced one of them)
        def unknown_datatype(msg):
            msg.fields[1].datatype = 11
            return msg

        def count_three(msg):
            msg.fields[0].count = 3
            return msg

        for _ in range(2):
            for fault in (unknown_datatype, count_three):
                frame = next_frame()
                publish(cloud=fault(frame_messages(frame)[2]), frame=frame)
                g.spin_for(0.2)
        assert g.wait_for_log("point field 'y' has unknown datatype 11"), g.log()
        assert g.wait_for_log("point field 'x' (FLOAT32) has count 3"), g.log()
        assert_still_working()
        check("no x/y/z field", cloud=no_xyz_cloud)
        check("unsupported image encoding 'yuv422'", image=yuv_image)
        check("camera_info says 1242x375", image=half_size_image)

        # one scan stamped an hour ahead: the next good frame still comes out (it was lost to a
        # "bag looped?" reset); the stray scan is rejected once two more images have come
        stray = next_frame()
        image_msg, info_msg, cloud_msg = frame_messages(stray)
        cloud_msg.header.stamp.sec += 3600
        player.info_pub.publish(info_msg)
        player.cloud_pub.publish(cloud_msg)  # its image is lost: only the scan arrives
        g.spin_for(0.3)
        assert_still_working()

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
        summary = g.wait_for_counts(lambda c: c["rejected_offset"] == 2 and c["waiting"] == 0)
    log = g.log()
    assert g.returncode == 0, log
    assert "Traceback" not in log and "RuntimeWarning" not in log, log
    # every scan accounted for: the bad ones failed, the far one rejected, the rest published
    assert summary["rejected_offset"] == 2 and summary["failed"] >= 30, log
    assert (
        summary["published"]
        + summary["dropped_busy"]
        + summary["rejected"]
        + summary["failed"]
        + summary["waiting"]
        + summary["idle"]
        == summary["received"]
    ), log
    assert summary["waiting"] == 0 and summary["received"] >= 40, log
    # failures counted by the stage that refused them (points, camera_info, image)
    assert summary["failed:points"] >= 15 and summary["failed:camera_info"] >= 3, summary
    assert summary["failed:image"] >= 6, summary


def test_destroy_after_a_failed_init_is_safe(ros_domain_id):
    """The context destroys the nodes it tracks, a half-built one too: its destroy_node raised
    "object has no attribute 'slot'" after the start-up error."""
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=ros_domain_id)
    try:
        with pytest.raises(ParameterError) as info:
            DepthCompletionNode(
                context=context, parameter_overrides=[Parameter("model", value="resnet9000")]
            )
    finally:
        rclpy.try_shutdown(context=context)  # still holds the half-built node (via the error)
    assert "parameter 'model': 'resnet9000' is not one of: classical" in str(info.value)


def _stamped_lines(log: str, text: str) -> list[float]:
    """ROS log times (s) of the lines containing ``text``."""
    return [
        float(m.group(1))
        for line in log.splitlines()
        if text in line and (m := re.search(r"\[(\d+\.\d+)\]", line))
    ]


def test_status_lines_and_no_pair_warning_keep_their_periods(drive, ros_domain_id, tmp_path):
    """A status line every diagnostics_period (the throttle equal to the period gave every
    second one), the first no-pair warning after no_pair_warning (the 2 s timer gave 2 s), and
    a listed publisher that sends nothing is not taken for a live one."""
    base = drive.frame(drive.frame_ids[0])
    parameters = {
        "calibration_dir": str(drive.calibration_dir),
        "input_reliability": "reliable",
        "diagnostics_period": 2.0,
        "no_pair_warning": 0.6,
    }
    with node_graph(parameters, ros_domain_id, tmp_path) as g:
        # the player's publishers are listed (graph) but send nothing: not taken for live ones
        listed = "/image (1 publisher(s) listed, reliable, no message yet)"
        assert g.wait_for_log(listed), g.log()
        frames = [
            SensorFrame(3_000.0 + 0.5 * i, base.rgb, base.points, drive.calibration.camera)
            for i in range(20)
        ]
        g.player.play(frames, g.executor, timeout=5.0, period=0.5)
        g.spin_for(0.5)
    log = g.log()
    ready = _stamped_lines(log, "ready:")[0]
    first_warning = _stamped_lines(log, "no synchronised pair")[0]
    assert 0.5 < first_warning - ready < 1.4, log
    status = _stamped_lines(log, "status: ")
    assert len(status) >= 3, log
    assert len(g.diagnostics) >= 3, g.diagnostics
    for c in g.diagnostics:  # every snapshot adds up, taken while frames flow
        parts = ("published", "dropped_busy", "rejected", "failed", "waiting", "idle")
        assert sum(c[k] for k in parts) == c["received"], c
    gaps = np.diff(status)
    assert np.all((gaps > 1.5) & (gaps < 3.0)), (gaps, log)


def test_int16_millimetre_cloud_with_points_scale(drive, ros_domain_id, tmp_path):
    """An INT16 millimetre cloud (ranges clipped to 32 m) gives depth with points_scale 0.001."""
    base = drive.frame(drive.frame_ids[0])
    near = base.points[np.abs(base.points[:, :3]).max(axis=1) < 32.0]
    mm = np.round(near[:, :3] * 1000.0).astype("<i2")
    frame = SensorFrame(4_000.0, base.rgb, near, drive.calibration.camera)
    image, info, cloud = frame_messages(frame)
    cloud.fields = [
        PointField(name=n, offset=2 * i, datatype=PointField.INT16, count=1)
        for i, n in enumerate(("x", "y", "z"))
    ]
    cloud.point_step, cloud.row_step, cloud.data = 6, 6 * len(mm), mm.tobytes()
    parameters = {
        "calibration_dir": str(drive.calibration_dir),
        "input_reliability": "reliable",
        "points_scale": 0.001,
    }
    with node_graph(parameters, ros_domain_id, tmp_path) as g:
        key = g.player.publish_frame(frame, (image, info, cloud))
        deadline = time.monotonic() + 20.0
        while "depth/image" not in g.player.result.outputs.get(key, {}):
            assert time.monotonic() < deadline, g.log()
            g.spin_for(0.1)
    depth = image_to_depth(g.player.result.outputs[key]["depth/image"])
    assert np.isfinite(depth).mean() > 0.3 and np.nanmax(depth) <= 100.0, g.log()


def test_diagnostics_topic_carries_the_counts(drive, ros_domain_id, tmp_path):
    pytest.importorskip(
        "diagnostic_msgs",
        reason="ros-kilted-diagnostic-msgs is not installed in this environment (requirements)",
    )
    from diagnostic_msgs.msg import DiagnosticArray

    base = drive.frame(drive.frame_ids[0])
    parameters = {
        "calibration_dir": str(drive.calibration_dir),
        "input_reliability": "reliable",
        "diagnostics_period": 0.5,
    }
    with node_graph(parameters, ros_domain_id, tmp_path) as g:
        got: list = []
        g.player.create_subscription(DiagnosticArray, "/diagnostics", got.append, 10)
        frames = [
            SensorFrame(5_000.0 + 0.1 * i, base.rgb, base.points, drive.calibration.camera)
            for i in range(3)
        ]
        g.player.play(frames, g.executor, timeout=10.0)
        g.spin_for(1.5)
    values = {kv.key: kv.value for kv in got[-1].status[0].values}
    assert values["received"] == "3" and values["published"] == "3", values
    assert got[-1].status[0].name.startswith("depth_completion")


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
    # destroy_node after a failed __init__ ran into "object has no attribute 'slot'"
    assert "Traceback" not in output, output


def test_text_file_as_checkpoint_is_called_not_a_checkpoint(
    tmp_path, ros_domain_id, kitti_calib_dir
):
    checkpoint = str(kitti_calib_dir / "calib_cam_to_cam.txt")
    result = run_node(tmp_path, {"model": "selfdc_r18", "checkpoint": checkpoint}, ros_domain_id)
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "is not a checkpoint" in output and "could run code" not in output, output
    assert "Traceback" not in output, output


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
