"""DMD3C stage-1 training data from a folder of plain images.

    python -m training.generate_stage1 --images DIR --out DIR \\
        [--teacher NAME_OR_DIR | --depth-maps DIR [--depth-scale S] [--metric]] \\
        [--mesh grid|poisson] [--lidar hdl64|vlp16|32|128|solid_state] [--workers N] [--seed S]

Writes ``<out>/<image rel path>.npz`` (rgb, sparse, target, K; see training/stage1.py), one
``manifest.rank<R>.jsonl`` line per sample and ``summary.json`` (``summary.rank<R>.json`` when
sharded). Resumable: a sample listed in a manifest whose file exists is not made again. Shards by
RANK/WORLD_SIZE (torchrun) or a SLURM array; every image gets its own random stream from
(--seed, its path), so the output does not depend on workers, ranks or order.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import sys
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from depth_completion_ros.depth_io import read_rgb, write_bytes_atomic
from depth_completion_ros.simulation.lidar import LIDAR_PRESETS
from training.cache import META_FILE, Manifest, read_meta
from training.distributed import DistEnv, dist_env, job_device, shard
from training.meshing import MESH_METHODS, MeshConfig
from training.sample import BadSample, SkipCounter
from training.stage1 import (
    CameraRange,
    DepthRange,
    LidarConfig,
    Stage1Config,
    find_depth_map,
    image_rng,
    make_sample,
    read_depth_map,
    read_intrinsics,
    write_sample,
)

log = logging.getLogger("training.generate_stage1")

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"})
LIDAR_CHOICES = (*LIDAR_PRESETS, "16", "32", "64", "128")


@dataclass(frozen=True)
class Job:
    """What every worker needs to make a sample from an image key."""

    images: Path
    out: Path
    kind: str  # 'disparity' (teacher), 'depth' (relative depth maps) or 'metric'
    config: Stage1Config
    seed: int = 0
    depth_maps: Path | None = None
    depth_scale: float = 1000.0


def output_file(key: str) -> str:
    """The sample's file, relative to --out: the image's relative path with suffix ``.npz``."""
    return Path(key).with_suffix(".npz").as_posix()


def list_images(root: Path) -> list[str]:
    """Image paths under ``root`` (recursive, sorted, hidden files skipped), relative, posix."""
    keys = []
    for path in Path(root).rglob("*"):
        rel = path.relative_to(root)
        hidden = any(part.startswith(".") for part in rel.parts)
        if path.suffix.lower() in IMAGE_SUFFIXES and not hidden and path.is_file():
            keys.append(rel.as_posix())
    return sorted(keys)


def make_one(job: Job, key: str, disparity: np.ndarray | None = None) -> dict[str, Any]:
    """Make and write one sample; returns its manifest fields. Raises BadSample."""
    path = job.images / key
    try:
        rgb = read_rgb(path)
    except FileNotFoundError:
        raise BadSample(
            "unreadable", f"cannot read image {path}: not an image, or a corrupt file"
        ) from None
    if disparity is None:
        assert job.depth_maps is not None
        depth_path = find_depth_map(job.depth_maps, Path(key).with_suffix(""))
        if depth_path is None:
            raise BadSample(
                "no_depth_map",
                f"no depth map for {key} in {job.depth_maps} (expected "
                f"{Path(key).with_suffix('.npy')} or .png there, or {Path(key).stem}.npy/.png)",
            )
        depth_input = read_depth_map(depth_path, job.depth_scale)
    else:
        depth_input = disparity
    sample, info = make_sample(rgb, depth_input, job.kind, image_rng(job.seed, key), job.config)
    file = output_file(key)
    write_sample(job.out / file, sample)
    return {"file": file, **info}


_JOB: Job | None = None


def _init_worker(job: Job) -> None:
    global _JOB
    _JOB = job


def _work(item: tuple[str, np.ndarray | None]) -> tuple[str, dict[str, Any] | None, Any]:
    """(key, manifest fields or None, (cause, message) or None); never raises for bad input."""
    key, disparity = item
    assert _JOB is not None
    try:
        return key, make_one(_JOB, key, disparity), None
    except BadSample as err:
        return key, None, (err.cause, f"{key}: {err}")


def _items(
    job: Job, keys: Sequence[str], teacher: Any, batch_size: int, skips: SkipCounter
) -> Iterator[list[tuple[str, np.ndarray | None]]]:
    """Batches of work items; with a teacher, its disparities are predicted here (the main
    process, which holds the GPU), one batch at a time as the caller asks for it."""
    for start in range(0, len(keys), batch_size):
        chunk = keys[start : start + batch_size]
        if teacher is None:
            yield [(key, None) for key in chunk]
            continue
        rgbs, good = [], []
        for key in chunk:
            try:
                rgbs.append(read_rgb(job.images / key))
                good.append(key)
            except FileNotFoundError:
                message = f"{key}: cannot read image {job.images / key}: not an image, or corrupt"
                skips.add([("unreadable", message)])
        if good:
            yield list(zip(good, teacher.predict_disparity(rgbs), strict=True))


def _load_teacher(name: str, device: str, input_size: int = 518) -> Any:
    try:
        from training.teachers import DepthTeacher
    except ImportError as err:
        raise SystemExit(
            f"--teacher needs training/teachers.py ({err}); give --depth-maps instead"
        ) from None
    return DepthTeacher(name, device, input_size=input_size)


def run(
    job: Job,
    env: DistEnv,
    workers: int = 1,
    max_images: int | None = None,
    teacher: Any = None,
    batch_size: int = 8,
    progress: bool = True,
) -> dict[str, Any]:
    """Make every missing sample of this rank's shard; returns (and writes) the summary."""
    from tqdm import tqdm

    keys = list_images(job.images)
    if not keys:
        raise SystemExit(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under {job.images}")
    keys = shard(keys[:max_images] if max_images else keys, env)
    manifest = Manifest(job.out, env.rank)
    todo = [k for k in keys if not manifest.is_done(k, job.out / output_file(k))]
    log.info(
        "rank %d/%d: %d images, %d already done, %d to make",
        env.rank,
        env.world_size,
        len(keys),
        len(keys) - len(todo),
        len(todo),
    )
    skips = SkipCounter(log)
    made = 0
    start = time.perf_counter()
    bar = tqdm(total=len(todo), unit="img", disable=not progress, mininterval=1.0)

    def record(result: tuple[str, dict[str, Any] | None, Any]) -> None:
        nonlocal made
        key, fields, skip = result
        if fields is not None:
            manifest.add(key, **fields)
            made += 1
        else:
            skips.add([skip])
        bar.update(1)

    pool = None
    if workers > 1:
        ctx = multiprocessing.get_context("spawn")  # no forked open3d/torch thread state
        pool = ctx.Pool(workers, initializer=_init_worker, initargs=(job,))
    else:
        _init_worker(job)
    # At most this many items in flight: the teacher (main process) predicts the next batch
    # while the workers simulate, and only a bounded number of maps waits in memory.
    window = max(2 * batch_size, 4 * workers)
    pending: deque = deque()
    try:
        for items in _items(job, todo, teacher, batch_size, skips):
            for item in items:
                if pool is None:
                    record(_work(item))
                    continue
                pending.append(pool.apply_async(_work, (item,)))
                while len(pending) > window:
                    record(pending.popleft().get())
        while pending:
            record(pending.popleft().get())
    finally:
        bar.close()
        if pool is not None:
            pool.close()
            pool.join()
    seconds = time.perf_counter() - start
    densities = [manifest.done[k]["density"] for k in keys if k in manifest.done]
    summary = {
        "images": len(keys),
        "samples": made,
        "already_done": len(keys) - len(todo),
        "skipped": skips.summary(),
        "seconds": round(seconds, 3),
        "samples_per_s": round(made / seconds, 4) if seconds > 0 else None,
        "workers": workers,
        "mean_sparse_density": float(np.mean(densities)) if densities else None,
        "rank": env.rank,
        "world_size": env.world_size,
        "kind": job.kind,
        "seed": job.seed,
        "config": asdict(job.config),
    }
    text = json.dumps(summary, indent=2) + "\n"
    name = "summary.json" if env.world_size == 1 else f"summary.rank{env.rank}.json"
    write_bytes_atomic(job.out / name, text.encode())
    for cause, count in sorted(skips.counts.items()):
        log.warning("skipped %d image(s): %s", count, cause)
    log.info("made %d samples in %.1f s; summary in %s", made, seconds, job.out / name)
    return json.loads(text)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m training.generate_stage1",
        description="DMD3C stage-1 samples (rgb, simulated sparse LiDAR, dense target, K) "
        "from plain images.",
    )
    p.add_argument("--images", type=Path, required=True, help="folder of images (recursive)")
    p.add_argument("--out", type=Path, required=True, help="output folder (.npz, manifests)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--teacher", help="Depth Anything V2: hub name or local folder")
    src.add_argument(
        "--depth-maps",
        type=Path,
        help="folder of depth maps named like the images, or a teacher cache (meta.json)",
    )
    p.add_argument("--depth-scale", type=float, default=1000.0, help="16-bit PNG value / S = m")
    p.add_argument("--metric", action="store_true", help="keep --depth-maps as metric targets")
    p.add_argument("--intrinsics", type=Path, help="fixed K (.npy 3x3 or .json fx fy cx cy)")
    p.add_argument(
        "--device", default="auto", help="teacher device: auto (cuda:LOCAL_RANK if any), cpu, cuda"
    )
    p.add_argument("--batch-size", type=int, default=8, help="teacher batch size")
    p.add_argument(
        "--input-size", type=int, default=518, help="teacher input: shorter side (DA-V2: 518)"
    )
    p.add_argument("--mesh", choices=MESH_METHODS, default=MeshConfig.method)
    p.add_argument("--grid-stride", type=int, default=MeshConfig.grid_stride)
    p.add_argument("--grid-max-jump", type=float, default=MeshConfig.grid_max_jump)
    p.add_argument("--grid-smooth-ratio", type=float, default=MeshConfig.grid_smooth_ratio)
    p.add_argument("--poisson-depth", type=int, default=MeshConfig.poisson_depth)
    p.add_argument(
        "--poisson-density-quantile", type=float, default=MeshConfig.poisson_density_quantile
    )
    p.add_argument("--lidar", choices=LIDAR_CHOICES, default=LidarConfig.sensor)
    p.add_argument("--range-noise", type=float, default=LidarConfig.range_noise_std, help="m")
    p.add_argument("--dropout", type=float, default=LidarConfig.dropout_prob)
    p.add_argument("--min-range", type=float, help="m (default: the sensor's)")
    p.add_argument("--max-range", type=float, help="m (default: the sensor's)")
    p.add_argument("--near", type=float, nargs=2, default=DepthRange.near_m, metavar=("LO", "HI"))
    p.add_argument("--far", type=float, nargs=2, default=DepthRange.far_m, metavar=("LO", "HI"))
    p.add_argument(
        "--hfov", type=float, nargs=2, default=CameraRange.hfov_deg, metavar=("LO", "HI")
    )
    p.add_argument("--workers", type=int, default=1, help="processes on this machine")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-images", type=int, help="use only the first N images (sorted)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    if args.metric and args.depth_maps is None:
        p.error("--metric applies to --depth-maps")
    if args.workers < 1:
        p.error("--workers must be >= 1")
    if args.depth_scale <= 0:
        p.error("--depth-scale must be > 0")
    if not args.images.is_dir():
        p.error(f"--images {args.images} is not a folder")
    if args.depth_maps is not None and not args.depth_maps.is_dir():
        p.error(f"--depth-maps {args.depth_maps} is not a folder")
    return args


