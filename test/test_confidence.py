"""The depth/confidence output: its two definitions at exact values, NLSPN's confidence mapped
back like the depth, the node over DDS, process_bag and fuse_rgbd."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from depth_completion_ros.backends.classical import ClassicalBackend
from depth_completion_ros.backends.network import NetworkBackend
from depth_completion_ros.calibration import PinholeCamera
from depth_completion_ros.confidence import distance_confidence, distance_to_returns
from depth_completion_ros.fusion import confident_depth, fuse
from depth_completion_ros.networks.registry import KITTI_FOCAL
from depth_completion_ros.pipeline import DepthPipeline

DRIVE = "2011_09_26_drive_0000_sync"


# --- the distance-based confidence ----------------------------------------------------------


def test_distance_confidence_at_exact_distances():
    sparse = np.zeros((20, 30), np.float32)
    sparse[5, 10] = 7.0
    conf = distance_confidence(sparse, 5.0)
    assert conf.dtype == np.float32 and conf.shape == sparse.shape
    assert conf[5, 10] == 1.0  # a return
    assert conf[5 + 3, 10 + 4] == pytest.approx(np.exp(-1.0), rel=1e-6)  # 5 px: 1/e
    assert conf[5, 12] == pytest.approx(np.exp(-2 / 5), rel=1e-6)
    assert conf[5 + 12, 10 + 5] == pytest.approx(np.exp(-13 / 5), rel=1e-6)  # 5-12-13
    # the nearest return counts, and d0 scales the distance
    sparse[15, 25] = 3.0
    assert distance_to_returns(sparse)[15, 27] == pytest.approx(2.0)
    assert distance_confidence(sparse, 2.0)[15, 27] == pytest.approx(np.exp(-1.0), rel=1e-6)
    # NaN and 0 are not returns; no return at all: 0 everywhere
    empty = np.full((4, 4), np.nan, np.float32)
    empty[0, 0] = 0.0
    assert (distance_confidence(empty) == 0).all()
    with pytest.raises(ValueError, match="> 0"):
        distance_confidence(sparse, 0.0)


def _camera(width: int, height: int, fx: float) -> PinholeCamera:
    P = np.array([[fx, 0, width / 2, 0], [0, fx, height / 2, 0], [0, 0, 1.0, 0]])
    return PinholeCamera(width=width, height=height, P=P)


def _street_frame(height=120, width=200):
    """A LiDAR-like sparse depth (rows every 4 px from row 60 down) and a random image."""
    sparse = np.zeros((height, width), np.float32)
    sparse[60::4, ::2] = 12.0
    sparse[60::4, 80:104] = 0.0  # a hole 24 px wide: the fill spans it, far from any return
    rgb = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    camera = _camera(width, height, 200.0)
    return rgb, sparse, camera


def test_pipeline_classical_confidence_only_when_asked(monkeypatch):
    rgb, sparse, camera = _street_frame()
    pipeline = DepthPipeline(ClassicalBackend(), support=None, confidence_distance=4.0)
    calls = []
    original = distance_confidence

    def counted(*args, **kwargs):
        calls.append(args)
        return original(*args, **kwargs)

    monkeypatch.setattr("depth_completion_ros.pipeline.distance_confidence", counted)
    # points already in the camera frame (identity extrinsic) that project onto ``sparse``
    v, u = np.nonzero(sparse)
    z = sparse[v, u]
    points = np.stack(((u - 100.0) * z / 200.0, (v - 60.0) * z / 200.0, z), axis=1)
    run_off = pipeline.run(rgb, points.astype(np.float32), camera, np.eye(4))
    assert run_off.confidence is None and not calls
    run_on = pipeline.run(rgb, points.astype(np.float32), camera, np.eye(4), confidence=True)
    assert len(calls) == 1
    np.testing.assert_array_equal(run_on.dense, run_off.dense)  # the depth is unchanged
    conf = run_on.confidence
    assert conf.dtype == np.float32 and conf.shape == sparse.shape
    # NaN exactly where the depth is NaN; elsewhere exp(-d / 4 px) of the projected returns
    np.testing.assert_array_equal(np.isnan(conf), np.isnan(run_on.dense))
    valid = ~np.isnan(conf)
    want = distance_confidence(run_on.sparse, 4.0)
    np.testing.assert_array_equal(conf[valid], want[valid])
    assert (conf[run_on.sparse > 0] == 1.0).all()
    assert np.isfinite(conf[70, 91]) and conf[70, 91] < 0.06  # mid-hole: 12-13 px, e^-3


# --- NLSPN's confidence, mapped back like the depth -----------------------------------------


class ConfidenceProbe(nn.Module):
    """An NLSPN stand-in: depth = 1 + y / 2 + x / 8 + 2000 * batch index (distinct per pixel,
    linear, so any misplacement shows) and confidence = depth / 1e4 (in 0-1), as SelfDCNet
    returns them with ``return_aux=True``."""

    provides_confidence = True

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, image: torch.Tensor, sparse: torch.Tensor, *, return_aux: bool = False):
        b, _, h, w = image.shape
        y = torch.arange(h, dtype=torch.float32).view(1, 1, h, 1)
        x = torch.arange(w, dtype=torch.float32).view(1, 1, 1, w)
        n = torch.arange(b, dtype=torch.float32).view(b, 1, 1, 1)
        depth = (1 + y / 2 + x / 8 + 2000 * n) * self.scale
        return (depth, {"confidence": depth / 1e4}) if return_aux else depth


GEOMETRIES = {
    # name: (height, width, fx, input mode): the plans of test_network_geometry
    "cropped (KITTI crop + edge tiles)": (375, 1242, KITTI_FOCAL, "native"),
    "padded (whole image)": (470, 630, 500.0, "native"),
    "resized up": (480, 640, 500.0, "resize"),
    "resized down": (1200, 1920, 1000.0, "resize"),
}


@pytest.mark.parametrize("name", list(GEOMETRIES))
def test_nlspn_confidence_maps_back_like_the_depth(name):
    height, width, fx, mode = GEOMETRIES[name]
    K = np.array([[fx, 0, width / 2], [0, fx, height / 2], [0, 0, 1.0]])
    sparse = np.zeros((height, width), np.float32)
    sparse[height // 2 :: 4, ::3] = 10.0
    rgb = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    backend = NetworkBackend(
        model="selfdc_r18", net=ConfidenceProbe(), device="cpu", input_mode=mode
    )
    assert backend.has_confidence
    depth, conf = backend.complete_with_confidence(rgb, sparse, K)
    np.testing.assert_array_equal(depth, backend.complete(rgb, sparse, K))
    assert conf.shape == depth.shape and conf.dtype == np.float32
    # the same pixels get a value, at the exact edges of the window, tiles and resampling
    np.testing.assert_array_equal(conf > 0, depth > 0)
    assert (depth > 0).any() and not (depth > 0).all()
    # and each is the network's confidence at the place the depth came from
    np.testing.assert_allclose(conf, depth / 1e4, rtol=1e-5, atol=1e-9)
    # through the pipeline: NaN on the same pixels as the published depth
    camera = _camera(width, height, fx)
    v, u = np.nonzero(sparse)
    z = sparse[v, u]
    points = np.stack(((u - width / 2) * z / fx, (v - height / 2) * z / fx, z), axis=1)
    result = DepthPipeline(backend).run(rgb, points, camera, np.eye(4), confidence=True)
    np.testing.assert_array_equal(np.isnan(result.confidence), np.isnan(result.dense))
    assert np.nanmax(result.confidence) <= 1.0 and np.nanmin(result.confidence) >= 0.0


def test_backends_without_a_head_give_none(kitti_frame, r18_weights):
    """BP-Net-like nets (no ``provides_confidence``) and the classical fill return None (the
    pipeline then uses the distance-based confidence); the real SelfDC net gives its head's
    sigmoid on exactly the window's pixels, with the depth of ``complete``."""
    rgb, sparse, K = kitti_frame

    class NoHead(ConfidenceProbe):
        provides_confidence = False

    plain = NetworkBackend(model="selfdc_r18", net=NoHead(), device="cpu")
    assert not plain.has_confidence and plain.complete_with_confidence(rgb, sparse, K)[1] is None
    assert ClassicalBackend().complete_with_confidence(rgb, sparse, K)[1] is None
    backend = NetworkBackend(model="selfdc_r18", checkpoint=r18_weights, device="cpu")
    depth, conf = backend.complete_with_confidence(rgb, sparse, K)
    np.testing.assert_array_equal(depth, backend.complete(rgb, sparse, K))
    assert (conf[:23] == 0).all() and (conf[23:] > 0).all() and conf.max() <= 1.0


