"""Augmentation keeps every map and K consistent, checked by back-projection on the real frame."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from depth_completion_ros.projection import backproject
from training.datasets import augment as aug
from training.datasets import build_dataset
from training.sample import BadSample


@pytest.fixture(scope="module")
def full_frame(kitti_dc_frame: Path) -> dict:
    """The real KITTI frame (image_02) at full size, with every map a sample can hold."""
    dataset = build_dataset(
        f"kitti:{kitti_dc_frame}", "train", {"crop": [], "augment": False, "cameras": [2]}
    )
    sample = dataset[0]
    height, width = sample["gt"].shape
    sample["teacher"] = np.linspace(0, 1, height * width, dtype=np.float32).reshape(height, width)
    sample["segments"] = np.arange(height * width, dtype=np.int64).reshape(height, width) % 7 - 1
    sample["holdout"] = np.where(sample["gt"] > 30, sample["gt"], 0).astype(np.float32)
    return sample


def _same_points(a: np.ndarray, b: np.ndarray) -> None:
    """Equal point maps: NaN in the same places, values within float32 rounding."""
    np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
    np.testing.assert_allclose(np.nan_to_num(a), np.nan_to_num(b), atol=2e-4, rtol=1e-5)


def test_flip_back_projection_mirrors_x(full_frame: dict) -> None:
    flipped = aug.hflip(full_frame)
    width = full_frame["rgb"].shape[1]
    assert flipped["K"][0, 2] == pytest.approx(width - 1 - full_frame["K"][0, 2])
    for key in ("gt", "sparse"):
        original = backproject(full_frame[key], full_frame["K"])
        points = backproject(flipped[key], flipped["K"])[:, ::-1]  # back to the original pixels
        mirrored = original * np.array([-1, 1, 1], np.float32)
        assert np.count_nonzero(~np.isnan(points[..., 2])) > 10_000
        _same_points(points, mirrored)
    for key in ("rgb", "teacher", "segments", "holdout"):
        np.testing.assert_array_equal(flipped[key], full_frame[key][:, ::-1])
    # flipping twice gives the sample back, K included
    twice = aug.hflip(flipped)
    for key in ("rgb", "sparse", "gt", "teacher", "segments", "holdout", "K"):
        np.testing.assert_array_equal(twice[key], full_frame[key])


def test_crop_keeps_rays(full_frame: dict) -> None:
    top, left, height, width = 23, 40, 240, 1000
    cropped = aug.crop(full_frame, top, left, height, width)
    for key in ("rgb", "sparse", "gt", "teacher", "segments", "holdout"):
        assert cropped[key].shape[:2] == (height, width)
        np.testing.assert_array_equal(
            cropped[key], full_frame[key][top : top + height, left : left + width]
        )
    original = backproject(full_frame["gt"], full_frame["K"])
    _same_points(
        backproject(cropped["gt"], cropped["K"]),
        original[top : top + height, left : left + width],
    )


def test_resize_moves_projections_with_the_image(full_frame: dict) -> None:
    """A 3-D point projects with the new K where the resize puts its pixel: (u + 0.5) s - 0.5."""
    scale = 0.5
    resized = aug.resize(full_frame, scale)
    height, width = full_frame["rgb"].shape[:2]
    assert resized["rgb"].shape[:2] == (round(height * scale), round(width * scale))
    points = backproject(full_frame["gt"], full_frame["K"]).reshape(-1, 3)
    points = points[~np.isnan(points[:, 2])]
    uv = (resized["K"].astype(np.float64) @ points.T.astype(np.float64)).T
    uv = uv[:, :2] / uv[:, 2:]
    vs, us = np.nonzero(full_frame["gt"] > 0)
    expected = np.stack(
        [
            (us + 0.5) * resized["rgb"].shape[1] / width - 0.5,
            (vs + 0.5) * resized["rgb"].shape[0] / height - 0.5,
        ],
        axis=1,
    )
    np.testing.assert_allclose(uv, expected, atol=2e-3)
    # depth maps and segments are never blended: every value comes from the source
    for key in ("sparse", "gt", "segments", "holdout"):
        assert set(np.unique(resized[key])) <= set(np.unique(full_frame[key]))


def test_colour_jitter_touches_rgb_only(full_frame: dict) -> None:
    rng = np.random.default_rng(3)
    out = aug.augment(full_frame, rng, flip=False, jitter=0.4)
    assert not np.array_equal(out["rgb"], full_frame["rgb"])
    assert out["rgb"].dtype == np.uint8 and out["rgb"].shape == full_frame["rgb"].shape
    for key in ("sparse", "gt", "teacher", "segments", "holdout", "K"):
        assert out[key] is full_frame[key]
    unchanged = aug.augment(full_frame, rng, flip=False, jitter=0.0)
    np.testing.assert_array_equal(unchanged["rgb"], full_frame["rgb"])


def test_augment_flips_every_map_together(full_frame: dict) -> None:
    flips = 0
    for seed in range(8):
        out = aug.augment(full_frame, np.random.default_rng(seed), flip=True, jitter=0.0)
        flipped = not np.array_equal(out["gt"], full_frame["gt"])
        flips += flipped
        for key in ("rgb", "sparse", "teacher", "segments", "holdout"):
            expected = full_frame[key][:, ::-1] if flipped else full_frame[key]
            np.testing.assert_array_equal(out[key], expected)
        assert (out["K"][0, 2] != full_frame["K"][0, 2]) == flipped
    assert 0 < flips < 8


def test_crop_windows() -> None:
    # KITTI's convention on a 1242 x 375 frame: the bottom 352 rows, 1216 columns centred
    assert aug.crop_window((375, 1242), (352, 1216), "bottom_center") == (23, 13)
    assert aug.crop_window((240, 320), (228, 304), "center") == (6, 8)
    rng = np.random.default_rng(0)
    tops, lefts = zip(
        *(aug.crop_window((375, 1242), (240, 1216), "random", rng, 352) for _ in range(200)),
        strict=True,
    )
    assert min(tops) >= 23 and max(tops) <= 135 and max(tops) - min(tops) > 50
    assert min(lefts) >= 0 and max(lefts) <= 26
    with pytest.raises(BadSample, match="smaller than the crop") as info:
        aug.crop_window((300, 1242), (352, 1216), "bottom_center")
    assert info.value.cause == "size"
