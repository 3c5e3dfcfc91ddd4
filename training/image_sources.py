"""The images of a data job (teacher cache, pseudo-labels): which files, relative to which root.

A job's ``--images`` is one of

- ``DIR``: every image file under DIR (recursive), root = DIR;
- ``kitti:ROOT:SPLIT`` (SPLIT = train or val): the KITTI depth-completion frames of the split, i.e.
  the ``raw/<date>/<drive>/image_0X/data/<frame>.png`` images that have a
  ``data_depth_velodyne/SPLIT/<drive>/proj_depth/velodyne_raw/image_0X/<frame>.png``, root = ROOT;
- ``nyu:ROOT``: NYU Depth v2 colour images under ROOT (files named ``rgb*`` or inside an ``rgb``
  folder, so the depth PNGs beside them are left out) and Sparse-to-Dense ``.h5`` files (their
  ``rgb`` dataset), root = ROOT;
- ``bag:PATH``: the camera frames of a ROS 2 bag (paired as the ``bag:`` dataset pairs them), keyed
  ``<bag name>/<image stamp ns>`` like that dataset.

The cache key of an image is its path relative to the root without suffix
(:func:`training.cache.relative_stem`), so a dataset finds an image's cached map from the same
root: for KITTI ``raw/<date>/<drive>/image_02/data/0000000005``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from training.cache import relative_stem

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".tif", ".tiff", ".webp")
H5_SUFFIXES = (".h5", ".hdf5")
KITTI_SPLITS = ("train", "val")


class BadImage(ValueError):
    """An image file that cannot be read; the job skips and counts it."""


@dataclass(frozen=True)
class ImageSource:
    """The images of a job: items (image files here), their cache keys and pixels."""

    root: Path
    paths: list[Any]
    spec: str

    def key(self, item: Any) -> Path:
        """Cache key: the path relative to the root, suffix dropped (training.cache)."""
        return relative_stem(item, self.root)

    def read(self, item: Any) -> np.ndarray:
        return read_image(item)

    def is_inside(self, folder: Path) -> bool:
        """Whether any item lies in ``folder`` (a job never reads its own outputs)."""
        return False


@dataclass(frozen=True)
class BagImageSource(ImageSource):
    """The camera frames of a ROS 2 bag, keyed as the bag dataset keys them
    (``<bag name>/<image stamp ns>``), so labels made here are found by ``bag:`` training."""

    dataset: Any = None

    def key(self, item: Any) -> Path:
        return Path(self.dataset.cache_key(item))

    def read(self, item: Any) -> np.ndarray:
        try:
            return self.dataset.read_rgb(item)
        except Exception as err:  # a damaged chunk, an unsupported encoding
            raise BadImage(f"{self.dataset.name_of(item)}: {err}") from err


def _bag(path: Path) -> BagImageSource:
    from training.datasets import build_dataset

    dataset = build_dataset(f"bag:{path}", "train", {"augment": False})
    return BagImageSource(
        root=path, paths=list(range(len(dataset))), spec=f"bag:{path}", dataset=dataset
    )


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES


def _folder(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if _is_image(p))


def _kitti(root: Path, split: str) -> list[Path]:
    """The frames of the KITTI dataset's own index (training.datasets), so a job covers exactly
    the images the dataset reads, under the same keys."""
    if split not in KITTI_SPLITS:
        raise ValueError(f"KITTI split '{split}' is not one of {KITTI_SPLITS}")
    from training.datasets import build_dataset

    dataset = build_dataset(f"kitti:{root}", split, {"augment": False})
    return [dataset.image_path(i) for i in range(len(dataset))]


def _nyu(root: Path) -> list[Path]:
    paths = []
    for path in sorted(root.rglob("*")):
        h5 = path.is_file() and path.suffix.lower() in H5_SUFFIXES
        rgb = _is_image(path) and (path.name.startswith("rgb") or path.parent.name == "rgb")
        if h5 or rgb:
            paths.append(path)
    return paths


def list_images(spec: str | Path) -> ImageSource:
    """The images named by ``spec`` (see the module doc), sorted, and their root."""
    text = str(spec)
    kind, _, rest = text.partition(":")
    if kind == "bag" and rest:
        if not Path(rest).exists():
            raise FileNotFoundError(f"bag '{rest}' not found (from --images {text})")
        return _bag(Path(rest))
    if kind == "kitti" and rest:
        root_text, _, split = rest.rpartition(":")
        if not root_text:
            raise ValueError(f"'{text}': write kitti:ROOT:SPLIT, e.g. kitti:/data/kitti:train")
        root = Path(root_text)
        paths = _kitti(root, split)
    elif kind == "nyu" and rest:
        root = Path(rest)
        paths = _nyu(root) if root.is_dir() else []
    else:
        root = Path(text)
        paths = _folder(root) if root.is_dir() else []
    if not root.is_dir():
        raise FileNotFoundError(f"image folder '{root}' not found (from --images {text})")
    if not paths:
        raise ValueError(
            f"no images found for --images {text} (looked for {', '.join(IMAGE_SUFFIXES)} files"
            f"{' and .h5' if kind == 'nyu' else ''} under {root})"
        )
    return ImageSource(root=root, paths=paths, spec=text)


def read_image(path: Path) -> np.ndarray:
    """An image file as H x W x 3 uint8 RGB (``.h5``: its ``rgb`` dataset, 3 x H x W in
    Sparse-to-Dense files); raises :class:`BadImage` naming the file and the problem."""
    if path.suffix.lower() in H5_SUFFIXES:
        import h5py

        try:
            with h5py.File(path, "r") as f:
                rgb = np.asarray(f["rgb"])
        except (OSError, KeyError) as err:
            raise BadImage(f"{path}: not a readable .h5 with an 'rgb' dataset ({err})") from None
        if rgb.ndim == 3 and rgb.shape[0] == 3:
            rgb = rgb.transpose(1, 2, 0)
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise BadImage(f"{path}: 'rgb' is {rgb.shape} {rgb.dtype}, expected uint8 colour")
        return np.ascontiguousarray(rgb)
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise BadImage(
            f"{path}: cannot be decoded as an image (missing, truncated or not an image file); "
            "replace or remove it"
        )
    return np.ascontiguousarray(bgr[:, :, ::-1])
