"""sensor_msgs/CompressedImage (image_transport's ``compressed``: jpeg/png) everywhere an image
comes in: the node (over DDS), kitti_to_bag --compress, process_bag, play_bag and the bag dataset.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import QoSProfile, ReliabilityPolicy
from ros_graph import node_graph
from sensor_msgs.msg import CompressedImage, Image

from depth_completion_ros.bag_io import BagError, BagReader, to_ros
from depth_completion_ros.depth_io import read_rgb
from depth_completion_ros.frame import FrameInputs, FrameProcessor, FrameSource
from depth_completion_ros.kitti import KittiDrive
from depth_completion_ros.messages import (
    MessageError,
    image_to_depth,
    image_to_rgb,
    make_header,
    rgb_to_compressed_image,
    stamp_to_nanoseconds,
    transport_topic,
)
from depth_completion_ros.parameters import load_parameters
from depth_completion_ros.tools import kitti_to_bag, process_bag
from depth_completion_ros.tools.graph import (
    SensorFrame,
    frame_messages,
    ros_environment,
    start_node_process,
    stop_process,
    use_ros_environment,
)
from depth_completion_ros.transforms import NoTransforms

DRIVE = "2011_09_26_drive_0000_sync"
IMAGE = "/kitti/camera_color_left/image_raw"
INFO = "/kitti/camera_color_left/camera_info"
POINTS = "/kitti/velo/pointcloud"


def _pattern() -> np.ndarray:
    """RGB: red, green, blue and grey quarters (channel order mistakes show at once)."""
    rgb = np.zeros((16, 24, 3), np.uint8)
    rgb[:8, :12] = (255, 0, 0)
    rgb[:8, 12:] = (0, 255, 0)
    rgb[8:, :12] = (0, 0, 255)
    rgb[8:, 12:] = (90, 90, 90)
    return rgb


def _assert_quadrants(decoded: np.ndarray, rgb: np.ndarray) -> None:
    """Lossy jpeg: each quadrant's centre keeps its colour (a channel swap is off by 255)."""
    for y, x in ((4, 6), (4, 18), (12, 6), (12, 18)):
        assert np.abs(decoded[y, x].astype(int) - rgb[y, x]).max() < 16, (y, x, decoded[y, x])


def _compressed(payload: np.ndarray, fmt: str) -> CompressedImage:
    msg = CompressedImage(format=fmt)
    msg.data = payload.tobytes()
    return msg


def test_formats_and_channel_order() -> None:
    rgb = _pattern()
    bgr = np.ascontiguousarray(rgb[..., ::-1])
    png_of_bgr = cv2.imencode(".png", bgr)[1]  # what cv2.imencode of a bgr8 image stores
    png_of_rgb = cv2.imencode(".png", rgb)[1]  # channels stored as given
    # compressed_image_transport's formats: "compressed bgr8" = BGR data, otherwise RGB data;
    # a bare codec name (older publishers) = BGR data
    for fmt, payload in (
        ("rgb8; png compressed bgr8", png_of_bgr),
        ("bgr8; png compressed bgr8", png_of_bgr),
        ("png", png_of_bgr),
        ("rgb8; png compressed rgb8", png_of_rgb),
        ("rgb8; png compressed", png_of_rgb),
    ):
        np.testing.assert_array_equal(image_to_rgb(_compressed(payload, fmt)), rgb, err_msg=fmt)
    # our encoder writes what compressed_image_transport writes; png is lossless
    msg = rgb_to_compressed_image(rgb, "png")
    assert msg.format == "rgb8; png compressed bgr8"
    np.testing.assert_array_equal(image_to_rgb(msg), rgb)
    jpeg = rgb_to_compressed_image(rgb, "jpeg", jpeg_quality=95)
    assert jpeg.format == "rgb8; jpeg compressed bgr8"
    _assert_quadrants(image_to_rgb(jpeg), rgb)
    bare = _compressed(cv2.imencode(".jpg", bgr)[1], "jpeg")
    _assert_quadrants(image_to_rgb(bare), rgb)
    # mono
    grey = cv2.imencode(".png", rgb[..., 0])[1]
    out = image_to_rgb(_compressed(grey, "mono8; png compressed mono8"))
    np.testing.assert_array_equal(out, np.repeat(rgb[..., :1], 3, axis=2))


