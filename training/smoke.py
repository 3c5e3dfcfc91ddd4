"""End-to-end smoke runs of both methods on the real frames in ../shared/data, CPU only.

``python -m training.smoke dmd3c|selfdc [--out runs/smoke] [--data ../shared/data]``

- dmd3c: a tiny random-weight Depth Anything V2 (no download) -> stage-1 samples from real KITTI
  and NYU images -> stage-1 pre-training of BP-Net -> teacher maps of the real KITTI frame ->
  stage-2 distillation from the stage-1 weights -> the exported EMA weights through the node's
  own pipeline on the real frame.
- selfdc: ``kitti_to_bag`` of the real 20-frame sequence -> over-segmentation labels of the bag's
  frames -> SelfDC training on the bag -> LiDAR hold-out error before and after, and the
  classical fill's for reference.

Each prints and writes ``summary.json``: first and last training losses, the weight file, the
numbers above. It shows that a fresh install trains and that the node loads what it trained;
the numbers mean nothing (a few steps, random teachers).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from depth_completion_ros.depth_io import write_bytes_atomic

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data"
log = logging.getLogger("training.smoke")


class SmokeError(RuntimeError):
    """A step of a smoke run failed; the message names the step."""


def _check(code: int, step: str) -> None:
    if code != 0:
        raise SmokeError(f"smoke step '{step}' exited with {code} (see the log above)")


def _losses(run: Path) -> list[float]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r["loss"] for r in map(json.loads, lines) if r.get("kind") == "train"]


def _train(config: str, overrides: list[str]) -> None:
    from training.train import main as train

    _check(train(["--config", config, *overrides]), f"train {config}")


def _link_images(out: Path, sources: list[Path]) -> Path:
    folder = out / "images"
    folder.mkdir(parents=True, exist_ok=True)
    for i, src in enumerate(sources):
        link = folder / f"{i:02d}_{src.name}"
        if not link.exists():
            link.symlink_to(src.resolve())
    return folder


def smoke_dmd3c(out: Path, data: Path) -> dict[str, Any]:
    from training import cache_teacher, generate_stage1
    from training.tiny_models import build_depth_anything

    kitti = data / "kitti_dc_frame"
    seq = data / "kitti_raw_seq" / "2011_09_26" / "2011_09_26_drive_0000_sync" / "image_02" / "data"
    teacher = out / "teacher_model"
    if not (teacher / "config.json").exists():
        build_depth_anything(teacher)
    images = _link_images(
        out, [seq / "0000000000.png", seq / "0000000010.png", data / "nyu_frames" / "b" / "rgb.png"]
    )
    _check(
        generate_stage1.main(
            [
                "--images",
                str(images),
                "--out",
                str(out / "stage1"),
                "--teacher",
                str(teacher),
                "--input-size",
                "140",
                "--no-progress",
            ]
        ),
        "generate_stage1",
    )
    _train(
        "smoke_dmd3c_stage1.yaml",
        [f"data.train=generated:{out / 'stage1'}", f"run.out={out / 'run_stage1'}"],
    )
    _check(
        cache_teacher.main(
            [
                "--model",
                str(teacher),
                "--images",
                f"kitti:{kitti}:train",
                "--out",
                str(out / "teacher_kitti"),
                "--input-size",
                "140",
            ]
        ),
        "cache_teacher",
    )
    _train(
        "smoke_dmd3c.yaml",
        [
            f"data.train=kitti:{kitti}",
            f"data.options.teacher_root={out / 'teacher_kitti'}",
            f"model.init={out / 'run_stage1' / 'weights.safetensors'}",
            f"run.out={out / 'run_stage2'}",
        ],
    )
    weights = out / "run_stage2" / "weights.safetensors"
    node = _node_pipeline_on_real_frame("bpnet", weights, kitti)
    return {
        "stage1_losses": _losses(out / "run_stage1"),
        "stage2_losses": _losses(out / "run_stage2"),
        "weights": str(weights),
        "node": node,
    }


def _node_pipeline_on_real_frame(model: str, weights: Path, kitti: Path) -> dict[str, Any]:
    """The trained weights through the node's own parameters -> pipeline path, on the real scan."""
    from depth_completion_ros.calibration import load_kitti_calibration
    from depth_completion_ros.depth_io import read_rgb
    from depth_completion_ros.frame import pipeline_from_parameters
    from depth_completion_ros.kitti import read_velodyne_bin
    from depth_completion_ros.parameters import load_parameters

    config = load_parameters(None, {"model": model, "checkpoint": str(weights), "device": "cpu"})
    pipeline = pipeline_from_parameters(config)
    calib = load_kitti_calibration(kitti / "raw" / "2011_09_26", camera_index=2)
    drive = kitti / "raw" / "2011_09_26" / "2011_09_26_drive_0001_sync"
    rgb = read_rgb(drive / "image_02" / "data" / "0000000005.png")
    points = read_velodyne_bin(drive / "velodyne_points" / "data" / "0000000005.bin")
    result = pipeline.run(rgb, points[:, :3], calib.camera, calib.T_cam_lidar)
    valid = np.isfinite(result.dense)
    return {
        "backend": pipeline.backend.describe(),
        "valid_fraction": float(valid.mean()),
        "median_depth_m": float(np.median(result.dense[valid])) if valid.any() else None,
    }


