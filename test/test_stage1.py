"""DMD3C stage 1: analytic meshes, real NYU depth end to end, the CLI, resume, sharding, bad input.

Tolerances: open3d intersects rays and triangles in float32, so a range carries a relative error
of a few float32 ulps (1.2e-7 each); ``RTOL = 1e-5`` leaves a margin of ~30x and still fails for
any real geometric error (a wrong K, pose or pixel convention moves ranges by > 1e-3).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import cv2
import numpy as np
import open3d as o3d
import pytest

from depth_completion_ros.simulation.lidar import (
    LidarModel,
    RosetteModel,
    cast,
    lidar_pose_in_optical_frame,
)
from training.distributed import DistEnv
from training.generate_stage1 import job_from_args, main, parse_args, run
from training.meshing import grid_mesh, poisson_mesh
from training.stage1 import (
    SAMPLE_KEYS,
    DepthRange,
    LidarConfig,
    Stage1Config,
    depth_to_disparity,
    fidelity,
    image_rng,
    make_sample,
    read_sample,
    relative_to_metric,
    sample_intrinsics,
    simulate_sparse,
)

RTOL = 1e-5
K_SMALL = np.array([[60.0, 0.0, 39.5], [0.0, 60.0, 29.5], [0.0, 0.0, 1.0]])
EXACT = LidarConfig(range_noise_std=0.0, dropout_prob=0.0)


def _pixel_rays(K: np.ndarray, width: int, height: int) -> np.ndarray:
    u, v = np.meshgrid(np.arange(width), np.arange(height))
    return np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones(u.shape)], -1)


def _box_exit(origin: np.ndarray, dirs: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Distance along unit ``dirs`` from ``origin`` (inside the box) to the box's walls."""
    with np.errstate(divide="ignore"):
        t = np.where(dirs > 0, (hi - origin) / dirs, (lo - origin) / dirs)
    return np.where(np.isfinite(t), t, np.inf).min(axis=1)


BOX_LO, BOX_HI = np.array([-3.0, -1.5, -1.0]), np.array([2.5, 1.2, 6.0])  # a room, optical frame


def _box_depth(K: np.ndarray, width: int, height: int) -> np.ndarray:
    """Depth map of the inside of the box, seen by a camera at the origin (z = t * dir_z)."""
    rays = _pixel_rays(K, width, height).reshape(-1, 3)
    norm = np.linalg.norm(rays, axis=1, keepdims=True)
    t = _box_exit(np.zeros(3), rays / norm, BOX_LO, BOX_HI)
    return (t * (rays[:, 2] / norm[:, 0])).reshape(height, width).astype(np.float32)


# --- the simulator on analytic meshes ------------------------------------------------------------


@pytest.mark.parametrize("stride", [1, 2])
def test_grid_mesh_of_planes_gives_analytic_ranges(stride: int) -> None:
    """A wall at 7 m and a ground plane 1.5 m below the camera: planar, so the grid mesh is
    exact and every LiDAR range is the analytic ray-plane distance."""
    height, width = 60, 80
    wall = np.full((height, width), 7.0, np.float32)
    v = np.arange(height, dtype=np.float32)[:, None] - K_SMALL[1, 2]
    ground = np.where(v > 0, 1.5 * K_SMALL[1, 1] / np.maximum(v, 1e-6), 0.0)
    ground = np.broadcast_to(ground, (height, width)).astype(np.float32)
    model = LidarModel.uniform(16, 15.0, -30.0, azimuth_fov_deg=90.0, azimuth_resolution_deg=0.5)
    pose = lidar_pose_in_optical_frame((0.1, -0.2, 0.05))
    R, o = pose[:3, :3], pose[:3, 3]
    for depth, normal, offset in ((wall, (0, 0, 1), 7.0), (ground, (0, 1, 0), 1.5)):
        scan = cast(grid_mesh(depth, K_SMALL, stride=stride), model, pose)
        assert len(scan) > 100
        dirs = (scan.xyz / scan.ranges[:, None]) @ R.T  # unit rays in the optical frame
        n = np.asarray(normal, float)
        expected = (offset - o @ n) / (dirs @ n)
        np.testing.assert_allclose(scan.ranges, expected, rtol=RTOL)


