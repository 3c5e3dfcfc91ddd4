"""Training step time and peak memory at the papers' crop sizes (JSON).

Each configuration runs in its own process so its peak memory is its own:
``python benchmarks/bench_train_step.py [--device cpu|cuda] [--batch 1] [--precision fp32|bf16]
[--steps 3] [--models bpnet selfdc selfdc_r18] [--crop H W] [--accum-steps 1] [--kitti ROOT]``.
Uses the real trainer (Trainer.train_step: forward, loss, backward, clipping, optimiser, EMA) on
crops of the real KITTI frame. Reports the median step time, steps/s and samples/s, and the peak
memory: resident set size on the CPU, ``torch.cuda.max_memory_allocated`` (and reserved) on CUDA.

The GPU measurement of issue 17 (``benchmarks/gpu_check.sh training``): ``--device cuda
--batch 4 --precision bf16 --models bpnet selfdc`` (BP-Net at 256x1216, SelfDC at 240x1216).
``--crop`` overrides the crop (multiples of 32 for BP-Net) for a quick check on a small CPU.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

#: model -> (method, crop of the paper/release, loss weights, loss options)
SETTINGS = {
    "bpnet": ("dmd3c", [256, 1216], "{l1: 1.0}", "{}"),
    "selfdc": ("selfdc", [240, 1216], "{dc: 1.0, gc: 1.0}", "{gc_basis: none}"),
    "selfdc_r18": ("selfdc", [240, 1216], "{dc: 1.0, gc: 1.0}", "{gc_basis: none}"),
}


def measure(
    model: str,
    steps: int,
    kitti: str,
    batch: int,
    precision: str,
    device: str = "cpu",
    crop: list[int] | None = None,
    accum_steps: int = 1,
) -> dict:
    import torch

    from training.config import load_config
    from training.datasets import build_dataset
    from training.sample import collate
    from training.trainer import Trainer

    method, default_crop, weights, options = SETTINGS[model]
    crop = list(crop or default_crop)
    cfg = load_config(
        None,
        [
            f"data.train=kitti:{kitti}",
            "data.workers=0",
            f"data.batch_size={batch}",
            f"data.options={{crop: {crop}, crop_mode: random, cameras: [2]}}",
            f"model.name={model}",
            f"loss.method={method}",
            f"loss.weights={weights}",
            f"loss.options={options}",
            f"optim.accum_steps={accum_steps}",
            f"run.device={device}",
            f"run.precision={precision}",
            "run.out=/tmp/bench_train_step",
            "run.tensorboard=false",
            "run.progress=false",
            f"schedule.max_steps={steps + 1}",
        ],
    )
    dataset = build_dataset(cfg.data.train, "train", dict(cfg.data.options))
    trainer = Trainer(cfg, dataset)
    cuda = trainer.device.type == "cuda"
    micro = [collate([dataset[0] for _ in range(batch)]) for _ in range(accum_steps)]
    if cuda:
        torch.cuda.reset_peak_memory_stats(trainer.device)
    times, skipped = [], 0
    for _ in range(steps + 1):  # the first step (allocation, cuDNN autotuning) is not timed
        t0 = time.perf_counter()
        skipped += trainer.train_step(micro) is None
        if cuda:
            torch.cuda.synchronize(trainer.device)
        times.append(time.perf_counter() - t0)
    step_s = statistics.median(times[1:]) if steps else times[0]
    result = {
        "model": model,
        "device": str(trainer.device),
        "crop": crop,
        "batch": batch,
        "accum_steps": accum_steps,
        "precision": precision,
        "steps_timed": steps,
        "step_s_median": step_s,
        "steps_per_s": 1.0 / step_s,
        "samples_per_s": batch * accum_steps / step_s,
        "step_s_first": times[0],
        "skipped_steps": skipped,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "parameters_m": sum(p.numel() for p in trainer.net.parameters()) / 1e6,
        "torch_threads": torch.get_num_threads(),
    }
    if cuda:
        result["peak_gpu_gb"] = torch.cuda.max_memory_allocated(trainer.device) / 2**30
        result["peak_gpu_reserved_gb"] = torch.cuda.max_memory_reserved(trainer.device) / 2**30
        result["cuda_device"] = torch.cuda.get_device_name(trainer.device)
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    p.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up step")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--accum-steps", type=int, default=1, help="micro-batches per step")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--crop", nargs=2, type=int, default=None, metavar=("H", "W"))
    p.add_argument("--kitti", default=str(REPO.parent / "shared" / "data" / "kitti_dc_frame"))
    p.add_argument("--one", default="", help=argparse.SUPPRESS)  # child process: one model
    args = p.parse_args()
    if args.one:
        result = measure(
            args.one,
            args.steps,
            args.kitti,
            args.batch,
            args.precision,
            args.device,
            args.crop,
            args.accum_steps,
        )
        print(json.dumps(result))
        return 0
    from machine import machine_info

    results = []
    for model in args.models:
        child = [sys.executable, __file__, "--one", model, "--kitti", args.kitti]
        child += ["--steps", str(args.steps), "--batch", str(args.batch)]
        child += ["--accum-steps", str(args.accum_steps), "--precision", args.precision]
        child += ["--device", args.device]
        if args.crop:
            child += ["--crop", *map(str, args.crop)]
        out = subprocess.run(child, capture_output=True, text=True, check=False)
        if out.returncode != 0:
            results.append({"model": model, "error": out.stderr.strip().splitlines()[-1:]})
            continue
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(json.dumps({"machine": machine_info(), "results": results}, indent=2))
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
