"""Training step time and peak memory at the papers' crop sizes (JSON).

Each configuration runs in its own process so its peak resident memory is its own:
``python benchmarks/bench_train_step.py [--steps 3] [--models bpnet selfdc selfdc_r18]
[--kitti ROOT]``. Uses the real trainer (Trainer.train_step: forward, loss, backward, clipping,
optimiser, EMA) on crops of the real KITTI frame.
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

#: model -> (method, crop of the paper/release, loss weights)
SETTINGS = {
    "bpnet": ("dmd3c", [256, 1216], "{l1: 1.0}"),
    "selfdc": ("selfdc", [240, 1216], "{dc: 1.0, gc: 1.0}"),
    "selfdc_r18": ("selfdc", [240, 1216], "{dc: 1.0, gc: 1.0}"),
}


def measure(model: str, steps: int, kitti: str, batch: int, precision: str) -> dict:
    import torch

    from training.config import load_config
    from training.datasets import build_dataset
    from training.sample import collate
    from training.trainer import Trainer

    method, crop, weights = SETTINGS[model]
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
            "loss.options={gc_basis: none}" if method == "selfdc" else "loss.options={}",
            "run.device=cpu",
            f"run.precision={precision}",
            "run.out=/tmp/bench_train_step",
            "run.tensorboard=false",
            "run.progress=false",
            f"schedule.max_steps={steps + 1}",
        ],
    )
    dataset = build_dataset(cfg.data.train, "train", dict(cfg.data.options))
    trainer = Trainer(cfg, dataset)
    batch_ = collate([dataset[0] for _ in range(batch)])
    times = []
    for _ in range(steps + 1):
        t0 = time.perf_counter()
        trainer.train_step(batch_)
        times.append(time.perf_counter() - t0)
    return {
        "model": model,
        "crop": crop,
        "batch": batch,
        "precision": precision,
        "steps_timed": steps,
        "step_s_median": statistics.median(times[1:]),
        "step_s_first": times[0],
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "parameters_m": sum(p.numel() for p in trainer.net.parameters()) / 1e6,
        "torch_threads": torch.get_num_threads(),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    p.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up step")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--kitti", default=str(REPO.parent / "shared" / "data" / "kitti_dc_frame"))
    p.add_argument("--one", default="", help=argparse.SUPPRESS)  # child process: one model
    args = p.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.steps, args.kitti, args.batch, args.precision)))
        return 0
    from machine import machine_info

    results = []
    for model in args.models:
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--one",
                model,
                "--steps",
                str(args.steps),
                "--batch",
                str(args.batch),
                "--precision",
                args.precision,
                "--kitti",
                args.kitti,
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if out.returncode != 0:
            results.append({"model": model, "error": out.stderr.strip().splitlines()[-1:]})
            continue
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(json.dumps({"machine": machine_info(), "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
