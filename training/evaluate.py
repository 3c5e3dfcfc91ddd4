"""Score a model over a dataset split with the node's own backends and the benchmarks' metrics.

``python -m training.evaluate --model M [--checkpoint F] --data kitti:ROOT|nyu:ROOT|bag:PATH
--split S [--input velodyne_raw|raw_scan] [--json FILE] [--save-png DIR]``

Every frame goes through ``backend.complete`` exactly as in the node (crop, padding, units), and
is scored with depth_completion_ros.metrics: KITTI's devkit definitions (per image, then the mean
over images; RMSE/MAE in mm, iRMSE/iMAE in 1/km), NYU's (RMSE m, REL, delta 1.25^k, 10 m cap),
or, for bags without ground truth, the error at held-out LiDAR returns.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from depth_completion_ros.backends import BackendError, make_backend
from depth_completion_ros.backends.base import DepthCompletionBackend
from depth_completion_ros.depth_io import write_bytes_atomic, write_kitti_depth
from depth_completion_ros.metrics import holdout_metrics, kitti_metrics, nyu_metrics
from training.sample import SkipCounter, is_skipped

log = logging.getLogger("training.evaluate")

METRICS = {"kitti": kitti_metrics, "nyu": nyu_metrics, "holdout": holdout_metrics}
#: the papers' table columns: (key, header, format)
COLUMNS = {
    "kitti": [
        ("rmse_mm", "RMSE [mm]", "{:.2f}"),
        ("mae_mm", "MAE [mm]", "{:.2f}"),
        ("irmse_1_per_km", "iRMSE [1/km]", "{:.2f}"),
        ("imae_1_per_km", "iMAE [1/km]", "{:.2f}"),
    ],
    "nyu": [
        ("rmse_m", "RMSE [m]", "{:.3f}"),
        ("rel", "REL", "{:.3f}"),
        ("delta1", "d<1.25", "{:.3f}"),
        ("delta2", "d<1.25^2", "{:.3f}"),
        ("delta3", "d<1.25^3", "{:.3f}"),
    ],
    "holdout": [
        ("holdout_rmse_mm", "hold-out RMSE [mm]", "{:.1f}"),
        ("holdout_mae_mm", "hold-out MAE [mm]", "{:.1f}"),
    ],
}
#: dataset spec prefix -> metric family
METRIC_OF = {"kitti": "kitti", "nyu": "nyu", "bag": "holdout", "generated": "kitti"}


def metric_for(spec: str) -> str:
    kind = spec.partition(":")[0]
    if kind not in METRIC_OF:
        raise ValueError(f"unknown dataset kind {kind!r} in {spec!r}; use {', '.join(METRIC_OF)}")
    return METRIC_OF[kind]


def evaluation_options(spec: str, options: dict[str, Any]) -> dict[str, Any]:
    """Dataset options for scoring: no augmentation, and KITTI at full frames (the devkit scores
    the whole image; the network backends crop as the node does)."""
    out = {"augment": False, **options}
    if spec.partition(":")[0] == "kitti":
        out.setdefault("crop", [])
    return out


def backend_for_module(
    model: str, net: nn.Module, dataset: str, device: torch.device | str
) -> DepthCompletionBackend:
    """The node's backend around in-memory weights (evaluation during training)."""
    from depth_completion_ros.backends.network import NetworkBackend

    dev = device.type if isinstance(device, torch.device) else device
    return NetworkBackend(model=model, net=net, device=dev, dataset=dataset)


def _reference(sample: dict[str, Any], metric: str) -> np.ndarray | None:
    return sample.get("holdout" if metric == "holdout" else "gt")


