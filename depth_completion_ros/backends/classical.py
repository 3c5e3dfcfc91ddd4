"""A fast classical fill in the spirit of IP-Basic (Ku et al., CRV 2018): no weights, OpenCV only.

Why it works: LiDAR depth is locally smooth except at object edges, and near objects must win
over far ones. Working on inverted depth (``max_depth - d``) makes morphological dilation prefer
near values, so dilations spread foreground depth over the gaps between scan lines without
letting background bleed over foreground edges.

Why it is fast: only the rows that hold returns, plus the reach of the dilations, are processed
(the sky above a KITTI scan is a third of the image), and every image-sized work array is kept
between frames, because on small VMs the page faults of fresh buffers cost as much as the
filtering itself. The rows skipped are the ones the dilations cannot reach, so the result equals
a fill of the whole image.
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
_FULL_5 = np.ones((5, 5), np.uint8)
_FULL_7 = np.ones((7, 7), np.uint8)
_TALL_9x3 = np.ones((9, 3), np.uint8)
_FULL_31 = np.ones((31, 31), np.uint8)
#: rows a value can travel up or down through the dilations (2 + 2 + 3 + 4 + 15 = 26), plus the
#: 5x5 smoothing windows and a safety row: beyond this, rows stay empty and need no processing
_REACH = 40
_EMPTY = 0.1  # inverted values below this are "no estimate"


class ClassicalBackend(DepthCompletionBackend):
    """Morphological completion: dilate, close, fill holes, smooth (inverted depth)."""

    name = "classical"

    def __init__(
        self, max_depth: float = 100.0, blur: bool = True, extrapolate_top: bool = True
    ) -> None:
        self.max_depth = float(max_depth)
        self.blur = blur
        self.extrapolate_top = extrapolate_top
        self._buffers: dict[str, np.ndarray] = {}
        self._shape: tuple[int, int] | None = None

    def describe(self) -> str:
        return f"classical morphological fill (IP-Basic style, CPU, max_depth={self.max_depth} m)"

    def complete(self, rgb: np.ndarray, sparse: np.ndarray, K: np.ndarray) -> np.ndarray:
        """Dense depth (a new array) from ``sparse``; 0 where there is no estimate."""
        depth = np.asarray(sparse, dtype=np.float32)
        height = depth.shape[0]
        rows = np.flatnonzero((depth > _EMPTY).any(axis=1))
        out = np.zeros(depth.shape, dtype=np.float32)
        if rows.size == 0:
            return out
        first, last = max(int(rows[0]) - _REACH, 0), min(int(rows[-1]) + _REACH + 1, height)
        return self._fill(depth, first, last, out)

    def _work(self, name: str, shape: tuple[int, ...], dtype=np.float32) -> np.ndarray:
        """A work array of at least ``shape`` rows, kept between frames (no page faults)."""
        buffer = self._buffers.get(name)
        if buffer is None or buffer.shape[1:] != shape[1:] or buffer.shape[0] < shape[0]:
            buffer = self._buffers[name] = np.empty(shape, dtype=dtype)
        return buffer[: shape[0]]

    def _fill(self, depth: np.ndarray, first: int, last: int, out: np.ndarray) -> np.ndarray:
        """Fill rows ``first:last`` of ``depth`` into ``out`` (rows outside stay or extrapolate)."""
        crop = depth[first:last]
        shape = crop.shape
        inverted = self._work("inverted", shape)
        spare = self._work("spare", shape)
        mask = self._work("mask", shape, bool)
        top = self.max_depth + 1.0  # inverted values stay > 0 for every valid depth

        np.minimum(crop, self.max_depth, out=inverted)
        np.subtract(top, inverted, out=inverted)
        np.greater(crop, _EMPTY, out=mask)  # NaN: False
        np.logical_not(mask, out=mask)
        np.copyto(inverted, 0.0, where=mask)

        # Spread each return over its neighbourhood, nearer (larger inverted) values win.
        cv2.dilate(inverted, _DIAMOND_5, dst=spare)
        cv2.morphologyEx(spare, cv2.MORPH_CLOSE, _FULL_5, dst=inverted)
        # Small holes: a wider dilation; rows between far scan lines: a tall, narrow kernel;
        # remaining large holes below the scan's top edge: a wide one. Each fills holes only.
        for kernel in (_FULL_7, _TALL_9x3, _FULL_31):
            np.less(inverted, _EMPTY, out=mask)
            cv2.dilate(inverted, kernel, dst=spare)
            np.copyto(inverted, spare, where=mask)

        # Above the highest value in each column there is no measurement: either leave it empty
        # or, like IP-Basic's "extrapolate", extend the top-most value upwards.
        np.greater(inverted, _EMPTY, out=mask)
        filled_columns = mask.any(axis=0)
        top_row = np.where(filled_columns, mask.argmax(axis=0), shape[0])
        if self.extrapolate_top:
            columns = np.arange(shape[1])
            top_values = np.where(
                filled_columns, inverted[np.minimum(top_row, shape[0] - 1), columns], 0.0
            ).astype(np.float32)
            above = np.arange(shape[0])[:, None] < top_row[None, :]
            np.copyto(inverted, top_values[None, :], where=above)

        if self.blur:
            # Smooth only where the whole window is filled: averaging with empty (0) pixels would
            # pull edge values towards "infinitely far".
            np.greater(inverted, _EMPTY, out=mask)
            interior = self._work("interior", shape, np.uint8)
            cv2.erode(mask.view(np.uint8), _FULL_5, dst=interior)
            interior_mask = interior.view(bool)
            cv2.medianBlur(inverted, 5, dst=spare)
            np.copyto(inverted, spare, where=interior_mask)
            cv2.GaussianBlur(inverted, (5, 5), 0, dst=spare)
            np.copyto(inverted, spare, where=interior_mask)

        result = out[first:last]
        np.subtract(top, inverted, out=result)
        np.less_equal(inverted, _EMPTY, out=mask)
        np.copyto(result, 0.0, where=mask)
        if self.extrapolate_top:
            # the rows above are constant per column, so their smoothed values are the first
            # processed row's (the whole-image fill gives exactly this)
            out[:first] = result[0]
        return out
