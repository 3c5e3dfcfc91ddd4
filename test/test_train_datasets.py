"""The training datasets on the real KITTI, NYU and bag data: values, K, splits, bad samples."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from depth_completion_ros.bag_io import (
    BagError,
    BagReader,
    BagWriter,
    connection_definitions,
    to_ros,
)
from depth_completion_ros.calibration import CalibrationError, parse_kitti_calib_file
from depth_completion_ros.depth_io import read_kitti_depth, read_rgb, write_kitti_depth, write_rgb
from depth_completion_ros.frame import pipeline_from_parameters
from depth_completion_ros.kitti import read_velodyne_bin
from depth_completion_ros.messages import stamp_to_nanoseconds
from depth_completion_ros.parameters import defaults as node_defaults
from depth_completion_ros.tools import kitti_to_bag
from training import cache
from training.datasets import build_dataset
from training.datasets.bag import cdr_header
from training.sample import SkipCounter, collate, is_skipped

DRIVE = "2011_09_26_drive_0001_sync"
FRAME = "0000000005"
KEY = f"raw/2011_09_26/{DRIVE}/image_02/data/{FRAME}"
FULL = {"crop": [], "augment": False}


def _dc(root: Path, release: str, kind: str, camera: int = 2) -> Path:
    return (
        root / release / "train" / DRIVE / "proj_depth" / kind / f"image_0{camera}" / f"{FRAME}.png"
    )


def _png(path: Path) -> np.ndarray:
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)


def _copy_layout(source: Path, target: Path) -> Path:
    """The real frame's KITTI layout copied into ``target`` (to damage files safely)."""
    shutil.copytree(source, target, copy_function=shutil.copyfile)
    for path in target.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    return target


# --- KITTI ---------------------------------------------------------------------------------


@pytest.mark.parametrize("camera", [2, 3])
def test_kitti_full_frame_values(kitti_dc_frame: Path, camera: int) -> None:
    dataset = build_dataset(f"kitti:{kitti_dc_frame}", "train", {**FULL, "cameras": [camera]})
    assert len(dataset) == 1
    sample = dataset[0]
    assert sample["name"] == f"{DRIVE}/image_0{camera}/{FRAME}"
    image = kitti_dc_frame / "raw" / "2011_09_26" / DRIVE / f"image_0{camera}" / "data"
    np.testing.assert_array_equal(sample["rgb"], read_rgb(image / f"{FRAME}.png"))
    # sparse and gt are KITTI's PNGs / 256, exactly
    sparse_png = _png(_dc(kitti_dc_frame, "data_depth_velodyne", "velodyne_raw", camera))
    gt_png = _png(_dc(kitti_dc_frame, "data_depth_annotated", "groundtruth", camera))
    np.testing.assert_array_equal(sample["sparse"], sparse_png.astype(np.float32) / 256)
    np.testing.assert_array_equal(sample["gt"], gt_png.astype(np.float32) / 256)
    calib = parse_kitti_calib_file(kitti_dc_frame / "raw" / "2011_09_26" / "calib_cam_to_cam.txt")
    P = calib[f"P_rect_0{camera}"].reshape(3, 4)
    np.testing.assert_array_equal(sample["K"], P[:, :3].astype(np.float32))
    assert sample["K"].dtype == np.float32 and sample["rgb"].shape == (375, 1242, 3)


def test_kitti_benchmark_crop_moves_k(kitti_dc_frame: Path) -> None:
    full = build_dataset(f"kitti:{kitti_dc_frame}", "train", FULL)[0]
    # the val split's folder does not exist in the extract: train with augmentation off is the
    # deterministic path every split takes (bottom 352 rows, 1216 columns centred)
    dataset = build_dataset(f"kitti:{kitti_dc_frame}", "train", {"augment": False})
    sample = dataset[0]
    assert sample["rgb"].shape == (352, 1216, 3)
    for key in ("rgb", "sparse", "gt"):
        np.testing.assert_array_equal(sample[key], full[key][23:, 13:1229])
    # whole-pixel shifts of float32 values near 600: exact (measured difference 0.0)
    np.testing.assert_array_equal(sample["K"][:2, 2], full["K"][:2, 2] - np.float32([13, 23]))
    assert "crop=352x1216(bottom_center)" in dataset.describe()


