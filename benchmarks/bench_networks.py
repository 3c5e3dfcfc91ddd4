"""Per-frame latency and peak memory of the network backends at KITTI size; prints one JSON.

Each (model, device, precision) runs in its own subprocess, so peak memory is that config's
alone. Frame: 352 x 1216 (the KITTI crop, so no extra crop), ~20k LiDAR-like valid pixels,
random weights (speed does not depend on them).

    .venv/bin/python benchmarks/bench_networks.py --models selfdc_r18 selfdc --devices cpu
    # torch against ONNX Runtime (an export of the same random weights; "onnx_vs_torch" ratios)
    .venv/bin/python benchmarks/bench_networks.py --models selfdc_r18 bpnet --devices cpu \
        --precisions fp32 --runtimes torch onnxruntime --runs 1
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


def onnx_backend(args: argparse.Namespace, reference, frame) -> tuple[object, dict]:
    """``reference``'s network exported to ONNX (fixed 352 x 1216 unless --onnx-dynamic) and
    run by ONNX Runtime with the providers ``device`` picks; parity with ``reference``."""
    import tempfile

    from depth_completion_ros.backends.onnx import OnnxBackend
    from depth_completion_ros.export import check_parity, export_network

    path = f"{tempfile.mkdtemp(prefix='bench_onnx_')}/{args.model}.onnx"
    info = export_network(
        reference.net,
        reference.spec.needs_intrinsics,
        path,
        H,
        W,
        dynamic=args.onnx_dynamic,
        metadata={"model": args.model, "dataset": "kitti"},
    )
    only = tuple(args.ort_providers.split(",")) if args.ort_providers else ()
    backend = OnnxBackend(args.model, path, device=args.device, precision=args.precision, only=only)
    parity = check_parity(backend, reference, *frame)
    return backend, {
        "export_s": info["export_s"],
        "onnx_dynamic": args.onnx_dynamic,
        "providers": backend.providers,
        "parity_vs_torch_fp32": round(parity["relative_difference"], 9),
    }


def run_one(args: argparse.Namespace) -> dict:
    """One config in this process: build, warm up, time ``complete`` and the bare forward."""
    import torch

    from depth_completion_ros.backends.network import AUTOCAST_DTYPES, NetworkBackend

    if args.threads:
        torch.set_num_threads(args.threads)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t = time.perf_counter()
    onnx = args.runtime == "onnxruntime"
    torch.manual_seed(0)
    backend = NetworkBackend(
        model=args.model,
        device="cpu" if onnx else args.device,
        precision="fp32" if onnx else args.precision,
        compile=args.compile and not onnx,
        allow_random_weights=True,
        channels_last=False if onnx else args.channels_last,
    )
    rgb, sparse, K = make_frame()
    extra: dict = {}
    if onnx:  # the torch model above is the export's source and its parity reference
        backend, extra = onnx_backend(args, backend, (rgb, sparse, K))
    build_s = time.perf_counter() - t
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
            if onnx:  # the session, with BP-Net's neighbour search that feeds it
                backend._run(image, dep, k_net)
            else:
                with torch.autocast(
                    dev.type, dtype=AUTOCAST_DTYPES[backend.precision], enabled=amp
                ):
                    backend.spec.predict(backend._forward, image, dep, k_net)
            sync()
            forward_s.append(time.perf_counter() - t)

    net = None if onnx else backend.net
    result = {
        "model": args.model,
        "runtime": args.runtime,
        "device": args.device if onnx else str(dev),
        "precision": args.precision if onnx else backend.precision,
        "compile": backend.compiled,
        "channels_last": backend.channels_last,
        **extra,
        "params_m": None
        if net is None
        else round(sum(p.numel() for p in net.parameters()) / 1e6, 3),
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
    p.add_argument(
        "--runtimes",
        nargs="+",
        default=["torch"],
        choices=("torch", "onnxruntime"),
        help="what runs the network (onnxruntime: an export of the same weights, fp32/fp16 only)",
    )
    p.add_argument(
        "--onnx-dynamic",
        dest="onnx_dynamic",
        action="store_true",
        help="export with dynamic batch/size (slower export; BP-Net minutes on a CPU)",
    )
    # internal: run exactly one config in this process
    p.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--device", help=argparse.SUPPRESS)
    p.add_argument("--precision", help=argparse.SUPPRESS)
    p.add_argument("--runtime", default="torch", help=argparse.SUPPRESS)
    p.add_argument(
        "--ort-providers",
        default="",
        help="comma-separated ONNX Runtime providers to keep (e.g. CUDAExecutionProvider)",
    )
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
        configs = [
            (model, precision, runtime)
            for model in args.models
            for precision in precisions
            for runtime in args.runtimes
            if runtime == "torch" or precision in ("fp32", "fp16")
        ]
        for model, precision, runtime in configs:
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
                f"--runtime={runtime}",
            ]
            cmd += ["--onnx-dynamic"] if args.onnx_dynamic else []
            cmd += [f"--ort-providers={args.ort_providers}"] if args.ort_providers else []
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
                        "runtime": runtime,
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
                    {
                        "model": model,
                        "device": device,
                        "precision": precision,
                        "runtime": runtime,
                        "error": err,
                    }
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
        "runtimes": args.runtimes,
    }
    out = {"machine": machine_info(), "settings": settings, "results": results}
    if "onnxruntime" in args.runtimes and "torch" in args.runtimes:
        out["onnx_vs_torch"] = ratios(results)
    print(json.dumps(out))


def ratios(results: list[dict]) -> list[dict]:
    """ONNX Runtime's per-frame time over torch's, per model, device and precision (> 1:
    ONNX Runtime is slower)."""
    torch_ms = {
        (r["model"], r["device"], r["precision"]): r["frame_ms_median"]
        for r in results
        if r.get("runtime", "torch") == "torch" and "frame_ms_median" in r
    }
    out = []
    for r in results:
        key = (r["model"], r["device"], r["precision"])
        if r.get("runtime") == "onnxruntime" and "frame_ms_median" in r and key in torch_ms:
            out.append(
                {
                    "model": r["model"],
                    "device": r["device"],
                    "precision": r["precision"],
                    "torch_frame_ms": torch_ms[key],
                    "onnxruntime_frame_ms": r["frame_ms_median"],
                    "onnxruntime_over_torch": round(r["frame_ms_median"] / torch_ms[key], 2),
                    "parity_vs_torch_fp32": r.get("parity_vs_torch_fp32"),
                }
            )
    return out


if __name__ == "__main__":
    main()
