"""Output files: KITTI depth PNG round trip, PLY layout, atomic writes with normal permissions."""

from __future__ import annotations

import os
import stat

import cv2
import numpy as np
import pytest

from depth_completion_ros.depth_io import (
    read_kitti_depth,
    write_atomic,
    write_bytes_atomic,
    write_kitti_depth,
    write_ply,
)


def test_kitti_depth_round_trip_and_invalid_pixels(tmp_path) -> None:
    depth = np.array([[0.0, 1.0, np.nan], [12.34, 255.0, -3.0]], dtype=np.float32)
    path = write_kitti_depth(tmp_path / "d.png", depth)
    back = read_kitti_depth(path)
    # 1 and 255 m are whole steps of 1/256 m: exact; 12.34 m rounds to the nearest step
    # (3159.04 -> 3159), so it comes back within half a step
    assert back[0, 1] == 1.0 and back[1, 1] == 255.0
    assert back[1, 0] == 3159 / 256
    assert abs(back[1, 0] - 12.34) <= 0.5 / 256
    assert back[0, 0] == 0 and back[0, 2] == 0 and back[1, 2] == 0  # none / NaN / negative
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.png"]  # no temporary file left


def test_kitti_depth_png_stores_metres_times_256_exactly(tmp_path) -> None:
    """The stored uint16 values themselves (KITTI's devkit: depth = value / 256, 0 = none),
    at values exact in binary: the scale, the rounding to the nearest step and the range ends."""
    step = 1 / 256
    depth = np.array(
        [
            [2.5, step, 65535 * step, 256.0],  # 640; the smallest step; the largest; clipped
            [1.4 * step, 1.6 * step, 2.75 * step, 0.25 * step],  # to the nearest: 1, 2, 3, 0
        ],
        dtype=np.float64,
    )
    path = write_kitti_depth(tmp_path / "d.png", depth)
    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert raw.dtype == np.uint16 and raw.shape == (2, 4)
    # 2.5 * 256 = 640 exactly; beyond 65535 / 256 m the value saturates (not 0 = none)
    np.testing.assert_array_equal(raw, [[640, 1, 65535, 65535], [1, 2, 3, 0]])
    back = read_kitti_depth(path)
    assert back.dtype == np.float32
    np.testing.assert_array_equal(back, raw.astype(np.float64) / 256)  # exact in float32
    assert back[0, 0] == 2.5 and back[0, 2] == 255.99609375


def test_read_kitti_depth_rejects_8_bit_and_missing_files(tmp_path) -> None:
    assert cv2.imwrite(str(tmp_path / "eight.png"), np.full((2, 2), 7, np.uint8))
    with pytest.raises(ValueError, match="expected a uint16 KITTI depth PNG, got uint8"):
        read_kitti_depth(tmp_path / "eight.png")
    with pytest.raises(FileNotFoundError, match="missing.png"):
        read_kitti_depth(tmp_path / "missing.png")


def test_atomic_write_leaves_nothing_on_failure_and_uses_umask_mode(tmp_path) -> None:
    def fail(tmp):
        tmp.write_text("partial")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        write_atomic(tmp_path / "out.txt", fail)
    assert list(tmp_path.iterdir()) == []
    mask = os.umask(0o022)
    try:
        path = write_atomic(tmp_path / "ok.txt", lambda tmp: tmp.write_text("done"))
    finally:
        os.umask(mask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # not mkstemp's 0600
    assert path.read_text() == "done"


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_atomic_write_leaves_only_the_final_file(tmp_path, umask: int, mode: int) -> None:
    """After success the folder holds exactly the file (no ``.name.*`` temporary), with the mode
    ``open()`` would give (0666 & ~umask), also when it replaces an older file."""
    target = tmp_path / "sub" / "out.bin"  # the parent is created
    seen = []

    def write(tmp):
        seen.append(tmp)
        assert tmp.parent == target.parent and tmp.name.startswith(".out.")  # same filesystem
        assert not target.exists() or target.read_bytes() == b"old"  # old stays until replaced
        tmp.write_bytes(b"new")

    old = os.umask(umask)
    try:
        write_bytes_atomic(target, b"old")
        assert write_atomic(target, write) == target
    finally:
        os.umask(old)
    assert [p.name for p in target.parent.iterdir()] == ["out.bin"]
    assert not seen[0].exists()
    assert target.read_bytes() == b"new"
    assert stat.S_IMODE(target.stat().st_mode) == mode


def test_ply_header_and_records(tmp_path) -> None:
    xyz = np.array([[0, 1, 2], [3, 4, 5]], np.float32)
    rgb = np.array([[255, 0, 0], [0, 255, 0]], np.uint8)
    data = write_ply(tmp_path / "c.ply", xyz, rgb).read_bytes()
    header, body = data.split(b"end_header\n")
    assert b"element vertex 2" in header and b"property uchar red" in header
    record = np.frombuffer(
        body,
        dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("r", "u1"), ("g", "u1"), ("b", "u1")],
    )
    assert record["z"].tolist() == [2, 5] and record["r"].tolist() == [255, 0]
