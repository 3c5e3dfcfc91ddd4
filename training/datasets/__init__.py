"""Training datasets: KITTI DC, NYU Depth v2, stage-1 samples and ROS 2 bags, one sample format.

``build_dataset(spec, split, options)`` with ``spec`` = ``kitti:ROOT``, ``nyu:ROOT``,
``generated:DIR`` or ``bag:PATH``. Every item is a :mod:`training.sample` dict, or
``skipped(cause, message, name)`` for bad data (never an exception); ``describe()`` gives a line
for the log. Options (the config's data section; an unknown key fails at once):

=================  ==================  ========================================================
option             default             meaning
=================  ==================  ========================================================
crop               per kind            [h, w] (KITTI [352, 1216], NYU [228, 304], generated/bag
                                       none); [] = no crop
crop_mode          null                train split only: null (the kind's fixed crop) |
                                       bottom_center | center | random; every other split
                                       uses the fixed crop: KITTI and bags bottom_center (the
                                       benchmark's convention), NYU and generated center
random_crop_rows   KITTI 352, else     random crops lie inside the bottom N rows (the rows
                   null                KITTI's LiDAR covers); null = anywhere
random_crop_top    0                   random crops start at this row or below (BP-Net 50,
                                       NLSPN 100); zooms with scale
augment            true                train split only: flip, jitter, scale/rotation
flip               true                random horizontal flip (p = 0.5), K's cx mirrored
color_jitter       0.4                 brightness/contrast/saturation strength; 0 = off
pca_jitter         0.0                 PCA colour noise sigma (BP-Net/DMD3C releases 0.1)
scale              null                [low, high]: zoom before the crop (NLSPN, BP-Net NYU
                                       [1, 1.5]); K follows the pixels
rotation           0.0                 rotation in [-r, r] degrees about the principal point
                                       before the crop (NLSPN, BP-Net NYU: 5)
scale_depth        false               divide depths by the zoom (NLSPN) instead of keeping
                                       them with K scaled (BP-Net)
pad_to             null                [h, w]: pad centred after the crop (BP-Net NYU
                                       [256, 320]; rgb/teacher edge, depth 0, segments -1)
input              velodyne_raw        KITTI: velodyne_raw (KITTI's map) | raw_scan (the node's
                                       projection of the raw scan)
cameras            [2, 3]              KITTI cameras of the train/val splits
raw_root           ROOT/raw            KITTI raw layout (images, scans, calibration)
denoise            false               KITTI: remove points seen through gaps at object edges
                                       from the sparse input (the node's occlusion filter)
denoise_window     12                  its search window (pixels each side)
denoise_relative   0.10                occluded if deeper than nearest * (1 + relative)
denoise_absolute   0.3                 ... + absolute (metres) on both sides
teacher_root       null                teacher-map cache (training.cache layout); adds teacher
segments_root      null                segment-label cache; adds segments
nyu_samples        500                 NYU: sparse samples per image (papers: 200..2000)
holdout_fraction   0.1                 bag: share of each frame's LiDAR pixels held out
seed               0                   fixes val/test sparse samples, hold-outs, max_samples
max_samples        null                use at most N items (a seeded subset, in order)
node_params        null                bag / raw_scan: the node's --params-file YAML
calibration_dir    null                bag: KITTI calibration folder (node parameter)
camera_index       null                bag: its camera (node parameter; node default 2)
extrinsics         null                bag: LiDAR -> camera values (node parameter); neither
                                       set: the bag's /tf_static
max_time_offset    null                bag: pairing tolerance (node parameter; default 0.05 s)
topics             kitti_to_bag's      bag: {image, camera_info, points} topic names
index_cache        null                bag: JSON file keeping the pair index between runs
=================  ==================  ========================================================

Cache keys (teacher maps, segments): each dataset's ``cache_key(i)`` is its image path relative
to the dataset root, suffix dropped (KITTI: ``raw/<date>/<drive>/image_0X/data/<frame>``), and
``image_path(i)`` its image file, so the cache jobs and the datasets agree on names.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch.utils.data import Dataset

from training.datasets.base import CachedMapsDataset, DatasetOptions


def _kitti(root: str, split: str, options: dict[str, Any]) -> CachedMapsDataset:
    from training.datasets.kitti_dc import KITTI_LIDAR_ROWS, KittiDepthCompletion

    opts = DatasetOptions.from_dict(options, {"random_crop_rows": KITTI_LIDAR_ROWS})
    return KittiDepthCompletion(root, split, opts)


def _nyu(root: str, split: str, options: dict[str, Any]) -> CachedMapsDataset:
    from training.datasets.nyu import NyuDepthV2

    return NyuDepthV2(root, split, DatasetOptions.from_dict(options, {}))


def _generated(root: str, split: str, options: dict[str, Any]) -> CachedMapsDataset:
    from training.datasets.generated import GeneratedSamples

    return GeneratedSamples(root, split, DatasetOptions.from_dict(options, {}))


def _bag(root: str, split: str, options: dict[str, Any]) -> CachedMapsDataset:
    from training.datasets.bag import RosBagFrames

    return RosBagFrames(root, split, DatasetOptions.from_dict(options, {}))


#: spec prefix -> constructor(root, split, options)
REGISTRY: dict[str, Callable[[str, str, dict[str, Any]], CachedMapsDataset]] = {
    "kitti": _kitti,
    "nyu": _nyu,
    "generated": _generated,
    "bag": _bag,
}


def build_dataset(spec: str, split: str, options: dict[str, Any] | None = None) -> Dataset:
    """``kind:PATH`` -> the dataset of that split (see the module docstring for options)."""
    kind, sep, path = spec.partition(":")
    if not sep or not path or kind not in REGISTRY:
        raise ValueError(
            f"dataset spec {spec!r} must be KIND:PATH with KIND one of {', '.join(REGISTRY)} "
            "(e.g. kitti:/data/kitti)"
        )
    return REGISTRY[kind](path, split, dict(options or {}))


__all__ = ["REGISTRY", "DatasetOptions", "build_dataset"]
