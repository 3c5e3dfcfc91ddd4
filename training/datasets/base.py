"""What every dataset shares: its options, the teacher/segment cache look-up, cropping and
augmentation, and turning bad data into :func:`training.sample.skipped` instead of an exception.

A dataset subclass only says how to list its items and how to read one (``read``); everything
after that (cache maps, size checks, crop, flip, jitter, format check) is done here, once, so a
KITTI, NYU, stage-1 or bag sample goes through the same steps.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from training import cache
from training.datasets import augment as aug
from training.sample import BadSample, Sample, skipped, validate_sample

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "val_selection_cropped", "test")


@dataclass(frozen=True)
class DatasetOptions:
    """Options of every dataset (the YAML config's data section); see the package docstring."""

    crop: tuple[int, int] | None = None  # [h, w]; None = the kind's default; [] = no crop
    crop_mode: str | None = None  # None = the kind's fixed crop | bottom_center | center | random
    random_crop_rows: int | None = None  # random crops lie in the bottom rows (KITTI: 352)
    random_crop_top: int = 0  # random crops start at this row or below (BP-Net 50, NLSPN 100)
    augment: bool = True  # flip / jitter on the train split (never on others)
    flip: bool = True
    color_jitter: float = 0.4  # brightness/contrast/saturation strength, 0 = off
    pca_jitter: float = 0.0  # PCA colour noise sigma (BP-Net/DMD3C releases: 0.1), 0 = off
    scale: tuple[float, float] | None = None  # train: zoom uniform in [low, high] before the crop
    rotation: float = 0.0  # train: rotation uniform in [-r, r] degrees before the crop
    scale_depth: bool = False  # divide depths by the zoom (NLSPN) instead of keeping them (BP-Net)
    pad_to: tuple[int, int] | None = None  # pad (centred) to [h, w] after the crop (BP-Net NYU)
    input: str = "velodyne_raw"  # KITTI: velodyne_raw | raw_scan
    cameras: tuple[int, ...] = (2, 3)  # KITTI cameras
    raw_root: str | None = None  # KITTI raw layout; default ROOT/raw
    denoise: bool = False  # KITTI: drop points seen through gaps (the node's occlusion filter)
    denoise_window: int = 12
    denoise_relative: float = 0.10
    denoise_absolute: float = 0.3
    teacher_root: str | None = None
    segments_root: str | None = None
    nyu_samples: int = 500
    holdout_fraction: float = 0.1  # bag: LiDAR pixels held out of the input for scoring
    seed: int = 0
    max_samples: int | None = None
    node_params: str | None = None  # bag / raw_scan: the node's --params-file YAML
    calibration_dir: str | None = None  # bag: the node's calibration_dir parameter
    camera_index: int | None = None  # bag: the node's camera_index parameter
    extrinsics: tuple[float, ...] | None = None  # bag: the node's extrinsics parameter
    max_time_offset: float | None = None  # bag: the node's max_time_offset parameter
    topics: dict[str, str] = field(default_factory=dict)  # bag: image, camera_info, points
    index_cache: str | None = None  # bag: JSON file keeping the pair index between runs

    @classmethod
    def from_dict(cls, options: dict[str, Any] | None, defaults: dict[str, Any]) -> DatasetOptions:
        """Validated options: an unknown key or a bad value fails at once, naming the key."""
        options = dict(options or {})
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - names)
        if unknown:
            raise ValueError(
                f"unknown dataset option(s) {unknown}; known options: {', '.join(sorted(names))}"
            )
        merged = {**defaults, **options}
        for key in ("crop", "cameras", "extrinsics", "scale", "pad_to"):
            if merged.get(key) is not None:
                merged[key] = tuple(merged[key])
        opts = cls(**merged)
        opts._check()
        return opts

    def _check(self) -> None:
        def bad(key: str, why: str) -> None:
            raise ValueError(f"dataset option '{key}': {why}, got {getattr(self, key)!r}")

        if self.crop is not None and not (
            len(self.crop) == 0
            or (len(self.crop) == 2 and all(isinstance(v, int) and v > 0 for v in self.crop))
        ):
            bad("crop", "must be [height, width] of positive integers or [] (no crop)")
        if self.crop_mode is not None and self.crop_mode not in aug.CROP_MODES:
            bad("crop_mode", f"must be one of {aug.CROP_MODES}")
        if self.input not in ("velodyne_raw", "raw_scan"):
            bad("input", "must be velodyne_raw or raw_scan")
        if not set(self.cameras) <= {2, 3} or not self.cameras:
            bad("cameras", "must be a non-empty subset of [2, 3]")
        if not 0 <= self.color_jitter < 1:
            bad("color_jitter", "must lie in [0, 1)")
        if not 0 <= self.pca_jitter < 1:
            bad("pca_jitter", "must lie in [0, 1)")
        if self.scale is not None and not (
            len(self.scale) in (0, 2) and (not self.scale or 0 < self.scale[0] <= self.scale[1])
        ):
            bad("scale", "must be [low, high] with 0 < low <= high, or null")
        if not 0 <= self.rotation <= 180:
            bad("rotation", "must lie in [0, 180] degrees")
        if self.random_crop_top < 0:
            bad("random_crop_top", "must be >= 0")
        if self.pad_to is not None and not (
            len(self.pad_to) == 2 and all(isinstance(v, int) and v > 0 for v in self.pad_to)
        ):
            bad("pad_to", "must be [height, width] of positive integers or null")
        if not 0 <= self.holdout_fraction < 1:
            bad("holdout_fraction", "must lie in [0, 1)")
        if self.nyu_samples < 1:
            bad("nyu_samples", "must be positive")
        if self.max_samples is not None and self.max_samples < 1:
            bad("max_samples", "must be positive or null")
        if self.denoise_window < 1:
            bad("denoise_window", "must be positive")

    @property
    def crop_hw(self) -> tuple[int, int] | None:
        return tuple(self.crop) if self.crop else None  # type: ignore[return-value]


