"""The loop every per-image data job shares (teacher cache, pseudo-labels): this process's shard,
resume from the manifests, read in batches, skip and count bad images, write atomically.

One loop so that sharding, resuming and bad-input handling behave the same in every job.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from training.cache import Manifest, read_meta, write_meta
from training.distributed import DistEnv, dist_env, shard
from training.image_sources import BadImage, ImageSource
from training.sample import SkipCounter

log = logging.getLogger(__name__)

#: meta keys that may change between runs into one cache without changing what it holds
VOLATILE_META = ("images",)


@dataclass
class JobReport:
    shard_size: int = 0
    written: int = 0
    already_done: int = 0
    skipped: dict[str, int] = field(default_factory=dict)

    def line(self, job: str, out: Path) -> str:
        bad = ", ".join(f"{cause}: {n}" for cause, n in sorted(self.skipped.items()))
        return (
            f"{job}: {self.written} written, {self.already_done} already done, "
            f"{sum(self.skipped.values())} skipped{f' ({bad})' if bad else ''} "
            f"of {self.shard_size} images in this shard -> {out}"
        )


def check_meta(out: Path, meta: dict[str, Any]) -> None:
    """Refuse to add to a cache made by another model or with other settings (mixing two kinds
    of map in one folder would be silent garbage for training)."""
    if not (out / "meta.json").is_file():
        return
    old = read_meta(out)
    diff = sorted(
        key
        for key in set(old) | set(meta)
        if key not in VOLATILE_META and old.get(key) != meta.get(key)
    )
    if diff:
        details = "; ".join(
            f"{k}: cache has {old.get(k)!r}, this run {meta.get(k)!r}" for k in diff
        )
        raise ValueError(
            f"{out} already holds a cache made with other settings ({details}); "
            "use another --out folder or the same settings"
        )


def run_image_job(
    source: ImageSource,
    out: Path,
    *,
    predict: Callable[[list[np.ndarray]], Sequence[np.ndarray]],
    output_path: Callable[[Path, Path], Path],
    write: Callable[[Path, np.ndarray], Path],
    meta: dict[str, Any],
    batch_size: int = 1,
    max_images: int | None = None,
    env: DistEnv | None = None,
    job: str = "job",
) -> JobReport:
    """Run ``predict`` (a batch of H x W x 3 uint8 RGB -> one H x W map each) over this process's
    share of ``source`` and ``write`` each map to ``output_path(out, rel)``.

    ``max_images`` cuts the list before sharding, so every rank agrees on the subset. Unreadable
    images (and maps ``write`` rejects with :class:`BadImage`) are skipped, counted and logged
    (first message per cause) and left out of the manifest, so a re-run retries them.
    """
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    if max_images is not None and max_images < 1:
        raise ValueError(f"--max-images must be >= 1, got {max_images}")
    env = env or dist_env()
    out = Path(out)
    check_meta(out, meta)
    inside = Path(os.path.abspath(out))
    paths = [
        p
        for p in source.paths
        if not isinstance(p, Path) or inside not in Path(os.path.abspath(p)).parents
    ]
    paths = paths[:max_images] if max_images is not None else paths
    mine = shard(paths, env)
    manifest = Manifest(out, env.rank)
    write_meta(out, {**meta, "images": source.spec})

    def target(path: Path) -> tuple[str, Path]:
        rel = source.key(path)
        return rel.as_posix(), output_path(out, rel)

    todo = [p for p in mine if not manifest.is_done(*target(p))]
    report = JobReport(shard_size=len(mine), already_done=len(mine) - len(todo))
    skips = SkipCounter(log)
    bar = tqdm(
        total=len(mine),
        initial=report.already_done,
        desc=f"{job} rank {env.rank}/{env.world_size}",
        unit="img",
        disable=None if env.is_primary else True,
    )
    for start in range(0, len(todo), batch_size):
        images, keys, targets = [], [], []
        for path in todo[start : start + batch_size]:
            try:
                images.append(source.read(path))
            except BadImage as err:
                skips.add([("unreadable", str(err))])
                bar.update(1)
                continue
            key, dest = target(path)
            keys.append(key)
            targets.append(dest)
        maps = list(predict(images)) if images else []
        for image, key, dest, values in zip(images, keys, targets, maps, strict=True):
            if values.shape != image.shape[:2]:
                raise RuntimeError(
                    f"{job} produced a {values.shape} map for the {image.shape[:2]} image {key}"
                )
            try:
                write(dest, values)
            except BadImage as err:
                skips.add([("bad_output", str(err))])
                bar.update(1)
                continue
            manifest.add(key, height=int(values.shape[0]), width=int(values.shape[1]))
            report.written += 1
            bar.update(1)
    bar.close()
    report.skipped = skips.summary()
    return report
