"""The one sample format every dataset returns, and the batch the losses and trainer take.

A sample is a dict of numpy arrays, the same for KITTI, NYU, stage-1 data and ROS bags, so
losses and the trainer never ask where it came from:

==========  ======================  =====================================================
key         shape / dtype           meaning
==========  ======================  =====================================================
rgb         H x W x 3 uint8         RGB image
sparse      H x W float32           metric sparse depth input, metres, 0 = no measurement
K           3 x 3 float32           intrinsics of this (cropped/resized) image
gt          H x W float32           metric ground truth (KITTI semi-dense, NYU dense,
                                    stage-1 dense target), metres, 0 = none    [optional]
teacher     H x W float32           monocular teacher map (Depth Anything V2), see
                                    ``teacher_kind``                          [optional]
teacher_kind str                    'disparity' (relative inverse depth, as DA-V2 outputs)
                                    or 'depth'                                 [with teacher]
segments    H x W int64             segment / class label per pixel, -1 = ignore [optional]
holdout     H x W float32           LiDAR points held out of ``sparse`` for scoring
                                    (bags without ground truth), 0 = none      [optional]
name        str                     a stable identifier (file stem, drive/frame)
==========  ======================  =====================================================

A dataset that cannot produce a sample returns :func:`skipped` instead of raising, so one bad file
never ends a run: :func:`collate` drops it, and the trainer counts it by cause.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)

Sample = dict[str, Any]

#: map keys, each H x W (x 3 for rgb); flipped/cropped together by augmentation
IMAGE_KEYS = ("rgb", "sparse", "gt", "teacher", "segments", "holdout")
FLOAT_MAP_KEYS = ("sparse", "gt", "teacher", "holdout")
TEACHER_KINDS = ("disparity", "depth")
SKIP_KEY = "skipped"


class BadSample(ValueError):
    """A sample cannot be used; ``cause`` groups messages for counting (e.g. 'unreadable')."""

    def __init__(self, cause: str, message: str) -> None:
        super().__init__(message)
        self.cause = cause


def skipped(cause: str, message: str, name: str = "") -> Sample:
    """What a dataset returns for a sample it cannot produce."""
    return {SKIP_KEY: (cause, f"{name}: {message}" if name else message)}


def is_skipped(sample: Sample) -> bool:
    return SKIP_KEY in sample


def validate_sample(sample: Sample) -> None:
    """Raise :class:`BadSample` if ``sample`` breaks the format above (shapes, dtypes, values)."""
    name = sample.get("name", "?")
    for key in ("rgb", "sparse", "K"):
        if key not in sample:
            raise BadSample("format", f"{name}: sample has no '{key}'")
    rgb = sample["rgb"]
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise BadSample(
            "format", f"{name}: rgb must be H x W x 3 uint8, got {rgb.shape} {rgb.dtype}"
        )
    height, width = rgb.shape[:2]
    for key in IMAGE_KEYS[1:]:
        if key in sample and sample[key].shape != (height, width):
            raise BadSample(
                "size",
                f"{name}: '{key}' is {sample[key].shape[1]}x{sample[key].shape[0]} but the image "
                f"is {width}x{height}",
            )
    if sample["K"].shape != (3, 3):
        raise BadSample("format", f"{name}: K must be 3 x 3, got {sample['K'].shape}")
    if not np.any(sample["sparse"] > 0):
        raise BadSample("no_sparse", f"{name}: no valid sparse depth pixel")
    if "teacher" in sample and sample.get("teacher_kind") not in TEACHER_KINDS:
        raise BadSample(
            "format",
            f"{name}: teacher_kind must be one of {TEACHER_KINDS}, got "
            f"{sample.get('teacher_kind')!r}",
        )


def collate(samples: list[Sample]) -> dict[str, Any]:
    """Stack samples into tensors, dropping skipped ones (their causes are kept in ``skipped``).

    rgb -> B x 3 x H x W uint8; sparse, gt, teacher, holdout -> B x 1 x H x W float32;
    segments -> B x H x W int64; K -> B x 3 x 3 float32; name -> list; teacher_kind -> str.
    A key present in only some samples is dropped (and logged once) rather than guessed.
    """
    good = [s for s in samples if not is_skipped(s)]
    batch: dict[str, Any] = {SKIP_KEY: [s[SKIP_KEY] for s in samples if is_skipped(s)]}
    batch["size"] = len(good)
    if not good:
        return batch
    keys = set(good[0])
    for s in good[1:]:
        keys &= set(s)
    for key in set().union(*good) - keys:
        log.warning("key '%s' is missing from some samples of a batch: dropped", key)
    batch["name"] = [str(s.get("name", "")) for s in good]
    if "rgb" in keys:
        batch["rgb"] = torch.from_numpy(np.stack([s["rgb"] for s in good])).permute(0, 3, 1, 2)
    for key in FLOAT_MAP_KEYS:
        if key in keys:
            arr = np.stack([np.asarray(s[key], dtype=np.float32) for s in good])
            batch[key] = torch.from_numpy(arr).unsqueeze(1)
    if "segments" in keys:
        batch["segments"] = torch.from_numpy(
            np.stack([np.asarray(s["segments"], dtype=np.int64) for s in good])
        )
    if "K" in keys:
        batch["K"] = torch.from_numpy(np.stack([np.asarray(s["K"], np.float32) for s in good]))
    if "teacher_kind" in keys:
        kinds = {s["teacher_kind"] for s in good}
        if len(kinds) > 1:
            raise BadSample("format", f"one batch mixes teacher kinds {sorted(kinds)}")
        batch["teacher_kind"] = kinds.pop()
    return batch


class SkipCounter:
    """Counts skipped samples by cause; logs the first message of each cause, then only counts."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.counts: Counter[str] = Counter()
        self.log = logger or log

    def add(self, entries: list[tuple[str, str]]) -> None:
        for cause, message in entries:
            if self.counts[cause] == 0:
                self.log.warning(
                    "skipping a bad sample (%s): %s (further '%s' samples are only counted)",
                    cause,
                    message,
                    cause,
                )
            self.counts[cause] += 1

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> dict[str, int]:
        return dict(self.counts)
