"""Speed of BP-Net's sparse ops at the KITTI crop size, on the real LiDAR map; prints one JSON.

* nearest_valid_pixels (k = 4) on KITTI's own velodyne_raw map of the shared frame, cropped to
  the bottom 352 rows and the centred 1216 columns (~19k valid pixels): every method, median of
  ``--repeats`` runs after one warm-up. Target: <= 0.5 s on 2 CPU cores.
* dynamic_filter at 352 x 1216 for K = 3, 5, 7.
* with ``--bpnet``: one full BP-Net forward at 352 x 1216 (random weights; speed does not
  depend on them), median of ``--bpnet-repeats`` after a warm-up.

    .venv/bin/python benchmarks/bench_sparse_ops.py [--device cpu|cuda] [--repeats 7] [--bpnet]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch
from machine import machine_info  # benchmarks/machine.py (scripts run from here)

from depth_completion_ros.networks.sparse_ops import dynamic_filter, nearest_valid_pixels

H, W = 352, 1216
FRAME = (
    Path(__file__).resolve().parents[1].parent
    / "shared/data/kitti_dc_frame/data_depth_velodyne/train/2011_09_26_drive_0001_sync"
    / "proj_depth/velodyne_raw/image_02/0000000005.png"
)
KITTI_K = np.array([[721.5377, 0.0, 609.5593], [0.0, 721.5377, 172.854], [0.0, 0.0, 1.0]])


def kitti_sparse() -> tuple[np.ndarray, int, int]:
    """KITTI's sparse map (metres), KITTI depth-completion crop, and the crop's corner."""
    if not FRAME.exists():
        raise SystemExit(f"real KITTI frame not found at {FRAME} (see shared/data/README.md)")
    raw = cv2.imread(str(FRAME), cv2.IMREAD_UNCHANGED).astype(np.float32) / 256.0
    top, left = raw.shape[0] - H, (raw.shape[1] - W) // 2
    return raw[top:, left : left + W], top, left


def timed(fn: Callable[[], object], repeats: int, device: torch.device) -> dict:
    """Median / min wall time of ``fn`` in ms after one warm-up, synchronising CUDA."""

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
    return {
        "median_ms": round(statistics.median(times), 2),
        "min_ms": round(min(times), 2),
        "runs": repeats,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--bpnet", action="store_true", help="also time a full BP-Net forward")
    parser.add_argument("--bpnet-repeats", type=int, default=3)
    args = parser.parse_args()
    device = torch.device(args.device)

    sparse, top, left = kitti_sparse()
    valid = torch.from_numpy(sparse > 1e-3)[None].to(device)
    methods = ["torch"] + (["kdtree"] if device.type == "cpu" else [])
    search = {
        m: timed(lambda m=m: nearest_valid_pixels(valid, 4, method=m), args.repeats, device)
        for m in methods
    }

    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 1, H, W, generator=g).to(device)
    filters = {}
    for k in (3, 5, 7):
        wt = torch.rand(1, k * k, H, W, generator=g).to(device)
        filters[f"{k}x{k}"] = timed(
            lambda k=k, wt=wt: dynamic_filter(x, wt, k), args.repeats, device
        )

    result = {
        "benchmark": "bench_sparse_ops",
        "machine": {**machine_info(), "device": str(device)},
        "settings": {
            "height": H,
            "width": W,
            "frame": "kitti_dc_frame 2011_09_26_drive_0001_sync/0000000005 velodyne_raw image_02",
            "valid_pixels": int(valid.sum()),
            "k": 4,
            "repeats": args.repeats,
        },
        "nearest_valid_pixels": search,
        "dynamic_filter": filters,
    }
    if args.bpnet:
        result["bpnet_forward"] = bench_bpnet(sparse, top, left, device, args.bpnet_repeats)
    print(json.dumps(result, indent=2))


def bench_bpnet(sparse: np.ndarray, top: int, left: int, device: torch.device, repeats: int):
    """One full BP-Net forward on the real sparse map (random weights, eval, no grad)."""
    from depth_completion_ros.networks.bpnet import BPNet

    K = KITTI_K.copy()
    K[0, 2] -= left
    K[1, 2] -= top
    net = BPNet().eval().to(device)
    S = torch.from_numpy(sparse)[None, None].to(device)
    rgb = torch.randn(1, 3, H, W, generator=torch.Generator().manual_seed(1)).to(device)
    Kt = torch.from_numpy(K).float()[None].to(device)

    def run() -> None:
        with torch.no_grad():
            net(rgb, S, Kt)

    stats = timed(run, repeats, device)
    if device.type == "cuda":
        stats["peak_memory_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20)
    return stats


if __name__ == "__main__":
    main()
