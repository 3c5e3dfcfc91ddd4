"""Check a checkpoint against a model and write its weights as one clean .safetensors file.

Reads any file the node reads (released ``{'net': ...}`` .pth files, plain state_dicts,
``module.`` / ``_orig_mod.`` prefixes, EMA copies, safetensors) through the same safe loader,
keeps exactly the model's keys, and writes them atomically. Why: torch < 2.5 (common on robots)
cannot load .pth files safely but loads safetensors; safetensors files also load faster and need
no unpickling. The training args (NLSPN's ``args``) travel in the file's metadata.

    convert_checkpoint dmd3c_distillation_depth_anything_v2.pth dmd3c.safetensors --model bpnet
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from depth_completion_ros.depth_io import write_bytes_atomic
from depth_completion_ros.networks.checkpoints import (
    CheckpointError,
    fit_to_model,
    identify_model,
    read_checkpoint,
)
from depth_completion_ros.networks.registry import get_model_spec, list_models


def choose_model(state_dict: dict[str, torch.Tensor], path: Path) -> str:
    """The registry model the weights fit completely, or a CheckpointError naming the nearest."""
    ranked = identify_model(state_dict)
    if ranked and ranked[0][1] == 1.0:
        return ranked[0][0]
    nearest = ", ".join(f"{name} {score:.0%}" for name, score in ranked[:3]) or "none"
    raise CheckpointError(
        f"'{path}' fits no model completely (closest: {nearest}); pass --model to see what "
        "is missing or unexpected"
    )


def convert(src: Path, dst: Path, model: str | None = None, use_ema: bool = True) -> dict:
    """Read ``src``, check it against ``model`` (identified when None), write ``dst``."""
    from safetensors.torch import save

    ckpt = read_checkpoint(src, use_ema=use_ema)
    name = model or choose_model(ckpt.state_dict, ckpt.path)
    try:
        spec = get_model_spec(name)
    except KeyError as e:
        raise CheckpointError(str(e.args[0])) from None
    with torch.device("meta"):  # keys and shapes only: no memory, no random init
        net = spec.build(None)
    state_dict = fit_to_model(ckpt, net, model_name=name)  # strict: every key and shape
    # safetensors stores each tensor on its own: one dense copy each, no shared storage
    tensors = {k: v.clone(memory_format=torch.contiguous_format) for k, v in state_dict.items()}
    metadata = {"model": name, "converted_from": ckpt.path.name, "source_key": ckpt.source}
    if isinstance(ckpt.metadata.get("args"), dict):
        metadata["args"] = json.dumps(ckpt.metadata["args"], default=str, sort_keys=True)
    write_bytes_atomic(dst, save(tensors, metadata=metadata))
    return {
        "model": name,
        "tensors": len(tensors),
        "parameters": sum(v.numel() for v in tensors.values()),
        "source_key": ckpt.source,
        "output": str(dst),
    }


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="convert_checkpoint", description=__doc__.split("\n")[0])
    p.add_argument("checkpoint", type=Path, help=".pth/.pt/.safetensors file to read")
    p.add_argument("output", type=Path, help=".safetensors file to write")
    p.add_argument(
        "--model",
        choices=list_models(),
        help="model the weights are for (default: the one whose keys and shapes they all match)",
    )
    p.add_argument(
        "--no-ema", dest="use_ema", action="store_false", help="take the raw weights, not EMA"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.output.suffix != ".safetensors":
        print(
            f"convert_checkpoint: error: output '{args.output}' must end in .safetensors",
            file=sys.stderr,
        )
        return 2
    try:
        summary = convert(args.checkpoint, args.output, args.model, args.use_ema)
    except (CheckpointError, OSError) as exc:
        print(f"convert_checkpoint: error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
