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


@dataclass(frozen=True)
class ProjectionConfig:
    """How points become a sparse depth image."""

    min_depth: float = 0.1  # metres; closer points (and points behind the camera) are dropped
    max_depth: float = 120.0  # metres; farther points are dropped
    occlusion_window: int = 12  # pixels searched on each side; 0 disables the occlusion filter
    occlusion_relative: float = 0.10  # occluded if deeper than nearest*(1+rel)+abs on both sides
    occlusion_absolute: float = 0.3  # metres


def project_points(
    points: np.ndarray,
    T_cam_lidar: np.ndarray,
    P: np.ndarray,
    width: int,
    height: int,
    config: ProjectionConfig = ProjectionConfig(),
) -> np.ndarray:
    """Project N x 3 (or N x >=3) LiDAR points into an H x W float32 sparse depth map (0 = none)."""
    xyz = np.asarray(points)[:, :3]
    if xyz.dtype != np.float32:
        xyz = xyz.astype(np.float32)
    M = (np.asarray(P, np.float64) @ np.asarray(T_cam_lidar, np.float64)).astype(np.float32)
    # einsum, not ``@``: BLAS threads contend with open3d/torch pools on small machines (15x slower)
    uvw = np.einsum("nk,jk->nj", xyz, M[:, :3])
    uvw += M[:, 3]
    w = uvw[:, 2]
    with np.errstate(invalid="ignore", divide="ignore"):
        keep = (w > config.min_depth) & (w < config.max_depth)  # False for NaN
        w = w[keep]
        u = np.floor(uvw[keep, 0] / w + 0.5)
        v = np.floor(uvw[keep, 1] / w + 0.5)
    inside = (u >= 0) & (u < width) & (v >= 0) & (v < height)
    flat = v[inside].astype(np.int64) * width + u[inside].astype(np.int64)
    depth = w[inside]

    sparse = np.zeros(height * width, dtype=np.float32)
    if depth.size:
        order = np.argsort(depth, kind="stable")  # nearest first
        pixels, first = np.unique(flat[order], return_index=True)  # first = nearest per pixel
        sparse[pixels] = depth[order][first]
    sparse = sparse.reshape(height, width)
    if config.occlusion_window > 0:
        sparse = remove_occluded(sparse, config)
    return sparse


def _directional_min(depth: np.ndarray, reach: int, direction: str) -> np.ndarray:
    """Per pixel, the nearest depth within ``reach`` pixels on one side (a 3-pixel-wide band)."""
    kernel = np.ones((3, reach + 1), np.uint8)
    if direction in ("left", "up"):
        kernel[:, -1] = 0  # exclude the pixel itself; the kernel ends just before it
        anchor = (reach, 1)
    else:
        kernel[:, 0] = 0
        anchor = (0, 1)
    if direction in ("up", "down"):
        kernel = np.ascontiguousarray(kernel.T)
        anchor = (anchor[1], anchor[0])
    return cv2.erode(depth, kernel, anchor=anchor, borderType=cv2.BORDER_CONSTANT, borderValue=1e9)


def remove_occluded(sparse: np.ndarray, config: ProjectionConfig = ProjectionConfig()) -> np.ndarray:
    """Drop points the camera cannot see: those with clearly nearer points on both sides.

    A point seen "through" a nearer object lands inside that object's silhouette in the image, so
    it has nearer returns to its left and right (or above and below). A one-sided test would also
    remove the ground, whose depth falls steadily towards the bottom of the image.
    """
    valid = sparse > 0
    if not valid.any():
        return sparse.copy()
    far = np.where(valid, sparse, np.float32(1e9)).astype(np.float32)  # no point: "infinitely far"
    reach = int(config.occlusion_window)

    def nearer(direction: str) -> np.ndarray:
        nearest = _directional_min(far, reach, direction)
        return sparse > nearest * (1.0 + config.occlusion_relative) + config.occlusion_absolute

    occluded = valid & ((nearer("left") & nearer("right")) | (nearer("up") & nearer("down")))
    out = sparse.copy()
    out[occluded] = 0.0
    return out


def backproject(depth: np.ndarray, K: np.ndarray) -> np.ndarray:
    """H x W depth (metres, NaN/0 = none) -> H x W x 3 float32 points in the camera optical frame.

    Invalid pixels give NaN points, as depth_image_proc's organised clouds do.
    """
    height, width = depth.shape
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    z = np.where(depth > 0, depth, np.nan).astype(np.float32)
    xs = ((np.arange(width, dtype=np.float32) - cx) / fx)[None, :]
    ys = ((np.arange(height, dtype=np.float32) - cy) / fy)[:, None]
    out = np.empty((height, width, 3), dtype=np.float32)
    np.multiply(z, xs, out=out[..., 0])
    np.multiply(z, ys, out=out[..., 1])
    out[..., 2] = z
    return out
