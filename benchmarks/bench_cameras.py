"""Several cameras, one model: per-scan time and memory of N cameras through one network; prints
one JSON.

Three ways, each in its own subprocess (so peak memory is that way's alone), for N frames of
352 x 1216 (the KITTI crop; random weights, speed does not depend on them):
  ``batched``: one network, the N frames in one forward pass (what the node does for cameras of
  one size: ``complete_batch``); ``one_by_one``: one network, N forward passes; ``one_model_each``:
  N networks (N single-camera nodes), one forward pass each.

    .venv/bin/python benchmarks/bench_cameras.py --model selfdc_r18 --cameras 2 --runs 3
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

from bench_networks import make_frame  # benchmarks/ (scripts run from here)
from machine import machine_info

WAYS = ("batched", "one_by_one", "one_model_each")


def run_way(args: argparse.Namespace) -> dict:
    """One way, in this process: seconds per scan (all cameras) and peak RSS."""
    import torch

    from depth_completion_ros.backends.network import NetworkBackend

    torch.set_num_threads(args.threads or torch.get_num_threads())
    frames = [make_frame(seed) for seed in range(args.cameras)]
    models = args.cameras if args.way == "one_model_each" else 1
    backends = [
        NetworkBackend(args.model, device=args.device, allow_random_weights=True)
        for _ in range(models)
    ]

    def scan() -> None:
        if args.way == "batched":
            backends[0].complete_batch(frames)
        elif args.way == "one_by_one":
            for frame in frames:
                backends[0].complete(*frame)
        else:
            for backend, frame in zip(backends, frames, strict=True):
                backend.complete(*frame)

    scan()  # warm-up
    times = []
    for _ in range(args.runs):
        t0 = time.perf_counter()
        scan()
        times.append(time.perf_counter() - t0)
    on_gpu = backends[0].device.type == "cuda"
    return {
        "way": args.way,
        "seconds_per_scan": statistics.median(times),
        "runs": times,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if on_gpu else None,
        "batch_sizes": backends[0].last_batch_sizes,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="selfdc_r18")
    parser.add_argument("--cameras", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: its default)")
    parser.add_argument("--way", choices=WAYS, help=argparse.SUPPRESS)  # the child's job
    args = parser.parse_args()
    if args.way:
        print(json.dumps(run_way(args)))
        return 0
    results = {}
    for way in WAYS:
        command = [sys.executable, __file__, *sys.argv[1:], "--way", way]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            print(done.stderr, file=sys.stderr)
            return 1
        results[way] = json.loads(done.stdout.strip().splitlines()[-1])
    print(
        json.dumps(
            {
                "machine": machine_info(),
                "settings": {
                    "model": args.model,
                    "cameras": args.cameras,
                    "device": args.device,
                    "frame": "352x1216",
                    "runs": args.runs,
                },
                "results": results,
                "batched_vs_one_by_one": results["batched"]["seconds_per_scan"]
                / results["one_by_one"]["seconds_per_scan"],
                "memory_one_model_vs_each_mb": results["one_model_each"]["peak_rss_mb"]
                - results["batched"]["peak_rss_mb"],
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
