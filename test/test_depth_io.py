"""Output files: KITTI depth PNG round trip, PLY layout, atomic writes with normal permissions."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest

from depth_completion_ros.depth_io import (
    read_kitti_depth,
    write_atomic,
    write_kitti_depth,
    write_ply,
)


def test_kitti_depth_round_trip_and_invalid_pixels(tmp_path) -> None:
    depth = np.array([[0.0, 1.0, np.nan], [12.34, 255.0, -3.0]], dtype=np.float32)
    path = write_kitti_depth(tmp_path / "d.png", depth)
    back = read_kitti_depth(path)
    np.testing.assert_allclose(back[[0, 1, 1], [1, 0, 1]], [1.0, 12.34, 255.0], atol=1 / 256)
    assert back[0, 0] == 0 and back[0, 2] == 0 and back[1, 2] == 0  # none / NaN / negative


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
