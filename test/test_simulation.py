"""The LiDAR simulator and the synthetic street: geometry, consistency, KITTI layout, determinism."""

from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np
import open3d as o3d
import pytest

from depth_completion_ros.calibration import load_kitti_calibration
from depth_completion_ros.simulation.lidar import (
    LidarModel,
    cast,
    lidar_pose_in_optical_frame,
    make_raycasting_scene,
    range_image,
    ray_directions,
)
from depth_completion_ros.simulation.street_scene import (
    LABELS,
    CameraRig,
    make_sequence,
    make_street,
    write_kitti_raw,
)

KITTI_NUMBER = re.compile(r"^-?\d\.\d{6}e[+-]\d{2}$")


def _plane(size: float = 500.0) -> o3d.geometry.TriangleMesh:
    """A flat square at z = 0, centred on the origin."""
    s = size / 2
    verts = np.array([[-s, -s, 0], [s, -s, 0], [s, s, 0], [-s, s, 0]], dtype=float)
    return o3d.geometry.TriangleMesh(
        o3d.utility.Vector3dVector(verts),
        o3d.utility.Vector3iVector(np.array([[0, 1, 2], [0, 2, 3]])),
    )


def _pose(x: float = 0.0, y: float = 0.0, z: float = 0.0, yaw_deg: float = 0.0) -> np.ndarray:
    c, s = np.cos(np.deg2rad(yaw_deg)), np.sin(np.deg2rad(yaw_deg))
    pose = np.eye(4)
    pose[:3, :3] = [[c, -s, 0], [s, c, 0], [0, 0, 1]]
    pose[:3, 3] = (x, y, z)
    return pose


