"""Stage-1 samples (DMD3C pre-training) written by ``python -m training.generate_stage1``.

One ``.npz`` per sample under DIR with ``rgb`` (H x W x 3 uint8), ``sparse`` (H x W float32 m,
the simulated LiDAR), ``target`` (H x W float32 m, the dense mono depth the network learns) and
``K`` (3 x 3 float32), listed in DIR's ``manifest.rank*.jsonl`` (:class:`training.cache.Manifest`
entries: ``key`` plus ``file`` = the npz path relative to DIR). ``target`` becomes the sample's
``gt``. Only samples a manifest lists are read (a killed job's half-written file never is).
The split is not used: stage 1 has no validation set of its own.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from training.cache import Manifest
from training.datasets.base import CachedMapsDataset, DatasetOptions, subsample
from training.sample import Sample

NPZ_KEYS = ("rgb", "sparse", "target", "K")


class GeneratedSamples(CachedMapsDataset):
    """Stage-1 npz samples listed in a manifest."""

    kind = "generated"
    default_crop = None
    fixed_crop_mode = "center"

    def __init__(self, root: str | Path, split: str, options: DatasetOptions) -> None:
        super().__init__(root, split, options)
        if not self.root.is_dir():
            raise FileNotFoundError(f"stage-1 folder {self.root} not found")
        entries = {e["key"]: e for e in Manifest.entries(self.root) if "file" in e}
        if not entries:
            raise FileNotFoundError(
                f"no manifest.rank*.jsonl entry with a 'file' in {self.root}: run python -m "
                "training.generate_stage1 first (its manifests list the finished samples)"
            )
        self.items = subsample(
            [entries[k] for k in sorted(entries)], options.max_samples, options.seed
        )

    def name_of(self, index: int) -> str:
        return self.items[index]["key"]

    def image_path(self, index: int) -> Path:
        return self.root / self.items[index]["file"]

    def cache_key(self, index: int) -> str:
        return self.items[index]["key"]

    def read(self, index: int) -> Sample:
        entry = self.items[index]
        path = self.image_path(index)
        try:
            with np.load(path, allow_pickle=False) as npz:
                missing = [k for k in NPZ_KEYS if k not in npz.files]
                if missing:
                    raise ValueError(f"{path}: stage-1 sample lacks {missing}")
                arrays = {k: npz[k] for k in NPZ_KEYS}
        except (zipfile.BadZipFile, EOFError) as exc:
            raise ValueError(f"{path}: not a readable .npz ({exc})") from exc
        return {
            "rgb": np.ascontiguousarray(arrays["rgb"]),
            "sparse": np.asarray(arrays["sparse"], np.float32),
            "gt": np.asarray(arrays["target"], np.float32),
            "K": np.asarray(arrays["K"], np.float32),
            "name": entry["key"],
            "key": entry["key"],
        }
