"""LiDAR points -> sparse depth image, and dense depth -> 3-D points.

The nearest return wins a pixel. Points the LiDAR sees but the camera cannot (the LiDAR sits above
and behind the camera, so it sees past the edges of near objects) are removed by a two-sided
test: a point is dropped when clearly nearer points lie both left and right of it (or both above
and below) within a few pixels, because in the camera's view that nearer surface covers it.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from depth_completion_ros.distortion import Lens


@dataclass(frozen=True)
class ProjectionConfig:
    """How points become a sparse depth image."""

    min_depth: float = 0.1  # metres; closer points (and points behind the camera) are dropped
    max_depth: float = 120.0  # metres; farther points are dropped
    occlusion_window: int = 12  # pixels searched on each side; 0 disables the occlusion filter
    occlusion_relative: float = 0.10  # occluded if deeper than nearest*(1+rel)+abs on both sides
    occlusion_absolute: float = 0.3  # metres


@dataclass(frozen=True)
class SensorMotion:
    """The LiDAR's motion during one sweep, in its own frame (from odometry), for :func:`deskew`."""

    velocity: tuple[float, float, float]  # m/s
    yaw_rate: float = 0.0  # rad/s about +z
    sweep_period: float = 0.1  # s per turn (10 Hz)


_NO_POINT = np.float32(1e9)  # "infinitely far": what an empty pixel counts as in the filter


def project_points(
    points: np.ndarray,
    T_cam_lidar: np.ndarray,
    P: np.ndarray,
    width: int,
    height: int,
    config: ProjectionConfig = ProjectionConfig(),
    lens: Lens | None = None,
) -> np.ndarray:
    """Project N x 3 (or N x >=3) LiDAR points into an H x W float32 sparse depth map (0 = none).

    ``lens`` (a raw, distorted image: :attr:`PinholeCamera.lens`): points land on the raw
    pixels through ``lens.K`` and the distortion, and P is not used.
    """
    if lens is not None:  # normalised coordinates x/z, y/z first; the lens makes them pixels
        P = np.hstack([np.eye(3), np.zeros((3, 1))])
    M = (np.asarray(P, np.float64) @ np.asarray(T_cam_lidar, np.float64)).astype(np.float32)
    # The per-point temporaries die with the helper, before the filter allocates its image-sized
    # arrays: a lower peak keeps the heap from growing and being trimmed on every call, and the
    # page faults that follow cost more than the arithmetic (3.7 -> 1.9 ms on the KITTI scan).
    flat, depth = _pixels_and_depths(np.asarray(points), M, width, height, config, lens)
    # zeros (lazily allocated) everywhere; +inf only on the hit pixels, then the minimum there:
    # the nearest point wins its pixel, and no full-image pass is needed
    sparse = np.zeros(height * width, dtype=np.float32)
    sparse[flat] = np.inf
    np.minimum.at(sparse, flat, depth)
    sparse = sparse.reshape(height, width)
    if config.occlusion_window > 0:
        remove_occluded(sparse, config, out=sparse)
    return sparse