def test_kitti_random_crop_on_train(kitti_dc_frame: Path) -> None:
    options = {"crop": [240, 1216], "crop_mode": "random", "augment": False, "cameras": [2]}
    dataset = build_dataset(f"kitti:{kitti_dc_frame}", "train", options)
    full = build_dataset(f"kitti:{kitti_dc_frame}", "train", {**FULL, "cameras": [2]})[0]
    tops = set()
    for _ in range(6):
        sample = dataset[0]
        assert sample["gt"].shape == (240, 1216)
        top = int(round(full["K"][1, 2] - sample["K"][1, 2]))
        left = int(round(full["K"][0, 2] - sample["K"][0, 2]))
        assert 23 <= top <= 135 and 0 <= left <= 26
        np.testing.assert_array_equal(sample["gt"], full["gt"][top : top + 240, left : left + 1216])
        tops.add(top)
    assert len(tops) > 1


@pytest.mark.parametrize("camera", [2, 3])
def test_kitti_raw_scan_is_the_node_projection(
    kitti_dc_frame: Path, kitti_scan: np.ndarray, kitti_calib_dir: Path, camera: int
) -> None:
    from depth_completion_ros.calibration import load_kitti_calibration

    options = {**FULL, "cameras": [camera], "input": "raw_scan"}
    sample = build_dataset(f"kitti:{kitti_dc_frame}", "train", options)[0]
    calibration = load_kitti_calibration(kitti_calib_dir, camera)
    pipeline = pipeline_from_parameters(node_defaults())
    expected = pipeline.sparse_depth(kitti_scan, calibration.camera, calibration.T_cam_lidar)
    np.testing.assert_array_equal(sample["sparse"], expected)
    # and it agrees with KITTI's own map (shared/data/README.md: 73 % of its pixels have a
    # projected point within 1 px and 0.10 m)
    kitti_map = read_kitti_depth(_dc(kitti_dc_frame, "data_depth_velodyne", "velodyne_raw", camera))
    padded = np.pad(sample["sparse"], 1)
    close = np.zeros(kitti_map.shape, bool)
    for dy in range(3):
        for dx in range(3):
            near = padded[dy : dy + kitti_map.shape[0], dx : dx + kitti_map.shape[1]]
            close |= (near > 0) & (np.abs(near - kitti_map) < 0.1)
    share = (close & (kitti_map > 0)).sum() / (kitti_map > 0).sum()
    assert share > 0.65


def test_kitti_denoise_removes_points_seen_through_gaps(kitti_dc_frame: Path) -> None:
    """On the real frame the node's occlusion filter drops ~1.4 % of KITTI's velodyne_raw points
    and the kept points agree better with the ground truth (RMSE 0.85 -> 0.53 m)."""
    options = {**FULL, "cameras": [2]}
    raw = build_dataset(f"kitti:{kitti_dc_frame}", "train", options)[0]
    dataset = build_dataset(f"kitti:{kitti_dc_frame}", "train", {**options, "denoise": True})
    clean = dataset[0]
    assert "denoise=on(window=12, relative=0.1, absolute=0.3)" in dataset.describe()
    kept, before = clean["sparse"] > 0, raw["sparse"] > 0
    assert not np.any(kept & ~before)  # only removes
    np.testing.assert_array_equal(clean["sparse"][kept], raw["sparse"][kept])
    removed = 1 - kept.sum() / before.sum()
    assert 0.005 < removed < 0.05

    def rmse(sparse: np.ndarray) -> float:
        both = (sparse > 0) & (raw["gt"] > 0)
        return float(np.sqrt(np.mean((sparse[both] - raw["gt"][both]) ** 2)))

    assert rmse(clean["sparse"]) < 0.75 * rmse(raw["sparse"])


def _selection_layout(root: Path, full: dict, with_gt: bool) -> Path:
    """A depth_selection split made from the real frame: crops, written as KITTI writes them."""
    split = "val_selection_cropped" if with_gt else "test_depth_completion_anonymous"
    folder = root / "depth_selection" / split
    stem = f"{DRIVE}_image_{FRAME}_image_02" if with_gt else "0000000000"
    write_rgb(folder / "image" / f"{stem}.png", full["rgb"][23:, 13:1229])
    sparse_name = stem.replace("_sync_image_", "_sync_velodyne_raw_")
    write_kitti_depth(folder / "velodyne_raw" / f"{sparse_name}.png", full["sparse"][23:, 13:1229])
    if with_gt:
        gt_name = stem.replace("_sync_image_", "_sync_groundtruth_depth_")
        write_kitti_depth(folder / "groundtruth_depth" / f"{gt_name}.png", full["gt"][23:, 13:1229])
    K = full["K"].astype(np.float64).copy()
    K[0, 2] -= 13
    K[1, 2] -= 23
    (folder / "intrinsics").mkdir(parents=True)
    (folder / "intrinsics" / f"{stem}.txt").write_text(" ".join(f"{v:e}" for v in K.ravel()))
    return folder


