"""Cache Depth Anything V2 maps for a dataset: ``python -m training.cache_teacher``.

    python -m training.cache_teacher --model depth-anything/Depth-Anything-V2-Small-hf \\
        --images kitti:/data/kitti:train --out /data/cache/da2_small [--batch-size 8]
    torchrun --nproc_per_node 4 -m training.cache_teacher ...   # one shard per GPU

One float16 ``.npy`` per image at the image's own size (``training.cache`` layout), ``kind``
disparity (relative inverse depth) or depth (metric models) in meta.json; resumable from the
manifests; shards by RANK/WORLD_SIZE (torchrun) or a SLURM array.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np

from training.cache import teacher_path, write_teacher_map
from training.distributed import dist_env, job_device
from training.image_jobs import run_image_job
from training.image_sources import BadImage, list_images
from training.teachers import DEPTH_INPUT_SIZE, SMALL_LICENCE, DepthTeacher

log = logging.getLogger("training.cache_teacher")


def write_map(path: Path, values: np.ndarray) -> Path:
    """float16 .npy; a map float16 cannot hold (non-finite, or above 65504) is rejected."""
    if not np.all(np.isfinite(values.astype(np.float16))):
        raise BadImage(f"{path}: the teacher's map has non-finite values or overflows float16")
    return write_teacher_map(path, values)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m training.cache_teacher",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", required=True, help="hub name or save_pretrained folder")
    parser.add_argument(
        "--images", required=True, help="DIR, kitti:ROOT:SPLIT, nyu:ROOT or bag:PATH"
    )
    parser.add_argument("--out", type=Path, help="cache folder (default: <images root>/teacher)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument(
        "--input-size",
        type=int,
        default=DEPTH_INPUT_SIZE,
        help="shorter side of the network input (multiple of 14)",
    )
    parser.add_argument("--max-images", type=int, help="only the first N images (before sharding)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    env = dist_env()
    try:
        source = list_images(args.images)
        teacher = DepthTeacher(
            args.model, job_device(args.device, env), args.input_size, args.batch_size
        )
    except (ValueError, OSError) as err:
        print(f"cache_teacher: {err}", file=sys.stderr)
        return 2
    if teacher.licence != SMALL_LICENCE and env.is_primary:
        log.warning("licence of '%s': %s", args.model, teacher.licence)
    out = args.out or source.root / "teacher"
    try:
        report = run_image_job(
            source,
            out,
            predict=teacher.predict,
            output_path=teacher_path,
            write=write_map,
            meta=teacher.meta(),
            batch_size=args.batch_size,
            max_images=args.max_images,
            env=env,
            job="cache_teacher",
        )
    except (ValueError, OSError) as err:
        print(f"cache_teacher: {err}", file=sys.stderr)
        return 2
    print(report.line("cache_teacher", out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