def test_grid_mesh_cuts_occlusion_edges_but_keeps_the_far_ground() -> None:
    """A box 3 m away in front of a wall 10 m away: no triangle bridges the step, so every hit is
    on one of the two planes. The ground near the horizon (large relative steps between rows,
    but equal ones) stays meshed."""
    depth = np.full((60, 80), 10.0, np.float32)
    depth[10:50, 20:45] = 3.0
    model = LidarModel.uniform(32, 20.0, -20.0, azimuth_fov_deg=70.0, azimuth_resolution_deg=0.2)
    scan = cast(grid_mesh(depth, K_SMALL), model, lidar_pose_in_optical_frame())
    z = scan.xyz[:, 0]  # LiDAR x = optical z
    on_a_plane = np.isclose(z, 3.0, rtol=RTOL) | np.isclose(z, 10.0, rtol=RTOL)
    assert on_a_plane.all() and np.isclose(z, 3.0).sum() > 100
    v = np.arange(60, dtype=np.float32)[:, None] - K_SMALL[1, 2]
    ground = np.broadcast_to(np.where(v > 0, 1.5 * 60.0 / np.maximum(v, 1e-6), 0), (60, 80))
    tris = grid_mesh(ground.astype(np.float32), K_SMALL).triangle.indices.numpy()
    # every block below the horizon (rows 30..59) but the first row's first block, whose
    # diagonal step has no neighbour step to compare with (treated as an edge, conservatively)
    assert len(tris) == 2 * 79 * 29 - 2


def test_box_mesh_gives_analytic_ranges_spinning_and_solid_state() -> None:
    """Rays from inside a box (open3d's box mesh) end on its walls: exact ray-box distances."""
    box = o3d.geometry.TriangleMesh.create_box(*(BOX_HI - BOX_LO))
    box.translate(BOX_LO)
    pose = lidar_pose_in_optical_frame((0.2, -0.3, -0.1))
    for model in (LidarModel.hdl64(), RosetteModel(n_points=5000, start_time_s=3.7)):
        scan = cast(box, model, pose)
        assert len(scan) > 0.9 * model.n_rays  # only rays shorter than min_range are lost
        dirs = (scan.xyz / scan.ranges[:, None]) @ pose[:3, :3].T
        expected = _box_exit(pose[:3, 3], dirs, BOX_LO, BOX_HI)
        np.testing.assert_allclose(scan.ranges, expected, rtol=RTOL)


def test_box_depth_map_through_the_pipeline_matches_the_box() -> None:
    """The depth map of a room (the box seen from inside) -> grid mesh -> LiDAR: hits lie on
    the box's walls (to float tolerance) except next to its edges, where a triangle spans two
    walls. Through the node's projection the sparse depth matches the depth map at the hit
    pixels up to the half-pixel offset between a hit and its pixel centre."""
    height, width = 90, 120
    K = np.array([[70.0, 0.0, 59.5], [0.0, 70.0, 44.5], [0.0, 0.0, 1.0]])
    depth = _box_depth(K, width, height)
    pose = lidar_pose_in_optical_frame((0.1, -0.2, -0.1))
    scan = cast(grid_mesh(depth, K, stride=1), LidarModel.hdl64().with_(azimuth_fov_deg=90.0), pose)
    points = scan.xyz @ pose[:3, :3].T + pose[:3, 3]  # optical frame
    off_wall = np.minimum(np.abs(points - BOX_LO), np.abs(points - BOX_HI)).min(axis=1)
    assert len(scan) > 2000 and np.mean(off_wall < RTOL * 10) > 0.95  # 1e-4 m at <= 10 m
    assert off_wall.max() < depth.max() / K[0, 0]  # the rest: within one pixel's footprint

    config = Stage1Config(lidar=EXACT, intrinsics=tuple(K.ravel()))
    rgb = np.zeros((height, width, 3), np.uint8)
    sample, _ = make_sample(rgb, depth, "metric", image_rng(0, "box"), config)
    np.testing.assert_array_equal(sample["target"], depth)
    np.testing.assert_allclose(sample["K"], K)
    # a hit lies within half a pixel of its pixel's centre, on the same wall: its depth differs
    # from the pixel's by at most half the larger neighbouring step along each axis
    dz_u = np.abs(np.diff(depth, axis=1, prepend=np.nan, append=np.nan))
    dz_v = np.abs(np.diff(depth, axis=0, prepend=np.nan, append=np.nan))
    bound = 0.5 * (np.fmax(dz_u[:, 1:], dz_u[:, :-1]) + np.fmax(dz_v[1:], dz_v[:-1]))
    hit = sample["sparse"] > 0
    error = np.abs(sample["sparse"] - depth)[hit]
    assert hit.sum() > 500
    assert np.mean(error <= bound[hit] + RTOL * depth[hit]) > 0.98, np.mean(error <= bound[hit])
    assert fidelity(sample["sparse"], depth)["within_2pct"] > 0.95