# --- the node over DDS ----------------------------------------------------------------------


@pytest.mark.parametrize("publish", [True, False])
def test_node_publishes_confidence_only_when_asked(
    kitti_raw_seq: Path, ros_domain_id: int, tmp_path: Path, publish: bool
) -> None:
    from ros_graph import node_graph

    from depth_completion_ros.kitti import KittiDrive
    from depth_completion_ros.messages import image_to_depth, stamp_to_nanoseconds
    from depth_completion_ros.tools.graph import SensorFrame, frame_messages

    drive = KittiDrive(kitti_raw_seq / DRIVE)
    base = drive.frame(drive.frame_ids[0])
    parameters = {
        "calibration_dir": str(drive.calibration_dir),
        "input_reliability": "reliable",
        "publish_confidence": publish,
    }
    with node_graph(parameters, ros_domain_id, tmp_path) as g:
        frame = SensorFrame(4000.0, base.rgb, base.points, drive.calibration.camera)
        result = g.player.play([frame], g.executor, timeout=30.0)
        key = stamp_to_nanoseconds(frame_messages(frame)[0].header.stamp)
        outputs = result.outputs.get(key, {})
        assert "depth/image" in outputs, g.log()
        if publish:
            g.spin_for(0.3)
            outputs = g.player.result.outputs[key]
            conf_msg, depth_msg = outputs["depth/confidence"], outputs["depth/image"]
            assert conf_msg.header == depth_msg.header and conf_msg.encoding == "32FC1"
            conf, depth = image_to_depth(conf_msg), image_to_depth(depth_msg)
            np.testing.assert_array_equal(np.isnan(conf), np.isnan(depth))
            assert np.nanmin(conf) >= 0 and np.nanmax(conf) == 1.0
        else:
            g.spin_for(1.0)
            # (the publisher exists either way: publish_confidence can be set at runtime)
            assert "depth/confidence" not in g.player.result.outputs[key]
    assert g.returncode == 0, g.log()