def smoke_selfdc(out: Path, data: Path) -> dict[str, Any]:
    from depth_completion_ros import kitti_bag
    from training import pseudo_labels
    from training.datasets import build_dataset
    from training.evaluate import backend_for_module, evaluate_dataset

    drive = data / "kitti_raw_seq" / "2011_09_26" / "2011_09_26_drive_0000_sync"
    bag = out / "bag"
    if not bag.exists():
        kitti_bag.convert(drive, bag, cameras=(2,), log=lambda _line: None)
    _check(
        pseudo_labels.main(
            ["--method", "felzenszwalb", "--images", f"bag:{bag}", "--out", str(out / "segments")]
        ),
        "pseudo_labels",
    )
    val = build_dataset(f"bag:{bag}", "val", {"augment": False, "holdout_fraction": 0.1})
    n_eval = 2

    def holdout(backend) -> dict[str, float]:
        return evaluate_dataset(backend, val, metric="holdout", max_samples=n_eval, progress=False)[
            "mean"
        ]

    from depth_completion_ros.backends import make_backend

    classical = holdout(make_backend("classical"))
    from training.config import load_config
    from training.methods import make_task
    from training.train import resolve_seg_classes

    overrides = [
        f"data.train=bag:{bag}",
        f"data.val=bag:{bag}",
        f"data.options.segments_root={out / 'segments'}",
        f"run.out={out / 'run'}",
    ]
    cfg = load_config("smoke_selfdc.yaml", overrides)
    resolve_seg_classes(cfg)
    import torch

    torch.manual_seed(cfg.run.seed)
    initial = holdout(backend_for_module("selfdc", make_task(cfg).build_model(), "kitti", "cpu"))
    _train("smoke_selfdc.yaml", overrides)
    weights = out / "run" / "weights.safetensors"
    after = holdout(make_backend("selfdc", str(weights), device="cpu"))
    return {
        "losses": _losses(out / "run"),
        "weights": str(weights),
        "holdout_mm": {"classical": classical, "initial_weights": initial, "trained": after},
        "frames_scored": n_eval,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.smoke", description=__doc__.split("\n")[0])
    p.add_argument("method", choices=["dmd3c", "selfdc"])
    p.add_argument("--out", type=Path, default=Path("runs/smoke"), help="output folder")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the shared data folder")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not args.data.is_dir():
        print(
            f"smoke: data folder {args.data} not found (the shared data beside the checkout)",
            file=sys.stderr,
        )
        return 2
    out = args.out / args.method
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    try:
        run = smoke_dmd3c if args.method == "dmd3c" else smoke_selfdc
        summary = {"method": args.method, **run(out, args.data)}
    except SmokeError as e:
        print(f"smoke: {e}", file=sys.stderr)
        return 1
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    text = json.dumps(summary, indent=2)
    write_bytes_atomic(out / "summary.json", (text + "\n").encode())
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