def test_poisson_density_trimming_cuts_invented_surfaces() -> None:
    """A wall covering only the right half of the image: Poisson also invents surface on the
    left, where there were no points; trimming the low-density vertices removes it. Where there
    were points, the Poisson surface is the wall to within 1e-4 m."""
    depth = np.full((60, 80), 4.0, np.float32)
    depth[:, :40] = 0.0
    model = LidarModel.uniform(16, 10.0, -10.0, azimuth_fov_deg=60.0, azimuth_resolution_deg=0.5)
    pose = lidar_pose_in_optical_frame()
    hits_left = {}
    for q in (0.0, 0.2):
        scan = cast(
            poisson_mesh(depth, K_SMALL, octree_depth=7, density_quantile=q, stride=1), model, pose
        )
        x_optical = -scan.xyz[:, 1]  # LiDAR y = left = -optical x
        right = x_optical > 0.3
        assert right.sum() > 500
        np.testing.assert_allclose(scan.xyz[right, 0], 4.0, atol=1e-4)
        hits_left[q] = int((x_optical < -0.3).sum())
    assert hits_left[0.0] > 50 and hits_left[0.2] == 0


# --- depth sampling and cameras ---------------------------------------------------------------


def test_relative_to_metric_maps_quantiles_to_sampled_near_and_far() -> None:
    rng = np.random.default_rng(3)
    disparity = np.linspace(0.0, 10.0, 10_000, dtype=np.float32).reshape(100, 100)
    disparity[:10] = 0.0  # sky
    config = DepthRange(near_m=(2.0, 2.0), far_m=(50.0, 50.0), quantiles=(0.0, 1.0))
    depth, info = relative_to_metric(disparity, rng, config)
    assert info == {"near_m": pytest.approx(2.0), "far_m": pytest.approx(50.0)}
    assert np.all(depth[:10] == 0)  # sky is invalid
    valid = depth[10:].ravel()
    assert valid.min() == pytest.approx(2.0, rel=1e-5) and valid.max() == pytest.approx(
        50.0, rel=1e-3
    )
    assert np.all(np.diff(valid) <= 0)  # more disparity, nearer
    inv = 1.0 / valid  # affine in disparity: inverse depth is linear in it
    np.testing.assert_allclose(np.diff(inv, 2), 0.0, atol=1e-6)
    # a non-metric depth map goes through its inverse: the same ordering survives
    redone, _ = relative_to_metric(depth_to_disparity(depth), rng, config)
    np.testing.assert_allclose(redone[10:], depth[10:], rtol=1e-4)


def test_sampled_intrinsics_have_the_field_of_view_and_centre() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        K = sample_intrinsics(1216, 352, rng)
        hfov = np.rad2deg(2 * np.arctan(608.0 / K[0, 0]))
        assert 55.0 <= hfov <= 95.0 and K[0, 0] == K[1, 1]
        assert (K[0, 2], K[1, 2]) == (607.5, 175.5)


# --- real depth end to end --------------------------------------------------------------------


