"""Train a network: ``python -m training.train --config CONFIG.yaml [section.key=value ...]``.

Multi-GPU / multi-node: ``torchrun --nproc_per_node N -m training.train --config ...`` (NCCL on
GPUs, gloo on CPUs). Re-running the same command resumes the run in ``run.out`` exactly.
"""

from __future__ import annotations

import argparse
import logging
import sys

from training.config import CONFIG_DIR, ConfigError, load_config
from training.distributed import dist_env


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m training.train",
        description=__doc__.split("\n\n")[0],
        epilog=f"configs: {', '.join(sorted(c.name for c in CONFIG_DIR.glob('*.yaml')))}",
    )
    p.add_argument("--config", required=True, help=f"YAML file (or a name in {CONFIG_DIR})")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="e.g. optim.lr=1e-4")
    p.add_argument("--print-config", action="store_true", help="print the resolved config, exit")
    return p.parse_args(argv)


def resolve_seg_classes(cfg) -> None:
    """model.seg_classes = -1: the number of classes written by pseudo_labels (meta.json)."""
    if cfg.model.seg_classes != -1:
        return
    from training.cache import read_meta

    root = cfg.data.options.get("segments_root")
    weight = (cfg.loss.weights or {}).get("seg", 0.1 if not cfg.loss.weights else 0.0)
    if not root or not weight:
        cfg.model.seg_classes = 0  # no labels or no L_seg: no segmentation head
        return
    cfg.model.seg_classes = int(read_meta(root)["num_classes"])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    env = dist_env()
    logging.basicConfig(
        level=logging.INFO if env.is_primary else logging.WARNING,
        format=f"%(asctime)s [rank {env.rank}] %(levelname)s %(name)s: %(message)s",
    )
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as e:
        print(f"train: {e}", file=sys.stderr)
        return 2
    if args.print_config:
        from training.config import dump

        print(dump(cfg))
        return 0
    from training.datasets import build_dataset
    from training.evaluate import evaluation_options, metric_for
    from training.trainer import Trainer, TrainingError

    try:
        resolve_seg_classes(cfg)
        train_set = build_dataset(cfg.data.train, cfg.data.train_split, dict(cfg.data.options))
        val_set = None
        if cfg.data.val:
            options = evaluation_options(cfg.data.val, dict(cfg.data.val_options))
            val_set = build_dataset(cfg.data.val, cfg.data.val_split, options)
            val_set.metric = metric_for(cfg.data.val)
        trainer = Trainer(cfg, train_set, val_set)
        trainer.fit()
    except (TrainingError, ValueError, FileNotFoundError) as e:
        print(f"train: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
