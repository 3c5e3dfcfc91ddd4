"""A fast classical fill in the spirit of IP-Basic (Ku et al., CRV 2018): no weights, OpenCV only.

Why it works: LiDAR depth is locally smooth except at object edges, and near objects must win
over far ones. Working on inverted depth (``max_depth - d``) makes morphological dilation prefer
near values, so dilations spread foreground depth over the gaps between scan lines without
letting background bleed over foreground edges. Pixels above the highest LiDAR return in each
column (sky, tops of buildings) have no information and stay empty.
"""

from __future__ import annotations

import cv2
import numpy as np

from depth_completion_ros.backends.base import DepthCompletionBackend

_DIAMOND_5 = np.array(
    [
        [0, 0, 1, 0, 0],
        [0, 1, 1, 1, 0],
        [1, 1, 1, 1, 1],
        [0, 1, 1, 1, 0],
        [0, 0, 1, 0, 0],
    ],
    dtype=np.uint8,
)


def _full(size: int) -> np.ndarray:
    return np.ones((size, size), np.uint8)


class ClassicalBackend(DepthCompletionBackend):
    """Morphological completion: dilate, close, fill holes, smooth (inverted depth)."""

    name = "classical"

    def __init__(
        self, max_depth: float = 100.0, blur: bool = True, extrapolate_top: bool = True
    ) -> None:
        self.max_depth = float(max_depth)
        self.blur = blur
        self.extrapolate_top = extrapolate_top

    def describe(self) -> str:
        return f"classical morphological fill (IP-Basic style, CPU, max_depth={self.max_depth} m)"

    def complete(self, rgb: np.ndarray, sparse: np.ndarray, K: np.ndarray) -> np.ndarray:
        depth = np.asarray(sparse, dtype=np.float32)
        valid = depth > 0.1
        if not valid.any():
            return np.zeros_like(depth)
        top = self.max_depth + 1.0  # inverted values stay > 0 for every valid depth
        inverted = np.where(valid, top - np.minimum(depth, self.max_depth), 0).astype(np.float32)

        # Spread each return over its neighbourhood, nearer (larger inverted) values win.
        inverted = cv2.dilate(inverted, _DIAMOND_5)
        inverted = cv2.morphologyEx(inverted, cv2.MORPH_CLOSE, _full(5))

        # Small holes: fill from a wider dilation.
        empty = inverted < 0.1
        inverted[empty] = cv2.dilate(inverted, _full(7))[empty]

        # Rows between scan lines far away: a tall, narrow kernel bridges them.
        empty = inverted < 0.1
        inverted[empty] = cv2.dilate(inverted, np.ones((15, 3), np.uint8))[empty]

        # Remaining large holes below the scan's top edge.
        empty = inverted < 0.1
        inverted[empty] = cv2.dilate(inverted, _full(31))[empty]

        # Above the highest return in each column there is no measurement: either leave it empty
        # or, like IP-Basic's "extrapolate", extend the top-most value upwards.
        has_value = inverted > 0.1
        first_row = np.where(has_value.any(axis=0), has_value.argmax(axis=0), depth.shape[0])
        above = np.arange(depth.shape[0])[:, None] < first_row[None, :]
        if self.extrapolate_top:
            top_values = inverted[
                np.minimum(first_row, depth.shape[0] - 1), np.arange(depth.shape[1])
            ]
            inverted = np.where(above, top_values[None, :], inverted)
        else:
            inverted[above] = 0.0

        if self.blur:
            # Smooth only where the whole window is filled: averaging with empty (0) pixels would
            # pull edge values towards "infinitely far".
            filled = inverted > 0.1
            interior = cv2.erode(filled.astype(np.uint8), _full(5)).astype(bool)
            inverted[interior] = cv2.medianBlur(inverted, 5)[interior]
            inverted[interior] = cv2.GaussianBlur(inverted, (5, 5), 0)[interior]

        dense = np.where(inverted > 0.1, top - inverted, 0.0).astype(np.float32)
        return dense