def test_broken_payloads_are_clear_errors_and_an_image_stage_failure() -> None:
    jpeg = rgb_to_compressed_image(_pattern(), "jpeg")
    broken = _compressed(np.frombuffer(bytes(jpeg.data)[:40], np.uint8), jpeg.format)
    with pytest.raises(MessageError, match="cannot be decoded"):
        image_to_rgb(broken)
    with pytest.raises(MessageError, match="no data"):
        image_to_rgb(CompressedImage(format="rgb8; jpeg compressed bgr8"))
    with pytest.raises(MessageError, match="compressedDepth"):
        image_to_rgb(_compressed(np.zeros(8, np.uint8), "16UC1; compressedDepth png"))
    # the frame step counts it under the image stage, as any bad image
    config = load_parameters(None, {"image_transport": "compressed"})
    topics = {"image": "/cam/image/compressed", "camera_info": "/cam/info", "points": "/pts"}
    processor = FrameProcessor(config, FrameSource(topics, NoTransforms("none"), "fix"))
    frame = SensorFrame(1.0, _pattern(), np.zeros((5, 4), np.float32), _camera())
    _, info, cloud = frame_messages(frame)
    broken.header = make_header(10**9, "camera_optical")
    outcome = processor.process(FrameInputs(broken, cloud, info))
    assert outcome.failure is not None and outcome.failure.stage == "image"
    assert "image on /cam/image/compressed" in str(outcome.failure)
    assert "cannot be decoded" in str(outcome.failure)
    assert processor.accounting.failed_by_stage == {"image": 1}


def _camera():
    from depth_completion_ros.calibration import PinholeCamera

    return PinholeCamera(24, 16, np.array([[20.0, 0, 12, 0], [0, 20.0, 8, 0], [0, 0, 1, 0]]))


def test_transport_topic_follows_image_transport() -> None:
    assert transport_topic("/cam/image_raw", "raw") == "/cam/image_raw"
    assert transport_topic("/cam/image_raw", "compressed") == "/cam/image_raw/compressed"
    assert transport_topic("/cam/image_raw/compressed", "compressed") == (
        "/cam/image_raw/compressed"
    )


# --- bags -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bags(kitti_raw_seq: Path, tmp_path_factory) -> dict[str, Path]:
    """The 20-frame KITTI drive as a raw bag, a png-compressed one and a jpeg-compressed one."""
    root = tmp_path_factory.mktemp("compressed")
    drive = str(kitti_raw_seq / DRIVE)
    out = {}
    for name, extra in (
        ("raw", []),
        ("png", ["--compress"]),
        ("jpeg", ["--compress", "--compress-format", "jpeg", "--jpeg-quality", "90"]),
    ):
        out[name] = root / name
        assert kitti_to_bag.main([drive, str(out[name]), "--cameras", "2", *extra]) == 0
    return out


def test_kitti_to_bag_compress_writes_image_transport_topics(bags, kitti_raw_seq: Path) -> None:
    drive = kitti_raw_seq / DRIVE
    for name in ("png", "jpeg"):
        with BagReader(bags[name]) as reader:
            assert reader.topics[f"{IMAGE}/compressed"] == "sensor_msgs/msg/CompressedImage"
            assert IMAGE not in reader.topics and INFO in reader.topics
            messages = list(reader.messages([f"{IMAGE}/compressed"]))
        assert len(messages) == 20
        msg = to_ros(messages[3].data, messages[3].msgtype)
        assert msg.format == f"rgb8; {name} compressed bgr8"
        assert msg.header.frame_id == "camera_color_left_optical"
        source = read_rgb(drive / "image_02" / "data" / f"{3:010d}.png")
        decoded = image_to_rgb(msg)
        if name == "png":
            np.testing.assert_array_equal(decoded, source)  # lossless
        else:
            assert np.abs(decoded.astype(int) - source).mean() < 6  # a channel swap: > 20
            assert len(msg.data) < 0.25 * source.nbytes


def test_process_bag_reads_compressed_bags(bags, kitti_raw_seq: Path, tmp_path: Path) -> None:
    """png: the depth equals the raw bag's, bit for bit; jpeg: processed (a lossy image gives a
    slightly different fill, the LiDAR depth itself is the same)."""
    depths = {}
    for name in ("raw", "png", "jpeg"):
        overrides = {"calibration_dir": str(kitti_raw_seq), "max_time_offset": 0.1}
        if name != "raw":
            overrides["image_transport"] = "compressed"  # reads IMAGE + '/compressed'
        config = load_parameters(None, overrides)
        report = process_bag.process(
            bags[name], tmp_path / name, config, progress=False, copy_input=False
        )
        assert report.processed == 20 and report.failed == 0, report.failures
        with BagReader(tmp_path / name) as reader:
            depths[name] = [
                image_to_depth(to_ros(m.data, m.msgtype)) for m in reader.messages(["/depth/image"])
            ]
    for raw, png in zip(depths["raw"], depths["png"], strict=True):
        np.testing.assert_array_equal(raw, png)
    assert len(depths["jpeg"]) == 20
    # the compressed topic named directly works too; a raw topic the bag holds only
    # compressed says how to read it
    args = ["--calibration-dir", str(kitti_raw_seq), "--no-progress", "--outputs-only"]
    assert (
        process_bag.main(
            [str(bags["png"]), str(tmp_path / "direct"), "--image-topic", f"{IMAGE}/compressed"]
            + args
        )
        == 0
    )
    config = load_parameters(None, {"calibration_dir": str(kitti_raw_seq)})
    with pytest.raises(BagError, match="image_transport:=compressed"):
        process_bag.process(bags["png"], tmp_path / "x", config, progress=False)


