"""Where the LiDAR supports a depth estimate: between its highest and lowest return per column.

Above the top beam (sky, bridges, treetops) and below the bottom one a completion method can only
invent depth, and a robot that feeds invented depth to a costmap or a TSDF builds walls out of
the sky. The pipeline publishes NaN there (REP 118: no estimate).

The extent is found per band of ``band`` columns, made robust in two ways:
- a band's top is the row of its ``MIN_RETURNS``-th highest return (its bottom likewise), so a
  single stray return (a raindrop, a mis-projected point) does not open the sky above it;
- a band with fewer returns than that (a gap between sparse columns) takes the more generous
  extent of its two neighbours, and the bands' values are interpolated linearly between band
  centres: gaps do not cut holes, and the boundary has no steps.
Then ``margin`` pixels are added above and below. Everything runs on small per-band arrays; only
the final mask touches the whole image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MIN_RETURNS = 2  # returns a band needs above a row for that row to count as its top


@dataclass(frozen=True)
class SupportConfig:
    """How the LiDAR's vertical extent in the image is found (pixels)."""

    band: int = 8  # columns per band
    margin: int = 2  # rows added above the top and below the bottom

    def __post_init__(self) -> None:
        if int(self.band) < 1:
            raise ValueError(f"support band must be at least 1 column, got {self.band}")
        if int(self.margin) < 0:
            raise ValueError(f"support margin must be 0 or more pixels, got {self.margin}")


def support_rows(
    sparse: np.ndarray, config: SupportConfig = SupportConfig()
) -> tuple[np.ndarray, np.ndarray]:
    """Per column, the first and last supported row (int arrays of length W).

    A column with no support gets ``first > last`` (first = H, last = -1).
    """
    height, width = sparse.shape
    band = int(config.band)
    bands = -(-width // band)
    at = np.flatnonzero(np.asarray(sparse).reshape(-1) > 0)
    rows, cols = np.divmod(at, width)
    # returns per (row, band): a small H x bands table, counted from the top and from the bottom
    counts = np.bincount(rows * bands + cols // band, minlength=height * bands)
    counts = counts.reshape(height, bands)
    from_top = np.cumsum(counts, axis=0)
    total = from_top[-1]
    enough = total >= MIN_RETURNS
    top = np.where(enough, np.argmax(from_top >= MIN_RETURNS, axis=0), height)
    # rows below and including r hold total - from_top[r - 1] returns
    from_bottom = total[None, :] - from_top + counts
    bottom = np.where(enough, height - 1 - np.argmax(from_bottom[::-1] >= MIN_RETURNS, axis=0), -1)
    # the most generous extent of each band and its two neighbours
    # a band with too few returns (a gap between sparse columns) takes its neighbours' extent
    top = np.where(enough, top, np.minimum(np.r_[top[1:], height], np.r_[height, top[:-1]]))
    bottom = np.where(enough, bottom, np.maximum(np.r_[bottom[1:], -1], np.r_[-1, bottom[:-1]]))
    # linear between band centres, then the margin
    centres = np.minimum(np.arange(bands) * band + (band - 1) / 2.0, width - 1)
    columns = np.arange(width)
    first = np.floor(np.interp(columns, centres, top)).astype(np.intp) - int(config.margin)
    last = np.ceil(np.interp(columns, centres, bottom)).astype(np.intp) + int(config.margin)
    first = np.clip(first, 0, height)
    last = np.clip(last, -1, height - 1)
    return first, last


def outside_support(
    sparse: np.ndarray, config: SupportConfig = SupportConfig(), out: np.ndarray | None = None
) -> np.ndarray:
    """H x W bool: True where the LiDAR gives no support (above the top or below the bottom)."""
    first, last = support_rows(sparse, config)
    rows = np.arange(sparse.shape[0], dtype=np.intp)[:, None]
    out = np.empty(sparse.shape, dtype=bool) if out is None else out
    np.less(rows, first[None, :], out=out)
    out |= rows > last[None, :]
    return out
