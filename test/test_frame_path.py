"""The one per-frame path: one error policy and one pairing rule in the node, process_bag and
the training bag dataset (real KITTI frames, real bags, the node over DDS)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from ros_graph import node_graph

from depth_completion_ros.bag_io import BagWriter, from_ros
from depth_completion_ros.calibration import PinholeCamera
from depth_completion_ros.kitti import KITTI_BAG_TOPICS, KittiDrive
from depth_completion_ros.messages import stamp_to_seconds
from depth_completion_ros.parameters import load_parameters
from depth_completion_ros.tools import process_bag
from depth_completion_ros.tools.graph import SensorFrame, frame_messages

DRIVE = "2011_09_26_drive_0000_sync"
#: a pairing tolerance that float64 holds exactly, and an image stamp offset by exactly it
BOUNDARY = 0.0625
BOUNDARY_NS = 62_500_000


@pytest.fixture(scope="module")
def drive(kitti_raw_seq: Path) -> KittiDrive:
    return KittiDrive(kitti_raw_seq / DRIVE)


def crop(frame_rgb: np.ndarray, camera: PinholeCamera, top: int, left: int, h: int, w: int):
    """A window of the image with the camera that sees exactly it (principal point moved)."""
    P = np.array(camera.P, dtype=np.float64).reshape(3, 4).copy()
    P[0, 2] -= left
    P[1, 2] -= top
    rgb = np.ascontiguousarray(frame_rgb[top : top + h, left : left + w])
    return rgb, PinholeCamera(width=w, height=h, P=P)


def write_bag(path: Path, frames: list[SensorFrame], image_offsets_ns: list[int]) -> Path:
    """A bag with kitti_to_bag's topic names: camera_info, image (stamp + offset), cloud."""
    topics = KITTI_BAG_TOPICS
    with BagWriter(path) as writer:
        for topic, kind in (
            (topics["camera_info"], "sensor_msgs/msg/CameraInfo"),
            (topics["image"], "sensor_msgs/msg/Image"),
            (topics["points"], "sensor_msgs/msg/PointCloud2"),
        ):
            writer.add_topic(topic, kind)
        for frame, offset in zip(frames, image_offsets_ns, strict=True):
            image, info, cloud = frame_messages(frame)
            nanosec = image.header.stamp.nanosec + offset
            image.header.stamp.sec += nanosec // 1_000_000_000
            image.header.stamp.nanosec = nanosec % 1_000_000_000
            t = int(frame.stamp * 1e9)
            writer.write(topics["camera_info"], t, from_ros(info))
            writer.write(topics["points"], t + 1, from_ros(cloud))
            writer.write(topics["image"], t + 2 + offset, from_ros(image))
    return path


def test_backend_failure_skips_one_frame_in_process_bag(drive, r18_weights, tmp_path, capsys):
    """A BackendError on one frame (an image too small for a network) fails that frame only,
    counted under its stage, as in the node; the frames around it are written."""
    base = drive.frame(drive.frame_ids[0])
    camera = drive.calibration.camera
    frames = []
    for i, size in enumerate(((64, 128), (6, 6), (64, 128))):
        h, w = size
        rgb, cam = crop(base.rgb, camera, 375 - 40 - h, 600, h, w)
        frames.append(SensorFrame(100.0 + i, rgb, base.points, cam))
    bag = write_bag(tmp_path / "bag", frames, [0, 0, 0])
    config = load_parameters(
        None,
        {
            "calibration_dir": str(drive.calibration_dir),
            "model": "selfdc_r18",
            "checkpoint": str(r18_weights),
            "device": "cpu",
            "limit_to_lidar_support": False,
        },
    )
    report = process_bag.process(bag, tmp_path / "out", config, progress=False)
    assert report.processed == 2 and report.failed == 1, report
    assert report.failed_by_stage == {"pipeline": 1}, report
    assert "too small for a network" in report.failures[0], report.failures
    # the console script says so and exits 0 (a skipped frame is not a failed run)
    code = process_bag.main(
        [
            str(bag),
            str(tmp_path / "out2"),
            "--no-progress",
            "-p",
            f"calibration_dir:={drive.calibration_dir}",
            "-p",
            "model:=selfdc_r18",
            "-p",
            f"checkpoint:={r18_weights}",
            "-p",
            "device:=cpu",
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "2 frames with depth (1 failed" in captured.out
    assert "too small for a network" in captured.err


def _boundary_frames(drive: KittiDrive) -> list[SensorFrame]:
    base = drive.frame(drive.frame_ids[0])
    return [
        SensorFrame(1000.0 + 2 * i, base.rgb, base.points, drive.calibration.camera)
        for i in range(2)
    ]


def test_offset_equal_to_max_time_offset_is_paired_offline(drive, tmp_path):
    """max_time_offset is inclusive, decided in float64 seconds (sec + 1e-9 nanosec): an image
    exactly max_time_offset after its scan pairs; with the next float below as the tolerance
    (the offset is then the next float beyond it) it is rejected. process_bag and the training
    bag dataset decide alike (the dataset used ns * 1e-9, which is 1 ulp larger)."""
    from training.datasets import build_dataset

    frames = _boundary_frames(drive)
    bag = write_bag(tmp_path / "bag", frames, [0, BOUNDARY_NS])
    image_ns = int(frames[1].stamp * 1e9) + BOUNDARY_NS
    image_s = stamp_to_seconds(
        type("T", (), {"sec": image_ns // 10**9, "nanosec": image_ns % 10**9})
    )
    assert image_s - frames[1].stamp == BOUNDARY  # the offset is exactly the tolerance

    for tolerance, paired in ((BOUNDARY, 2), (np.nextafter(BOUNDARY, 0.0), 1)):
        config = load_parameters(
            None,
            {"calibration_dir": str(drive.calibration_dir), "max_time_offset": float(tolerance)},
        )
        out = tmp_path / f"out_{paired}"
        report = process_bag.process(bag, out, config, progress=False)
        assert (report.processed, report.rejected_offset) == (paired, 2 - paired), report

        dataset = build_dataset(
            f"bag:{bag}",
            "train",
            {
                "calibration_dir": str(drive.calibration_dir),
                "max_time_offset": float(tolerance),
            },
        )
        assert len(dataset) == paired, dataset.stats
        assert dataset.stats["rejected_offset"] == 2 - paired


@pytest.mark.parametrize(
    ("tolerance", "published"), [(BOUNDARY, 1), (np.nextafter(BOUNDARY, 0.0), 0)]
)
def test_offset_equal_to_max_time_offset_is_paired_by_the_node(
    drive, ros_domain_id, tmp_path, tolerance, published
):
    """The same boundary over DDS: the node pairs an offset equal to max_time_offset and rejects
    the next float beyond it, counted on /diagnostics."""
    frame = _boundary_frames(drive)[0]
    parameters = {
        "calibration_dir": str(drive.calibration_dir),
        "input_reliability": "reliable",
        "max_time_offset": float(tolerance),
    }
    with node_graph(parameters, ros_domain_id, tmp_path) as g:
        image, info, cloud = frame_messages(frame)
        image.header.stamp.nanosec = BOUNDARY_NS
        g.player.info_pub.publish(info)
        g.player.cloud_pub.publish(cloud)
        g.spin_for(0.2)
        g.player.image_pub.publish(image)
        counts = g.wait_for_counts(
            lambda c: c["published"] + c["rejected_offset"] == 1 and c["waiting"] == 0
        )
    assert counts["received"] == 1, (counts, g.log())
    assert (counts["published"], counts["rejected_offset"]) == (published, 1 - published), counts