def job_from_args(args: argparse.Namespace) -> Job:
    try:
        K = read_intrinsics(args.intrinsics) if args.intrinsics else None
        config = Stage1Config(
            depth=DepthRange(near_m=tuple(args.near), far_m=tuple(args.far)),
            camera=CameraRange(hfov_deg=tuple(args.hfov)),
            lidar=LidarConfig(
                sensor=args.lidar,
                range_noise_std=args.range_noise,
                dropout_prob=args.dropout,
                min_range=args.min_range,
                max_range=args.max_range,
            ),
            mesh=MeshConfig(
                method=args.mesh,
                grid_max_jump=args.grid_max_jump,
                grid_stride=args.grid_stride,
                grid_smooth_ratio=args.grid_smooth_ratio,
                poisson_depth=args.poisson_depth,
                poisson_density_quantile=args.poisson_density_quantile,
            ),
            intrinsics=None if K is None else tuple(float(v) for v in K.ravel()),
        )
    except (ValueError, OSError, KeyError) as err:
        raise SystemExit(f"bad option: {err}") from None
    kind = "disparity" if args.teacher else ("metric" if args.metric else "depth")
    if args.depth_maps is not None and (args.depth_maps / META_FILE).is_file():
        # a teacher cache (training/cache_teacher.py) says what its maps are
        cached = read_meta(args.depth_maps).get("kind")
        if cached == "disparity":
            if args.metric:
                raise SystemExit(
                    f"{args.depth_maps} is a teacher cache of relative disparity (meta.json): "
                    "it cannot be --metric"
                )
            kind = "disparity"
    return Job(
        images=args.images,
        out=args.out,
        kind=kind,
        config=config,
        seed=args.seed,
        depth_maps=args.depth_maps,
        depth_scale=args.depth_scale,
    )


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    job = job_from_args(args)
    env = dist_env()
    device = job_device(args.device, env)
    teacher = _load_teacher(args.teacher, device, args.input_size) if args.teacher else None
    run(
        job,
        env,
        workers=args.workers,
        max_images=args.max_images,
        teacher=teacher,
        batch_size=args.batch_size,
        progress=not args.no_progress,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
