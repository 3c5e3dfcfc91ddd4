"""NYU Depth v2: the Sparse-to-Dense .h5 files and plain rgb/depth folders.

Sources under ROOT (``ROOT/<split>`` when it exists, else ROOT itself for every split):

- ``<scene>/<n>.h5`` with ``rgb`` (3 x 480 x 640 uint8) and ``depth`` (480 x 640 float metres),
  the files of Sparse-to-Dense (Ma & Karaman) that NLSPN and SelfDC train on;
- a folder with ``rgb/`` and ``depth/`` subfolders (files paired by the number in their names),
  or with ``rgb.png|jpg`` + ``depth.png``; depth PNGs are uint16 millimetres (``depth_png_scale``
  in ``intrinsics.json`` overrides); K from ``intrinsics.json`` (fx, fy, cx, cy) or
  ``intrinsics.npy`` (3 x 3) in that folder, else NYU's default camera.

Every sample goes through the standard evaluation geometry of those papers: half-resolution
resize (480 x 640 -> 240 x 320; rgb by area, depth by nearest neighbour) and the 228 x 304 centre
crop (``crop``; a random crop on the train split with ``crop_mode: random``), K scaled and shifted
with them. The sparse input is ``nyu_samples`` pixels drawn uniformly from the valid ground truth
of the cropped frame: fresh each time on the train split, fixed per sample index (and ``seed``)
on the others, so every evaluation scores the same input.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import cv2
import numpy as np

from depth_completion_ros.depth_io import read_rgb
from training.datasets import augment as aug
from training.datasets.base import CachedMapsDataset, DatasetOptions, subsample
from training.sample import BadSample, Sample

#: NYU Depth v2's colour camera at 640 x 480 (the toolbox's calibration)
NYU_FX, NYU_FY, NYU_CX, NYU_CY = 518.857901, 519.469611, 325.582449, 253.736166
NYU_CROP = (228, 304)
NYU_SCALE = 0.5
DEPTH_PNG_SCALE = 1000.0  # uint16 millimetres
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def nyu_default_K() -> np.ndarray:
    return np.array([[NYU_FX, 0, NYU_CX], [0, NYU_FY, NYU_CY], [0, 0, 1]], dtype=np.float32)


def read_h5(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A Sparse-to-Dense file -> (H x W x 3 uint8 rgb, H x W float32 metres)."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            rgb = np.asarray(f["rgb"])
            depth = np.asarray(f["depth"], dtype=np.float32)
    except KeyError as exc:
        raise ValueError(f"{path}: not a Sparse-to-Dense file (needs 'rgb' and 'depth')") from exc
    if rgb.ndim != 3 or rgb.shape[0] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"{path}: 'rgb' must be 3 x H x W uint8, got {rgb.shape} {rgb.dtype}")
    return np.ascontiguousarray(rgb.transpose(1, 2, 0)), depth


def read_folder_intrinsics(folder: Path) -> tuple[np.ndarray, float]:
    """(K, depth PNG scale) of a frame folder: intrinsics.json / .npy, else NYU's defaults."""
    json_path, npy_path = folder / "intrinsics.json", folder / "intrinsics.npy"
    if json_path.is_file():
        meta = json.loads(json_path.read_text())
        try:
            K = np.array(
                [[meta["fx"], 0, meta["cx"]], [0, meta["fy"], meta["cy"]], [0, 0, 1]], np.float32
            )
        except KeyError as exc:
            raise ValueError(f"{json_path}: missing {exc} (needs fx, fy, cx, cy)") from None
        return K, float(meta.get("depth_png_scale", DEPTH_PNG_SCALE))
    if npy_path.is_file():
        K = np.load(npy_path, allow_pickle=False).astype(np.float32)
        if K.shape != (3, 3):
            raise ValueError(f"{npy_path}: expected a 3 x 3 K, got {K.shape}")
        return K, DEPTH_PNG_SCALE
    return nyu_default_K(), DEPTH_PNG_SCALE


def _number(path: Path) -> str | None:
    found = re.findall(r"\d+", path.stem)
    return found[-1] if found else None


def _first(folder: Path, stem: str) -> Path | None:
    found = [folder / f"{stem}{suffix}" for suffix in _IMAGE_SUFFIXES]
    return next((p for p in found if p.is_file()), None)