def _parse_calib(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        key, value = line.split(":", 1)
        out[key] = value.strip()
    return out


def _floats(text: str, shape: tuple[int, ...]) -> np.ndarray:
    return np.array([float(v) for v in text.split()]).reshape(shape)


# --- LiDAR ---------------------------------------------------------------------------------------


def test_ray_directions_are_unit_and_span_the_beam_pattern() -> None:
    model = LidarModel.hdl64()
    dirs = ray_directions(model)
    assert dirs.shape == (64 * model.n_columns, 3) and dirs.dtype == np.float32
    assert 2000 <= model.n_columns <= 2100
    np.testing.assert_allclose(np.linalg.norm(dirs, axis=1), 1.0, atol=1e-6)
    elev = np.rad2deg(np.arcsin(dirs[:, 2]))
    assert elev.max() == pytest.approx(2.0, abs=1e-3)
    assert elev.min() == pytest.approx(-24.9, abs=1e-3)
    grid = dirs.reshape(model.n_beams, model.n_columns, 3)
    np.testing.assert_allclose(grid[:, :, 2], grid[:, :1, 2].repeat(model.n_columns, 1), atol=1e-6)

    vlp = LidarModel.vlp16()
    assert vlp.n_beams == 16 and vlp.elevations_deg[0] == 15.0 and vlp.elevations_deg[-1] == -15.0

    sector = LidarModel.uniform(8, 5.0, -5.0, azimuth_fov_deg=90.0, azimuth_resolution_deg=1.0)
    az = np.rad2deg(np.arctan2(ray_directions(sector)[:, 1], ray_directions(sector)[:, 0]))
    assert sector.n_columns == 90 and np.abs(az).max() < 45.0 and az[0] > az[1]


@pytest.mark.parametrize("yaw_deg", [0.0, 33.0])
def test_lidar_above_flat_plane_hits_at_minus_h(yaw_deg: float) -> None:
    h = 1.73
    model = LidarModel.hdl64()
    scan = cast(_plane(), model, _pose(3.0, -2.0, h, yaw_deg))
    assert scan.points.dtype == np.float32 and scan.points.shape[1] == 4
    np.testing.assert_allclose(scan.xyz[:, 2], -h, atol=1e-4)
    elev = np.deg2rad(np.asarray(model.elevations_deg))[scan.ring]
    np.testing.assert_allclose(scan.ranges, h / np.sin(-elev), rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(scan.xyz, axis=1), scan.ranges, rtol=1e-5)
    # Every downward ray that reaches the plane within range returns, no upward ray does.
    expected = np.sin(-np.deg2rad(model.elevations_deg)) > h / model.max_range
    assert len(scan) == expected.sum() * model.n_columns
    assert np.all((scan.intensity >= 0) & (scan.intensity <= 1))


def test_range_limits_are_respected_and_inputs_interchangeable() -> None:
    model = LidarModel.uniform(32, -2.0, -40.0, min_range=3.0, max_range=20.0)
    legacy = _plane()
    tensor_mesh = o3d.t.geometry.TriangleMesh.from_legacy(legacy)
    scans = [
        cast(m, model, _pose(z=1.5)) for m in (legacy, tensor_mesh, make_raycasting_scene(legacy))
    ]
    ranges = scans[0].ranges
    assert ranges.min() >= 3.0 and ranges.max() <= 20.0
    assert len(scans[0]) < model.n_rays  # some beams fell outside the range window
    for other in scans[1:]:
        np.testing.assert_array_equal(other.points, scans[0].points)
    img = range_image(scans[0], model)
    assert img.shape == (32, model.n_columns)
    assert np.count_nonzero(img) == len(scans[0])


def test_range_noise_is_seeded() -> None:
    model = LidarModel.hdl64(range_noise_std=0.05, seed=7)
    a, b = (cast(_plane(), model, _pose(z=2.0)) for _ in range(2))
    np.testing.assert_array_equal(a.points, b.points)
    clean = cast(_plane(), model.with_(range_noise_std=0.0), _pose(z=2.0))
    both = (range_image(a, model) > 0) & (range_image(clean, model) > 0)
    diff = range_image(a, model)[both] - range_image(clean, model)[both]
    assert 0.045 < np.std(diff) < 0.055 and abs(np.mean(diff)) < 0.005
    c = cast(_plane(), model, _pose(z=2.0), rng=np.random.default_rng(8))
    assert not np.array_equal(a.points, c.points)


def test_stage1_pose_scans_a_mesh_in_camera_coordinates() -> None:
    """A wall 10 m ahead along the optical z axis, scanned by a level LiDAR at the camera."""
    wall = _plane(100.0)
    wall.rotate(o3d.geometry.get_rotation_matrix_from_xyz((np.pi / 2, 0, 0)), center=(0, 0, 0))
    wall.translate((0, 0, 10.0))
    scan = cast(wall, LidarModel.vlp16(), lidar_pose_in_optical_frame())
    np.testing.assert_allclose(scan.xyz[:, 0], 10.0, atol=1e-4)  # LiDAR x = forward


def test_bad_inputs_get_clear_errors() -> None:
    with pytest.raises(ValueError, match="degrees"):
        LidarModel.from_elevations([0.1, 120.0])
    with pytest.raises(ValueError, match="min_range"):
        LidarModel.hdl64(min_range=10.0, max_range=5.0)
    with pytest.raises(ValueError, match="4x4"):
        cast(_plane(), LidarModel.vlp16(), np.eye(3))
    with pytest.raises(ValueError, match="rotation"):
        cast(_plane(), LidarModel.vlp16(), np.diag([1.0, 1.0, -1.0, 1.0]))
    with pytest.raises(ValueError, match="no triangles"):
        cast(o3d.geometry.TriangleMesh(), LidarModel.vlp16())
    with pytest.raises(TypeError, match="TriangleMesh"):
        cast(np.zeros((3, 3)), LidarModel.vlp16())


# --- Street scene ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def frames():
    return make_sequence(2, seed=3)


def test_frame_contents(frames) -> None:
    f = frames[0]
    assert f.rgb.shape == (375, 1242, 3) and f.rgb.dtype == np.uint8
    assert f.depth_gt.shape == (375, 1242) and f.depth_gt.dtype == np.float32
    assert f.points.dtype == np.float32 and 80_000 < len(f.points) <= 64 * 2084
    assert f.K[0, 0] == pytest.approx(721.5377) and f.P.shape == (3, 4)
    sky = f.depth_gt == 0
    assert 0.005 < sky.mean() < 0.5 and np.all(f.semantic[sky] == LABELS["sky"])
    for name in ("road", "sidewalk", "building", "car"):
        assert (f.semantic == LABELS[name]).any(), name
    assert f.rgb.std() > 20  # textured, not flat colour
    assert frames[1].stamp - f.stamp == pytest.approx(0.1)
    assert frames[1].T_world_velo[0, 3] - f.T_world_velo[0, 3] == pytest.approx(1.0)


def test_ground_truth_depth_matches_projected_lidar(frames) -> None:
    """On a plane 1/depth is affine in pixel coordinates, so bilinear interpolation of inverse
    depth at a projected point's sub-pixel position is exact; median error must be ~0."""
    f = frames[0]
    cam = np.c_[f.points[:, :3], np.ones(len(f.points))] @ (f.P @ f.T_velo_to_cam).T
    z = cam[:, 2]
    front = z > 0.5
    u, v, z = cam[front, 0] / z[front], cam[front, 1] / z[front], z[front]
    h, w = f.depth_gt.shape
    inside = (u >= 0) & (u < w - 1) & (v >= 0) & (v < h - 1)
    u, v, z = u[inside], v[inside], z[inside]
    assert len(z) > 10_000
    u0, v0 = np.floor(u).astype(int), np.floor(v).astype(int)
    du, dv = u - u0, v - v0
    corners = [f.depth_gt[v0 + a, u0 + b] for a in (0, 1) for b in (0, 1)]
    valid = np.all([c > 0 for c in corners], axis=0)
    inv = [1.0 / np.where(c > 0, c, 1.0) for c in corners]
    inv_interp = (inv[0] * (1 - du) + inv[1] * du) * (1 - dv) + (
        inv[2] * (1 - du) + inv[3] * du
    ) * dv
    err = np.abs(1.0 / inv_interp[valid] - z[valid])
    assert np.median(err) < 0.01
    assert np.mean(err < 0.05) > 0.9  # the rest: edges and points the camera cannot see


def test_sequence_is_deterministic(frames) -> None:
    again = make_sequence(1, seed=3)[0]
    np.testing.assert_array_equal(again.rgb, frames[0].rgb)
    np.testing.assert_array_equal(again.depth_gt, frames[0].depth_gt)
    np.testing.assert_array_equal(again.points, frames[0].points)
    rig = CameraRig.kitti(310, 94)
    noisy = LidarModel.hdl64(range_noise_std=0.02)
    a = make_sequence(1, seed=4, rig=rig, lidar=noisy)[0]
    b = make_sequence(1, seed=4, rig=rig, lidar=noisy)[0]
    np.testing.assert_array_equal(a.points, b.points)
    other = make_sequence(1, seed=5, rig=rig)[0]
    assert a.rgb.shape == (94, 310, 3) and not np.array_equal(a.rgb, other.rgb)


def test_make_street_rejects_short_streets() -> None:
    with pytest.raises(ValueError, match="too short"):
        make_street(0, length=20.0)
    with pytest.raises(ValueError, match="longer scene"):
        make_sequence(100, scene=make_street(0, length=200.0))


def test_written_kitti_layout_reads_back(frames, tmp_path: Path, kitti_calib_dir: Path) -> None:
    drive = write_kitti_raw(frames, tmp_path, date="2011_09_26", drive=7)
    assert drive == tmp_path / "2011_09_26" / "2011_09_26_drive_0007_sync"
    for name in ("calib_cam_to_cam.txt", "calib_velo_to_cam.txt"):
        ours = _parse_calib(tmp_path / "2011_09_26" / name)
        kitti = _parse_calib(kitti_calib_dir / name)
        assert list(ours) == list(kitti), name  # same keys, same order
        assert re.fullmatch(r"\d{2}-[A-Z][a-z]{2}-\d{4} \d{2}:\d{2}:\d{2}", ours["calib_time"])
        for key, value in ours.items():
            if key != "calib_time":
                assert len(value.split()) == len(kitti[key].split()), key
                assert all(KITTI_NUMBER.match(x) for x in value.split()), (key, value)

    cam = _parse_calib(tmp_path / "2011_09_26" / "calib_cam_to_cam.txt")
    velo = _parse_calib(tmp_path / "2011_09_26" / "calib_velo_to_cam.txt")
    tr = np.eye(4)
    tr[:3, :3] = _floats(velo["R"], (3, 3))
    tr[:3, 3] = _floats(velo["T"], (3,))
    r_rect = np.eye(4)
    r_rect[:3, :3] = _floats(cam["R_rect_00"], (3, 3))
    kitti_chain = _floats(cam["P_rect_02"], (3, 4)) @ r_rect @ tr
    np.testing.assert_allclose(kitti_chain, frames[0].P @ frames[0].T_velo_to_cam, atol=1e-3)
    assert _floats(cam["S_rect_02"], (2,)).tolist() == [1242, 375]
    calib = load_kitti_calibration(tmp_path / "2011_09_26", camera_index=2)  # the node's reader
    # written with KITTI's %e and read back: measured 2.8e-9 (the composed transforms), P exact
    np.testing.assert_allclose(calib.T_cam_lidar, frames[0].T_velo_to_cam, atol=1e-8)
    np.testing.assert_array_equal(calib.camera.P, frames[0].P)

    for i, f in enumerate(frames):
        name = f"{i:010d}"
        points = np.fromfile(drive / "velodyne_points" / "data" / f"{name}.bin", dtype=np.float32)
        np.testing.assert_array_equal(points.reshape(-1, 4), f.points)
        bgr = cv2.imread(str(drive / "image_02" / "data" / f"{name}.png"), cv2.IMREAD_UNCHANGED)
        np.testing.assert_array_equal(bgr[..., ::-1], f.rgb)
        gt_path = drive / "proj_depth" / "groundtruth" / "image_02" / f"{name}.png"
        gt = cv2.imread(str(gt_path), cv2.IMREAD_UNCHANGED)
        assert gt.dtype == np.uint16
        np.testing.assert_allclose(gt / 256.0, f.depth_gt, atol=1.0 / 512 + 1e-6)
        assert np.array_equal(gt == 0, f.depth_gt == 0)

    for sub in ("image_02", "velodyne_points"):
        lines = (drive / sub / "timestamps.txt").read_text().splitlines()
        assert len(lines) == len(frames)
        assert all(re.fullmatch(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}\.\d{9}", x) for x in lines)
        assert lines[0] == "2011-09-26 13:00:00.000000000"
        assert lines[1] == "2011-09-26 13:00:00.100000000"


# --- Beam-count presets and the solid-state (rosette) pattern --------------------------------------


def test_presets_cover_16_32_64_128_beams_and_solid_state() -> None:
    from depth_completion_ros.simulation.lidar import RosetteModel, lidar_preset

    for name, beams, top, bottom in (
        ("16", 16, 15.0, -15.0),
        ("32", 32, 10.67, -30.67),
        ("64", 64, 2.0, -24.9),
        ("128", 128, 15.0, -25.0),
    ):
        model = lidar_preset(name, range_noise_std=0.01)
        assert model.n_beams == beams and model.range_noise_std == 0.01
        assert max(model.elevations_deg) == pytest.approx(top)
        assert min(model.elevations_deg) == pytest.approx(bottom)
    assert lidar_preset("hdl64") == LidarModel.hdl64()
    assert isinstance(lidar_preset("solid_state"), RosetteModel)
    with pytest.raises(ValueError, match="Unknown LiDAR 'velodyne'.*solid_state"):
        lidar_preset("velodyne")


def test_rosette_is_non_repetitive_and_stays_in_its_field_of_view() -> None:
    from depth_completion_ros.simulation.lidar import RosetteModel

    model = RosetteModel(fov_deg=70.4, n_points=24000)
    dirs = ray_directions(model)
    assert dirs.shape == (24000, 3) and dirs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(dirs, axis=1), 1.0, atol=1e-6)
    off_axis = np.rad2deg(np.arccos(np.clip(dirs[:, 0], -1, 1)))
    assert off_axis.max() <= 35.2 + 1e-3 and off_axis.max() > 34.0  # reaches the edge

    def cells(d: np.ndarray) -> set[tuple[int, int]]:  # 0.5 deg bins of the tangent plane
        return set(map(tuple, np.floor(np.rad2deg(d[:, 1:] / d[:, :1]) / 0.5).astype(int)))

    frames = [model.with_(start_time_s=0.1 * k) for k in range(10)]
    covered = [cells(ray_directions(f)) for f in frames]
    assert not np.allclose(ray_directions(frames[0]), ray_directions(frames[1]))
    union = set().union(*covered)
    assert len(union) > 3 * len(covered[0])  # later frames fill what the first one missed


def test_rosette_scan_of_a_wall_has_analytic_ranges() -> None:
    from depth_completion_ros.simulation.lidar import RosetteModel

    wall = _plane(100.0)
    wall.rotate(o3d.geometry.get_rotation_matrix_from_xyz((0, np.pi / 2, 0)), center=(0, 0, 0))
    wall.translate((8.0, 0, 0))  # the plane x = 8 m, facing the sensor
    model = RosetteModel(n_points=5000, start_time_s=12.3)
    scan = cast(wall, model, np.eye(4))
    assert len(scan) == model.n_rays and np.all(scan.ring == 0)
    np.testing.assert_array_equal(scan.column, np.arange(model.n_rays))
    dirs = ray_directions(model)
    np.testing.assert_allclose(scan.ranges, 8.0 / dirs[:, 0], rtol=1e-5)
    assert range_image(scan, model).shape == (1, 5000)
