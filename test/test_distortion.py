"""Raw (distorted) images, binning and roi: points land where the camera saw them.

The forward models are checked against OpenCV (cv2.projectPoints, cv2.fisheye.projectPoints) as
an independent reference; a simulated 1920x1200 camera is distorted with known coefficients (the
simulator renders a pinhole image, cv2.remap turns it into the raw image through OpenCV's own
inverse), and the frame step with ``camera_model: raw`` must put every LiDAR point within 0.5 px
of its exact projection, on the raw image's content. Binning and roi are checked at exact pixels.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from sensor_msgs.msg import CameraInfo

from depth_completion_ros.calibration import PinholeCamera
from depth_completion_ros.distortion import coefficients, distort, max_radius, undistort
from depth_completion_ros.frame import FrameInputs, FrameProcessor, FrameSource
from depth_completion_ros.messages import (
    MessageError,
    camera_info_to_camera,
    camera_to_camera_info,
    make_header,
    numpy_to_image,
    xyz_array_to_pointcloud2,
)
from depth_completion_ros.parameters import load_parameters
from depth_completion_ros.pipeline import DepthPipeline
from depth_completion_ros.projection import ProjectionConfig, project_points
from depth_completion_ros.transforms import NoTransforms

WIDTH, HEIGHT = 1920, 1200
K = np.array([[1000.0, 0.0, 955.3], [0.0, 1001.5, 603.7], [0.0, 0.0, 1.0]])
PLUMB_BOB = [-0.28, 0.09, 0.0012, -0.0008, -0.012]
RATIONAL = [0.4, -0.05, 0.001, 0.0005, 0.01, 0.7, -0.02, 0.03]
EQUIDISTANT = [0.05, -0.01, 0.002, -0.0003]
NO_OCCLUSION = ProjectionConfig(occlusion_window=0)


def _camera_info(D, model, binning=(0, 0), roi=(0, 0, 0, 0, False), width=WIDTH, height=HEIGHT):
    msg = CameraInfo(header=make_header(10**18, "camera_optical"))
    msg.width, msg.height = width, height
    msg.distortion_model = model
    msg.d = [float(v) for v in D]
    msg.k = K.ravel().tolist()
    msg.r = np.eye(3).ravel().tolist()
    P = np.hstack([K, np.zeros((3, 1))])
    P[0, 0], P[1, 1] = 800.0, 800.0  # a rectified camera of its own (alpha = 0 crop)
    msg.p = P.ravel().tolist()
    msg.binning_x, msg.binning_y = binning
    msg.roi.x_offset, msg.roi.y_offset, msg.roi.width, msg.roi.height = roi[:4]
    msg.roi.do_rectify = roi[4]
    return msg


def _reference_pixels(xyz: np.ndarray, K_: np.ndarray, D, model: str) -> np.ndarray:
    """OpenCV's projection of camera-frame points (N x 3, z > 0) -> N x 2."""
    xyz = np.ascontiguousarray(xyz, dtype=np.float64).reshape(-1, 1, 3)
    if model == "equidistant":
        uv, _ = cv2.fisheye.projectPoints(xyz, np.zeros(3), np.zeros(3), K_, np.asarray(D))
    else:
        uv, _ = cv2.projectPoints(xyz, np.zeros(3), np.zeros(3), K_, np.asarray(D))
    return uv.reshape(-1, 2)


@pytest.mark.parametrize(
    ("model", "D"),
    [("plumb_bob", PLUMB_BOB), ("rational_polynomial", RATIONAL), ("equidistant", EQUIDISTANT)],
)
def test_forward_model_equals_opencv_and_inverts(model: str, D: list[float]) -> None:
    rng = np.random.default_rng(0)
    c = coefficients(model, D)
    limit = 0.9 * min(max_radius(model, c), 2.0)  # the fold itself is not invertible
    r = limit * np.sqrt(rng.uniform(0, 1, 5000))
    angle = rng.uniform(-np.pi, np.pi, 5000)
    x, y = r * np.cos(angle), r * np.sin(angle)
    xd, yd = distort(x, y, model, c)
    reference = _reference_pixels(np.stack([x, y, np.ones_like(x)], 1), K, D, model)
    ours = np.stack([K[0, 0] * xd + K[0, 2], K[1, 1] * yd + K[1, 2]], 1)
    assert np.abs(ours - reference).max() < 1e-6
    back_x, back_y = undistort(xd, yd, model, c)
    assert np.nanmax(np.hypot(back_x - x, back_y - y)) < 1e-8
    assert np.isfinite(back_x).mean() > 0.999