def index_folders(base: Path) -> list[dict]:
    """Frames of plain rgb/depth folders under ``base`` (see the module docstring)."""
    items = []
    for folder in sorted({base, *[p for p in base.rglob("*") if p.is_dir()]}):
        if (folder / "rgb").is_dir() and (folder / "depth").is_dir():
            depths = {_number(p): p for p in (folder / "depth").glob("*.png")}
            for rgb in sorted((folder / "rgb").iterdir()):
                if rgb.suffix.lower() in _IMAGE_SUFFIXES and _number(rgb) in depths:
                    items.append({"rgb": rgb, "depth": depths[_number(rgb)], "folder": folder})
        else:
            rgb = _first(folder, "rgb")
            if rgb is not None and (folder / "depth.png").is_file():
                items.append({"rgb": rgb, "depth": folder / "depth.png", "folder": folder})
    return items


class NyuDepthV2(CachedMapsDataset):
    """NYU Depth v2 frames with ``nyu_samples`` random sparse depth samples."""

    kind = "nyu"
    default_crop = NYU_CROP
    fixed_crop_mode = "center"

    def __init__(self, root: str | Path, split: str, options: DatasetOptions) -> None:
        super().__init__(root, split, options)
        if split not in ("train", "val"):
            raise ValueError(f"unknown NYU split {split!r}: choose train or val")
        self.base = self.root / split if (self.root / split).is_dir() else self.root
        if not self.base.is_dir():
            raise FileNotFoundError(f"NYU root {self.root} not found")
        h5 = sorted(self.base.rglob("*.h5"))
        self.items = [{"h5": p} for p in h5] or index_folders(self.base)
        if not self.items:
            raise FileNotFoundError(
                f"no NYU frame under {self.base}: expected Sparse-to-Dense <scene>/<n>.h5 files "
                "or rgb/ + depth/ folders (see training/README.md, Datasets)"
            )
        self.items = subsample(self.items, options.max_samples, options.seed)

    def image_path(self, index: int) -> Path:
        item = self.items[index]
        return item.get("h5") or item["rgb"]

    def cache_key(self, index: int) -> str:
        """Image file (or .h5) relative to ROOT, suffix dropped."""
        return str(self.image_path(index).relative_to(self.root).with_suffix(""))

    def name_of(self, index: int) -> str:
        return self.cache_key(index)

    def read(self, index: int) -> Sample:
        item = self.items[index]
        if "h5" in item:
            rgb, gt = read_h5(item["h5"])
            K = nyu_default_K()
        else:
            K, scale = read_folder_intrinsics(item["folder"])
            rgb = read_rgb(item["rgb"])
            raw = cv2.imread(str(item["depth"]), cv2.IMREAD_ANYDEPTH)
            if raw is None:
                raise OSError(f"cannot read depth PNG {item['depth']}")
            if raw.dtype != np.uint16:
                raise ValueError(f"{item['depth']}: expected uint16 depth, got {raw.dtype}")
            gt = raw.astype(np.float32) / np.float32(scale)
        gt = np.where(np.isfinite(gt) & (gt > 0), gt, 0).astype(np.float32)
        # the sparse input is drawn after the geometry (see transform); a placeholder until then
        sparse = np.zeros_like(gt)
        key = self.cache_key(index)
        return {"rgb": rgb, "sparse": sparse, "gt": gt, "K": K, "name": key, "key": key}

    def transform(self, sample: Sample, rng: np.random.Generator) -> Sample:
        sample = self.crop(aug.resize(sample, NYU_SCALE), rng)
        sample["sparse"] = sample_sparse(sample["gt"], self.options.nyu_samples, rng)
        return sample

    def describe_extra(self) -> list[str]:
        source = "h5" if "h5" in self.items[0] else "folders"
        return [f"source={source}", f"nyu_samples={self.options.nyu_samples}"]


def sample_sparse(gt: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` pixels drawn uniformly without replacement from gt's valid pixels (all of them
    when fewer are valid), their exact depth kept: the NYU sparse input of the papers."""
    valid = np.flatnonzero(gt.reshape(-1) > 0)
    if valid.size == 0:
        raise BadSample("no_sparse", "no valid ground-truth pixel to sample the sparse input from")
    chosen = rng.choice(valid, size=min(count, valid.size), replace=False)
    sparse = np.zeros(gt.size, np.float32)
    sparse[chosen] = gt.reshape(-1)[chosen]
    return sparse.reshape(gt.shape)
