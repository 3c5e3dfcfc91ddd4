"""Throughput of the teacher cache (``training.cache_teacher``'s job loop: read, Depth Anything V2,
resize back, float16 write, manifest) on real KITTI frames; prints one JSON.

Two architectures with random weights (speed does not depend on them; nothing is downloaded):
``tiny`` (the tests' 4-layer, 32-wide model) and ``small``, the architecture of
depth-anything/Depth-Anything-V2-Small-hf (ViT-S/14 DINOv2: 384 wide, 12 layers, 6 heads, DPT
neck 48/96/192/384, fusion 64) built from its published config values. KITTI frames are
1242 x 375, so the network input at --input-size 518 is 518 x 1722.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/bench_teacher_cache.py \\
        [--device cpu|cuda] [--images 4] [--batch-size 1] [--input-size 518] [--arch tiny small]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from machine import machine_info  # benchmarks/machine.py (scripts run from here)

REPO = Path(__file__).resolve().parents[1]

SEQ = REPO.parent / "shared/data/kitti_raw_seq/2011_09_26/2011_09_26_drive_0000_sync/image_02/data"


def bench(arch: str, args: argparse.Namespace, images: Path, work: Path) -> dict:
    import torch

    from training.cache import teacher_path
    from training.cache_teacher import write_map
    from training.distributed import DistEnv
    from training.image_jobs import run_image_job
    from training.image_sources import list_images, read_image
    from training.teachers import DepthTeacher, depth_input_size
    from training.tiny_models import build_depth_anything

    model = build_depth_anything(work / f"da_{arch}", size=arch)
    teacher = DepthTeacher(model, args.device, args.input_size, args.batch_size)
    params = sum(p.numel() for p in teacher.model.parameters())
    source = list_images(images)
    teacher.predict([read_image(source.paths[0])])  # warm-up
    if teacher.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    report = run_image_job(
        source,
        work / f"cache_{arch}",
        predict=teacher.predict,
        output_path=teacher_path,
        write=write_map,
        meta=teacher.meta(),
        batch_size=args.batch_size,
        env=DistEnv(),
        job=f"bench {arch}",
    )
    if teacher.device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return {
        "arch": arch,
        "parameters_millions": round(params / 1e6, 2),
        "images": report.written,
        "network_input": list(depth_input_size(375, 1242, args.input_size)),
        "seconds": round(seconds, 2),
        "images_per_s": round(report.written / seconds, 3),
        "seconds_per_image": round(seconds / report.written, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--images", type=int, default=4, help="KITTI frames per architecture")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--input-size", type=int, default=518)
    parser.add_argument("--arch", nargs="+", default=["tiny", "small"], choices=["tiny", "small"])
    args = parser.parse_args()
    if not SEQ.is_dir():
        sys.exit(f"KITTI frames not found at {SEQ} (the shared data folder beside the repo)")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        images = work / "images"
        images.mkdir()
        for frame in sorted(SEQ.glob("*.png"))[: args.images]:
            (images / frame.name).symlink_to(frame)
        results = [bench(arch, args, images, work) for arch in args.arch]
    print(
        json.dumps(
            {
                "benchmark": "teacher_cache",
                "device": args.device,
                "batch_size": args.batch_size,
                "input_size": args.input_size,
                "image_size": [375, 1242],
                "results": results,
                "machine": machine_info(),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