def test_points_beyond_the_fold_are_dropped() -> None:
    """A strong barrel lens folds back beyond some angle: OpenCV maps a point far outside the
    view into the image; the projection drops it instead."""
    D = [-0.45, 0.0, 0.0, 0.0, 0.0]  # r (1 - 0.45 r^2) peaks at r = 0.86 (41 degrees)
    c = coefficients("plumb_bob", D)
    limit = max_radius("plumb_bob", c)
    assert limit == pytest.approx(np.sqrt(1 / 1.35), abs=1e-3)
    r = np.linspace(limit, 5.0, 100_001)
    r_far = r[np.argmin(np.abs(r * (1 - 0.45 * r * r) + 0.5))]  # 61 degrees off-axis
    far = np.array([[r_far, 0.0, 1.0]])  # folds back: OpenCV lands it in the image at x = -0.5
    uv = _reference_pixels(far, K, D, "plumb_bob")[0]
    assert 0 <= uv[0] < WIDTH and 0 <= uv[1] < HEIGHT
    camera = camera_info_to_camera(_camera_info(D, "plumb_bob"), "raw")
    sparse = project_points(
        far, np.eye(4), camera.projection, WIDTH, HEIGHT, NO_OCCLUSION, camera.lens
    )
    assert not sparse.any()


# --- a simulated distorted 1920x1200 camera ---------------------------------------------------


@pytest.fixture(scope="module")
def distorted_frame():
    """A street frame seen by a distorted 1920x1200 camera: the simulator renders a pinhole
    image wide enough for the raw image's view, cv2.remap distorts it with OpenCV's inverse
    (cv2.undistortPoints) of the known coefficients. Returns (raw rgb, raw depth, points,
    T_cam_lidar)."""
    from depth_completion_ros.simulation.lidar import LidarModel
    from depth_completion_ros.simulation.street_scene import CameraRig, make_street, render_frame

    u, v = np.meshgrid(np.arange(WIDTH, dtype=np.float64), np.arange(HEIGHT, dtype=np.float64))
    raw = np.stack([u.ravel(), v.ravel()], 1).reshape(-1, 1, 2)
    criteria = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 100, 1e-12)
    rays = cv2.undistortPoints(raw, K, np.array(PLUMB_BOB), None, None, None, criteria)
    rays = rays.reshape(HEIGHT, WIDTH, 2)
    margin = 4
    lo = np.floor(K[:2, :2].diagonal() * rays.reshape(-1, 2).min(0)) - margin
    hi = np.ceil(K[:2, :2].diagonal() * rays.reshape(-1, 2).max(0)) + margin
    rig = CameraRig(
        width=int(hi[0] - lo[0]),
        height=int(hi[1] - lo[1]),
        fx=K[0, 0],
        fy=K[1, 1],
        cx=-lo[0],
        cy=-lo[1],
    )
    scene = make_street(seed=3)
    T_world_velo = np.eye(4)
    T_world_velo[:3, 3] = (20.0, -1.75, rig.lidar_height)
    frame = render_frame(
        scene, rig, LidarModel.hdl64(), T_world_velo, 1.0, np.random.default_rng(0)
    )
    map_x = (K[0, 0] * rays[..., 0] + rig.cx).astype(np.float32)
    map_y = (K[1, 1] * rays[..., 1] + rig.cy).astype(np.float32)
    rgb = cv2.remap(frame.rgb, map_x, map_y, cv2.INTER_LINEAR)
    depth = cv2.remap(frame.depth_gt, map_x, map_y, cv2.INTER_NEAREST)
    return rgb, depth, frame.points, rig.T_velo_to_cam


def _processor(T: np.ndarray, **overrides) -> FrameProcessor:
    overrides = {"publish_sparse": True, "extrinsics": T.ravel().tolist(), **overrides}
    config = load_parameters(None, overrides)
    topics = {"image": "image", "camera_info": "camera_info", "points": "points"}
    return FrameProcessor(config, FrameSource(topics, NoTransforms("none"), "fix"))


def _run(processor, rgb, points, info):
    header = make_header(10**18, "camera_optical")
    cloud = xyz_array_to_pointcloud2(points, make_header(10**18, "velodyne"))
    outcome = processor.process(FrameInputs(numpy_to_image(rgb, "rgb8", header), cloud, info), None)
    assert outcome.failure is None, outcome.failure
    return outcome.output


