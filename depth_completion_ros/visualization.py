"""Pictures for people: colour-mapped depth and side-by-side panels (demo, node's depth/colored)."""

from __future__ import annotations

import cv2
import numpy as np


def colorize_depth(depth: np.ndarray, max_depth: float = 80.0) -> np.ndarray:
    """H x W metres (NaN/0 = none) -> H x W x 3 uint8 RGB: near = red, far = blue, none = black."""
    valid = np.isfinite(depth) & (depth > 0)
    scaled = np.zeros(depth.shape, dtype=np.uint8)
    closeness = 1.0 - np.clip(np.where(valid, depth, 0.0) / max_depth, 0.0, 1.0)
    scaled[valid] = np.clip(closeness[valid] * 255.0, 1, 255).astype(np.uint8)
    bgr = cv2.applyColorMap(scaled, cv2.COLORMAP_TURBO)
    bgr[~valid] = 0
    return np.ascontiguousarray(bgr[..., ::-1])


def draw_sparse(rgb: np.ndarray, sparse: np.ndarray, max_depth: float = 80.0) -> np.ndarray:
    """The camera image with LiDAR points drawn in depth colours (dilated to be visible)."""
    colours = colorize_depth(sparse, max_depth)
    valid = sparse > 0
    grown = cv2.dilate(valid.astype(np.uint8), np.ones((2, 2), np.uint8)).astype(bool)
    colours = cv2.dilate(colours, np.ones((2, 2), np.uint8))
    out = (rgb.astype(np.float32) * 0.6).astype(np.uint8)
    out[grown] = colours[grown]
    return out


def side_by_side(panels: list[np.ndarray]) -> np.ndarray:
    """Stack RGB panels of equal width vertically (wide KITTI frames read best this way)."""
    return np.concatenate(panels, axis=0)
