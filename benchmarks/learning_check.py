"""Does training learn? The project's trainer against three baselines, on this CPU (issue 17).

Three experiments, each scored on frames the network never trained on, with the same metric
function (``training.evaluate.evaluate_dataset``) for the network and the baselines, on the
same dataset object (so the same frames and pixels; the JSON lists both per image):

- ``synthetic_supervised``: the synthetic street (``depth_completion_ros.simulation``, exact
  depth) at a reduced resolution; ``selfdc_r18`` trained on dense depth with DMD3C's stage-1
  recipe (``dmd3c_stage1.yaml``: AdamW, OneCycle, clipping; loss eq. 6 = L1 to the dense
  target, ``training.losses.dmd3c_loss({'l1': 1})`` on the network's final depth).
- ``synthetic_selfsup``: the same frames, no depth labels: SelfDC's loss and optimiser
  (eq. 7: L_dc + 0.1 L_seg + L_gc + L_sms, Adam 1e-3, constant rate) with the project's own
  weights-free pseudo-labels (``python -m training.pseudo_labels --method felzenszwalb``).
- ``kitti_bag``: the real KITTI sequence in ../shared/data/kitti_raw_seq written as a ROS 2 bag
  (``kitti_to_bag``), SelfDC's bag recipe (``selfdc_bag.yaml``, self-supervised, Felzenszwalb
  labels of the bag), scored at the LiDAR returns held out of the input (10 % per frame, never
  seen in training) on the last frames of the sequence, which are not trained on either.

Training-set and held-out synthetic frames come from different streets (scene seeds) at
different random poses (position, lateral offset, yaw). Scored pixels (synthetic): exact depth
> 0 and <= 80 m below the top LiDAR beam (where KITTI's ground truth would be), with the
runtime's ``kitti_metrics`` (the devkit's definitions; RMSE/MAE in mm).

Baselines on the same frames: nearest neighbour and linear interpolation of the sparse input
(``scipy.interpolate.griddata``; linear outside the returns' convex hull takes the nearest
value) and the node's classical fill (``make_backend('classical')``, its defaults).

Every network is built with ``model.kwargs={preserve_input: false, legacy: false}``: with
``preserve_input`` on, the output equals the input at every sparse pixel and L_dc trains nothing.
Training runs through ``training.trainer.Trainer.fit`` (one loop); the error curve is the
trainer's validation at ``run.eval_every`` steps plus the untrained network at step 0.

Usage: ``PYTHONPATH=$PWD .venv/bin/python benchmarks/learning_check.py [--parts ...]
[--supervised-steps 200 --selfsup-steps 150 --bag-steps 120] [--json OUT]``; JSON on stdout
(and to --json), a table on stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from machine import machine_info  # noqa: E402

from depth_completion_ros.backends.base import DepthCompletionBackend  # noqa: E402

PARTS = ("synthetic_supervised", "synthetic_selfsup", "kitti_bag")
DEFAULT_DATA = REPO.parent / "shared" / "data"
KITTI_DRIVE = Path("kitti_raw_seq") / "2011_09_26" / "2011_09_26_drive_0000_sync"
GT_MAX_DEPTH = 80.0  # metres, as KITTI's ground truth and selfdc_claim.py
#: SelfDC networks must be trained with these (issue 17): the release's inference settings
#: (preserve_input, legacy) make L_dc vanish at the input pixels
TRAIN_KWARGS = "{preserve_input: false, legacy: false}"
SELFDC_WEIGHTS = "{dc: 1.0, seg: 0.1, gc: 1.0, sms: 1.0}"
SELFDC_OPTIONS = "{window: 8, gc_top_fraction: 0.02, sms_top_fraction: 0.4, gc_basis: mask}"
#: which baseline each experiment must beat (issue 17's targets)
TARGETS = {
    "synthetic_supervised": "classical",
    "synthetic_selfsup": "linear",
    "kitti_bag": "linear",
}
BASELINES = ("nearest", "linear", "classical")

log = logging.getLogger("learning_check")


# ---------------------------------------------------------------------------------------------
# Baselines
# ---------------------------------------------------------------------------------------------


class InterpolationFill(DepthCompletionBackend):
    """Nearest-neighbour or linear interpolation of the sparse returns in the image plane
    (scipy's griddata; 'linear' is Delaunay-linear inside the returns' convex hull and takes
    the nearest return outside it, so every pixel gets a value)."""

    def __init__(self, method: str) -> None:
        if method not in ("nearest", "linear"):
            raise ValueError(f"method must be nearest or linear, got {method!r}")
        self.name = method

    def describe(self) -> str:
        return f"scipy griddata {self.name}"

    def complete(self, rgb: np.ndarray, sparse: np.ndarray, K: np.ndarray) -> np.ndarray:
        from scipy.interpolate import griddata

        sparse = np.asarray(sparse, np.float32)
        rows, cols = np.nonzero(sparse > 0)
        if rows.size == 0:
            return np.zeros_like(sparse)
        points = np.column_stack([rows, cols]).astype(np.float64)
        values = sparse[rows, cols].astype(np.float64)
        grid = tuple(np.mgrid[0 : sparse.shape[0], 0 : sparse.shape[1]])
        out = griddata(points, values, grid, method="nearest")
        if self.name == "linear" and rows.size >= 3:
            linear = griddata(points, values, grid, method="linear")
            out = np.where(np.isfinite(linear), linear, out)
        return out.astype(np.float32)


def make_baseline(name: str) -> DepthCompletionBackend:
    if name == "classical":
        from depth_completion_ros.backends import make_backend

        return make_backend("classical")
    return InterpolationFill(name)


# ---------------------------------------------------------------------------------------------
# Synthetic street frames as a dataset of the project ('generated:' layout + label cache)
# ---------------------------------------------------------------------------------------------


def lidar_model(beams: int):
    """A ``beams``-beam spinning LiDAR over KITTI's HDL-64 elevation fan (+2 to -24.9 deg), as
    selfdc_claim.py; 16 beams leave ~7 px between scan lines at 416 x 128 (KITTI's 64 beams
    leave ~5 px at 1242 x 375)."""
    from depth_completion_ros.simulation.lidar import LidarModel

    return LidarModel.uniform(beams, 2.0, -24.9, azimuth_resolution_deg=0.4)


def random_pose(rng: np.random.Generator, lidar_height: float) -> np.ndarray:
    """The LiDAR somewhere in the first 50 m of a street (cars in the ego lane start at 60 m),
    near the ego lane's centre, yawed a little."""
    yaw = np.deg2rad(rng.uniform(-4.0, 4.0))
    T = np.eye(4)
    T[:2, :2] = [[np.cos(yaw), -np.sin(yaw)], [np.sin(yaw), np.cos(yaw)]]
    T[:3, 3] = (rng.uniform(0.0, 50.0), -1.75 + rng.uniform(-0.6, 0.6), lidar_height)
    return T


