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
    min_top: int = 0,
) -> tuple[int, int]:
    """(top, left) of a crop: ``bottom_center`` (KITTI's evaluation convention: the bottom rows,
    centred across), ``center`` (NYU's centre crop) or ``random`` (uniform, inside the bottom
    ``region_rows`` rows when given: KITTI's LiDAR covers only the lower part of the image;
    and starting at row ``min_top`` or below: the BP-Net/DMD3C releases draw the top row from
    50 up, NLSPN crops the top 100 rows away first)."""
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
    lowest_top = min(max(lowest_top, int(min_top)), height - crop_h)
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


#: value the border takes when a map is rotated or padded (rgb and teacher: see each function)
_FILL = {"sparse": 0.0, "gt": 0.0, "holdout": 0.0, "segments": -1, "teacher": 0.0, "rgb": 0}


def scale_maps(sample: Sample, scale: float, divide_depth: bool = False) -> Sample:
    """Zoom by ``scale`` (:func:`resize`: K follows the pixels). The zoomed image is the same
    scene seen with a focal length ``scale`` times longer, so depths stay (BP-Net's NYU
    augmentation: K scaled, depth kept). ``divide_depth``: also divide every depth map by
    ``scale`` (NLSPN's and Sparse-to-Dense's convention: the scene looks ``scale`` times nearer;
    K then no longer describes it, so only for networks that do not take K)."""
    out = resize(sample, scale)
    if divide_depth:
        for key in ("sparse", "gt", "holdout"):
            if key in out:
                out[key] = (out[key] / np.float32(scale)).astype(np.float32)
    return out


def rotate(sample: Sample, degrees: float) -> Sample:
    """Rotate every map by ``degrees`` (counter-clockwise as seen, torchvision's sense) about
    the principal point (cx, cy): the image of the same camera rolled about its optical axis,
    so K and every depth stay exact (for fx = fy; BP-Net and NLSPN rotate about the image
    centre and keep K, which is off by the centre's distance to the principal point). rgb and
    teacher bilinear, depth maps and segments by nearest neighbour (a sparse map must not blend
    points with holes); the corners brought in are 0 (rgb black, no depth, teacher 0 = no
    teacher information) and -1 for segments."""
    if degrees == 0:
        return dict(sample)
    out = dict(sample)
    K = np.asarray(sample["K"], dtype=np.float64)
    height, width = sample["rgb"].shape[:2]
    matrix = cv2.getRotationMatrix2D((float(K[0, 2]), float(K[1, 2])), float(degrees), 1.0)
    for key in _maps(sample):
        value = sample[key]
        nearest = key in _NEAREST
        source = value.astype(np.int32) if key == "segments" else value
        rotated = cv2.warpAffine(
            source,
            matrix,
            (width, height),
            flags=cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=_FILL[key],
        )
        out[key] = rotated.astype(value.dtype)
    return out


def pad(sample: Sample, height: int, width: int) -> Sample:
    """Pad every map to ``height`` x ``width``, centred (an odd remainder goes to the bottom /
    right), as BP-Net pads NYU's 228 x 304 crop to 256 x 320 (its datasets/nyu.py: 14 rows top
    and bottom, 8 columns each side): rgb and teacher repeat their edge (the release's
    'edge' mode for rgb), depth maps 0, segments -1; K's principal point moves with the image."""
    h, w = sample["rgb"].shape[:2]
    if h > height or w > width:
        raise BadSample("size", f"image {w}x{h} is larger than pad_to {width}x{height}")
    top, left = (height - h) // 2, (width - w) // 2
    bottom, right = height - h - top, width - w - left
    out = dict(sample)
    for key in _maps(sample):
        value = sample[key]
        spec = ((top, bottom), (left, right)) + ((0, 0),) * (value.ndim - 2)
        if key in ("rgb", "teacher"):
            out[key] = np.pad(value, spec, mode="edge")
        else:
            out[key] = np.pad(value, spec, mode="constant", constant_values=_FILL[key])
    K = np.array(sample["K"], dtype=np.float64)
    K[0, 2] += left
    K[1, 2] += top
    out["K"] = K.astype(np.float32)
    return out


def pca_jitter(rgb: np.ndarray, rng: np.random.Generator, sigma: float) -> np.ndarray:
    """AlexNet-style colour noise, as the BP-Net/DMD3C releases' ``Jitter`` (augs.py): the
    principal components of the image's own colours (RGB in [0, 1]: eigenvectors e_j of the 3 x 3
    covariance, eigenvalues l_j) move every pixel by sum_j e_j sqrt(l_j) a_j with a_j ~ N(0,
    sigma^2) (release: 0.1), then clip to [0, 1]. Rounded back to uint8 (the release truncates:
    a 0.5 / 255 darker image on average, not reproduced)."""
    image = rgb.astype(np.float32) / 255.0
    covariance = np.cov(image.reshape(-1, 3).T.astype(np.float64))
    values, vectors = np.linalg.eigh(covariance)
    shift = vectors @ (np.sqrt(np.clip(values, 0.0, None)) * rng.normal(0.0, sigma, 3))
    image = np.clip(image + shift.astype(np.float32), 0.0, 1.0)
    return np.rint(image * 255.0).astype(np.uint8)


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
    sample: Sample,
    rng: np.random.Generator,
    flip: bool = True,
    jitter: float = 0.0,
    pca: float = 0.0,
) -> Sample:
    """Training-time augmentation: a flip with probability 1/2, then colour jitter and PCA
    colour noise (sigma ``pca``) on rgb."""
    if flip and rng.random() < 0.5:
        sample = hflip(sample)
    if jitter > 0:
        sample = dict(sample)
        sample["rgb"] = color_jitter(sample["rgb"], rng, jitter)
    if pca > 0:
        sample = dict(sample)
        sample["rgb"] = pca_jitter(sample["rgb"], rng, pca)
    return sample


def scale_rotate(
    sample: Sample,
    rng: np.random.Generator,
    scale: tuple[float, float] | None = None,
    rotation: float = 0.0,
    divide_depth: bool = False,
) -> tuple[Sample, float]:
    """Training-time geometry before the crop (NLSPN; BP-Net on NYU): a rotation uniform in
    [-rotation, rotation] degrees, then a zoom uniform in ``scale`` = [low, high]. Returns the
    sample and the zoom (the crop's row limits scale with it)."""
    if rotation > 0:
        sample = rotate(sample, float(rng.uniform(-rotation, rotation)))
    factor = 1.0
    if scale:
        factor = float(rng.uniform(scale[0], scale[1]))
        if factor != 1.0:
            sample = scale_maps(sample, factor, divide_depth)
    return sample, factor