def subsample(items: list, max_samples: int | None, seed: int) -> list:
    """At most ``max_samples`` items, chosen with ``seed`` and kept in their order (a small run
    sees frames from many drives, not the first drive only)."""
    if max_samples is None or len(items) <= max_samples:
        return items
    chosen = np.random.default_rng(seed).choice(len(items), size=max_samples, replace=False)
    return [items[i] for i in sorted(chosen)]


class CachedMapsDataset(Dataset):
    """Base of every dataset: subclasses fill ``self.items`` and implement :meth:`read`.

    ``read(i)`` returns a sample at the image's own size with rgb, K, (sparse, gt, holdout) and
    ``key`` (the cache key: the image path relative to the image root, suffix dropped, see
    :mod:`training.cache`); it may raise :class:`BadSample`, ``OSError`` or ``ValueError`` for
    bad data. Then come the cached maps, :meth:`transform` (the kind's geometry), augmentation and
    the format check; anything wrong becomes ``skipped(cause, message, name)``.
    """

    kind = "?"
    default_crop: tuple[int, int] | None = None
    fixed_crop_mode = "bottom_center"  # the kind's evaluation crop (every split but train)

    def __init__(self, root: str | Path, split: str, options: DatasetOptions) -> None:
        self.root = Path(root)
        self.split = split
        self.options = options
        self.items: list[Any] = []
        self.teacher_kind: str | None = None
        if options.teacher_root:
            meta = cache.read_meta(options.teacher_root)
            self.teacher_kind = meta.get("kind")
            if self.teacher_kind not in ("disparity", "depth"):
                raise ValueError(
                    f"{options.teacher_root}/meta.json: 'kind' must be disparity or depth, got "
                    f"{self.teacher_kind!r}"
                )
        if options.segments_root and not Path(options.segments_root).is_dir():
            raise FileNotFoundError(
                f"segments_root {options.segments_root} not found: run python -m "
                "training.pseudo_labels first, or leave segments_root unset"
            )

    # --- what a subclass provides ---------------------------------------------------------

    def read(self, index: int) -> Sample:
        raise NotImplementedError

    def name_of(self, index: int) -> str:
        return str(index)

    def transform(self, sample: Sample, rng: np.random.Generator) -> Sample:
        """The kind's geometry (default: the crop of the options)."""
        return self.crop(sample, rng)

    # --- shared steps ---------------------------------------------------------------------

    @property
    def training(self) -> bool:
        return self.split == "train"

    def rng(self, index: int) -> np.random.Generator:
        """Train: fresh randomness from torch's generator (seeded per worker and epoch by the
        DataLoader, so runs are reproducible under torch.manual_seed); other splits: fixed per
        sample index and ``seed``, so every evaluation sees the same input."""
        if self.training:
            return np.random.default_rng(int(torch.randint(0, 2**62, ()).item()))
        return np.random.default_rng([self.options.seed, index])

    @property
    def crop_mode(self) -> str:
        """The option on the train split; the kind's fixed (deterministic) crop elsewhere."""
        if self.training and self.options.crop_mode:
            return self.options.crop_mode
        return self.fixed_crop_mode

    def crop(self, sample: Sample, rng: np.random.Generator) -> Sample:
        """The options' crop, preceded on the train split by the rotation / zoom (row limits of
        a random crop zoom with the image)."""
        opts = self.options
        zoom = 1.0
        if self.training and opts.augment and (opts.scale or opts.rotation):
            sample, zoom = aug.scale_rotate(
                sample, rng, opts.scale, opts.rotation, opts.scale_depth
            )
        size = opts.crop_hw if opts.crop is not None else self.default_crop
        if not size:
            return sample
        rows = opts.random_crop_rows
        top, left = aug.crop_window(
            sample["rgb"].shape[:2],
            size,
            self.crop_mode,
            rng,
            None if rows is None else int(round(rows * zoom)),
            int(round(opts.random_crop_top * zoom)),
        )
        return aug.crop(sample, top, left, *size)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Sample:
        name = self.name_of(index)
        try:
            sample = self.read(index)
            name = sample.get("name", name)
            self._add_cached_maps(sample)
            check_sizes(sample)
            rng = self.rng(index)
            sample = self.transform(sample, rng)
            opts = self.options
            if self.training and opts.augment:
                sample = aug.augment(sample, rng, opts.flip, opts.color_jitter, opts.pca_jitter)
            if opts.pad_to:
                sample = aug.pad(sample, *opts.pad_to)
            sample.pop("key", None)
            validate_sample(sample)
        except BadSample as exc:
            return skipped(exc.cause, str(exc), name)
        except (OSError, ValueError) as exc:  # unreadable or malformed files
            return skipped("unreadable", str(exc), name)
        return sample

    def _add_cached_maps(self, sample: Sample) -> None:
        key = Path(sample["key"])
        opts = self.options
        if opts.teacher_root:
            path = cache.teacher_path(opts.teacher_root, key)
            if not path.is_file():
                raise BadSample(
                    "missing_teacher",
                    f"no teacher map {path}: run python -m training.cache_teacher over this "
                    "dataset (or unset teacher_root)",
                )
            sample["teacher"] = cache.read_teacher_map(path)
            sample["teacher_kind"] = self.teacher_kind
        if opts.segments_root:
            path = cache.segments_path(opts.segments_root, key)
            if not path.is_file():
                raise BadSample(
                    "missing_segments",
                    f"no segment labels {path}: run python -m training.pseudo_labels over this "
                    "dataset (or unset segments_root)",
                )
            sample["segments"] = cache.read_segments(path)

    def describe(self) -> str:
        """One line for the log: what was read, how many samples, and the options that matter."""
        opts = self.options
        size = opts.crop_hw if opts.crop is not None else self.default_crop
        parts = [
            f"{self.kind}:{self.root} split={self.split} samples={len(self)}",
            f"crop={'x'.join(map(str, size)) if size else 'none'}({self.crop_mode})",
            f"augment={self._augment_text() if self.training and opts.augment else 'off'}",
        ]
        if opts.teacher_root:
            parts.append(f"teacher={opts.teacher_root} ({self.teacher_kind})")
        if opts.segments_root:
            parts.append(f"segments={opts.segments_root}")
        parts.extend(self.describe_extra())
        return " ".join(parts)

    def _augment_text(self) -> str:
        opts = self.options
        parts = ["flip"] if opts.flip else []
        if opts.color_jitter:
            parts.append(f"jitter{opts.color_jitter:g}")
        if opts.pca_jitter:
            parts.append(f"pca{opts.pca_jitter:g}")
        if opts.scale:
            parts.append(f"scale{opts.scale[0]:g}-{opts.scale[1]:g}")
        if opts.rotation:
            parts.append(f"rot{opts.rotation:g}")
        return "+".join(parts) or "none"

    def describe_extra(self) -> list[str]:
        return []


def check_sizes(sample: Sample) -> None:
    """Every map must have the image's size before any crop (a crop would hide the mismatch)."""
    height, width = sample["rgb"].shape[:2]
    for key in ("sparse", "gt", "teacher", "segments", "holdout"):
        if key in sample and sample[key].shape[:2] != (height, width):
            shape = sample[key].shape
            raise BadSample(
                "size",
                f"'{key}' map is {shape[1]}x{shape[0]} but the image is {width}x{height}"
                + (
                    " (recompute the cache for this dataset)"
                    if key in ("teacher", "segments")
                    else ""
                ),
            )
