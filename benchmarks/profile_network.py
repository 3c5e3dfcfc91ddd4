"""Where a network's frame time goes: per-stage times and the top kernels; prints one JSON.

Stages are timed with CUDA events (or the host clock on a CPU) around every module named by
``--stages`` and around the two custom ops (neighbour search, dynamic filter), summed over a
forward and taken as the median over ``--runs`` forwards. The kernel table is
torch.profiler's, sorted by device time.

    python benchmarks/profile_network.py --model bpnet --device cuda --precision bf16
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections import defaultdict
from collections.abc import Callable

import torch
from bench_networks import make_frame  # benchmarks/ (scripts run from here)
from machine import machine_info
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from depth_completion_ros.backends.network import AUTOCAST_DTYPES, NetworkBackend
from depth_completion_ros.networks import bpnet as bpnet_module

_SELFDC = ["conv1_rgb", "conv1_dep", "conv2", "conv3", "conv4", "conv5", "conv6", "dec5"]
_SELFDC += ["dec4", "dec3", "dec2", "id_dec1", "id_dec0", "gd_dec1", "gd_dec0", "cf_dec1"]
_SELFDC += ["cf_dec0", "prop_layer"]
DEFAULT_STAGES = {
    "bpnet": ["conv_img", "layer1_img", "layer2_img", "layer3_img", "layer4_img", "layer5_img"]
    + [f"pred{i}.{part}" for i in range(6) for part in ("upcat", "wpool", "prop", "fuse", "cspn")],
    "selfdc": _SELFDC,
    "selfdc_r18": _SELFDC,
}


class StageClock:
    """Accumulates elapsed time per named stage within one forward."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.pending: list[tuple[str, object, object]] = []
        self.open: dict[str, object] = {}

    def _now(self) -> object:
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            return ev
        return time.perf_counter()

    def start(self, name: str) -> None:
        self.open[name] = self._now()

    def stop(self, name: str) -> None:
        self.pending.append((name, self.open.pop(name), self._now()))

    def collect(self) -> dict[str, float]:
        """Milliseconds per stage for the forward just run."""
        if self.cuda:
            torch.cuda.synchronize()
        out: dict[str, float] = defaultdict(float)
        for name, a, b in self.pending:
            out[name] += a.elapsed_time(b) if self.cuda else 1000 * (b - a)
        self.pending.clear()
        return dict(out)


class OpCounter(TorchDispatchMode):
    """Counts the ops a forward dispatches: on a GPU each non-view op is about one kernel
    launch, so this is the host overhead that eager execution pays per frame."""

    def __init__(self) -> None:
        super().__init__()
        self.ops = 0
        self.views = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += 1
        self.views += bool(func.is_view)
        return func(*args, **(kwargs or {}))


def attach(net: torch.nn.Module, stages: list[str], clock: StageClock) -> None:
    """Hooks around the named submodules and wrappers around BP-Net's custom ops."""
    modules = dict(net.named_modules())
    for name in stages:
        module = modules.get(name)
        if module is None:
            continue
        module.register_forward_pre_hook(lambda *_, n=name: clock.start(n))
        module.register_forward_hook(lambda *_, n=name: clock.stop(n))

    def timed(fn: Callable, label: str) -> Callable:
        def wrapper(*args, **kwargs):
            clock.start(label)
            result = fn(*args, **kwargs)
            clock.stop(label)
            return result

        return wrapper

    bpnet_module.nearest_valid_pixels = timed(bpnet_module.nearest_valid_pixels, "op:neighbours")
    bpnet_module.dynamic_filter = timed(bpnet_module.dynamic_filter, "op:dynamic_filter")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="bpnet")
    p.add_argument("--device", default="cuda")
    p.add_argument("--precision", default="fp32")
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--top", type=int, default=25, help="kernel-table rows")
    p.add_argument("--stages", nargs="*", default=None, help="submodule names to time")
    p.add_argument("--trace", default="", help="write a Chrome trace here")
    args = p.parse_args()

    backend = NetworkBackend(
        model=args.model, device=args.device, precision=args.precision, allow_random_weights=True
    )
    dev = backend.device
    rgb, sparse, K = make_frame()
    clock = StageClock(dev)
    attach(backend.net, args.stages or DEFAULT_STAGES.get(args.model, []), clock)
    amp = backend.precision != "fp32"

    def forward() -> None:
        with torch.autocast(dev.type, dtype=AUTOCAST_DTYPES[backend.precision], enabled=amp):
            backend.spec.predict(backend.net, image, dep, k_net)

    with torch.inference_mode():
        image, dep, k_net, _ = backend.prepare(rgb, sparse, K)
        for _ in range(args.warmup):
            forward()
        clock.collect()
        per_run: list[dict[str, float]] = []
        walls = []
        for _ in range(args.runs):
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            forward()
            per_run.append(clock.collect())  # synchronises
            walls.append(1000 * (time.perf_counter() - t))
        counter = OpCounter()
        with counter:
            forward()
        flops = FlopCounterMode(display=False)
        with flops:
            forward()
        clock.collect()
        activities = [torch.profiler.ProfilerActivity.CPU]
        if dev.type == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        with torch.profiler.profile(activities=activities) as prof:
            forward()
            clock.collect()
    if args.trace:
        prof.export_chrome_trace(args.trace)
    kernels = sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)
    sort = "self_cuda_time_total" if dev.type == "cuda" else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=sort, row_limit=args.top))
    names = sorted({k for run in per_run for k in run})
    stages = {n: round(statistics.median(run.get(n, 0.0) for run in per_run), 2) for n in names}
    print(
        json.dumps(
            {
                "machine": machine_info(),
                "settings": {
                    "model": args.model,
                    "device": str(dev),
                    "precision": backend.precision,
                    "runs": args.runs,
                    "size": list(dep.shape[-2:]),
                },
                "forward_ms_median": round(statistics.median(walls), 2),
                # convolutions and matrix products, 2 per multiply-add
                "gflop_per_forward": round(flops.get_total_flops() / 1e9, 1),
                "ops_per_forward": counter.ops,
                "view_ops_per_forward": counter.views,
                "cuda_kernels_per_forward": kernels if dev.type == "cuda" else None,
                "stage_ms_median": stages,
            }
        )
    )


if __name__ == "__main__":
    main()
