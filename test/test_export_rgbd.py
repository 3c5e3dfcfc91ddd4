"""export_rgbd writes TUM and Droid-SLAM layouts that read back as the bag's depth."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from depth_completion_ros.bag_io import BagReader, to_ros
from depth_completion_ros.messages import image_to_depth
from depth_completion_ros.tools import export_rgbd, kitti_to_bag, process_bag


def test_tum_and_droid_layouts(tmp_path: Path, kitti_drive_dir: Path, kitti_calib_dir: Path):
    raw, bag = tmp_path / "raw", tmp_path / "processed"
    assert kitti_to_bag.main([str(kitti_drive_dir), str(raw), "--cameras", "2"]) == 0
    assert (
        process_bag.main(
            [str(raw), str(bag), "--calibration-dir", str(kitti_calib_dir), "--no-progress"]
        )
        == 0
    )
    with BagReader(bag) as reader:
        message = next(reader.messages(["/depth/image"]))
    dense = image_to_depth(to_ros(message.data, message.msgtype))
    K = np.asarray(
        to_ros(
            next(BagReader(bag).messages(["/depth/camera_info"])).data, "sensor_msgs/msg/CameraInfo"
        ).k
    ).reshape(3, 3)

    assert export_rgbd.main([str(bag), str(tmp_path / "tum"), "--depth-scale", "1000"]) == 0
    tum = tmp_path / "tum"
    (line,) = [x for x in (tum / "associations.txt").read_text().splitlines() if x]
    t_rgb, rgb_name, t_depth, depth_name = line.split()
    assert t_rgb == t_depth == "1316995200.500000"
    depth = cv2.imread(str(tum / depth_name), cv2.IMREAD_ANYDEPTH).astype(np.float64) / 1000.0
    valid = np.isfinite(dense) & (dense < 65.5)
    np.testing.assert_allclose(depth[valid], dense[valid], atol=0.5 / 1000 + 1e-6)
    assert np.all(depth[~np.isfinite(dense) | (dense > 65.6)] == 0)  # beyond uint16: 0, not clamped
    assert cv2.imread(str(tum / rgb_name)).shape == (*dense.shape, 3)
    fx, fy, cx, cy = np.loadtxt(tum / "intrinsics.txt")
    np.testing.assert_allclose([fx, fy, cx, cy], [K[0, 0], K[1, 1], K[0, 2], K[1, 2]], rtol=1e-6)

    assert export_rgbd.main([str(bag), str(tmp_path / "droid"), "--layout", "droid"]) == 0
    droid = tmp_path / "droid"
    np.testing.assert_array_equal(
        np.load(droid / "depth" / "000000.npy"), np.nan_to_num(dense, nan=0.0)
    )
    assert (droid / "image" / "000000.png").is_file()
    assert np.loadtxt(droid / "calib.txt").shape == (4,)

    # a bag without depth: exit 1, topic named, nothing left behind
    assert export_rgbd.main([str(raw), str(tmp_path / "none")]) == 1
    assert not (tmp_path / "none").exists() and not list(tmp_path.glob(".none*"))