def test_raw_image_sparse_depth_lands_on_the_raw_pixels(distorted_frame) -> None:
    rgb, depth_raw, points, T = distorted_frame
    info = _camera_info(PLUMB_BOB, "plumb_bob")
    output = _run(_processor(T, camera_model="raw", occlusion_window=0), rgb, points, info)
    sparse = output.result.sparse
    # the exact projection (OpenCV, float64) of every point in front of the camera
    cam = points[:, :3].astype(np.float64) @ T[:3, :3].T + T[:3, 3]
    front = cam[:, 2] > 0.1
    uv = _reference_pixels(cam[front], K, PLUMB_BOB, "plumb_bob")
    z = cam[front, 2]
    col, row = np.floor(uv[:, 0] + 0.5), np.floor(uv[:, 1] + 0.5)
    inside = (col >= 0) & (col < WIDTH) & (row >= 0) & (row < HEIGHT)
    inside &= (z > 0.1) & (z < 100.0)  # the node's min_depth/max_depth
    # beyond the lens' fold radius (56 degrees off-axis here) OpenCV wraps points back into
    # the image: those are dropped (test_points_beyond_the_fold_are_dropped)
    radius = output.camera.lens.radius
    inside &= np.hypot(cam[front, 0], cam[front, 1]) / z < radius
    # the projection's own pixel coordinates (float32, as project_points computes them) are
    # OpenCV's to a thousandth of a pixel
    x32 = (cam[front, 0] / z).astype(np.float32)
    y32 = (cam[front, 1] / z).astype(np.float32)
    u, v = output.camera.lens.to_pixels(x32, y32)
    error = np.hypot(u - uv[:, 0], v - uv[:, 1])[inside]
    assert error.max() < 2e-3, error.max()
    # the sparse depth is the exact projection's, nearest return wins: every valid pixel holds
    # the depth of a point whose exact projection lies within 0.5 px of its centre
    reference = np.zeros_like(sparse)
    flat = (row[inside] * WIDTH + col[inside]).astype(np.intp)
    reference.reshape(-1)[flat] = np.inf
    np.minimum.at(reference.reshape(-1), flat, z[inside].astype(np.float32))
    assert (sparse > 0).sum() > 20_000
    differ = (reference > 0) != (sparse > 0)  # only points within 2e-3 px of a pixel border
    assert differ.sum() <= 0.0005 * (reference > 0).sum(), differ.sum()
    both = (reference > 0) & (sparse > 0)
    assert np.mean(np.abs(reference[both] - sparse[both]) < 1e-4) > 0.999
    # the points land on what the raw image shows there: the raw ground-truth depth agrees
    both = (sparse > 0) & (depth_raw > 0)
    relative = np.abs(sparse[both] - depth_raw[both]) / depth_raw[both]
    assert np.median(relative) < 0.01
    # ignoring the distortion (the old behaviour) puts them tens of pixels off at the edges
    wrong = _run(_processor(T, occlusion_window=0), rgb, points, info).result.sparse
    both = (wrong > 0) & (depth_raw > 0)
    assert np.median(np.abs(wrong[both] - depth_raw[both]) / depth_raw[both]) > 0.01
    # the published camera_info is the one that came in, and the cloud follows the raw rays
    assert list(output.messages["depth/camera_info"].d) == PLUMB_BOB
    assert np.allclose(output.messages["depth/camera_info"].k, K.ravel())
    np.testing.assert_allclose(output.camera.intrinsics, K)


def test_organised_cloud_of_a_raw_image_reprojects_onto_its_pixels(distorted_frame) -> None:
    rgb, _, points, T = distorted_frame
    info = _camera_info(PLUMB_BOB, "plumb_bob")
    output = _run(_processor(T, camera_model="raw"), rgb, points, info)
    camera = output.camera
    xyz = DepthPipeline.points_xyz(output.result.dense, camera)
    valid = np.isfinite(xyz[..., 2])
    ys, xs = np.nonzero(valid)
    pick = np.arange(0, len(ys), 97)
    uv = _reference_pixels(xyz[ys[pick], xs[pick]], K, PLUMB_BOB, "plumb_bob")
    assert np.abs(uv - np.stack([xs[pick], ys[pick]], 1)).max() < 0.01


# --- binning and roi, at exact pixels -------------------------------------------------------


def _single_point_depth(info, camera_model: str, xyz) -> tuple[PinholeCamera, np.ndarray]:
    camera = camera_info_to_camera(info, camera_model)
    sparse = project_points(
        np.array([xyz]),
        np.eye(4),
        camera.projection,
        camera.width,
        camera.height,
        NO_OCCLUSION,
        camera.lens,
    )
    return camera, sparse