def test_kitti_selection_splits(kitti_dc_frame: Path, tmp_path: Path) -> None:
    full = build_dataset(f"kitti:{kitti_dc_frame}", "train", {**FULL, "cameras": [2]})[0]
    cropped = build_dataset(f"kitti:{kitti_dc_frame}", "train", {"augment": False})[0]
    _selection_layout(tmp_path, full, with_gt=True)
    _selection_layout(tmp_path, full, with_gt=False)
    val = build_dataset(f"kitti:{tmp_path}", "val_selection_cropped", {})
    test = build_dataset(f"kitti:{tmp_path}", "test", {})
    sample, blind = val[0], test[0]
    for key in ("rgb", "sparse", "gt", "K"):
        np.testing.assert_allclose(sample[key], cropped[key], atol=1e-4)
    assert "gt" not in blind
    np.testing.assert_array_equal(blind["sparse"], cropped["sparse"])
    with pytest.raises(ValueError, match="raw_scan"):
        build_dataset(f"kitti:{tmp_path}", "test", {"input": "raw_scan"})
    with pytest.raises(FileNotFoundError, match="data_depth_velodyne"):
        build_dataset(f"kitti:{tmp_path}", "val", {})


def test_kitti_teacher_and_segments(kitti_dc_frame: Path, tmp_path: Path) -> None:
    teachers, segments = tmp_path / "teacher", tmp_path / "segments"
    full = build_dataset(f"kitti:{kitti_dc_frame}", "train", {**FULL, "cameras": [2]})[0]
    disparity = np.where(full["gt"] > 0, 1 / np.maximum(full["gt"], 1e-3), 0.5)
    cache.write_teacher_map(cache.teacher_path(teachers, Path(KEY)), disparity)
    cache.write_meta(teachers, {"kind": "disparity", "model": "test"})
    labels = (np.arange(full["gt"].size).reshape(full["gt"].shape) // 5000 % 9) - 1
    cache.write_segments(cache.segments_path(segments, Path(KEY)), labels)
    options = {"augment": False, "teacher_root": str(teachers), "segments_root": str(segments)}
    dataset = build_dataset(f"kitti:{kitti_dc_frame}", "train", options)
    assert dataset.cache_key(0) == KEY
    sample = dataset[0]
    assert sample["teacher_kind"] == "disparity"
    np.testing.assert_array_equal(
        sample["teacher"], disparity.astype(np.float16).astype(np.float32)[23:, 13:1229]
    )
    np.testing.assert_array_equal(sample["segments"], labels[23:, 13:1229])
    # camera 3 has no teacher map: skipped with one clear cause
    missing = dataset[1]
    assert is_skipped(missing)
    cause, message = missing["skipped"]
    assert cause == "missing_teacher" and "image_03" in message and "cache_teacher" in message
    # a teacher map of another size
    cache.write_teacher_map(cache.teacher_path(teachers, Path(KEY)), disparity[:-1])
    cause, message = dataset[0]["skipped"]
    assert cause == "size" and "1242x374" in message and "1242x375" in message
    # segments of another size
    cache.write_teacher_map(cache.teacher_path(teachers, Path(KEY)), disparity)
    cache.write_segments(cache.segments_path(segments, Path(KEY)), labels[:, :-2])
    cause, message = dataset[0]["skipped"]
    assert cause == "size" and "'segments'" in message


def test_kitti_bad_samples_skipped_and_counted(kitti_dc_frame: Path, tmp_path: Path) -> None:
    root = _copy_layout(kitti_dc_frame, tmp_path / "kitti")
    dataset = build_dataset(f"kitti:{root}", "train", {"augment": False})
    good = dataset[0]
    assert not is_skipped(good)
    # camera 2: unreadable image; camera 3: a sparse map without a single point
    image = root / "raw" / "2011_09_26" / DRIVE / "image_02" / "data" / f"{FRAME}.png"
    image.write_bytes(image.read_bytes()[:100])
    write_kitti_depth(_dc(root, "data_depth_velodyne", "velodyne_raw", 3), np.zeros((375, 1242)))
    unreadable, empty = dataset[0], dataset[1]
    assert unreadable["skipped"][0] == "unreadable" and "image_02" in unreadable["skipped"][1]
    assert empty["skipped"][0] == "no_sparse"
    assert "no valid sparse" in empty["skipped"][1]
    # a missing ground-truth file
    _dc(root, "data_depth_annotated", "groundtruth", 3).unlink()
    assert dataset[1]["skipped"][0] == "missing_gt"
    # the batch keeps the good sample; the counter counts each cause
    batch = collate([good, unreadable, empty, dataset[1]])
    assert batch["size"] == 1 and batch["rgb"].shape == (1, 3, 352, 1216)
    counter = SkipCounter()
    counter.add(batch["skipped"])
    assert counter.summary() == {"unreadable": 1, "no_sparse": 1, "missing_gt": 1}


def test_bad_specs_and_options(kitti_dc_frame: Path) -> None:
    with pytest.raises(ValueError, match="KIND:PATH"):
        build_dataset("kitty:/x", "train", {})
    with pytest.raises(ValueError, match="unknown dataset option.*'crop_size'"):
        build_dataset(f"kitti:{kitti_dc_frame}", "train", {"crop_size": [1, 2]})
    with pytest.raises(ValueError, match="'input'"):
        build_dataset(f"kitti:{kitti_dc_frame}", "train", {"input": "lidar"})
    with pytest.raises(ValueError, match="unknown KITTI split"):
        build_dataset(f"kitti:{kitti_dc_frame}", "training", {})
    with pytest.raises(FileNotFoundError, match="meta.json"):
        build_dataset(f"kitti:{kitti_dc_frame}", "train", {"teacher_root": str(kitti_dc_frame)})


# --- NYU -----------------------------------------------------------------------------------


def test_nyu_folders(nyu_frames: Path) -> None:
    dataset = build_dataset(f"nyu:{nyu_frames}", "val", {"nyu_samples": 200})
    names = [dataset[i]["name"] for i in range(len(dataset))]
    assert names == ["a/rgb/rgb_00000", "a/rgb/rgb_00050", "a/rgb/rgb_00100", "b/rgb"]
    sample = dataset[0]
    meta = json.loads((nyu_frames / "a" / "intrinsics.json").read_text())
    depth = _png(nyu_frames / "a" / "depth" / "sync_depth_00000.png").astype(np.float32) / 1000
    # half resolution (nearest: the even pixels), then the 228 x 304 centre crop (6, 8)
    np.testing.assert_array_equal(sample["gt"], depth[::2, ::2][6:234, 8:312])
    assert sample["rgb"].shape == (228, 304, 3)
    fx, cx = meta["fx"] / 2, (meta["cx"] + 0.5) / 2 - 0.5 - 8
    fy, cy = meta["fy"] / 2, (meta["cy"] + 0.5) / 2 - 0.5 - 6
    np.testing.assert_allclose(
        sample["K"], [[fx, 0, cx], [0, fy, cy], [0, 0, 1]], rtol=1e-6, atol=1e-4
    )
    # 200 sparse samples, each the exact ground truth at its pixel, the same on every read
    picked = sample["sparse"] > 0
    assert picked.sum() == 200
    np.testing.assert_array_equal(sample["sparse"][picked], sample["gt"][picked])
    np.testing.assert_array_equal(dataset[0]["sparse"], sample["sparse"])
    other = build_dataset(f"nyu:{nyu_frames}", "val", {"nyu_samples": 200, "seed": 1})[0]
    assert not np.array_equal(other["sparse"], sample["sparse"])
    # train: fresh samples each time
    train = build_dataset(f"nyu:{nyu_frames}", "train", {"nyu_samples": 500})
    assert not np.array_equal(train[3]["sparse"] > 0, train[3]["sparse"] > 0)
    assert (train[3]["sparse"] > 0).sum() == 500


def test_nyu_h5_reader(nyu_frames: Path, tmp_path: Path) -> None:
    """A Sparse-to-Dense file written from frame b reads back as the folder reader reads b."""
    import h5py

    rgb = read_rgb(nyu_frames / "b" / "rgb.png")
    depth = _png(nyu_frames / "b" / "depth.png").astype(np.float32) / 1000
    path = tmp_path / "val" / "office_0001" / "00001.h5"
    path.parent.mkdir(parents=True)
    with h5py.File(path, "w") as f:
        f["rgb"] = rgb.transpose(2, 0, 1)
        f["depth"] = depth
    h5_set = build_dataset(f"nyu:{tmp_path}", "val", {})
    folder_set = build_dataset(f"nyu:{nyu_frames / 'b'}", "val", {})
    assert "source=h5" in h5_set.describe() and len(h5_set) == 1
    from_h5, from_folder = h5_set[0], folder_set[0]
    assert from_h5["name"] == "val/office_0001/00001"  # relative to ROOT: the cache key
    for key in ("rgb", "gt"):
        np.testing.assert_array_equal(from_h5[key], from_folder[key])
    # no intrinsics in an .h5: NYU's default camera, scaled and cropped
    np.testing.assert_allclose(from_h5["K"][0, 0], 518.857901 / 2, rtol=1e-6)
    np.testing.assert_allclose(from_h5["K"][1, 2], (253.736166 + 0.5) / 2 - 0.5 - 6, rtol=1e-6)
    np.testing.assert_allclose(from_h5["K"], from_folder["K"], atol=1e-3)  # b's K is NYU's
    # a damaged .h5 is skipped, not raised
    path.write_bytes(path.read_bytes()[:500])
    assert h5_set[0]["skipped"][0] == "unreadable"


# --- stage-1 samples -----------------------------------------------------------------------


def test_generated_samples(kitti_frame, tmp_path: Path) -> None:
    rgb, sparse, K = kitti_frame
    target = np.where(sparse > 0, sparse, 20.0).astype(np.float32)
    manifest = cache.Manifest(tmp_path)
    np.savez(tmp_path / "s0.npz", rgb=rgb, sparse=sparse, target=target, K=K)
    manifest.add("img/s0", file="s0.npz")
    (tmp_path / "s1.npz").write_bytes(b"not a zip")
    manifest.add("img/s1", file="s1.npz")
    np.savez(tmp_path / "s2.npz", rgb=rgb, sparse=sparse, target=target, K=np.array([object()]))
    manifest.add("img/s2", file="s2.npz")
    np.savez(tmp_path / "s3.npz", rgb=rgb, sparse=np.zeros_like(sparse), target=target, K=K)
    manifest.add("img/s3", file="s3.npz")
    dataset = build_dataset(f"generated:{tmp_path}", "train", {"augment": False})
    assert len(dataset) == 4
    sample = dataset[0]
    np.testing.assert_array_equal(sample["gt"], target)
    np.testing.assert_array_equal(sample["sparse"], sparse)
    np.testing.assert_array_equal(sample["K"], K.astype(np.float32))
    assert sample["name"] == "img/s0"
    assert dataset[1]["skipped"][0] == "unreadable"
    assert dataset[2]["skipped"][0] == "unreadable"  # object arrays are never unpickled
    assert dataset[3]["skipped"][0] == "no_sparse"
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="generate_stage1"):
        build_dataset(f"generated:{tmp_path / 'empty'}", "train", {})


