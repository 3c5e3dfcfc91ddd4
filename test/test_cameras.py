"""Several cameras, one model: the ``cameras`` parameters, and the frames of cameras that share
a backend going through it together (one forward pass per input geometry), on the real KITTI
frame seen by its camera and by a simulated one looking backwards."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from depth_completion_ros.backends.network import NetworkBackend
from depth_completion_ros.calibration import PinholeCamera
from depth_completion_ros.cli_help import prepare_node_arguments
from depth_completion_ros.frame import (
    FrameInputs,
    FrameProcessor,
    FrameSource,
    process_together,
)
from depth_completion_ros.messages import image_to_depth
from depth_completion_ros.parameters import (
    ParameterError,
    camera_configs,
    check_update,
    load_parameters,
    read_params_file,
)
from depth_completion_ros.tools.graph import SensorFrame, frame_messages
from depth_completion_ros.transforms import NoTransforms

#: the simulated camera: KITTI's image_02 turned half a turn about its vertical (y) axis
HALF_TURN = np.diag([-1.0, 1.0, -1.0, 1.0])


def two_cameras(kitti_scan, kitti_calibration, rgb):
    """(front, rear) SensorFrames of one scan and their LiDAR -> camera transforms: the rear
    camera has the front one's intrinsics and size and sees the street behind the car (its
    image is the front image mirrored: any picture does for equality tests)."""
    camera = kitti_calibration.camera
    T_front = kitti_calibration.T_cam_lidar
    T_rear = HALF_TURN @ T_front
    front = SensorFrame(10.0, rgb, kitti_scan, camera, name="front")
    rear = SensorFrame(10.0, np.ascontiguousarray(rgb[:, ::-1]), kitti_scan, camera, name="rear")
    return (front, T_front), (rear, T_rear)


def camera_parameters(weights, T_front, T_rear) -> dict:
    return {
        "model": "selfdc_r18",
        "checkpoint": str(weights),
        "cameras": ["front", "rear"],
        "front.extrinsics": [float(v) for v in T_front.ravel()],
        "rear.extrinsics": [float(v) for v in T_rear.ravel()],
    }


@pytest.fixture(scope="module")
def rgb(kitti_image_path):
    from depth_completion_ros.depth_io import read_rgb

    return read_rgb(kitti_image_path)


# --- parameters ------------------------------------------------------------------------------


def test_each_camera_gets_its_topics_namespace_and_own_values():
    config = load_parameters(
        overrides={
            "cameras": ["front", "rear"],
            "rear.image_topic": "/rear_cam/image_rect",
            "rear.points_topic": "/lidar_rear/points",
            "rear.extrinsics": [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0],
            "max_depth": 50.0,
        }
    )
    (front_name, front), (rear_name, rear) = camera_configs(config)
    assert (front_name, rear_name) == ("front", "rear")
    assert (front["image_topic"], front["camera_info_topic"]) == (
        "front/image",
        "front/camera_info",
    )
    assert front["output_namespace"] == "front" and rear["output_namespace"] == "rear"
    assert rear["image_topic"] == "/rear_cam/image_rect"
    assert rear["camera_info_topic"] == "rear/camera_info"
    assert (front["points_topic"], rear["points_topic"]) == ("points", "/lidar_rear/points")
    assert front["extrinsics"] == [0.0] and rear["extrinsics"][-1] == 1.0
    assert front["max_depth"] == rear["max_depth"] == 50.0  # shared: one model, one range
    assert not any("." in key for key in front)
    # without cameras: the node's own parameters, outputs in its namespace
    ((name, only),) = camera_configs(load_parameters())
    assert name == "" and only["output_namespace"] == "" and only["image_topic"] == "image"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"cameras": ["front"], "rear.image_topic": "x"}, "camera 'rear', which is not in"),
        ({"cameras": ["front", "front"]}, "appears twice"),
        ({"cameras": ["2nd"]}, "is not a camera name"),
        (
            {"cameras": ["a", "b"], "a.output_namespace": "cam", "b.output_namespace": "cam"},
            "two cameras publish into one namespace",
        ),
        ({"cameras": ["a"], "a.camera_index": 7}, "'a.camera_index'"),
        ({"cameras": ["a"], "a.min_depth": 1.0}, "unknown node parameter 'a.min_depth'"),
        ({"cameras": "front"}, "'cameras'"),
    ],
)
def test_bad_camera_parameters_are_named(overrides, message):
    with pytest.raises(ParameterError, match=message):
        load_parameters(overrides=overrides)


def test_params_file_nests_camera_parameters_as_rcl_does(tmp_path):
    path = tmp_path / "two.yaml"
    document = {
        "depth_completion": {
            "ros__parameters": {
                "cameras": ["front", "left"],
                "front": {"image_topic": "/cam_f/image", "camera_model": "raw"},
                "left": {"extrinsics": [1.0, 2.0, 3.0, 0.0, 0.0, 0.0, 1.0]},
                "qos_overrides": {"/points": {"subscription": {"reliability": "reliable"}}},
            }
        }
    }
    path.write_text(yaml.safe_dump(document))
    _, values = read_params_file(path)
    assert values["front.image_topic"] == "/cam_f/image"
    assert values["front.camera_model"] == "raw"
    assert values["left.extrinsics"] == [1.0, 2.0, 3.0, 0.0, 0.0, 0.0, 1.0]
    document["depth_completion"]["ros__parameters"]["front"]["camera_model"] = "fisheye"
    path.write_text(yaml.safe_dump(document))
    with pytest.raises(ParameterError, match="'front.camera_model'.*rectified, raw"):
        read_params_file(path)


def test_command_line_checks_camera_parameters():
    args = ["node", "--ros-args", "-p", "front.camera_index:=1", "-p", "cameras:=[front]"]
    assert prepare_node_arguments(args) == args
    with pytest.raises(SystemExit) as exit_info:
        prepare_node_arguments(["node", "--ros-args", "-p", "front.camera_index:=9"])
    assert exit_info.value.code == 2


def test_camera_parameters_are_read_only_at_runtime():
    config = load_parameters(overrides={"cameras": ["front"]})
    with pytest.raises(ParameterError, match="read-only"):
        check_update(config, {"front.image_topic": "/other"})
    assert check_update(config, {"max_depth": 40.0}) == {"max_depth": 40.0}


# --- one model, frames together ----------------------------------------------------------------


@pytest.fixture(scope="module")
def shared(kitti_scan, kitti_calibration, rgb, r18_weights):
    """The two cameras' processors around one backend, and each camera's messages."""
    (front, T_front), (rear, T_rear) = two_cameras(kitti_scan, kitti_calibration, rgb)
    config = load_parameters(overrides=camera_parameters(r18_weights, T_front, T_rear))
    processors, backend = [], None
    for _, camera_config in camera_configs(config):
        source = FrameSource(
            {"image": "image", "camera_info": "camera_info", "points": "points", "odometry": ""},
            NoTransforms("none"),
            "set extrinsics",
        )
        processor = FrameProcessor(camera_config, source, backend=backend)
        backend = processor.pipeline.backend
        processors.append(processor)
    messages = [frame_messages(front), frame_messages(rear)]
    return processors, messages, (T_front, T_rear)


def _inputs(messages) -> FrameInputs:
    image, info, cloud = messages
    return FrameInputs(image, cloud, info)


def test_cameras_share_one_backend_and_one_forward_pass(shared):
    processors, messages, _ = shared
    backend = processors[0].pipeline.backend
    assert isinstance(backend, NetworkBackend) and processors[1].pipeline.backend is backend
    jobs = [(p, lambda m=m: _inputs(m), None) for p, m in zip(processors, messages, strict=True)]
    together = process_together(jobs)
    assert backend.last_timing["frames"] == 2 and backend.last_timing["batches"] == 1
    assert [o.batch for o in together] == [2, 2]
    for processor, outcome, m in zip(processors, together, messages, strict=True):
        assert outcome.failure is None
        alone = processor.process(_inputs(m))
        assert alone.batch == 1
        batched = image_to_depth(outcome.output.messages["depth/image"])
        single = image_to_depth(alone.output.messages["depth/image"])
        # rear sees the street behind: it has its own LiDAR points and its own depth
        assert np.count_nonzero(outcome.output.result.sparse) > 5000
        same_nan = np.isnan(batched) == np.isnan(single)
        assert same_nan.mean() > 0.9999
        both = np.isfinite(batched) & np.isfinite(single)
        assert both.sum() > 0.3 * both.size
        np.testing.assert_allclose(batched[both], single[both], rtol=1e-4, atol=1e-4)
    front_sparse = together[0].output.result.sparse
    rear_sparse = together[1].output.result.sparse
    assert not np.array_equal(front_sparse > 0, rear_sparse > 0)
    assert processors[0].accounting.batched == processors[1].accounting.batched == 1


def _camera_window(camera: PinholeCamera, x0: int, y0: int, width: int, height: int, scale=1.0):
    """The camera of a window of the image (and of the image scaled by ``scale`` first)."""
    P = camera.P.copy()
    P[:2] *= scale
    P[0, 2] -= x0
    P[1, 2] -= y0
    return PinholeCamera(width, height, P)


def test_frames_of_other_sizes_run_in_their_own_batch(shared, rgb, kitti_scan, kitti_calibration):
    processors, messages, _ = shared
    backend = processors[0].pipeline.backend
    small_rgb = np.ascontiguousarray(rgb[::2, ::2])
    half = _camera_window(kitti_calibration.camera, 0, 0, *small_rgb.shape[1::-1], scale=0.5)
    small = SensorFrame(10.0, small_rgb, kitti_scan, half)
    jobs = [
        (processors[0], lambda: _inputs(messages[0]), None),
        (processors[1], lambda: _inputs(frame_messages(small)), None),
    ]
    outcomes = process_together(jobs)
    assert backend.last_timing["frames"] == 2 and backend.last_timing["batches"] == 2
    assert [o.batch for o in outcomes] == [1, 1]
    assert all(o.failure is None for o in outcomes)


def test_a_bad_frame_in_a_batch_fails_alone(shared, rgb, kitti_scan, kitti_calibration):
    """A frame the backend refuses (a 6 x 6 image: too small for a network) fails at the
    pipeline stage; the other camera's frame of the same batch is completed, and counted."""
    processors, messages, _ = shared
    camera = kitti_calibration.camera
    sparse = processors[0].pipeline.project(rgb, kitti_scan, camera, kitti_calibration.T_cam_lidar)[
        0
    ]
    rows, cols = np.nonzero(sparse[200:, 100:-100])
    y0, x0 = 200 + int(rows[0]) - 2, 100 + int(cols[0]) - 2  # a window holding a return
    tiny = SensorFrame(
        10.0,
        np.ascontiguousarray(rgb[y0 : y0 + 6, x0 : x0 + 6]),
        kitti_scan,
        _camera_window(camera, x0, y0, 6, 6),
    )
    before = processors[1].accounting.failed_by_stage["pipeline"]
    processed = processors[0].accounting.processed
    jobs = [
        (processors[0], lambda: _inputs(messages[0]), None),
        (processors[1], lambda: _inputs(frame_messages(tiny)), None),
    ]
    good, failed = process_together(jobs)
    assert good.failure is None and good.batch == 1
    assert failed.failure is not None and failed.failure.stage == "pipeline"
    assert "too small" in str(failed.failure)
    assert processors[1].accounting.failed_by_stage["pipeline"] == before + 1
    assert processors[0].accounting.processed == processed + 1


def test_example_params_file_is_valid():
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "config" / "cameras_example.yaml"
    cameras = dict(camera_configs(load_parameters(path)))
    assert set(cameras) == {"front", "rear"}
    assert cameras["rear"]["image_transport"] == "compressed"
    assert cameras["front"]["image_transport"] == "raw"
    assert cameras["front"]["points_topic"] == cameras["rear"]["points_topic"] == "/lidar/points"


def test_batch_cameras_off_runs_one_frame_at_a_time_on_one_model(shared):
    processors, messages, _ = shared
    backend = processors[0].pipeline.backend
    unbatched = [
        FrameProcessor({**p.config, "batch_cameras": False}, p.source, backend=backend)
        for p in processors
    ]
    jobs = [(p, lambda m=m: _inputs(m), None) for p, m in zip(unbatched, messages, strict=True)]
    outcomes = process_together(jobs)
    assert [o.batch for o in outcomes] == [1, 1]
    assert all(o.failure is None for o in outcomes)
    assert all(p.pipeline.backend is backend for p in unbatched)