def scored_mask(sparse: np.ndarray, depth: np.ndarray) -> np.ndarray:
    """Where KITTI's ground truth would be: exact depth in (0, 80 m], below the top beam."""
    hit = sparse > 0
    height = sparse.shape[0]
    first_row = np.where(hit.any(axis=0), hit.argmax(axis=0), height)
    below_top_beam = np.arange(height)[:, None] >= first_row[None, :]
    return (depth > 0) & (depth <= GT_MAX_DEPTH) & below_top_beam


def write_street_set(
    root: Path, seeds: list[int], poses: int, width: int, height: int, beams: int, scored: bool
) -> dict[str, Any]:
    """Frames of the streets ``seeds`` at ``poses`` random poses each, written as the
    ``generated:`` dataset layout (``<key>.npz`` with rgb, sparse, target, K + a manifest) and
    the images as ``images/<key>.png`` for the pseudo-label job (same keys). ``target`` is the
    exact depth (<= 80 m; 0 = sky/beyond); with ``scored`` only on the scored pixels."""
    import cv2

    from depth_completion_ros.projection import project_points
    from depth_completion_ros.simulation.street_scene import CameraRig, make_street, render_frame
    from training.cache import Manifest

    rig = CameraRig.kitti(width=width, height=height)
    lidar = lidar_model(beams)
    manifest = Manifest(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    density, pixels = [], []
    for seed in seeds:
        scene = make_street(seed)
        rng = np.random.default_rng([seed, 17])
        for i in range(poses):
            key = f"street{seed:03d}_pose{i:02d}"
            frame = render_frame(scene, rig, lidar, random_pose(rng, rig.lidar_height), 0.0, rng)
            sparse = project_points(frame.points, frame.T_velo_to_cam, frame.P, width, height)
            depth = frame.depth_gt.astype(np.float32)
            keep = scored_mask(sparse, depth) if scored else (depth > 0) & (depth <= GT_MAX_DEPTH)
            target = np.where(keep, depth, 0.0).astype(np.float32)
            np.savez(
                root / f"{key}.npz",
                rgb=frame.rgb,
                sparse=sparse.astype(np.float32),
                target=target,
                K=frame.K.astype(np.float32),
            )
            cv2.imwrite(str(root / "images" / f"{key}.png"), frame.rgb[..., ::-1])
            manifest.add(key, file=f"{key}.npz")
            density.append(float(np.mean(sparse > 0)))
            pixels.append(int(keep.sum()))
    return {
        "frames": len(seeds) * poses,
        "scenes": seeds,
        "poses_per_scene": poses,
        "sparse_density": float(np.mean(density)),
        "target_pixels_per_frame": float(np.mean(pixels)),
    }


def felzenszwalb_labels(images: str, out: Path) -> dict[str, Any]:
    """The project's weights-free pseudo-labels, through its own command (defaults)."""
    from training import pseudo_labels
    from training.cache import read_meta

    with contextlib.redirect_stdout(sys.stderr):  # stdout carries the JSON only
        code = pseudo_labels.main(
            ["--method", "felzenszwalb", "--images", images, "--out", str(out)]
        )
    if code != 0:
        raise RuntimeError(f"pseudo_labels exited with {code}")
    meta = read_meta(out)
    return {"method": meta["source"], "num_classes": meta["num_classes"], **meta["params"]}


# ---------------------------------------------------------------------------------------------
# Scoring and training
# ---------------------------------------------------------------------------------------------


def score(backend, dataset, metric: str) -> dict[str, Any]:
    """``evaluate_dataset`` (the trainer's and ``training.evaluate``'s scoring) + timing."""
    from training.evaluate import evaluate_dataset

    t0 = time.perf_counter()
    result = evaluate_dataset(backend, dataset, metric=metric, progress=False)
    return {
        "mean": result["mean"],
        "per_image": result["per_image"],
        "skipped": result["skipped"],
        "seconds": round(time.perf_counter() - t0, 2),
    }


def _errors(mean: dict[str, float], metric: str) -> tuple[float, float]:
    """(RMSE, MAE) in mm of a mean row of either metric family."""
    if metric == "holdout":
        return mean["holdout_rmse_mm"], mean["holdout_mae_mm"]
    return mean["rmse_mm"], mean["mae_mm"]


def supervised_task(cfg):
    """SelfDC's network call with DMD3C's stage-1 loss (eq. 6: L1 to the dense target) on the
    final depth. The trainer picks the task from ``loss.method``; neither method's total has a
    dense-label term for the SelfDC network, so this small subclass supplies it."""
    from training.losses import dmd3c_loss
    from training.methods import SelfDCTask

    class SupervisedDepthTask(SelfDCTask):
        def loss(self, outputs, batch):
            return dmd3c_loss(outputs["depth"], batch, {"l1": 1.0})

    return SupervisedDepthTask(cfg)


def train_with_curve(cfg, train_set, val_set, metric: str, task=None) -> dict[str, Any]:
    """``Trainer.fit`` with validation every ``run.eval_every`` steps and at step 0.

    The trainer's ``evaluate`` is replaced by the same call (the node's backend around the live
    network, ``evaluate_dataset``) that also keeps per-image values and each step's result
    once (the loop and the end of the run both ask at the last step)."""
    from training.evaluate import backend_for_module, evaluate_dataset
    from training.trainer import Trainer

    trainer = Trainer(cfg, train_set, val_set)
    if task is not None:
        trainer.task = task
    curve: dict[int, dict[str, Any]] = {}

    def evaluate() -> dict[str, float]:
        if trainer.step not in curve:
            t0 = time.perf_counter()
            source = trainer.ema.module if trainer.ema is not None else trainer.net
            backend = backend_for_module(cfg.model.name, source, cfg.model.dataset, trainer.device)
            result = evaluate_dataset(backend, val_set, metric=metric, progress=False)
            result["seconds"] = time.perf_counter() - t0
            curve[trainer.step] = result
        return curve[trainer.step]["mean"]

    trainer.evaluate = evaluate
    evaluate()  # step 0: the untrained network
    t0 = time.perf_counter()
    summary = trainer.fit()
    fit_seconds = time.perf_counter() - t0
    eval_in_fit = sum(r["seconds"] for step, r in curve.items() if step > 0)
    train_seconds = fit_seconds - eval_in_fit
    records = [json.loads(line) for line in (Path(cfg.run.out) / "metrics.jsonl").open()]
    train_loss = [
        {"step": r["step"], "loss": round(r["loss"], 5)}
        for r in records
        if r.get("kind") == "train"
    ]
    points = []
    for step in sorted(curve):
        rmse, mae = _errors(curve[step]["mean"], metric)
        points.append({"step": step, "rmse_mm": round(rmse, 1), "mae_mm": round(mae, 1)})
    final = curve[max(curve)]
    return {
        "curve": points,
        "final": {"mean": final["mean"], "per_image": final["per_image"]},
        "train_loss": train_loss,
        "steps": summary["steps"],
        "bad_steps": summary["bad_steps"],
        "skipped_samples": summary["skipped_samples"],
        "seconds": {
            "training": round(train_seconds, 1),
            "per_step": round(train_seconds / max(summary["steps"], 1), 3),
            "evaluation": round(sum(r["seconds"] for r in curve.values()), 1),
            "per_evaluation": round(np.mean([r["seconds"] for r in curve.values()]), 2),
        },
    }


# ---------------------------------------------------------------------------------------------
# The experiments
# ---------------------------------------------------------------------------------------------


def run_overrides(args: argparse.Namespace, out: Path, steps: int) -> list[str]:
    """Settings every experiment passes explicitly (whatever the YAML files' defaults become)."""
    return [
        "data.workers=0",
        f"data.batch_size={args.batch_size}",
        "data.val_max_samples=0",
        "model.name=selfdc_r18",
        "model.dataset=kitti",
        f"model.kwargs={TRAIN_KWARGS}",
        "model.init=''",
        "model.encoder_init=''",  # from scratch (no download; selfdc_r18 has no release)
        "run.device=cpu",
        "run.precision=fp32",
        "run.ema_decay=0.0",  # a few hundred steps: score the live weights
        f"run.out={out}",
        f"run.seed={args.seed}",
        f"run.log_every={max(1, steps // 25)}",
        f"run.checkpoint_every={steps}",
        f"run.eval_every={max(1, steps // args.evals)}",
        "run.tensorboard=false",
        "run.progress=false",
        f"schedule.max_steps={steps}",
    ]


def selfdc_overrides() -> list[str]:
    """SelfDC's loss and optimiser (the paper: eq. 7, Adam (0.9, 0.999) at 1e-3), explicit."""
    return [
        "loss.method=selfdc",
        f"loss.weights={SELFDC_WEIGHTS}",
        f"loss.options={SELFDC_OPTIONS}",
        "model.seg_classes=-1",  # K of the label cache (meta.json)
        "optim.name=adam",
        "optim.lr=1.0e-3",
        "optim.weight_decay=0.0",
        "optim.clip_norm=0.0",
        "schedule.name=constant",
    ]


def stage1_recipe() -> list[str]:
    """DMD3C stage 1's optimiser and schedule as ``dmd3c_stage1.yaml`` resolves them (AdamW,
    weight decay 0.05, clipping 0.1, OneCycle at 1e-3), as overrides. Its loss section is not
    taken: it names dmd3c_loss's terms, and the SelfDC network's task scores with eq. 6 itself
    (:func:`supervised_task`)."""
    from training.config import load_config, to_dict

    recipe = to_dict(load_config("dmd3c_stage1.yaml"))
    return [f"optim={json.dumps(recipe['optim'])}", f"schedule={json.dumps(recipe['schedule'])}"]


def same_frames(results: dict[str, dict[str, Any]]) -> bool:
    """Whether every result scored the same frames and the same pixels, in the same order."""
    lists = [[(r["name"], r["pixels"]) for r in res["per_image"]] for res in results.values()]
    return bool(lists) and bool(lists[0]) and all(x == lists[0] for x in lists)


def compact(result: dict[str, Any], metric: str) -> dict[str, Any]:
    """A score for the JSON: the means and, per image, name, pixels, RMSE and MAE."""
    keys = ("holdout_rmse_mm", "holdout_mae_mm") if metric == "holdout" else ("rmse_mm", "mae_mm")
    per_image = [
        {"name": r["name"], "pixels": r["pixels"], **{k: round(r[k], 1) for k in keys}}
        for r in result["per_image"]
    ]
    out = {"mean": result["mean"], "per_image": per_image}
    if "seconds" in result:
        out["seconds"] = result["seconds"]
    return out


def experiment(
    name: str, cfg, train_set, val_set, metric: str, baselines: dict[str, Any], task=None
) -> dict[str, Any]:
    """Train, score, compare with the baselines on the same frames, judge the target."""
    from training.config import to_dict

    log.info("%s: %d training samples, %d held-out frames", name, len(train_set), len(val_set))
    run = train_with_curve(cfg, train_set, val_set, metric, task)
    scores = {**baselines, "network": run["final"]}
    reference = TARGETS[name]
    net_rmse, net_mae = _errors(run["final"]["mean"], metric)
    ref_rmse, ref_mae = _errors(baselines[reference]["mean"], metric)
    best = min(run["curve"], key=lambda p: p["rmse_mm"])
    return {
        "config": to_dict(cfg),
        "metric": metric,
        "frames": [r["name"] for r in run["final"]["per_image"]],
        "same_frames": same_frames(scores),
        "baselines": {k: compact(v, metric) for k, v in baselines.items()},
        "network": compact(run["final"], metric),
        "curve": run["curve"],
        "best_on_curve": best,
        "train_loss": run["train_loss"],
        "steps": run["steps"],
        "bad_steps": run["bad_steps"],
        "skipped_samples": run["skipped_samples"],
        "seconds": run["seconds"],
        "target": {
            "beat": reference,
            "network_rmse_mm": round(net_rmse, 1),
            "network_mae_mm": round(net_mae, 1),
            "baseline_rmse_mm": round(ref_rmse, 1),
            "baseline_mae_mm": round(ref_mae, 1),
            "rmse_reached": bool(net_rmse < ref_rmse),
            "mae_reached": bool(net_mae < ref_mae),
            "reached": bool(net_rmse < ref_rmse and net_mae < ref_mae),
        },
    }


def score_baselines(dataset, metric: str) -> dict[str, Any]:
    return {b: score(make_baseline(b), dataset, metric) for b in BASELINES}


def synthetic_experiments(args: argparse.Namespace, work: Path, parts: list[str]) -> dict:
    from training.config import load_config
    from training.datasets import build_dataset
    from training.evaluate import evaluation_options
    from training.train import resolve_seg_classes

    t0 = time.perf_counter()
    train_root, val_root = work / "street_train", work / "street_val"
    size = (args.width, args.height, args.beams)
    train_info = write_street_set(
        train_root, list(range(args.train_scenes)), args.train_poses, *size, scored=False
    )
    val_seeds = list(range(1000, 1000 + args.val_scenes))  # other streets
    val_info = write_street_set(val_root, val_seeds, args.val_poses, *size, scored=True)
    data_seconds = time.perf_counter() - t0
    data = {
        "resolution": [args.height, args.width],
        "lidar": f"{args.beams} beams, +2 to -24.9 deg, 0.4 deg azimuth",
        "train": train_info,
        "held_out": val_info,
        "held_out_scored": "exact depth in (0, 80 m] below the top beam (kitti_metrics)",
        "seconds_to_render": round(data_seconds, 1),
    }
    spec_train, spec_val = f"generated:{train_root}", f"generated:{val_root}"
    val_set = build_dataset(spec_val, "val", evaluation_options(spec_val, {}))
    baselines = score_baselines(val_set, "kitti")
    data_options = "{crop: [], crop_mode: null, augment: true, denoise: false}"
    results: dict[str, Any] = {"data": data}

    if "synthetic_supervised" in parts:
        steps = args.supervised_steps
        cfg = load_config(
            None,
            [
                *stage1_recipe(),
                f"data.train={spec_train}",
                f"data.val={spec_val}",
                f"data.options={data_options}",
                *run_overrides(args, work / "run_supervised", steps),
                "loss.method=selfdc",  # the SelfDC network's call; the loss is eq. 6 below
                "loss.weights={}",
                "model.seg_classes=0",
            ],
        )
        train_set = build_dataset(cfg.data.train, "train", dict(cfg.data.options))
        res = experiment(
            "synthetic_supervised", cfg, train_set, val_set, "kitti", baselines,
            task=supervised_task(cfg),
        )  # fmt: skip
        res["loss"] = "dmd3c_loss(outputs['depth'], batch, {'l1': 1.0}): eq. 6, L1 to dense depth"
        results["synthetic_supervised"] = res

    if "synthetic_selfsup" in parts:
        t1 = time.perf_counter()
        labels = felzenszwalb_labels(str(train_root / "images"), work / "street_segments")
        data["pseudo_labels"] = {**labels, "seconds": round(time.perf_counter() - t1, 1)}
        steps = args.selfsup_steps
        cfg = load_config(  # SelfDC's loss and optimiser; selfdc_kitti.yaml's data part
            None,  # (240 x 1216 crops, zoom, rotation, denoising) is KITTI's
            [
                f"data.train={spec_train}",
                f"data.val={spec_val}",
                "data.val_split=val",
                f"data.options={data_options}",
                f"data.options.segments_root={work / 'street_segments'}",
                *run_overrides(args, work / "run_selfsup", steps),
                *selfdc_overrides(),
            ],
        )
        resolve_seg_classes(cfg)
        train_set = build_dataset(cfg.data.train, "train", dict(cfg.data.options))
        res = experiment("synthetic_selfsup", cfg, train_set, val_set, "kitti", baselines)
        res["loss"] = f"selfdc_loss {SELFDC_WEIGHTS} {SELFDC_OPTIONS}, Felzenszwalb labels"
        results["synthetic_selfsup"] = res
    return results


def kitti_bag_experiment(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from torch.utils.data import Subset

    from depth_completion_ros.tools import kitti_to_bag
    from training.config import load_config
    from training.datasets import build_dataset
    from training.evaluate import evaluation_options
    from training.train import resolve_seg_classes

    t0 = time.perf_counter()
    drive = args.data / KITTI_DRIVE
    bag = work / "kitti_bag"
    with contextlib.redirect_stdout(sys.stderr):
        code = kitti_to_bag.main([str(drive), str(bag), "--cameras", "2", "--overwrite"])
    if code != 0:
        raise RuntimeError(f"kitti_to_bag failed on {drive}")
    labels = felzenszwalb_labels(f"bag:{bag}", work / "kitti_segments")
    prep_seconds = time.perf_counter() - t0
    steps = args.bag_steps
    crop_h, crop_w = args.bag_crop
    cfg = load_config(
        "selfdc_bag.yaml",
        [
            f"data.train=bag:{bag}",
            f"data.val=bag:{bag}",
            f"data.options={{crop: [{crop_h}, {crop_w}], crop_mode: random, "
            f"random_crop_rows: {args.bag_crop_rows}, augment: true, holdout_fraction: 0.1}}",
            f"data.options.segments_root={work / 'kitti_segments'}",
            "data.val_options={holdout_fraction: 0.1}",
            *run_overrides(args, work / "run_bag", steps),
            *selfdc_overrides(),
        ],
    )
    resolve_seg_classes(cfg)
    full_train = build_dataset(cfg.data.train, cfg.data.train_split, dict(cfg.data.options))
    val_options = evaluation_options(cfg.data.val, dict(cfg.data.val_options))
    full_val = build_dataset(cfg.data.val, cfg.data.val_split, val_options)
    n = len(full_val)
    n_val = min(args.bag_val_frames, n - 1)
    n_train = n - n_val if args.bag_train_frames <= 0 else min(args.bag_train_frames, n - n_val)
    train_set = Subset(full_train, range(n_train))
    val_set = Subset(full_val, range(n - n_val, n))
    baselines = score_baselines(val_set, "holdout")
    res = experiment("kitti_bag", cfg, train_set, val_set, "holdout", baselines)
    res["loss"] = f"selfdc_loss {SELFDC_WEIGHTS} {SELFDC_OPTIONS}, Felzenszwalb labels"
    res["data"] = {
        "drive": str(KITTI_DRIVE),
        "bag_frames": n,
        "train_frames": f"0..{n_train - 1} (random {crop_h}x{crop_w} crops in the bottom "
        f"{args.bag_crop_rows} rows)",
        "held_out_frames": f"{n - n_val}..{n - 1} (full frames, never trained on)",
        "train_names": [full_train.name_of(i) for i in range(n_train)],
        "held_out_returns": "10 % of each frame's projected LiDAR pixels (holdout_metrics)",
        "describe": full_val.describe(),
        "pseudo_labels": labels,
        "seconds_to_prepare": round(prep_seconds, 1),
    }
    return res


# ---------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    start_load = machine_info()["load_average_1min"]
    t0 = time.perf_counter()
    torch.manual_seed(args.seed)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="learning_check_"))
    work.mkdir(parents=True, exist_ok=True)
    experiments: dict[str, Any] = {}
    try:
        synthetic = [p for p in args.parts if p.startswith("synthetic")]
        if synthetic:
            results = synthetic_experiments(args, work, synthetic)
            experiments["synthetic_data"] = results.pop("data")
            experiments.update(results)
            if args.json:  # a later part that fails leaves these results on disk
                partial = {"benchmark": "learning_check", "partial": True, **experiments}
                Path(args.json).write_text(json.dumps(partial, indent=1) + "\n")
        if "kitti_bag" in args.parts:
            experiments["kitti_bag"] = kitti_bag_experiment(args, work)
    finally:
        if not args.work and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    seconds = time.perf_counter() - t0
    step_seconds = sum(
        e["seconds"]["training"] for k, e in experiments.items() if k in PARTS
    )  # fmt: skip
    return {
        "benchmark": "learning_check",
        "settings": {
            k: (str(v) if isinstance(v, Path) else v) for k, v in sorted(vars(args).items())
        },
        "experiments": experiments,
        "targets": {k: experiments[k]["target"]["reached"] for k in PARTS if k in experiments},
        "seconds": {
            "total": round(seconds, 1),
            "training": round(step_seconds, 1),
            "budget": 25 * 60,
            "within_budget": seconds <= 25 * 60,
        },
        "load_average_1min_at_start": start_load,
        "machine": machine_info(),
    }


