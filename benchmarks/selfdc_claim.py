"""SelfDC's central claim at small scale, on the synthetic street with exact ground truth.

Claim (SelfDC sec. 3.2, Table 3): the depth-consistency loss L_dc alone gives sparse depth no
reason to spread, while L_dc + L_gc (and + L_sms) propagates it into the unobserved pixels.

Setup: one synthetic street frame (depth_completion_ros.simulation.street_scene), a 16-beam
LiDAR over KITTI's elevation fan projected by the runtime's projection, segments from the
project's own weights-free pseudo-labels (``training.segmenters`` Felzenszwalb over-segmentation,
the defaults of ``python -m training.pseudo_labels --method felzenszwalb``; ``--segments
semantic`` takes the simulator's exact class labels instead, which no real run has). The depth
map is optimised *directly* (one free value per pixel, initialised at 0, Adam), the same number
of steps for every loss, so "unfilled" is exact: a pixel no term touches keeps its 0. (A network
would fill something from L_dc alone through its weights and receptive field, and the comparison
would measure the architecture instead of the loss; benchmarks/learning_check.py trains one.)

Scored against the exact ground truth on the pixels KITTI's ground truth would cover (below the
top LiDAR beam, depth <= 80 m), all of them and those more than ``--far-px`` pixels from any
LiDAR point. RMSE/MAE are computed on the raw map: the runtime's kitti_metrics fills holes as
the devkit does, which would score the devkit's interpolation of L_dc's zeros, not the loss.

Baselines on the same frame, masks and error function: nearest-neighbour and linear
interpolation of the sparse input (learning_check.InterpolationFill, scipy's griddata) and the
node's classical fill (``make_backend('classical')``, its defaults). A loss that loses to them
here does not show that training with it beats plain interpolation.

Usage: python benchmarks/selfdc_claim.py [--steps 600 --width 416 --height 128]
[--segments felzenszwalb|semantic]
Prints one JSON object (and a table on stderr).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/machine.py
from learning_check import BASELINES, make_baseline  # noqa: E402
from machine import machine_info  # noqa: E402

from depth_completion_ros.projection import project_points  # noqa: E402
from depth_completion_ros.simulation.lidar import LidarModel  # noqa: E402
from depth_completion_ros.simulation.street_scene import CameraRig, make_sequence  # noqa: E402
from training.losses import selfdc_loss  # noqa: E402

GT_MAX_DEPTH = 80.0  # metres, as KITTI's ground truth and the demo's scoring

#: name -> (SelfDC term weights, selfdc_loss keyword arguments). The 'ssi' rows use a stand-in
#: for Depth Anything (no weights run here): the exact depth as disparity 10 / z + 0.2, 0 for
#: sky, i.e. a teacher that is perfect up to the affine map in inverse depth DA-V2 leaves open.
SETUPS: dict[str, tuple[dict[str, float], dict]] = {
    "dc": ({"dc": 1.0}, {}),
    "dc+gc": ({"dc": 1.0, "gc": 1.0}, {}),
    "dc+gc+sms": ({"dc": 1.0, "gc": 1.0, "sms": 1.0}, {}),
    "dc+gc(no basis M)": ({"dc": 1.0, "gc": 1.0}, {"gc_basis": "none"}),
    "dc+ssi": ({"dc": 1.0, "ssi": 1.0}, {}),
    "dc+ssi(s,b not detached)": ({"dc": 1.0, "ssi": 1.0}, {"detach_scale_shift": False}),
    "dc+gc+sms+ssi": ({"dc": 1.0, "gc": 1.0, "sms": 1.0, "ssi": 1.0}, {}),
}
DEFAULT_SETUPS = ["dc", "dc+gc", "dc+gc+sms", "dc+gc(no basis M)"]
SEGMENTS = ("felzenszwalb", "semantic")


def segment_labels(frame, rgb: np.ndarray, kind: str) -> tuple[np.ndarray, dict]:
    """Labels for L_gc's basis M and L_sms: the project's Felzenszwalb pseudo-labels (area rank,
    K = 64, -1 = ignore) or the simulator's exact semantic classes."""
    if kind == "semantic":
        return frame.semantic.astype(np.int64), {"source": "the scene's semantic labels"}
    from training.segmenters import build_segmenter

    segmenter = build_segmenter("felzenszwalb", None, "cpu", 64)
    labels = segmenter.segment(rgb)
    meta = segmenter.meta()
    return labels.astype(np.int64), {
        "source": "felzenszwalb (training.segmenters, pseudo_labels' defaults)",
        "num_classes": meta["num_classes"],
        **meta["params"],
        "segments_labelled": int(len(np.unique(labels[labels >= 0]))),
        "ignored_fraction": float(np.mean(labels < 0)),
    }