# --- process_bag and fuse_rgbd --------------------------------------------------------------


def test_fusion_gate_removes_low_confidence_surfaces():
    """A wall at 10 m seen from three poses; one frame's middle is wrong (4 m) and has low
    confidence. Without the confidence the wrong surface is fused; with it, it is not."""
    h, w, f = 120, 160, 100.0
    K = np.array([[f, 0, w / 2], [0, f, h / 2], [0, 0, 1.0]])
    rgb = np.full((h, w, 3), 128, np.uint8)
    wall = np.full((h, w), 10.0, np.float32)
    bad = wall.copy()
    bad[40:80, 50:110] = 4.0
    conf = np.ones((h, w), np.float32)
    conf[40:80, 50:110] = 0.05
    depth, dropped = confident_depth(bad, conf, 0.2)
    assert dropped == 40 * 60 and np.isnan(depth[40:80, 50:110]).all()
    assert confident_depth(bad, conf, 0.0)[1] == 0 and confident_depth(bad, None, 0.5)[1] == 0
    frames = [(rgb, wall, K, np.eye(4), np.ones_like(conf)), (rgb, bad, K, np.eye(4), conf)]

    def near_points(min_confidence):
        result = fuse(frames, voxel=0.1, max_depth=20.0, min_confidence=min_confidence)
        z = np.asarray(result.cloud.points)[:, 2]
        return int((z < 7.0).sum()), result

    near_without, plain = near_points(0.0)
    near_with, gated = near_points(0.2)
    assert near_without > 100 and near_with == 0
    assert gated.low_confidence == 40 * 60 and plain.low_confidence == 0
    assert gated.pixels == plain.pixels - 40 * 60