def _pixels_and_depths(
    points: np.ndarray,
    M: np.ndarray,
    width: int,
    height: int,
    config: ProjectionConfig,
    lens: Lens | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Flat pixel index and depth of each point in the depth range that lands in the image.

    Elementwise float32 arithmetic, no BLAS call: a 3x3 product through a threaded BLAS costs
    little on an idle machine but tens of milliseconds when its threads compete for busy cores.
    Depth is computed for every point first, pixel coordinates only for the points in range.
    """
    x, y, z = (points[:, i].astype(np.float32, copy=False) for i in range(3))
    w = x * M[2, 0]
    w += y * M[2, 1]
    w += z * M[2, 2]
    w += M[2, 3]
    with np.errstate(invalid="ignore"):
        keep = np.flatnonzero((w > config.min_depth) & (w < config.max_depth))  # NaN: False
    x, y, z, w = x[keep], y[keep], z[keep], w[keep]
    u = x * M[0, 0]
    u += y * M[0, 1]
    u += z * M[0, 2]
    u += M[0, 3]
    u /= w
    v = x * M[1, 0]
    v += y * M[1, 1]
    v += z * M[1, 2]
    v += M[1, 3]
    v /= w
    if lens is not None:
        u, v = lens.to_pixels(u, v)  # NaN beyond the lens' valid radius: never inside
    u += 0.5  # pixel = floor(u + 0.5): the nearest pixel centre
    v += 0.5
    inside = (u >= 0) & (u < width) & (v >= 0) & (v < height)
    # non-negative here, so truncation is floor
    flat = v[inside].astype(np.intp) * width + u[inside].astype(np.intp)
    return flat, w[inside]


def remove_occluded(
    sparse: np.ndarray,
    config: ProjectionConfig = ProjectionConfig(),
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Drop points the camera cannot see: those with clearly nearer points on both sides.

    A point seen "through" a nearer object lands inside that object's silhouette in the image, so
    it has nearer returns to its left and right (or above and below). A one-sided test would also
    remove the ground, whose depth falls steadily towards the bottom of the image.

    "Left" is the nearest return in the 3-row band ``x - window .. x - 1`` (likewise right, up and
    down with 3-column bands); a point is dropped when it is deeper than
    ``nearest * (1 + occlusion_relative) + occlusion_absolute`` on both sides of either axis.
    Everything is read before ``out`` is written, so ``out`` may be ``sparse`` itself.
    """
    sparse = np.asarray(sparse, dtype=np.float32)
    valid = sparse > 0
    rows_with_points = np.flatnonzero(valid.any(axis=1))
    out = sparse.copy() if out is None else out  # ``out=sparse`` filters in place
    reach = int(config.occlusion_window)
    if rows_with_points.size == 0 or reach <= 0:
        return out
    # Only the rows with points matter (the sky above the scan has none). They are copied into a
    # frame `reach` pixels wide of "no point", so every window below stays inside the array.
    top, bottom = int(rows_with_points[0]), int(rows_with_points[-1]) + 1
    band, valid = sparse[top:bottom], valid[top:bottom]
    height, width = band.shape
    step = width + 2 * reach  # row length of the padded array
    far = np.full((height + 2 * reach, step), _NO_POINT, dtype=np.float32)
    np.copyto(far[reach : reach + height, reach : reach + width], band, where=valid)
    # flat indices of a 1-D mask: several times faster than np.nonzero's (row, column) pairs
    at = np.flatnonzero(valid)
    ys, xs = np.divmod(at, width)
    depth = band.reshape(-1)[at]
    index = (ys + reach) * step + (xs + reach)  # the points, as flat indices of the padded array

    def nearer(near: np.ndarray) -> np.ndarray:
        return depth > near * (1.0 + config.occlusion_relative) + config.occlusion_absolute

    # One erosion per axis (OpenCV runs a rectangular kernel as a row pass and a column pass),
    # the second into the first one's array: each fresh image-sized array costs page faults.
    # Left/right: the minimum over rows y-1..y+1 and the `reach` columns ending at each column;
    # read one column left of a point it covers x-reach..x-1, `reach` right x+1..x+reach.
    near = cv2.erode(far, np.ones((3, reach), np.uint8), anchor=(reach - 1, 1))
    flat = near.reshape(-1)
    occluded = nearer(flat[index - 1]) & nearer(flat[index + reach])
    # Up/down likewise: columns x-1..x+1 and the `reach` rows ending at each row.
    near = cv2.erode(far, np.ones((reach, 3), np.uint8), dst=near, anchor=(1, reach - 1))
    flat = near.reshape(-1)
    occluded |= nearer(flat[index - step]) & nearer(flat[index + reach * step])
    out[ys[occluded] + top, xs[occluded]] = 0.0
    return out


def deskew(
    points: np.ndarray,
    velocity: np.ndarray,
    yaw_rate: float = 0.0,
    sweep_period: float = 0.1,
    clockwise: bool = True,
) -> np.ndarray:
    """Undo the ego-motion during a spinning LiDAR's sweep: each point where it would have been
    seen when the LiDAR faced forward (+x, when KITTI's camera is triggered).

    A scan is not a snapshot: at 13 m/s the car moves 0.13 m while a Velodyne turns once, so a
    point seen 30 degrees to the side of the forward direction is 1 cm off per m/s. Uncorrected,
    the projected depth disagrees with the image (and with KITTI's own maps, which are
    corrected). ``velocity`` (m/s, LiDAR frame) and ``yaw_rate`` (rad/s about +z) are the
    sensor's motion, e.g. from odometry; a point at azimuth ``a`` was seen ``-a / 2 pi`` sweeps
    after the forward direction (the HDL-64E turns clockwise seen from above). Returns a new
    float32 N x 3+ array (extra columns copied).
    """
    points = np.asarray(points)
    out = points.astype(np.float32, copy=True)
    x, y = out[:, 0].copy(), out[:, 1].copy()
    azimuth = np.arctan2(y, x)
    seconds = (-azimuth if clockwise else azimuth) * np.float32(sweep_period / (2.0 * np.pi))
    if yaw_rate:
        angle = seconds * np.float32(yaw_rate)
        cos, sin = np.cos(angle), np.sin(angle)
        out[:, 0] = cos * x - sin * y
        out[:, 1] = sin * x + cos * y
    for axis in range(3):
        out[:, axis] += seconds * np.float32(velocity[axis])
    return out


def backproject(depth: np.ndarray, K: np.ndarray) -> np.ndarray:
    """H x W depth (metres, NaN/0 = none) -> H x W x 3 float32 points in the camera optical frame.

    Invalid pixels give NaN points, as depth_image_proc's organised clouds do. Written channel by
    channel into the output, z first: no image-sized temporaries besides the validity mask.
    """
    height, width = depth.shape
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    xs = ((np.arange(width, dtype=np.float32) - cx) / fx)[None, :]
    ys = ((np.arange(height, dtype=np.float32) - cy) / fy)[:, None]
    out = np.empty((height, width, 3), dtype=np.float32)
    z = out[..., 2]
    np.copyto(z, depth, casting="same_kind")
    np.copyto(z, np.float32(np.nan), where=~(depth > 0))  # tested in depth's own dtype
    np.multiply(z, xs, out=out[..., 0])
    np.multiply(z, ys, out=out[..., 1])
    return out