def make_frame(
    width: int, height: int, seed: int, segments: str = "felzenszwalb"
) -> dict[str, np.ndarray]:
    """Sparse depth, exact depth, segments and the scoring masks of one synthetic frame."""
    rig = CameraRig.kitti(width=width, height=height)
    lidar = LidarModel.uniform(16, 2.0, -24.9, azimuth_resolution_deg=0.4)
    frame = make_sequence(1, seed=seed, rig=rig, lidar=lidar)[0]
    sparse = project_points(frame.points, frame.T_velo_to_cam, frame.P, width, height)
    gt = frame.depth_gt.astype(np.float32)
    hit = sparse > 0
    first_row = np.where(hit.any(axis=0), hit.argmax(axis=0), height)
    below_top_beam = np.arange(height)[:, None] >= first_row[None, :]
    scored = (gt > 0) & below_top_beam & (gt <= GT_MAX_DEPTH)
    distance = cv2.distanceTransform((~hit).astype(np.uint8), cv2.DIST_L2, 5)
    teacher = np.where(gt > 0, 10.0 / np.maximum(gt, 1e-3) + 0.2, 0.0).astype(np.float32)
    labels, labels_info = segment_labels(frame, frame.rgb, segments)
    return {
        "rgb": frame.rgb,
        "K": frame.K,
        "sparse": sparse,
        "teacher": teacher,
        "gt": gt,
        "segments": labels,
        "segments_info": labels_info,
        "scored": scored,
        "distance": distance,
    }


def optimise(
    frame: dict[str, np.ndarray], weights: dict[str, float], options: dict, steps: int, lr: float
) -> np.ndarray:
    """A directly parameterised depth map (init 0) after ``steps`` Adam steps on the loss."""
    sparse = torch.from_numpy(frame["sparse"])[None, None]
    batch = {
        "sparse": sparse,
        "segments": torch.from_numpy(frame["segments"])[None],
        "teacher": torch.from_numpy(frame["teacher"])[None, None],
        "teacher_kind": "disparity",
    }
    depth = torch.zeros_like(sparse, requires_grad=True)
    opt = torch.optim.Adam([depth], lr=lr)
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        total, _ = selfdc_loss({"depth": depth}, batch, weights, **options)
        total.backward()
        opt.step()
    return depth.detach()[0, 0].numpy()


def errors(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    err = (pred - gt)[mask].astype(np.float64)
    return {"rmse_m": float(np.sqrt(np.mean(err**2))), "mae_m": float(np.mean(np.abs(err)))}


def run(
    width: int = 416,
    height: int = 128,
    steps: int = 600,
    lr: float = 1.0,
    seed: int = 0,
    far_px: float = 2.0,
    setups: list[str] | None = None,
    segments: str = "felzenszwalb",
) -> dict:
    torch.manual_seed(seed)
    frame = make_frame(width, height, seed, segments)
    scored, far = frame["scored"], frame["scored"] & (frame["distance"] > far_px)
    baselines = {}
    for name in BASELINES:
        t0 = time.perf_counter()
        pred = make_baseline(name).complete(frame["rgb"], frame["sparse"], frame["K"])
        baselines[name] = {
            "all": errors(pred, frame["gt"], scored),
            "far": errors(pred, frame["gt"], far),
            "unfilled_far_fraction": float(np.mean(pred[far] == 0.0)),
            "seconds": round(time.perf_counter() - t0, 3),
        }
    results = {}
    for name in setups or DEFAULT_SETUPS:
        weights, options = SETUPS[name]
        t0 = time.perf_counter()
        pred = optimise(frame, weights, options, steps, lr)
        results[name] = {
            "all": errors(pred, frame["gt"], scored),
            "far": errors(pred, frame["gt"], far),
            "unfilled_far_fraction": float(np.mean(pred[far] == 0.0)),
            "seconds": round(time.perf_counter() - t0, 2),
        }
    return {
        "benchmark": "selfdc_claim",
        "settings": {
            "width": width,
            "height": height,
            "steps": steps,
            "lr": lr,
            "seed": seed,
            "far_px": far_px,
            "parameterisation": "direct per-pixel depth, init 0, Adam",
            "lidar": "16 beams, +2 to -24.9 deg, 0.4 deg azimuth",
            "segments": frame["segments_info"],
            "sparse_density": float(np.mean(frame["sparse"] > 0)),
            "scored_pixels": int(scored.sum()),
            "far_pixels": int(far.sum()),
        },
        "results": results,
        "baselines": baselines,
        "machine": machine_info(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--width", type=int, default=416)
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--lr", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--far-px", type=float, default=2.0)
    parser.add_argument("--setups", nargs="+", choices=list(SETUPS), default=DEFAULT_SETUPS)
    parser.add_argument("--segments", choices=SEGMENTS, default="felzenszwalb")
    args = parser.parse_args()
    torch.set_num_threads(1)
    report = run(
        args.width, args.height, args.steps, args.lr, args.seed, args.far_px, args.setups,
        args.segments,
    )  # fmt: skip
    print(json.dumps(report, indent=2))
    print(f"{'loss':<20} {'RMSE all':>9} {'MAE all':>8} {'RMSE far':>9} {'MAE far':>8}  (m)",
          file=sys.stderr)  # fmt: skip
    rows = {**report["results"], **{f"baseline: {k}": v for k, v in report["baselines"].items()}}
    for name, r in rows.items():
        a, f = r["all"], r["far"]
        print(
            f"{name:<20} {a['rmse_m']:9.2f} {a['mae_m']:8.2f} {f['rmse_m']:9.2f} {f['mae_m']:8.2f}",
            file=sys.stderr,
        )


if __name__ == "__main__":
    main()