@pytest.fixture(scope="module")
def nyu_layout(
    tmp_path_factory: pytest.TempPathFactory, nyu_frames: Path
) -> tuple[Path, Path, Path]:
    """NYU frames as --images and --depth-maps folders with matching stems (symlinks)."""
    nyu = nyu_frames
    root = tmp_path_factory.mktemp("nyu")
    (root / "images").mkdir()
    (root / "depth").mkdir()
    for rgb in sorted((nyu / "a" / "rgb").glob("*.jpg")):
        number = rgb.stem.split("_")[1]
        (root / "images" / f"nyu_{number}.jpg").symlink_to(rgb)
        (root / "depth" / f"nyu_{number}.png").symlink_to(
            nyu / "a" / "depth" / f"sync_depth_{number}.png"
        )
    return root / "images", root / "depth", nyu / "a" / "intrinsics.json"


def test_nyu_real_depth_metric_round_trip_within_2_percent(nyu_layout, tmp_path: Path) -> None:
    """Real Kinect depth through --depth-maps --metric with NYU's K, no noise or dropout: the
    target is the input depth, and the simulated LiDAR's depths agree with it at the hit pixels."""
    images, depth_dir, intrinsics = nyu_layout
    out = tmp_path / "out"
    argv = [
        "--images",
        str(images),
        "--out",
        str(out),
        "--depth-maps",
        str(depth_dir),
        "--metric",
        "--intrinsics",
        str(intrinsics),
        "--range-noise",
        "0",
        "--dropout",
        "0",
        "--no-progress",
    ]
    assert main(argv) == 0
    K_nyu = json.loads(intrinsics.read_text())
    for npz in sorted(out.glob("*.npz")):
        sample = read_sample(npz)
        raw = cv2.imread(str(depth_dir / f"{npz.stem}.png"), cv2.IMREAD_UNCHANGED)
        np.testing.assert_array_equal(sample["target"], raw.astype(np.float32) / 1000.0)
        assert sample["K"][0, 0] == pytest.approx(K_nyu["fx"]) and sample["K"][
            1, 2
        ] == pytest.approx(K_nyu["cy"])
        fid = fidelity(sample["sparse"], sample["target"])
        assert fid["points"] > 5000, npz.name
        assert fid["within_2pct"] >= 0.99 and fid["median_rel"] < 0.005, (npz.name, fid)
    assert len(list(out.glob("*.npz"))) == 3


def _kitti_synthetic_depth(height: int, width: int) -> np.ndarray:
    """A road 1.65 m below a KITTI-like camera (fy = 721.5, cy = 172.9) up to 80 m, and a
    facade 25 m ahead above it: a made-up depth map for a real KITTI image."""
    v = np.arange(height, dtype=np.float32)[:, None] - 172.854
    road = np.where(v > 0, 1.65 * 721.5377 / np.maximum(v, 1e-3), np.inf)
    return np.broadcast_to(np.minimum(road, 25.0), (height, width)).astype(np.float32).copy()


@pytest.fixture
def mixed_layout(tmp_path: Path, kitti_image_path: Path, nyu_layout) -> tuple[Path, Path]:
    """One real KITTI image (synthetic .npy depth) and the three NYU frames (16-bit PNG depth),
    in sub-folders, as --images / --depth-maps."""
    nyu_images, nyu_depth, _ = nyu_layout
    images, depth = tmp_path / "images", tmp_path / "depth"
    for sub in ("kitti", "nyu"):
        (images / sub).mkdir(parents=True)
        (depth / sub).mkdir(parents=True)
    (images / "kitti" / "0000000005.png").symlink_to(kitti_image_path)
    np.save(depth / "kitti" / "0000000005.npy", _kitti_synthetic_depth(375, 1242))
    for path in nyu_images.iterdir():
        (images / "nyu" / path.name).symlink_to(path.resolve())
        (depth / "nyu" / f"{path.stem}.png").symlink_to((nyu_depth / f"{path.stem}.png").resolve())
    return images, depth


def _manifest(out: Path) -> list[dict]:
    return [
        json.loads(line)
        for p in sorted(out.glob("manifest.rank*.jsonl"))
        for line in p.read_text().splitlines()
    ]