def print_table(report: dict[str, Any]) -> None:
    for name in PARTS:
        e = report["experiments"].get(name)
        if e is None:
            continue
        print(f"\n{name} ({e['metric']}, {len(e['frames'])} held-out frames, "
              f"same frames: {e['same_frames']})", file=sys.stderr)  # fmt: skip
        rows = {**e["baselines"], f"network ({e['steps']} steps)": e["network"]}
        for label, res in rows.items():
            rmse, mae = _errors(res["mean"], e["metric"])
            print(f"  {label:<22} RMSE {rmse:9.1f} mm   MAE {mae:9.1f} mm", file=sys.stderr)
        curve = ", ".join(f"{p['step']}: {p['rmse_mm']:.0f}/{p['mae_mm']:.0f}" for p in e["curve"])
        print(f"  curve (step: RMSE/MAE mm) {curve}", file=sys.stderr)
        t = e["target"]
        print(f"  target: beat {t['beat']}: {'reached' if t['reached'] else 'NOT reached'}",
              file=sys.stderr)  # fmt: skip
    s = report["seconds"]
    print(f"\ntotal {s['total']:.0f} s (training {s['training']:.0f} s)", file=sys.stderr)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the shared data folder")
    p.add_argument("--work", default="", help="work folder (default: a temporary one, removed)")
    p.add_argument("--keep", action="store_true", help="keep the temporary work folder")
    p.add_argument("--json", default="", help="also write the JSON here")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--evals", type=int, default=4, help="validations after step 0")
    g = p.add_argument_group("synthetic street")
    g.add_argument("--width", type=int, default=416)
    g.add_argument("--height", type=int, default=128)
    g.add_argument("--beams", type=int, default=16)
    g.add_argument("--train-scenes", type=int, default=8)
    g.add_argument("--train-poses", type=int, default=12, help="frames per training street")
    g.add_argument("--val-scenes", type=int, default=4)
    g.add_argument("--val-poses", type=int, default=3, help="frames per held-out street")
    g.add_argument("--supervised-steps", type=int, default=200)
    g.add_argument("--selfsup-steps", type=int, default=150)
    g = p.add_argument_group("KITTI bag")
    g.add_argument("--bag-steps", type=int, default=120)
    g.add_argument("--bag-crop", type=int, nargs=2, default=[128, 416], metavar=("H", "W"))
    g.add_argument("--bag-crop-rows", type=int, default=256, help="crops lie in these rows")
    g.add_argument("--bag-val-frames", type=int, default=5, help="last N frames held out")
    g.add_argument("--bag-train-frames", type=int, default=0, help="0 = all the others")
    args = p.parse_args(argv)
    if "kitti_bag" in args.parts and not (args.data / KITTI_DRIVE).is_dir():
        p.error(f"{args.data / KITTI_DRIVE} not found (the shared data folder; --data)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    log.setLevel(logging.INFO)
    report = run(args)
    text = json.dumps(report, indent=1)
    if args.json:
        Path(args.json).write_text(text + "\n")
    print(text)
    print_table(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
