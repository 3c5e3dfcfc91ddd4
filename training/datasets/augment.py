"""Geometry and colour changes of a sample that keep every map and K consistent.

A crop, flip or resize moves rgb, sparse, gt, teacher, segments and holdout together and updates
K to match, so a pixel and its back-projected ray mean the same thing before and after: losses
that use K (BP-Net's, the back-projection checks) stay right. Colour jitter touches rgb only.

Pixel convention: pixel (u, v) has its centre at (u, v) (as in ``projection.backproject``), so
a horizontal flip of a W-wide image maps u -> W - 1 - u and cx -> W - 1 - cx, and a resize by s
maps u -> (u + 0.5) s - 0.5 (the convention of ``cv2.resize``).
"""

from __future__ import annotations

import cv2
import numpy as np

from training.sample import IMAGE_KEYS, BadSample, Sample

CROP_MODES = ("bottom_center", "center", "random")
#: how each map is resampled by :func:`resize`: sparse maps must never be interpolated
_NEAREST = ("sparse", "gt", "holdout", "segments")


def _maps(sample: Sample) -> list[str]:
    return [key for key in IMAGE_KEYS if key in sample]


def crop(sample: Sample, top: int, left: int, height: int, width: int) -> Sample:
    """The ``height`` x ``width`` window at (top, left) of every map; K's principal point moves."""
    out = dict(sample)
    for key in _maps(sample):
        out[key] = np.ascontiguousarray(sample[key][top : top + height, left : left + width])
    K = np.array(sample["K"], dtype=np.float64)
    K[0, 2] -= left
    K[1, 2] -= top
    out["K"] = K.astype(np.float32)
    return out


def crop_window(
    image_hw: tuple[int, int],
    crop_hw: tuple[int, int],
    mode: str,
    rng: np.random.Generator | None = None,
    region_rows: int | None = None,
) -> tuple[int, int]:
    """(top, left) of a crop: ``bottom_center`` (KITTI's evaluation convention: the bottom rows,
    centred across), ``center`` (NYU's centre crop) or ``random`` (uniform, inside the bottom
    ``region_rows`` rows when given: KITTI's LiDAR covers only the lower part of the image)."""
    height, width = image_hw
    crop_h, crop_w = crop_hw
    if crop_h > height or crop_w > width:
        raise BadSample(
            "size",
            f"image is {width}x{height}, smaller than the crop {crop_w}x{crop_h}: lower 'crop'",
        )
    if mode == "bottom_center":
        return height - crop_h, (width - crop_w) // 2
    if mode == "center":
        return (height - crop_h) // 2, (width - crop_w) // 2
    if mode != "random":
        raise ValueError(f"crop_mode must be one of {CROP_MODES}, got {mode!r}")
    assert rng is not None, "a random crop needs a generator"
    lowest_top = max(0, height - max(region_rows or height, crop_h))
    top = int(rng.integers(lowest_top, height - crop_h + 1))
    left = int(rng.integers(0, width - crop_w + 1))
    return top, left


def hflip(sample: Sample) -> Sample:
    """Mirror every map left-right; cx' = W - 1 - cx (and a skew term changes sign)."""
    out = dict(sample)
    for key in _maps(sample):
        out[key] = np.ascontiguousarray(sample[key][:, ::-1])
    width = sample["rgb"].shape[1]
    K = np.array(sample["K"], dtype=np.float64)
    K[0, 2] = width - 1 - K[0, 2]
    K[0, 1] = -K[0, 1]
    out["K"] = K.astype(np.float32)
    return out


def resize(sample: Sample, scale: float) -> Sample:
    """Scale every map by ``scale``: rgb and teacher interpolated (area when shrinking), depth
    maps and segments by nearest neighbour (a sparse map must not blend points with holes)."""
    out = dict(sample)
    height, width = sample["rgb"].shape[:2]
    size = (int(round(width * scale)), int(round(height * scale)))
    smooth = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    for key in _maps(sample):
        value = sample[key]
        if key in _NEAREST:
            source = value.astype(np.int32) if key == "segments" else value
            resized = cv2.resize(source, size, interpolation=cv2.INTER_NEAREST)
            out[key] = resized.astype(value.dtype)
        else:
            out[key] = cv2.resize(value, size, interpolation=smooth)
    K = np.array(sample["K"], dtype=np.float64)
    sx, sy = size[0] / width, size[1] / height
    K[0, :] *= sx
    K[1, :] *= sy
    K[0, 2] += 0.5 * sx - 0.5  # (c + 0.5) s - 0.5
    K[1, 2] += 0.5 * sy - 0.5
    out["K"] = K.astype(np.float32)
    return out


def color_jitter(rgb: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Brightness, contrast and saturation each scaled by a factor in [1 - s, 1 + s], in a random
    order, clipped after each (torchvision's ColorJitter(s, s, s), as NLSPN trains KITTI)."""
    image = rgb.astype(np.float32)
    for op in rng.permutation(3):
        factor = float(rng.uniform(max(0.0, 1 - strength), 1 + strength))
        if op == 0:  # brightness
            image *= factor
        elif op == 1:  # contrast: towards the mean grey level
            mean = float(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).mean())
            image *= factor
            image += mean * (1 - factor)
        else:  # saturation: towards each pixel's grey
            gray = cv2.cvtColor(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)
            image = cv2.addWeighted(image, factor, gray, 1 - factor, 0.0)
        np.clip(image, 0, 255, out=image)
    return np.rint(image).astype(np.uint8)


def augment(
    sample: Sample, rng: np.random.Generator, flip: bool = True, jitter: float = 0.0
) -> Sample:
    """Training-time augmentation: a flip with probability 1/2, then colour jitter on rgb."""
    if flip and rng.random() < 0.5:
        sample = hflip(sample)
    if jitter > 0:
        sample = dict(sample)
        sample["rgb"] = color_jitter(sample["rgb"], rng, jitter)
    return sample