def test_cli_end_to_end_resume_and_regenerate(mixed_layout, tmp_path: Path) -> None:
    images, depth = mixed_layout
    out = tmp_path / "out"
    argv = ["--images", str(images), "--out", str(out), "--depth-maps", str(depth), "--no-progress"]
    assert main(argv) == 0
    keys = ["kitti/0000000005.png", "nyu/nyu_00000.jpg", "nyu/nyu_00050.jpg", "nyu/nyu_00100.jpg"]
    entries = _manifest(out)
    assert sorted(e["key"] for e in entries) == keys
    for entry in entries:
        assert entry["file"] == str(Path(entry["key"]).with_suffix(".npz"))
        assert 0.005 < entry["density"] < 0.3
        with np.load(out / entry["file"], allow_pickle=False) as data:
            assert sorted(data.files) == sorted(SAMPLE_KEYS)
            rgb, sparse, target, K = (data[k] for k in SAMPLE_KEYS)
        h, w = (375, 1242) if entry["key"].startswith("kitti") else (480, 640)
        assert rgb.shape == (h, w, 3) and rgb.dtype == np.uint8
        assert sparse.shape == target.shape == (h, w)
        assert sparse.dtype == target.dtype == K.dtype == np.float32 and K.shape == (3, 3)
        assert np.count_nonzero(sparse) / sparse.size == pytest.approx(entry["density"])
        assert np.all(target >= 0) and np.all(np.isfinite(target))
        # non-metric input: the target is a rescaled depth (near/far sampled per image) ...
        assert target[target > 0].min() >= 1.0 and target.max() <= 100.0 * 1.001
        # ... and the simulated LiDAR samples it (with 1 cm range noise)
        assert fidelity(sparse, target)["median_rel"] < 0.01
    nyu_fovs = {e["hfov_deg"] for e in entries if e["key"].startswith("nyu")}
    assert len(nyu_fovs) == 3  # every image draws its own camera (own random stream)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["samples"] == 4 and summary["skipped"] == {} and summary["images"] == 4
    assert summary["samples_per_s"] > 0
    assert summary["mean_sparse_density"] == pytest.approx(np.mean([e["density"] for e in entries]))

    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.npz")}
    assert main(argv) == 0  # resume: nothing to do
    summary = json.loads((out / "summary.json").read_text())
    assert summary["samples"] == 0 and summary["already_done"] == 4
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.npz")} == stamps

    gone = out / "nyu" / "nyu_00050.npz"
    kept = read_sample(gone)
    gone.unlink()
    assert main(argv) == 0  # a deleted output is made again, identically (seeded per image)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["samples"] == 1 and summary["already_done"] == 3
    again = read_sample(gone)
    for key in SAMPLE_KEYS:
        np.testing.assert_array_equal(again[key], kept[key])


def test_two_ranks_cover_every_image_once(nyu_layout, tmp_path: Path) -> None:
    images, depth_dir, _ = nyu_layout
    out = tmp_path / "out"
    job = job_from_args(
        parse_args(
            [
                "--images",
                str(images),
                "--out",
                str(out),
                "--depth-maps",
                str(depth_dir),
                "--grid-stride",
                "4",
                "--lidar",
                "solid_state",
            ]
        )
    )
    for rank in (0, 1):
        summary = run(job, DistEnv(rank=rank, world_size=2), progress=False)
        assert json.loads((out / f"summary.rank{rank}.json").read_text()) == summary
    keys = [e["key"] for e in _manifest(out)]
    assert sorted(keys) == sorted(p.name for p in images.iterdir())  # each once, none twice
    per_rank = [
        {
            json.loads(line)["key"]
            for line in (out / f"manifest.rank{r}.jsonl").read_text().splitlines()
        }
        for r in (0, 1)
    ]
    assert all(per_rank) and not per_rank[0] & per_rank[1]  # both ranks worked, on other images
    assert [len(k) for k in per_rank] == [2, 1]  # every 2nd image from the rank
    assert len(_manifest(out)) == 3 and {e["lidar"] for e in _manifest(out)} == {"solid_state"}
    assert not (out / "summary.json").exists()
    # --max-images takes the first N (sorted) before sharding
    first = run(dataclasses.replace(job, out=tmp_path / "one"), DistEnv(), max_images=1)
    assert first["images"] == 1 and [e["key"] for e in _manifest(tmp_path / "one")] == [
        "nyu_00000.jpg"
    ]


