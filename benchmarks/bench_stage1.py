"""Stage-1 data generation: speed and fidelity of each mesh method, and job throughput; JSON.

Usage: python benchmarks/bench_stage1.py [--frames 4] [--job-frames 12] [--workers 1 2]

Inputs with exact dense depth: the synthetic street (depth_completion_ros.simulation) rendered
at 352x1216 with KITTI's field of view, and NYU's real Kinect depth (480x640) with its real K
when ../shared/data is there. Fidelity: the LiDAR (HDL-64E-like, no noise, no dropout) cast onto
each mesh, projected with the node's projection, against the input depth at the hit pixels
(``training.stage1.fidelity``). Speed: one core (open3d and Poisson run single-threaded), per
stage and per whole sample; then the real job (``generate_stage1.run``, relative-depth mode with
the default noise and dropout, .npz writing included) over ``--job-frames`` street frames.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # training/ runs from a checkout

from machine import machine_info  # noqa: E402  benchmarks/machine.py (scripts run from here)

from depth_completion_ros.simulation.lidar import make_raycasting_scene  # noqa: E402
from depth_completion_ros.simulation.street_scene import (  # noqa: E402
    CameraRig,
    make_street,
    render_camera,
)
from training.distributed import DistEnv  # noqa: E402
from training.generate_stage1 import Job, run  # noqa: E402
from training.meshing import MeshConfig, build_mesh, n_triangles  # noqa: E402
from training.stage1 import (  # noqa: E402
    LidarConfig,
    Stage1Config,
    image_rng,
    sample_lidar,
    simulate_sparse,
)

NYU = Path(__file__).resolve().parents[2] / "shared" / "data" / "nyu_frames" / "a"

METHODS = {
    "grid_stride1": MeshConfig("grid", grid_stride=1),
    "grid_stride2 (default)": MeshConfig("grid", grid_stride=2),
    "grid_stride3": MeshConfig("grid", grid_stride=3),
    "poisson_depth9": MeshConfig("poisson", poisson_depth=9),
    "poisson_depth10": MeshConfig("poisson", poisson_depth=10),
}


def street_frames(n: int, width: int = 1216, height: int = 352):
    rig = CameraRig.kitti(width, height)
    scene = make_street(seed=0, length=250.0)
    frames = []
    for i in range(n):
        pose = np.eye(4)
        pose[:3, 3] = (7.0 * i, -1.75, rig.lidar_height)
        rgb, depth, _ = render_camera(scene, rig, pose)
        frames.append((f"street{i}", rgb, depth, rig.K))
    return frames


def nyu_frames():
    if not NYU.exists():
        return []
    info = json.loads((NYU / "intrinsics.json").read_text())
    K = np.array([[info["fx"], 0, info["cx"]], [0, info["fy"], info["cy"]], [0, 0, 1.0]])
    frames = []
    for rgb_path in sorted((NYU / "rgb").glob("*.jpg")):
        number = rgb_path.stem.split("_")[1]
        raw = cv2.imread(str(NYU / "depth" / f"sync_depth_{number}.png"), cv2.IMREAD_UNCHANGED)
        rgb = cv2.imread(str(rgb_path))[..., ::-1]
        frames.append((f"nyu{number}", rgb, raw.astype(np.float32) / 1000.0, K))
    return frames


def measure(frames, mesh_config: MeshConfig) -> dict:
    """Per-stage times (ms, median over frames) and pooled fidelity of one mesh method."""
    lidar = LidarConfig(range_noise_std=0.0, dropout_prob=0.0)
    times = {"mesh_ms": [], "raycast_ms": [], "total_ms": []}
    errors, points, triangles = [], 0, []
    for name, _rgb, depth, K in frames:
        rng = image_rng(0, name)
        h, w = depth.shape
        t0 = time.perf_counter()
        mesh = build_mesh(depth, K, mesh_config)
        t1 = time.perf_counter()
        model, pose = sample_lidar(rng, lidar, K, w)
        sparse, _ = simulate_sparse(mesh, model, pose, K, w, h, rng)  # BVH build, cast, project
        t2 = time.perf_counter()
        times["mesh_ms"].append((t1 - t0) * 1e3)
        times["raycast_ms"].append((t2 - t1) * 1e3)
        times["total_ms"].append((t2 - t0) * 1e3)
        triangles.append(n_triangles(mesh))
        both = (sparse > 0) & (depth > 0)
        errors.append(np.abs(sparse[both] - depth[both]) / depth[both])
        points += int(both.sum())
    rel = np.concatenate(errors)
    return {
        **{k: round(float(np.median(v)), 1) for k, v in times.items()},
        "triangles": int(np.median(triangles)),
        "hit_pixels": points,
        "median_rel": round(float(np.median(rel)), 5),
        "p95_rel": round(float(np.quantile(rel, 0.95)), 5),
        "within_2pct": round(float(np.mean(rel <= 0.02)), 5),
    }


def job_throughput(frames, workers: int) -> dict:
    """The real job over street frames written as PNG + .npy (relative mode, defaults)."""
    with tempfile.TemporaryDirectory() as tmp:
        images, depth = Path(tmp) / "images", Path(tmp) / "depth"
        images.mkdir()
        depth.mkdir()
        for name, rgb, d, _K in frames:
            cv2.imwrite(str(images / f"{name}.png"), rgb[..., ::-1])
            np.save(depth / f"{name}.npy", d)
        job = Job(images=images, out=Path(tmp) / "out", kind="depth", config=Stage1Config(),
                  depth_maps=depth)  # fmt: skip
        summary = run(job, DistEnv(), workers=workers, progress=False)
        size = sum(p.stat().st_size for p in (Path(tmp) / "out").glob("*.npz"))
    return {
        "workers": workers,
        "samples": summary["samples"],
        "samples_per_s": summary["samples_per_s"],
        "samples_per_s_per_worker": round(summary["samples_per_s"] / workers, 3),
        "mean_sparse_density": round(summary["mean_sparse_density"], 4),
        "npz_mb_per_sample": round(size / max(1, summary["samples"]) / 1e6, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--frames", type=int, default=4, help="street frames for fidelity")
    parser.add_argument("--job-frames", type=int, default=12)
    parser.add_argument("--workers", type=int, nargs="+", default=[1])
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    args = parser.parse_args()

    make_raycasting_scene(build_mesh(np.full((8, 8), 5.0, np.float32), np.eye(3), MeshConfig()))
    street = street_frames(max(args.frames, args.job_frames))
    nyu = nyu_frames()
    result = {"machine": machine_info(), "image_size": {"street": [352, 1216], "nyu": [480, 640]}}
    for method in args.methods:
        result[method] = {"street_352x1216": measure(street[: args.frames], METHODS[method])}
        if nyu:
            result[method]["nyu_480x640"] = measure(nyu, METHODS[method])
        print(method, json.dumps(result[method]), file=sys.stderr)
    result["job_street_352x1216"] = [
        job_throughput(street[: args.job_frames], w) for w in args.workers
    ]
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