def test_bag_dataset_reads_compressed_images(bags, kitti_raw_seq: Path, tmp_path: Path) -> None:
    from training.datasets import build_dataset

    params = tmp_path / "params.yaml"
    params.write_text("depth_completion:\n  ros__parameters:\n    image_transport: compressed\n")
    dataset = build_dataset(
        f"bag:{bags['png']}", "val", {"node_params": str(params), "max_samples": 2}
    )
    sample = dataset[0]
    frame = dataset.items[0]
    source = read_rgb(kitti_raw_seq / DRIVE / "image_02" / "data" / f"{frame:010d}.png")
    np.testing.assert_array_equal(sample["rgb"], source)
    assert (sample["sparse"] > 0).sum() > 10_000


# --- over DDS ---------------------------------------------------------------------------------


def test_node_subscribes_compressed_and_counts_broken_payloads(
    kitti_raw_seq: Path, ros_domain_id: int, tmp_path: Path
) -> None:
    drive = KittiDrive(kitti_raw_seq / DRIVE)
    base = drive.frame(drive.frame_ids[0])
    camera = drive.calibration.camera
    parameters = {
        "calibration_dir": str(drive.calibration_dir),
        "input_reliability": "reliable",
        "image_transport": "compressed",
    }
    with node_graph(parameters, ros_domain_id, tmp_path) as g:
        player = g.player  # publishes jpeg CompressedImages on image/compressed
        assert player.image_pub.topic_name == "/image/compressed"
        good = SensorFrame(3000.0, base.rgb, base.points, camera)
        result = player.play([good], g.executor, timeout=30.0)
        key = stamp_to_nanoseconds(frame_messages(good)[0].header.stamp)
        assert "depth/image" in result.outputs.get(key, {}), g.log()
        depth = image_to_depth(result.outputs[key]["depth/image"])
        assert depth.shape == base.rgb.shape[:2] and np.isfinite(depth).sum() > 100_000
        # broken jpeg payloads: counted as failed:image, said in the log, the node goes on
        for i in range(2):
            frame = SensorFrame(3001.0 + i, base.rgb, base.points, camera)
            image, info, cloud = frame_messages(frame, codec="jpeg")
            payload = bytes(image.data)
            image.data = payload[:100] if i == 0 else b"\x00" * 64  # cut short; not a jpeg
            player.info_pub.publish(info)
            player.image_pub.publish(image)
            player.cloud_pub.publish(cloud)
            g.spin_for(0.3)
        counts = g.wait_for_counts(lambda c: c.get("failed:image", 0) >= 2 and c["waiting"] == 0)
        assert counts.get("failed:image", 0) == 2, (counts, g.log())
        assert g.wait_for_log("cannot be decoded"), g.log()
        again = SensorFrame(3010.0, base.rgb, base.points, camera)
        result = player.play([again], g.executor, timeout=30.0)
        key = stamp_to_nanoseconds(frame_messages(again)[0].header.stamp)
        assert "depth/image" in result.outputs.get(key, {}), g.log()
        counts = g.wait_for_counts(lambda c: c["published"] >= 2)
        assert counts["published"] >= 2 and counts["failed"] == counts["failed:image"]
    assert g.returncode == 0, g.log()


def test_play_bag_plays_a_compressed_bag_into_the_node(
    bags, kitti_raw_seq: Path, ros_domain_id: int, tmp_path: Path
) -> None:
    """kitti_to_bag --compress, the node with image_transport compressed and its image topic
    remapped to the bag's base name (the '/compressed' follows the remapping, as with
    image_transport), play_bag as is: depth comes out."""
    use_ros_environment(ros_domain_id)
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=ros_domain_id)
    listener = rclpy.create_node("compressed_listener", context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(listener)
    depth: list = []
    qos = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
    listener.create_subscription(Image, "/depth/image", depth.append, qos)
    node = start_node_process(
        {"calibration_dir": str(kitti_raw_seq), "image_transport": "compressed"},
        ros_domain_id,
        tmp_path / "node.log",
        ["-r", f"image:={IMAGE}", "-r", f"camera_info:={INFO}", "-r", f"points:={POINTS}"],
    )
    play = subprocess.Popen(
        [sys.executable, "-m", "depth_completion_ros.tools.play_bag", str(bags["jpeg"])],
        env=ros_environment(ros_domain_id),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 90
        while play.poll() is None and time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.05)
        end = time.monotonic() + 3
        while time.monotonic() < end and not depth:
            executor.spin_once(timeout_sec=0.05)
        stdout, stderr = play.communicate(timeout=10)
    finally:
        if play.poll() is None:
            play.kill()
        stop_process(node)
        listener.destroy_node()
        rclpy.try_shutdown(context=context)
    log = (tmp_path / "node.log").read_text()
    assert play.returncode == 0, stderr
    assert f"{IMAGE}/compressed: 20" in stdout, stdout
    assert f"{IMAGE}/compressed" in log  # what the node says it subscribes
    assert depth, f"no depth image; play_bag: {stderr}\nnode: {log}"
