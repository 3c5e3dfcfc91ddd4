"""KITTI depth completion in its official layout, read with the runtime's own readers.

Layout under ROOT (as KITTI distributes it)::

    data_depth_velodyne/{train,val}/<drive>/proj_depth/velodyne_raw/image_0{2,3}/<frame>.png
    data_depth_annotated/{train,val}/<drive>/proj_depth/groundtruth/image_0{2,3}/<frame>.png
    raw/<date>/<drive>/image_0{2,3}/data/<frame>.png        (raw_root, default ROOT/raw)
    raw/<date>/<drive>/velodyne_points/data/<frame>.bin     (input: raw_scan only)
    raw/<date>/calib_cam_to_cam.txt, calib_velo_to_cam.txt
    [depth_selection/]val_selection_cropped/{image,velodyne_raw,groundtruth_depth,intrinsics}/
    [depth_selection/]test_depth_completion_anonymous/{image,velodyne_raw,intrinsics}/

K is the camera's rectified P_rect[:, :3] (val_selection_cropped and test: their intrinsics/
files), moved with every crop. ``input: raw_scan`` projects the raw Velodyne scan with the node's
own pipeline (``DepthPipeline.sparse_depth``: nearest return wins, occlusion filter) instead of
reading KITTI's map; ``denoise: true`` runs the node's occlusion filter
(``projection.remove_occluded``) over KITTI's map, removing points seen through gaps at edges.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from depth_completion_ros.calibration import KittiCalibration, load_kitti_calibration
from depth_completion_ros.depth_io import read_kitti_depth, read_rgb
from depth_completion_ros.kitti import read_velodyne_bin
from depth_completion_ros.projection import ProjectionConfig, remove_occluded
from training.datasets.base import CachedMapsDataset, DatasetOptions, subsample
from training.sample import BadSample, Sample

KITTI_CROP = (352, 1216)  # the benchmark's size: the bottom 352 rows, 1216 columns
KITTI_LIDAR_ROWS = 352  # rows the Velodyne covers; random crops stay inside them
SELECTION_DIRS = {
    "val_selection_cropped": "val_selection_cropped",
    "test": "test_depth_completion_anonymous",
}


def _selection_root(root: Path, split: str) -> Path:
    name = SELECTION_DIRS[split]
    for candidate in (root / name, root / "depth_selection" / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(
        f"KITTI split '{split}' not found: expected {root / name} or "
        f"{root / 'depth_selection' / name} (unpack data_depth_selection.zip under {root})"
    )


def read_intrinsics_txt(path: Path) -> np.ndarray:
    """A depth_selection intrinsics file (9 numbers, row-major K) -> 3 x 3 float32."""
    values = np.loadtxt(path, dtype=np.float64).ravel()
    if values.size != 9:
        raise ValueError(f"{path}: expected 9 numbers (a 3x3 K), got {values.size}")
    return values.reshape(3, 3).astype(np.float32)


class KittiDepthCompletion(CachedMapsDataset):
    """KITTI DC frames (train/val: both cameras; val_selection_cropped; test without gt)."""

    kind = "kitti"
    default_crop = KITTI_CROP

    def __init__(self, root: str | Path, split: str, options: DatasetOptions) -> None:
        super().__init__(root, split, options)
        if not self.root.is_dir():
            raise FileNotFoundError(f"KITTI root {self.root} not found")
        self.raw_root = Path(options.raw_root) if options.raw_root else self.root / "raw"
        self._pipeline = None
        if split in ("train", "val"):
            self.items = self._index_drives(split)
        elif split in SELECTION_DIRS:
            if options.input == "raw_scan":
                raise ValueError(
                    f"input: raw_scan needs the raw scans, which KITTI's '{split}' split does not "
                    "name: use input: velodyne_raw for it"
                )
            self.items = self._index_selection(split)
        else:
            raise ValueError(
                f"unknown KITTI split {split!r}: choose train, val, val_selection_cropped or test"
            )
        self.items = subsample(self.items, options.max_samples, options.seed)

    # --- index ------------------------------------------------------------------------------

    def _index_drives(self, split: str) -> list[dict]:
        base = self.root / "data_depth_velodyne" / split
        if not base.is_dir():
            raise FileNotFoundError(
                f"KITTI split '{split}' not found: {base} is missing (expected "
                "data_depth_velodyne/{train,val}/<drive>/proj_depth/velodyne_raw/image_0X/)"
            )
        items = []
        for drive_dir in sorted(p for p in base.iterdir() if p.is_dir()):
            drive = drive_dir.name
            date = drive[:10]
            for camera in self.options.cameras:
                folder = drive_dir / "proj_depth" / "velodyne_raw" / f"image_{camera:02d}"
                for sparse in sorted(folder.glob("*.png")):
                    frame = sparse.stem
                    image_rel = Path("raw", date, drive, f"image_{camera:02d}", "data", frame)
                    gt = (
                        self.root
                        / "data_depth_annotated"
                        / split
                        / drive
                        / "proj_depth"
                        / "groundtruth"
                        / f"image_{camera:02d}"
                        / sparse.name
                    )
                    items.append(
                        {
                            "name": f"{drive}/image_{camera:02d}/{frame}",
                            "image": self.raw_root
                            / date
                            / drive
                            / f"image_{camera:02d}"
                            / "data"
                            / sparse.name,
                            "sparse": sparse,
                            "gt": gt,
                            "scan": self.raw_root
                            / date
                            / drive
                            / "velodyne_points"
                            / "data"
                            / f"{frame}.bin",
                            "calib": (str(self.raw_root / date), camera),
                            "key": str(image_rel),
                        }
                    )
        if not items:
            raise FileNotFoundError(
                f"no velodyne_raw PNG for cameras {list(self.options.cameras)} under {base}"
            )
        return items

    def _index_selection(self, split: str) -> list[dict]:
        folder = _selection_root(self.root, split)
        items = []
        for image in sorted((folder / "image").glob("*.png")):
            if split == "test":
                sparse_name = gt_name = image.name
            else:  # <drive>_image_<frame>_image_0X.png -> <drive>_velodyne_raw_<frame>_...
                sparse_name = image.name.replace("_sync_image_", "_sync_velodyne_raw_", 1)
                gt_name = image.name.replace("_sync_image_", "_sync_groundtruth_depth_", 1)
            items.append(
                {
                    "name": image.stem,
                    "image": image,
                    "sparse": folder / "velodyne_raw" / sparse_name,
                    "gt": None if split == "test" else folder / "groundtruth_depth" / gt_name,
                    "intrinsics": folder / "intrinsics" / f"{image.stem}.txt",
                    "key": str(image.relative_to(self.root).with_suffix("")),
                }
            )
        if not items:
            raise FileNotFoundError(f"no image PNG in {folder / 'image'}")
        return items

    # --- reading ----------------------------------------------------------------------------

    def name_of(self, index: int) -> str:
        return self.items[index]["name"]

    def image_path(self, index: int) -> Path:
        """The RGB file of an item (the teacher cache and pseudo-labels run over these)."""
        return Path(self.items[index]["image"])

    def cache_key(self, index: int) -> str:
        """The item's key in the teacher/segment caches: its image path relative to ROOT in the
        official layout (``raw/<date>/<drive>/image_0X/data/<frame>``), suffix dropped."""
        return self.items[index]["key"]

    def read(self, index: int) -> Sample:
        item = self.items[index]
        rgb = read_rgb(item["image"])
        if "intrinsics" in item:
            K = read_intrinsics_txt(item["intrinsics"])
            calibration = None
        else:
            calibration = _calibration(*item["calib"])
            K = calibration.camera.K.astype(np.float32)
        if self.options.input == "raw_scan":
            sparse = self._project_scan(item["scan"], calibration, rgb.shape)
        else:
            sparse = read_kitti_depth(item["sparse"])
            if self.options.denoise:
                sparse = remove_occluded(sparse, self.denoise_config)
        sample: Sample = {"rgb": rgb, "sparse": sparse, "K": K, "name": item["name"]}
        sample["key"] = item["key"]
        if item["gt"] is not None:
            if not Path(item["gt"]).is_file():
                raise BadSample("missing_gt", f"no ground truth {item['gt']}")
            sample["gt"] = read_kitti_depth(item["gt"])
        return sample

    @property
    def denoise_config(self) -> ProjectionConfig:
        opts = self.options
        return ProjectionConfig(
            occlusion_window=opts.denoise_window,
            occlusion_relative=opts.denoise_relative,
            occlusion_absolute=opts.denoise_absolute,
        )

    def _project_scan(
        self, scan: Path, calibration: KittiCalibration, shape: tuple[int, ...]
    ) -> np.ndarray:
        """The node's projection of the raw scan (same pipeline, same parameters)."""
        if self._pipeline is None:
            from training.datasets.node_params import node_pipeline

            self._pipeline = node_pipeline(self.options)
        camera = calibration.camera
        if (camera.height, camera.width) != tuple(shape[:2]):
            raise BadSample(
                "size",
                f"image is {shape[1]}x{shape[0]} but the calibration says "
                f"{camera.width}x{camera.height}",
            )
        points = read_velodyne_bin(scan)
        return self._pipeline.sparse_depth(points, camera, calibration.T_cam_lidar)

    def describe_extra(self) -> list[str]:
        extra = [f"input={self.options.input}", f"cameras={list(self.options.cameras)}"]
        if self.options.denoise:
            cfg = self.denoise_config
            extra.append(
                f"denoise=on(window={cfg.occlusion_window}, relative={cfg.occlusion_relative}, "
                f"absolute={cfg.occlusion_absolute})"
            )
        return extra


@lru_cache(maxsize=64)
def _calibration(calib_dir: str, camera: int) -> KittiCalibration:
    return load_kitti_calibration(calib_dir, camera)