def test_binning_and_roi_move_the_pixels_as_image_geometry_does() -> None:
    # rectified: P (fx = fy = 800, cx = 955.3, cy = 603.7); the point at x/z = 0.23, y/z = 0.1
    # lands on full-resolution pixel (955.3 + 184, 603.7 + 80) = (1139.3, 683.7)
    point = (2.3, 1.0, 10.0)
    info = _camera_info(PLUMB_BOB, "plumb_bob")
    camera, sparse = _single_point_depth(info, "rectified", point)
    assert (camera.width, camera.height) == (WIDTH, HEIGHT) and camera.sensor is None
    assert sparse[684, 1139] == pytest.approx(10.0)
    # binning 2 x 4 and a roi at (101, 49), 1600 x 1000: pixel ((1139.3-101)/2, (683.7-49)/4)
    info = _camera_info(PLUMB_BOB, "plumb_bob", binning=(2, 4), roi=(101, 49, 1600, 1000, False))
    camera, sparse = _single_point_depth(info, "rectified", point)
    assert (camera.width, camera.height) == (800, 250)
    np.testing.assert_allclose(camera.P[0, :3], [400.0, 0.0, (955.3 - 101) / 2])
    np.testing.assert_allclose(camera.P[1, :3], [0.0, 200.0, (603.7 - 49) / 4])
    ys, xs = np.nonzero(sparse)
    assert (ys.tolist(), xs.tolist()) == ([159], [519])  # (519.15, 158.675) rounded
    # raw: K and D, then the same roi and binning; OpenCV with the reduced K as reference
    camera, sparse = _single_point_depth(info, "raw", point)
    assert (camera.width, camera.height) == (800, 250)
    K_reduced = np.array(
        [[500.0, 0.0, (955.3 - 101) / 2], [0.0, 1001.5 / 4, (603.7 - 49) / 4], [0.0, 0.0, 1.0]]
    )
    np.testing.assert_allclose(camera.K, K_reduced)
    u, v = _reference_pixels(np.array([point]), K_reduced, PLUMB_BOB, "plumb_bob")[0]
    ys, xs = np.nonzero(sparse)
    assert (ys.tolist(), xs.tolist()) == ([int(np.floor(v + 0.5))], [int(np.floor(u + 0.5))])
    # the camera_info published with the depth is the one that came in
    back = camera_to_camera_info(camera)
    assert (back.width, back.height, back.binning_x, back.binning_y) == (WIDTH, HEIGHT, 2, 4)
    assert (back.roi.x_offset, back.roi.y_offset, back.roi.width, back.roi.height) == (
        101,
        49,
        1600,
        1000,
    )
    np.testing.assert_array_equal(back.k, info.k)
    np.testing.assert_array_equal(back.p, info.p)


def test_rectified_roi_with_do_rectify_has_the_rectified_size() -> None:
    """roi.do_rectify: the rectified image covers the bounding box of the rectified raw roi
    corners (image_geometry's rectifyRoi); OpenCV's undistortPoints with R and P as reference."""
    roi = (200, 100, 1400, 900)
    info = _camera_info(PLUMB_BOB, "plumb_bob", roi=(*roi, True))
    corners = np.array(
        [
            [roi[0], roi[1]],
            [roi[0] + roi[2], roi[1]],
            [roi[0] + roi[2], roi[1] + roi[3]],
            [roi[0], roi[1] + roi[3]],
        ],
        dtype=np.float64,
    ).reshape(-1, 1, 2)
    P = np.asarray(info.p).reshape(3, 4)
    criteria = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 100, 1e-12)
    rect = cv2.undistortPoints(corners, K, np.array(PLUMB_BOB), None, np.eye(3), P, criteria)
    rect = rect.reshape(4, 2)
    left, top = np.ceil(min(rect[0, 0], rect[3, 0])), np.ceil(min(rect[0, 1], rect[1, 1]))
    right, bottom = np.floor(max(rect[1, 0], rect[2, 0])), np.floor(max(rect[2, 1], rect[3, 1]))
    camera = camera_info_to_camera(info, "rectified")
    assert (camera.width, camera.height) == (int(right - left), int(bottom - top))
    assert camera.width != roi[2]  # the distortion changes it
    raw = camera_info_to_camera(info, "raw")  # the raw image is the raw roi
    assert (raw.width, raw.height) == roi[2:]


def test_bad_lens_descriptions_are_clear_errors() -> None:
    with pytest.raises(MessageError, match="kannala_brandt.*not supported"):
        camera_info_to_camera(_camera_info([0.1, 0, 0, 0], "kannala_brandt"), "raw")
    # the same camera_info is fine for a rectified image (P), and without distortion
    camera_info_to_camera(_camera_info([0.1, 0, 0, 0], "kannala_brandt"), "rectified")
    camera_info_to_camera(_camera_info([0, 0, 0, 0, 0], "kannala_brandt"), "raw")
    with pytest.raises(MessageError, match="roi"):
        camera_info_to_camera(_camera_info(PLUMB_BOB, "plumb_bob", roi=(1900, 0, 100, 10, False)))
    with pytest.raises(MessageError, match="non-zero extra terms"):
        camera_info_to_camera(_camera_info([*RATIONAL, 0.1], "rational_polynomial"), "raw")
