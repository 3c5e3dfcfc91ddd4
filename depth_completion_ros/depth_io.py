"""Files: KITTI depth PNGs (uint16 = metres * 256) and atomic writes (nothing half-written)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

KITTI_DEPTH_SCALE = 256.0


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomic(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` and move the result into place only if it succeeded."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_current_umask())  # mkstemp makes 0600; give the usual mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    return write_atomic(path, lambda tmp: tmp.write_bytes(data))


def write_kitti_depth(path: str | Path, depth: np.ndarray) -> Path:
    """Metres (NaN/<=0 = none) -> KITTI uint16 PNG (0 = invalid), written atomically."""
    depth = np.nan_to_num(np.asarray(depth, np.float64), nan=0.0)
    encoded = np.clip(np.round(depth * KITTI_DEPTH_SCALE), 0, 65535).astype(np.uint16)
    ok, png = cv2.imencode(".png", encoded)
    if not ok:
        raise OSError(f"could not encode depth PNG for {path}")
    return write_bytes_atomic(path, png.tobytes())


def read_kitti_depth(path: str | Path) -> np.ndarray:
    """KITTI uint16 depth PNG -> float32 metres, 0 = none."""
    raw = cv2.imread(str(path), cv2.IMREAD_ANYDEPTH)
    if raw is None:
        raise FileNotFoundError(f"cannot read depth PNG {path}")
    if raw.dtype != np.uint16:
        raise ValueError(f"{path}: expected a uint16 KITTI depth PNG, got {raw.dtype}")
    return raw.astype(np.float32) / KITTI_DEPTH_SCALE


def read_rgb(path: str | Path) -> np.ndarray:
    """Image file -> H x W x 3 uint8 RGB."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise FileNotFoundError(f"cannot read image {path}")
    return np.ascontiguousarray(bgr[..., ::-1])


def write_rgb(path: str | Path, rgb: np.ndarray) -> Path:
    """H x W x 3 RGB -> PNG/JPEG, atomically."""
    ext = Path(path).suffix or ".png"
    ok, encoded = cv2.imencode(ext, np.ascontiguousarray(rgb[..., ::-1]))
    if not ok:
        raise OSError(f"could not encode image for {path}")
    return write_bytes_atomic(path, encoded.tobytes())


def write_ply(path: str | Path, xyz: np.ndarray, rgb: np.ndarray | None = None) -> Path:
    """N x 3 points (+ N x 3 uint8 colours) -> binary little-endian PLY, written atomically."""
    xyz = np.asarray(xyz, dtype="<f4").reshape(-1, 3)
    fields = [("x", "<f4"), ("y", "<f4"), ("z", "<f4")]
    if rgb is not None:
        fields += [("red", "u1"), ("green", "u1"), ("blue", "u1")]
    record = np.empty(len(xyz), dtype=fields)
    record["x"], record["y"], record["z"] = xyz[:, 0], xyz[:, 1], xyz[:, 2]
    lines = [
        "ply",
        "format binary_little_endian 1.0",
        f"element vertex {len(xyz)}",
        "property float x",
        "property float y",
        "property float z",
    ]
    if rgb is not None:
        rgb = np.asarray(rgb, dtype=np.uint8).reshape(-1, 3)
        record["red"], record["green"], record["blue"] = rgb[:, 0], rgb[:, 1], rgb[:, 2]
        lines += ["property uchar red", "property uchar green", "property uchar blue"]
    header = ("\n".join(lines + ["end_header"]) + "\n").encode("ascii")
    return write_bytes_atomic(path, header + record.tobytes())
