"""The KITTI raw reader: scan bytes, timestamps to the nanosecond digit, frame and stamp lookup.

Values are chosen exact in binary (or compared with the float64 nearest to the true value), so an
off-by-one in an index, a wrong dtype or a local-time parse fails with ==, not within a tolerance.
"""

from __future__ import annotations

import calendar
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from depth_completion_ros.kitti import (
    KITTI_RATE_HZ,
    KittiDrive,
    KittiError,
    parse_timestamps,
    read_velodyne_bin,
)


def test_velodyne_bin_is_little_endian_float32_quadruples(tmp_path: Path) -> None:
    points = np.array([[1.5, -2.25, 0.125, 0.5], [80.0, 0.0, -1.75, 1.0]], dtype="<f4")
    path = tmp_path / "scan.bin"
    path.write_bytes(points.tobytes())  # KITTI's layout: x y z r, float32 little endian
    scan = read_velodyne_bin(path)
    assert scan.dtype == np.float32 and scan.shape == (2, 4)
    np.testing.assert_array_equal(scan, points)
    for size in (28, 24, 8):  # a truncated last point, whatever its length
        path.write_bytes(points.tobytes()[:size])
        with pytest.raises(KittiError, match=f"{size} bytes is not a multiple of 16"):
            read_velodyne_bin(path)


def test_real_scan_reads_as_kitti_documents(kitti_scan_path: Path) -> None:
    scan = read_velodyne_bin(kitti_scan_path)
    assert scan.shape == (kitti_scan_path.stat().st_size // 16, 4)
    # reflectance lies in [0, 1] and the HDL-64's ranges within its 120 m: a wrong dtype or
    # column count would scramble both
    assert scan[:, 3].min() >= 0.0 and scan[:, 3].max() <= 1.0
    assert np.linalg.norm(scan[:, :3], axis=1).max() < 130.0


def test_timestamps_are_utc_to_the_nanosecond_digit(tmp_path: Path, monkeypatch) -> None:
    """The fraction keeps all nine digits, and the clock is UTC whatever the local zone is."""
    monkeypatch.setenv("TZ", "America/New_York")  # a local-time parse would be 4 h off
    time.tzset()
    try:
        path = tmp_path / "timestamps.txt"
        path.write_text(
            "2011-09-26 13:02:25.964389445\n\n2011-09-26 13:02:26.000000000\n2011-09-26 13:02:27\n"
        )
        stamps = parse_timestamps(path)
    finally:
        monkeypatch.undo()
        time.tzset()
    second = calendar.timegm((2011, 9, 26, 13, 2, 25))
    assert second == 1317042145
    np.testing.assert_array_equal(
        stamps, [second + 0.964389445, second + 1.0, second + 2.0]
    )  # the blank line is skipped
    path.write_text("2011-09-26 13:02:25.5\n2011-09-26T13:02:26\n")
    with pytest.raises(KittiError, match=r"timestamps.txt:2: bad timestamp"):
        parse_timestamps(path)


def _drive(tmp_path: Path, kitti_calib_dir: Path, scans: list[int], images: list[int]) -> Path:
    """A drive folder with the real calibration and empty placeholder frames."""
    date = tmp_path / "2011_09_26"
    drive = date / "2011_09_26_drive_0001_sync"
    for name in ("calib_cam_to_cam.txt", "calib_velo_to_cam.txt"):
        date.mkdir(parents=True, exist_ok=True)
        shutil.copy(kitti_calib_dir / name, date / name)
    (drive / "velodyne_points" / "data").mkdir(parents=True)
    (drive / "image_02" / "data").mkdir(parents=True)
    for i in scans:
        (drive / "velodyne_points" / "data" / f"{i:010d}.bin").write_bytes(b"")
    for i in images:
        (drive / "image_02" / "data" / f"{i:010d}.png").write_bytes(b"")
    return drive


def test_frames_are_those_with_scan_and_image(tmp_path: Path, kitti_calib_dir: Path) -> None:
    drive = KittiDrive(_drive(tmp_path, kitti_calib_dir, [0, 1, 2, 3], [1, 2, 3, 4]))
    assert drive.frame_ids == [1, 2, 3] and len(drive) == 3
    # no timestamps.txt: 10 Hz from 0, by frame number
    assert drive.stamps_synthesised
    assert drive.stamps == {i: i / KITTI_RATE_HZ for i in (1, 2, 3)}


def test_timestamps_file_must_reach_the_last_frame(tmp_path: Path, kitti_calib_dir: Path) -> None:
    """Frame 3 needs line index 3, i.e. 4 lines; 3 lines fall back to synthesised stamps."""
    path = _drive(tmp_path, kitti_calib_dir, [1, 2, 3], [1, 2, 3])
    lines = [f"2011-09-26 13:02:2{k}.500000000\n" for k in range(4)]
    (path / "image_02" / "timestamps.txt").write_text("".join(lines))
    drive = KittiDrive(path)
    assert not drive.stamps_synthesised
    second = calendar.timegm((2011, 9, 26, 13, 2, 20))
    assert drive.stamps == {i: second + i + 0.5 for i in (1, 2, 3)}  # line i is frame i
    (path / "image_02" / "timestamps.txt").write_text("".join(lines[:3]))
    assert KittiDrive(path).stamps_synthesised


def test_missing_folders_and_frames_are_named(tmp_path: Path, kitti_calib_dir: Path) -> None:
    with pytest.raises(KittiError, match="drive folder not found"):
        KittiDrive(tmp_path / "nope")
    path = _drive(tmp_path, kitti_calib_dir, [0], [1])
    with pytest.raises(KittiError, match="no frame has both"):
        KittiDrive(path)
    shutil.rmtree(path / "image_02")
    with pytest.raises(KittiError, match="image_02/data"):
        KittiDrive(path)


def test_real_frame_finds_its_ground_truth(kitti_drive_dir: Path, kitti_groundtruth_path) -> None:
    """The depth-completion release beside the raw tree (``<root>/data_depth_annotated/train``)."""
    drive = KittiDrive(kitti_drive_dir)
    assert drive.frame_ids == [5]
    assert drive.ground_truth_path(5) == kitti_groundtruth_path
    frame = drive.frame(5)
    assert frame.index == 5 and frame.stamp == 0.5  # no timestamps.txt in the extract: 10 Hz
    assert frame.rgb.shape == (375, 1242, 3) and frame.points.shape[1] == 4
    assert frame.ground_truth.shape == (375, 1242)
    # the semi-dense ground truth covers a fraction of the pixels, all within the 1/256 m grid
    valid = frame.ground_truth > 0
    assert 0.05 < valid.mean() < 0.5
    np.testing.assert_array_equal(frame.ground_truth * 256, np.round(frame.ground_truth * 256))
    assert drive.ground_truth_path(6) is None