def test_workers_give_the_same_samples(nyu_layout, tmp_path: Path) -> None:
    """Two processes (spawned) write what one does: every image has its own seeded stream."""
    images, depth_dir, _ = nyu_layout
    outs = []
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        job = job_from_args(
            parse_args(
                [
                    "--images",
                    str(images),
                    "--out",
                    str(out),
                    "--depth-maps",
                    str(depth_dir),
                    "--grid-stride",
                    "4",
                ]
            )
        )
        assert run(job, DistEnv(), workers=workers, progress=False)["samples"] == 3
        outs.append(out)
    for npz in sorted(outs[0].glob("*.npz")):
        a, b = read_sample(npz), read_sample(outs[1] / npz.name)
        for key in SAMPLE_KEYS:
            np.testing.assert_array_equal(a[key], b[key])


# --- bad input ----------------------------------------------------------------------------------


def test_each_bad_input_is_skipped_counted_and_logged_once(tmp_path: Path, caplog) -> None:
    images, depth = tmp_path / "images", tmp_path / "depth"
    images.mkdir()
    depth.mkdir()
    h, w = 48, 64
    rgb = np.full((h, w, 3), 128, np.uint8)
    good = np.full((h, w), 5.0, np.float32)
    checker = np.where((np.indices((h, w)).sum(0) % 2) == 0, 5.0, 0.0).astype(np.float32)
    top_only = np.zeros((h, w), np.float32)
    top_only[:4] = 5.0  # far above every beam (hdl64 looks at most 2 deg up)
    cases = {
        "good": good,
        "good2": good * 2,
        "wrong_size": np.full((h // 2, w), 5.0, np.float32),
        "empty_mesh": checker,  # no 2x2 block with three valid corners
        "no_hit": top_only,
        "invalid_depth": np.zeros((h, w), np.float32),
        "no_depth_map": None,
        "unreadable": None,
        "bad_depth_file": None,
    }
    for name, d in cases.items():
        if name == "unreadable":
            (images / f"{name}.png").write_bytes(b"this is not a PNG")
            np.save(depth / f"{name}.npy", good)
            continue
        cv2.imwrite(str(images / f"{name}.png"), rgb)
        if name == "bad_depth_file":
            (depth / f"{name}.npy").write_bytes(b"garbage")
        elif d is not None:
            np.save(depth / f"{name}.npy", d)
    out = tmp_path / "out"
    argv = [
        "--images",
        str(images),
        "--out",
        str(out),
        "--depth-maps",
        str(depth),
        "--metric",
        "--grid-stride",
        "1",
        "--no-progress",
        "--hfov",
        "60",
        "60",
    ]
    with caplog.at_level(logging.WARNING, logger="training.generate_stage1"):
        assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["samples"] == 2
    assert summary["skipped"] == {
        "size": 1,
        "empty_mesh": 1,
        "no_hit": 1,
        "invalid_depth": 1,
        "no_depth_map": 1,
        "unreadable": 1,
        "unreadable_depth_map": 1,
    }
    messages = [r.getMessage() for r in caplog.records]
    for cause in summary["skipped"]:
        first = [m for m in messages if m.startswith(f"skipping a bad sample ({cause})")]
        assert len(first) == 1, (cause, messages)
    assert any("is 64x24 but the image is 64x48" in m for m in messages)
    assert sorted(e["key"] for e in _manifest(out)) == ["good.png", "good2.png"]


def test_simulate_sparse_reports_empty_meshes_and_misses() -> None:
    from training.meshing import _tensor_mesh
    from training.sample import BadSample

    model, pose = LidarModel.vlp16(), lidar_pose_in_optical_frame()
    with pytest.raises(BadSample, match="no triangles") as err:
        simulate_sparse(
            _tensor_mesh(np.zeros((0, 3)), np.zeros((0, 3))),
            model,
            pose,
            K_SMALL,
            80,
            60,
            np.random.default_rng(0),
        )
    assert err.value.cause == "empty_mesh"
    behind = grid_mesh(np.full((60, 80), 5.0, np.float32), K_SMALL).translate((0.0, 0.0, -20.0))
    with pytest.raises(BadSample) as err:  # the LiDAR hits it behind the camera: nothing projects
        simulate_sparse(
            behind,
            model.with_(azimuth_fov_deg=360.0),
            pose,
            K_SMALL,
            80,
            60,
            np.random.default_rng(0),
        )
    assert err.value.cause == "no_hit"


def test_output_is_the_same_for_the_same_seed_and_differs_for_another(nyu_layout) -> None:
    images, _, _ = nyu_layout
    rgb = cv2.imread(str(next(images.iterdir())))[..., ::-1]
    depth = np.full(rgb.shape[:2], 3.0, np.float32)
    a, _ = make_sample(rgb, depth, "metric", image_rng(0, "k"), Stage1Config())
    b, _ = make_sample(rgb, depth, "metric", image_rng(0, "k"), Stage1Config())
    c, _ = make_sample(rgb, depth, "metric", image_rng(1, "k"), Stage1Config())
    np.testing.assert_array_equal(a["sparse"], b["sparse"])
    assert not np.array_equal(a["K"], c["K"])


def test_a_teacher_cache_is_read_as_disparity(nyu_layout, tmp_path: Path) -> None:
    """--depth-maps on a teacher cache (training/cache layout, meta.json kind 'disparity'): the
    maps are relative disparity, not depth; --metric is refused for them."""
    from training.cache import teacher_path, write_meta, write_teacher_map

    images, depth_dir, _ = nyu_layout
    cache = tmp_path / "cache"
    for image in sorted(images.iterdir()):
        raw = cv2.imread(str(depth_dir / f"{image.stem}.png"), cv2.IMREAD_UNCHANGED)
        write_teacher_map(teacher_path(cache, Path(image.stem)), depth_to_disparity(raw / 1000.0))
    write_meta(cache, {"kind": "disparity", "model": "nyu-kinect-inverse-depth"})
    out = tmp_path / "out"
    argv = ["--images", str(images), "--out", str(out), "--depth-maps", str(cache), "--no-progress"]
    assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["kind"] == "disparity" and summary["samples"] == 3
    for entry in _manifest(out):
        target = read_sample(out / entry["file"])["target"]
        raw = cv2.imread(
            str(depth_dir / Path(entry["key"]).with_suffix(".png")), cv2.IMREAD_UNCHANGED
        )
        # affine in disparity between the clipped 2 % tails (which sit at near and far)
        near, far = entry["near_m"], entry["far_m"]
        inner = (target > near * 1.001) & (target < far * 0.999) & (raw > 0)
        assert inner.mean() > 0.5
        assert np.corrcoef(1.0 / target[inner], 1.0 / raw[inner])[0, 1] > 0.999
        assert near <= target[target > 0].min() * 1.001 and target.max() <= far * 1.001
    with pytest.raises(SystemExit, match="cannot be --metric"):
        main([*argv, "--metric"])


def test_teacher_end_to_end(tmp_path: Path, nyu_layout) -> None:
    """--teacher with a tiny random-weight Depth Anything V2 (the teachers module's own test
    model): the teacher runs in the main process, the samples come out like any others, and an
    unreadable image is counted."""
    from training.tiny_models import build_depth_anything

    model = build_depth_anything(tmp_path / "tiny_da")
    images = tmp_path / "images"
    images.mkdir()
    for path in sorted(nyu_layout[0].iterdir())[:2]:
        (images / path.name).symlink_to(path.resolve())
    (images / "broken.png").write_bytes(b"not an image")
    out = tmp_path / "out"
    argv = ["--images", str(images), "--out", str(out), "--teacher", str(model), "--device", "cpu",
            "--batch-size", "2", "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["kind"] == "disparity" and summary["samples"] == 2
    assert summary["skipped"] == {"unreadable": 1}
    for entry in _manifest(out):
        sample = read_sample(out / entry["file"])
        assert sample["sparse"].shape == sample["target"].shape == sample["rgb"].shape[:2]
        assert entry["near_m"] * 0.999 <= sample["target"][sample["target"] > 0].min()
        assert np.count_nonzero(sample["sparse"]) > 1000