# --- ROS 2 bags ----------------------------------------------------------------------------


def _copy_bag(source: Path, target: Path, drop: str) -> Path:
    """``source`` without the topic ``drop``, written with the project's bag writer."""
    with BagReader(source) as reader, BagWriter(target) as writer:
        for topic, (msgtype, msgdef, digest) in connection_definitions(reader).items():
            if topic != drop:
                writer.add_topic(topic, msgtype, None, msgdef, digest)
        for message in reader.messages([t for t in reader.topics if t != drop]):
            writer.write(message.topic, message.timestamp, message.data)
    return target


@pytest.fixture(scope="module")
def kitti_bag(kitti_raw_seq: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    bag = tmp_path_factory.mktemp("bag") / "seq"
    drive = kitti_raw_seq / "2011_09_26_drive_0000_sync"
    assert kitti_to_bag.main([str(drive), str(bag), "--cameras", "2"]) == 0
    return bag


def test_bag_pairs_and_holdout(kitti_bag: Path, kitti_raw_seq: Path, tmp_path: Path) -> None:
    from depth_completion_ros.calibration import load_kitti_calibration

    index = tmp_path / "index.json"
    dataset = build_dataset(f"bag:{kitti_bag}", "train", {"augment": False, "index_cache": index})
    assert len(dataset) == 20 and index.is_file()
    assert "'paired': 20" in dataset.describe()
    calibration = load_kitti_calibration(kitti_raw_seq, 2)
    pipeline = pipeline_from_parameters(node_defaults())
    drive = kitti_raw_seq / "2011_09_26_drive_0000_sync"
    for frame in (0, 13):
        sample = dataset[frame]
        scan = read_velodyne_bin(drive / "velodyne_points" / "data" / f"{frame:010d}.bin")
        np.testing.assert_array_equal(
            sample["rgb"], read_rgb(drive / "image_02" / "data" / f"{frame:010d}.png")
        )
        np.testing.assert_allclose(sample["K"], calibration.camera.K, rtol=1e-6)
        expected = pipeline.sparse_depth(scan, calibration.camera, calibration.T_cam_lidar)
        sparse, holdout = sample["sparse"], sample["holdout"]
        assert not np.any((sparse > 0) & (holdout > 0))  # disjoint
        # /tf_static carries the calibration as a quaternion: a point or two may move a pixel
        got = sparse + holdout
        assert np.count_nonzero((got > 0) != (expected > 0)) <= 6
        both = (got > 0) & (expected > 0)
        np.testing.assert_allclose(got[both], expected[both], atol=1e-4)
        share = (holdout > 0).sum() / (expected > 0).sum()
        assert abs(share - 0.1) < 0.002
        # the same points are held out on every read and in every split
        np.testing.assert_array_equal(dataset[frame]["holdout"], holdout)
    val = build_dataset(f"bag:{kitti_bag}", "val", {"index_cache": index})
    np.testing.assert_array_equal(val[13]["holdout"], sample["holdout"])
    # the index cache is what a second construction reads
    saved = json.loads(index.read_text())
    saved["pairs"] = saved["pairs"][:5]
    index.write_text(json.dumps(saved))
    assert len(build_dataset(f"bag:{kitti_bag}", "train", {"index_cache": index})) == 5
    quarter = build_dataset(f"bag:{kitti_bag}", "val", {"holdout_fraction": 0.25})[0]
    assert abs((quarter["holdout"] > 0).sum() / (quarter["sparse"] > 0).sum() - 1 / 3) < 0.01
    # with the KITTI calibration files instead of /tf_static: exactly the node's projection
    exact = build_dataset(
        f"bag:{kitti_bag}", "val", {"calibration_dir": str(kitti_raw_seq), "max_samples": 1}
    )
    sample = exact[0]
    scan = read_velodyne_bin(drive / "velodyne_points" / "data" / f"{exact.items[0]:010d}.bin")
    expected = pipeline.sparse_depth(scan, calibration.camera, calibration.T_cam_lidar)
    np.testing.assert_array_equal(sample["sparse"] + sample["holdout"], expected)
    # a bag without /tf_static and no calibration option: said at construction, with the fix
    bare = _copy_bag(kitti_bag, tmp_path / "bare", drop="/tf_static")
    with pytest.raises(CalibrationError, match="calibration_dir or extrinsics"):
        build_dataset(f"bag:{bare}", "train", {})


def test_bag_header_stamps_and_missing_topic(kitti_bag: Path) -> None:
    with BagReader(kitti_bag) as reader:
        for message in reader.messages(["/kitti/velo/pointcloud"]):
            msg = to_ros(message.data, message.msgtype)
            stamp, frame = cdr_header(message.data)
            assert (stamp, frame) == (stamp_to_nanoseconds(msg.header.stamp), msg.header.frame_id)
    options = {"topics": {"points": "/velodyne_points"}}
    with pytest.raises(BagError, match="'/velodyne_points'.*it has: .*/kitti/velo/pointcloud"):
        build_dataset(f"bag:{kitti_bag}", "train", options)


def test_bag_in_dataloader_workers(kitti_bag: Path) -> None:
    """Each worker process opens its own bag reader; batches come through training's collate."""
    from torch.utils.data import DataLoader

    dataset = build_dataset(f"bag:{kitti_bag}", "train", {"max_samples": 6, "crop": [352, 1216]})
    loader = DataLoader(dataset, batch_size=3, num_workers=2, collate_fn=collate)
    batches = list(loader)
    assert [b["size"] for b in batches] == [3, 3]
    assert batches[0]["holdout"].shape == (3, 1, 352, 1216)
    assert batches[0]["K"].shape == (3, 3, 3)


def test_bag_damaged_after_indexing(kitti_bag: Path, tmp_path: Path) -> None:
    bag = tmp_path / "seq"
    shutil.copytree(kitti_bag, bag)
    dataset = build_dataset(f"bag:{bag}", "train", {"augment": False})
    assert not is_skipped(dataset[0])
    dataset._reader = None  # as a fresh DataLoader worker would: it opens the bag again
    storage = bag / "seq.mcap"
    storage.write_bytes(storage.read_bytes()[: storage.stat().st_size // 2])
    cause, message = dataset[19]["skipped"]
    assert cause == "unreadable" and str(bag) in message
