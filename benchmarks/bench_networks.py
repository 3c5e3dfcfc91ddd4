"""Per-frame latency and peak memory of the network backends at KITTI size; prints one JSON.

Each (model, device, precision) runs in its own subprocess, so peak memory is that config's
alone. Frame: 352 x 1216 (the KITTI crop, so no extra crop), ~20k LiDAR-like valid pixels,
random weights (speed does not depend on them).

    .venv/bin/python benchmarks/bench_networks.py --models selfdc_r18 selfdc --devices cpu
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import numpy as np
from machine import machine_info  # benchmarks/machine.py (scripts run from here)

H, W, N_VALID = 352, 1216, 20_000


def make_frame(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Synthetic frame: a smooth image, and 20k returns concentrated in the lower 2/3 like a
    64-beam LiDAR's footprint in a KITTI image."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:H, 0:W]
    rgb = np.stack([(xx * 0.2) % 255, (yy * 0.7) % 255, (xx + yy) % 255], -1)
    rgb = (rgb + rng.normal(0, 8, rgb.shape)).clip(0, 255).astype(np.uint8)
    sparse = np.zeros((H, W), np.float32)
    rows = rng.integers(H // 3, H, N_VALID)
    cols = rng.integers(0, W, N_VALID)
    sparse[rows, cols] = rng.uniform(3, 80, N_VALID).astype(np.float32)
    K = np.array([[721.5, 0, 596.5], [0, 721.5, 149.9], [0, 0, 1.0]])
    return rgb, sparse, K


def run_one(args: argparse.Namespace) -> dict:
    """One config in this process: build, warm up, time ``complete`` and the bare forward."""
    import torch

    from depth_completion_ros.backends.network import AUTOCAST_DTYPES, NetworkBackend

    if args.threads:
        torch.set_num_threads(args.threads)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t = time.perf_counter()
    backend = NetworkBackend(
        model=args.model,
        device=args.device,
        precision=args.precision,
        compile=args.compile,
        allow_random_weights=True,
        channels_last=args.channels_last,
    )
    build_s = time.perf_counter() - t
    rgb, sparse, K = make_frame()
    dev = backend.device

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    for _ in range(args.warmup):
        backend.complete(rgb, sparse, K)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    frame_s, cpu_s = [], []
    for _ in range(args.runs):
        sync()
        t, c = time.perf_counter(), time.process_time()
        out = backend.complete(rgb, sparse, K)
        sync()
        frame_s.append(time.perf_counter() - t)
        cpu_s.append(time.process_time() - c)

    forward_s = []
    with torch.inference_mode():
        image, dep, k_net, _ = backend.prepare(rgb, sparse, K)
        amp = backend.precision != "fp32"
        for _ in range(args.runs):
            sync()
            t = time.perf_counter()
            with torch.autocast(dev.type, dtype=AUTOCAST_DTYPES[backend.precision], enabled=amp):
                backend.spec.predict(backend._forward, image, dep, k_net)
            sync()
            forward_s.append(time.perf_counter() - t)

    result = {
        "model": args.model,
        "device": str(dev),
        "precision": backend.precision,
        "compile": backend.compiled,
        "channels_last": backend.channels_last,
        "params_m": round(sum(p.numel() for p in backend.net.parameters()) / 1e6, 3),
        "build_s": round(build_s, 3),
        "frame_ms_median": round(1000 * statistics.median(frame_s), 1),
        # min: the best case when no other job shares the cores; median: typical
        "frame_ms_min": round(1000 * min(frame_s), 1),
        "frame_ms_all": [round(1000 * s, 1) for s in frame_s],
        "forward_ms_median": round(1000 * statistics.median(forward_s), 1),
        # CPU seconds the process used per frame (all threads): with other jobs on the
        # machine, cpu_s / threads estimates the wall time the frame would take alone.
        "frame_cpu_s_median": round(statistics.median(cpu_s), 3),
        "output_valid_fraction": round(float((out > 0).mean()), 4),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "rss_before_build_mb": round(rss0, 1),
    }
    if dev.type == "cuda":
        result["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated(dev) / 2**20, 1)
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=["selfdc_r18", "selfdc", "bpnet"])
    p.add_argument("--devices", nargs="+", default=None, help="default: cpu, and cuda if present")
    p.add_argument("--precisions", nargs="+", default=None, help="default: cpu fp32 bf16; cuda all")
    p.add_argument("--runs", type=int, default=None, help="timed frames (default cpu 5, cuda 30)")
    p.add_argument("--warmup", type=int, default=None, help="untimed frames (cpu 1, cuda 5)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    p.add_argument("--compile", action="store_true", help="torch.compile the network")
    p.add_argument("--channels-last", dest="channels_last", action="store_true", default=None)
    p.add_argument("--timeout", type=float, default=900, help="seconds per config")
    # internal: run exactly one config in this process
    p.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--device", help=argparse.SUPPRESS)
    p.add_argument("--precision", help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.one:
        print(json.dumps(run_one(args)))
        return

    import torch

    devices = args.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    results = []
    for device in devices:
        precisions = args.precisions or (
            ["fp32", "fp16", "bf16"] if device.startswith("cuda") else ["fp32", "bf16"]
        )
        runs = args.runs or (30 if device.startswith("cuda") else 5)
        warmup = args.warmup if args.warmup is not None else (5 if device != "cpu" else 1)
        for model in args.models:
            for precision in precisions:
                cmd = [
                    sys.executable,
                    __file__,
                    "--one",
                    f"--model={model}",
                    f"--device={device}",
                    f"--precision={precision}",
                    f"--runs={runs}",
                    f"--warmup={warmup}",
                    f"--threads={args.threads}",
                ]
                cmd += ["--compile"] if args.compile else []
                cmd += ["--channels-last"] if args.channels_last else []
                try:
                    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
                except subprocess.TimeoutExpired:
                    results.append(
                        {
                            "model": model,
                            "device": device,
                            "precision": precision,
                            "error": f"timed out after {args.timeout} s",
                        }
                    )
                    continue
                lines = proc.stdout.strip().splitlines()
                if proc.returncode == 0 and lines:
                    results.append(json.loads(lines[-1]))
                else:
                    err = (proc.stderr.strip().splitlines() or ["no output"])[-1]
                    results.append(
                        {"model": model, "device": device, "precision": precision, "error": err}
                    )
                print(json.dumps(results[-1]), file=sys.stderr)
    settings = {
        "height": H,
        "width": W,
        "valid_pixels": N_VALID,
        "runs": args.runs,
        "threads": args.threads or "default",
        "compile": args.compile,
        "weights": "random",
        "timed": "frame = NetworkBackend.complete (numpy in, numpy out); forward = network only",
    }
    print(json.dumps({"machine": machine_info(), "settings": settings, "results": results}))


if __name__ == "__main__":
    main()
