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


def test_crop_window_min_top_and_its_zoom() -> None:
    """The releases' row limit: BP-Net/DMD3C draw the top row from 50 up (datasets/kitti.py)."""
    rng = np.random.default_rng(1)
    tops = [
        aug.crop_window((375, 1242), (256, 1216), "random", rng, None, 50)[0] for _ in range(300)
    ]
    assert min(tops) == 50 and max(tops) == 375 - 256
    # a limit below the last possible top clamps to the bottom crop
    assert aug.crop_window((300, 1242), (256, 1216), "random", rng, None, 80)[0] == 44


def _rays(sample: dict, key: str) -> tuple[np.ndarray, np.ndarray]:
    """(pixels v, u of the valid values, their back-projected points)."""
    points = backproject(sample[key], sample["K"])
    vs, us = np.nonzero(sample[key] > 0)
    return np.stack([vs, us], 1), points[vs, us]


def test_rotation_is_a_roll_about_the_optical_axis(full_frame: dict) -> None:
    """Rotating about the principal point keeps K and depths exact: every rotated point is an
    original point rolled about the camera's z axis by the angle (to within the nearest-pixel
    resampling of the sparse map)."""
    degrees = 4.0
    rotated = aug.rotate(full_frame, degrees)
    np.testing.assert_array_equal(rotated["K"], full_frame["K"])
    for key in ("rgb", "sparse", "gt", "teacher", "segments", "holdout"):
        assert (
            rotated[key].shape == full_frame[key].shape
            and rotated[key].dtype == full_frame[key].dtype
        )
    assert set(np.unique(rotated["gt"])) <= set(np.unique(full_frame["gt"]))
    assert set(np.unique(rotated["segments"])) <= set(np.unique(full_frame["segments"]))
    _, points = _rays(rotated, "gt")
    assert len(points) > 10_000
    # roll back: a counter-clockwise image rotation by a is the camera rolled by -a about z
    a = np.deg2rad(degrees)
    back = points.copy()
    back[:, 0] = np.cos(a) * points[:, 0] - np.sin(a) * points[:, 1]
    back[:, 1] = np.sin(a) * points[:, 0] + np.cos(a) * points[:, 1]
    uv = (full_frame["K"].astype(np.float64) @ back.T).T
    u, v = uv[:, 0] / uv[:, 2], uv[:, 1] / uv[:, 2]
    ui, vi = np.rint(u).astype(int), np.rint(v).astype(int)
    source = full_frame["gt"][np.clip(vi, 0, 374), np.clip(ui, 0, 1241)]
    # nearest-neighbour resampling lands within a pixel: most points are exactly the source's
    same = np.isclose(source, points[:, 2], rtol=1e-6)
    assert same.mean() > 0.9
    near = np.abs(np.stack([u - ui, v - vi])).max(0)
    assert near.max() < 0.75  # rotation + rounding: never more than ~0.7 px away
    assert np.array_equal(aug.rotate(full_frame, 0.0)["gt"], full_frame["gt"])


def test_scale_keeps_depth_or_divides_it(full_frame: dict) -> None:
    zoomed = aug.scale_maps(full_frame, 1.25)
    assert set(np.unique(zoomed["gt"])) <= set(np.unique(full_frame["gt"]))  # BP-Net: K scales
    assert zoomed["K"][0, 0] == pytest.approx(full_frame["K"][0, 0] * 1.25, rel=1e-3)
    nlspn = aug.scale_maps(full_frame, 1.25, divide_depth=True)
    np.testing.assert_allclose(nlspn["gt"], zoomed["gt"] / 1.25, rtol=1e-6)
    np.testing.assert_array_equal(nlspn["rgb"], zoomed["rgb"])


def test_pad_centres_and_moves_k(full_frame: dict) -> None:
    """BP-Net's NYU padding: 228 x 304 -> 256 x 320 is 14 rows top and bottom, 8 columns."""
    small = aug.crop(full_frame, 100, 300, 228, 304)
    padded = aug.pad(small, 256, 320)
    assert padded["K"][0, 2] == pytest.approx(small["K"][0, 2] + 8)
    assert padded["K"][1, 2] == pytest.approx(small["K"][1, 2] + 14)
    np.testing.assert_array_equal(padded["gt"][14:-14, 8:-8], small["gt"])
    assert not padded["gt"][:14].any() and not padded["sparse"][:, :8].any()
    assert (padded["segments"][:14] == -1).all()
    np.testing.assert_array_equal(padded["rgb"][0, 8:-8], small["rgb"][0])  # edge repeated
    np.testing.assert_array_equal(padded["teacher"][-1, 8:-8], small["teacher"][-1])
    _same_points(
        backproject(padded["gt"], padded["K"])[14:-14, 8:-8], backproject(small["gt"], small["K"])
    )
    with pytest.raises(BadSample, match="larger than pad_to"):
        aug.pad(small, 200, 320)


def test_pca_jitter_moves_colours_along_the_images_principal_components() -> None:
    rng = np.random.default_rng(0)
    grey = np.repeat(rng.integers(40, 200, (30, 40, 1), dtype=np.uint8), 3, axis=2)
    out = aug.pca_jitter(grey, np.random.default_rng(5), 0.1)
    # a grey image varies only along (1, 1, 1): the noise keeps it grey, and moves it
    assert np.abs(out.astype(int) - out[..., :1].astype(int)).max() <= 1
    assert not np.array_equal(out, grey)
    again = aug.pca_jitter(grey, np.random.default_rng(5), 0.1)
    np.testing.assert_array_equal(out, again)  # seeded
    np.testing.assert_array_equal(aug.augment({"rgb": grey}, rng, flip=False, pca=0.0)["rgb"], grey)
    colour = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    shifts = [
        (aug.pca_jitter(colour, np.random.default_rng(s), 0.1).astype(float) - colour).mean((0, 1))
        for s in range(40)
    ]
    spread = np.std(shifts, axis=0)  # per channel, in grey levels
    # sigma 0.1 of a component whose std is ~74 grey levels: a few grey levels
    assert 2 < spread.mean() < 15


def test_dataset_geometry_options_are_seeded_and_move_k(kitti_dc_frame: Path) -> None:
    """scale + rotation + pca as a dataset does them: the same generator gives the same sample;
    a crop lies below the (zoomed) top limit; the crop size is kept."""
    import torch

    options = {
        "crop": [240, 1216],
        "crop_mode": "random",
        "random_crop_top": 100,
        "scale": [1.0, 1.5],
        "rotation": 5.0,
        "scale_depth": True,
        "pca_jitter": 0.1,
        "color_jitter": 0.4,
        "cameras": [2],
    }
    dataset = build_dataset(f"kitti:{kitti_dc_frame}", "train", options)
    torch.manual_seed(3)
    a = dataset[0]
    torch.manual_seed(3)
    b = dataset[0]
    for key in ("rgb", "sparse", "gt", "K"):
        np.testing.assert_array_equal(a[key], b[key])
    assert a["rgb"].shape == (240, 1216, 3)
    torch.manual_seed(4)
    c = dataset[0]
    assert not np.array_equal(a["gt"], c["gt"])
    assert "scale1-1.5" in dataset.describe() and "rot5" in dataset.describe()
    with pytest.raises(ValueError, match="scale"):
        build_dataset(f"kitti:{kitti_dc_frame}", "train", {"scale": [1.5, 1.0]})
