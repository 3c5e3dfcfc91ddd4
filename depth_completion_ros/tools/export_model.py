"""Export a network with its weights to ONNX, for ``runtime:=onnxruntime`` (TensorRT, CUDA, CPU).

Reads any weights file the node reads, traces the network at HEIGHTxWIDTH (dynamic batch, height
and width unless --static), writes the .onnx file and checks it against the torch model on a
random frame of that size (relative difference <= 1e-4, or exit 1). BP-Net's nearest-valid-pixel
search cannot be in the graph: the backend computes it and feeds it in (see docs/tools.md).

    export_model bpnet dmd3c_distillation_depth_anything_v2.pth dmd3c.onnx
    export_model selfdc NLSPN_KITTI_DC.pt nlspn.onnx --size 352x1216
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from depth_completion_ros.backends.base import BackendError
from depth_completion_ros.networks.checkpoints import CheckpointError
from depth_completion_ros.networks.registry import DATASETS, list_models


def _size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be HEIGHTxWIDTH, got {text!r}") from None
    return h, w


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="export_model", description=__doc__.split("\n")[0])
    p.add_argument("model", choices=list_models(), help="registry network")
    p.add_argument("checkpoint", help="weights (.pth/.pt/.safetensors), as the node loads them")
    p.add_argument("output", type=Path, help=".onnx file to write")
    p.add_argument(
        "--size",
        type=_size,
        default=(352, 1216),
        help="network input HEIGHTxWIDTH to trace at, multiples of 32 (default 352x1216)",
    )
    p.add_argument("--dataset", default="kitti", choices=DATASETS, help="the weights' settings")
    p.add_argument("--static", action="store_true", help="fix batch 1 and the size (no dynamic)")
    p.add_argument("--optimize", action="store_true", help="run onnxscript's graph optimiser")
    p.add_argument("--no-check", action="store_true", help="skip the parity check")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        from depth_completion_ros.export import export_model, verify_export

        h, w = args.size
        info = export_model(
            args.model,
            args.checkpoint,
            args.output,
            h,
            w,
            dataset=args.dataset,
            dynamic=not args.static,
            optimize=args.optimize,
        )
        if not args.no_check:
            info["parity"] = verify_export(args.model, args.checkpoint, args.output, args.dataset)
    except ImportError as e:
        print(f"export_model: needs the onnx extra ({e}): pip install '.[onnx]'", file=sys.stderr)
        return 2
    except (BackendError, CheckpointError, RuntimeError, OSError) as e:
        print(f"export_model: {e}", file=sys.stderr)
        return 2
    print(json.dumps(info, indent=2))
    return 0 if info.get("parity", {}).get("ok", True) else 1


if __name__ == "__main__":
    sys.exit(main())