def test_process_bag_writes_confidence_and_fuse_rgbd_uses_it(
    tmp_path: Path, kitti_raw_seq: Path, capsys
) -> None:
    from depth_completion_ros.bag_io import BagReader, messages_by_stamp
    from depth_completion_ros.messages import image_to_depth
    from depth_completion_ros.tools import fuse_rgbd, kitti_to_bag, process_bag

    raw, out = tmp_path / "raw", tmp_path / "processed"
    assert kitti_to_bag.main([str(kitti_raw_seq / DRIVE), str(raw), "--cameras", "2"]) == 0
    args = [str(raw), str(out), "--calibration-dir", str(kitti_raw_seq), "--no-progress"]
    assert process_bag.main([*args, "-p", "publish_confidence:=true"]) == 0
    with BagReader(out) as reader:
        assert reader.topics["/depth/confidence"] == "sensor_msgs/msg/Image"
        confidence = messages_by_stamp(reader, "/depth/confidence")
        depths = messages_by_stamp(reader, "/depth/image")
    assert len(confidence) == len(depths) == 20
    for stamp, msg in confidence.items():
        assert msg.header == depths[stamp].header
        conf, depth = image_to_depth(msg), image_to_depth(depths[stamp])
        np.testing.assert_array_equal(np.isnan(conf), np.isnan(depth))
    capsys.readouterr()
    common = [str(out), "--no-progress", "--stride", "4"]
    assert fuse_rgbd.main([common[0], str(tmp_path / "with"), *common[1:]]) == 0
    gated = json.loads(capsys.readouterr().out)
    assert (
        fuse_rgbd.main([common[0], str(tmp_path / "without"), *common[1:], "--no-confidence"]) == 0
    )
    plain = json.loads(capsys.readouterr().out)
    assert gated["confidence_topic"] == "/depth/confidence" and plain["confidence_topic"] is None
    assert gated["low_confidence_pixels"] > 0 and plain["low_confidence_pixels"] == 0
    assert gated["fused_pixels"] == plain["fused_pixels"] - gated["low_confidence_pixels"]
    assert gated["points"] < plain["points"]


def test_confidence_distance_is_settable_at_runtime():
    """ros2 param set confidence_distance: checked by the table, applied to the next frame."""
    from depth_completion_ros.frame import FrameProcessor, FrameSource
    from depth_completion_ros.parameters import ParameterError, check_update, load_parameters
    from depth_completion_ros.transforms import NoTransforms

    config = load_parameters(overrides={"publish_confidence": True})
    roles = {"image": "image", "camera_info": "camera_info", "points": "points", "odometry": ""}
    processor = FrameProcessor(config, FrameSource(roles, NoTransforms("none"), "fix"))
    backend = processor.pipeline.backend
    change = check_update(config, {"confidence_distance": 2})
    assert change == {"confidence_distance": 2.0}
    processor.reconfigure({**config, **change})
    assert processor.pipeline.confidence_distance == 2.0
    assert processor.pipeline.backend is backend
    sparse = np.zeros((8, 8), np.float32)
    sparse[0, 0] = 5.0
    conf = processor.pipeline.finish(sparse, 1, np.full((8, 8), 5.0, np.float32), None, True)
    expected = distance_confidence(sparse, 2.0)
    np.testing.assert_allclose(
        conf.confidence[np.isfinite(conf.dense)], expected[np.isfinite(conf.dense)]
    )
    with pytest.raises(ParameterError, match="confidence_distance"):
        check_update(config, {"confidence_distance": -1.0})