def evaluate_dataset(
    backend: DepthCompletionBackend,
    dataset,
    *,
    metric: str = "kitti",
    max_samples: int = 0,
    save_png: str | Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Per-image metrics and their means (``pixels`` summed) over ``dataset``."""
    score = METRICS[metric]
    skips = SkipCounter(log)
    per_image: list[dict[str, Any]] = []
    count = len(dataset) if not max_samples else min(max_samples, len(dataset))
    indices = range(count)
    if progress:
        from tqdm import tqdm

        indices = tqdm(indices, unit="img", desc="evaluate")
    for i in indices:
        sample = dataset[i]
        if is_skipped(sample):
            skips.add([sample["skipped"]])
            continue
        dense = backend.complete(sample["rgb"], sample["sparse"], sample["K"])
        name = str(sample.get("name", i))
        if save_png:
            write_kitti_depth(Path(save_png) / f"{Path(name).name}.png", dense)
        ref = _reference(sample, metric)
        if ref is None:
            continue  # the test split has no ground truth: predictions only
        try:
            values = score(dense, ref)
        except ValueError as e:
            skips.add([("no_reference", f"{name}: {e}")])
            continue
        per_image.append({"name": name, **values})
    mean: dict[str, float] = {}
    if per_image:
        for key in per_image[0]:
            if key == "name":
                continue
            values = [r[key] for r in per_image]
            mean[key] = int(np.sum(values)) if key == "pixels" else float(np.mean(values))
        mean["images"] = len(per_image)
    return {"mean": mean, "per_image": per_image, "skipped": skips.summary(), "metric": metric}


def format_table(result: dict[str, Any]) -> str:
    """The papers' table columns as one header and one row."""
    cols = COLUMNS[result["metric"]]
    mean = result["mean"]
    header = " | ".join(h for _, h, _ in cols) + " | images"
    row = " | ".join(fmt.format(mean[k]) if k in mean else "-" for k, _, fmt in cols)
    return f"{header}\n{row} | {mean.get('images', 0)}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m training.evaluate",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--model", required=True, help="classical | bpnet | selfdc | selfdc_r18")
    p.add_argument("--checkpoint", default="", help="weights for a network model")
    p.add_argument("--data", required=True, help="kitti:ROOT | nyu:ROOT | bag:PATH")
    p.add_argument("--split", default="val", help="train | val | val_selection_cropped | test")
    p.add_argument(
        "--input",
        default="velodyne_raw",
        choices=["velodyne_raw", "raw_scan"],
        help="KITTI sparse input: the benchmark's map or the node's projection of the scan",
    )
    p.add_argument(
        "--weights-dataset",
        default="",
        help="input conventions of the weights (kitti | nyu; default: from --data)",
    )
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--precision", default="fp32", help="fp32 | fp16 | bf16")
    p.add_argument(
        "--runtime",
        default="torch",
        choices=("torch", "onnxruntime"),
        help="torch (checkpoint = weights) or onnxruntime (checkpoint = an export_model .onnx)",
    )
    p.add_argument("--max-samples", type=int, default=0, help="0 = the whole split")
    p.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra dataset option (YAML value), repeatable",
    )
    p.add_argument("--json", default="", help="write the means (+ per image) to this file")
    p.add_argument("--save-png", default="", help="write KITTI submission PNGs to this folder")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    from training.config import parse_override
    from training.datasets import build_dataset

    try:
        metric = metric_for(args.data)
        options: dict[str, Any] = {"input": args.input}
        for text in args.option:
            key, value = parse_override(text)
            options[key] = value
        dataset = build_dataset(args.data, args.split, evaluation_options(args.data, options))
        weights_dataset = args.weights_dataset or ("nyu" if metric == "nyu" else "kitti")
        backend = make_backend(
            model=args.model,
            checkpoint=args.checkpoint,
            device=args.device,
            precision=args.precision,
            dataset=weights_dataset,
            runtime=args.runtime,
        )
    except (BackendError, ValueError, FileNotFoundError, KeyError) as e:
        print(f"evaluate: {e}", file=sys.stderr)
        return 2
    log.info("model: %s; data: %s", backend.describe(), getattr(dataset, "describe", str)())
    result = evaluate_dataset(
        backend, dataset, metric=metric, max_samples=args.max_samples, save_png=args.save_png
    )
    print(format_table(result))
    if result["skipped"]:
        print(f"skipped samples: {result['skipped']}")
    if args.json:
        out = {**result["mean"], "skipped": result["skipped"], "per_image": result["per_image"]}
        write_bytes_atomic(args.json, (json.dumps(out, indent=2) + "\n").encode())
    if not result["mean"] and args.split != "test":
        print("evaluate: no image could be scored", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
