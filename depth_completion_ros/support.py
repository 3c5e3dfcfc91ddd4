"""Where the LiDAR supports a depth estimate: between its highest and lowest return per column.

Above the top beam (sky, bridges, treetops) and below the bottom one a completion method can only
invent depth, and a robot that feeds invented depth to a costmap or a TSDF builds walls out of
the sky. The pipeline publishes NaN there (REP 118: no estimate).

The extent is found per band of ``band`` columns, made robust in two ways:
- a band's top is the row of the ``MIN_RETURNS``-th highest return in the band and its two
  neighbours (its bottom likewise), so a single stray return (a raindrop, a mis-projected point)
  does not open the sky above it, while columns a few pixels apart support each other;
- a band with fewer returns than that (a gap in the scan) takes the more generous extent of its
  two neighbours, and the bands' values are interpolated linearly between band centres: gaps do
  not cut holes, and the boundary has no steps.
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

    band: int = 3  # columns per band (each band also counts its two neighbours)
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
    # returns per (band, row): a small table with one contiguous row of counts per band
    counts = np.bincount((cols // band) * height + rows, minlength=bands * height)
    counts = counts.reshape(bands, height).astype(np.int32)
    # each band counts its neighbours' returns too: columns a few pixels apart support each other
    pooled = counts.copy()
    pooled[1:] += counts[:-1]
    pooled[:-1] += counts[1:]
    if bands >= 3:  # the bands at the image's edges pool with the next two instead
        pooled[0] += counts[2]
        pooled[-1] += counts[-3]
    enough = pooled.sum(axis=1) >= MIN_RETURNS
    top = _second_row(pooled)
    bottom = height - 1 - _second_row(pooled[:, ::-1])
    top = np.where(enough, top, height)
    bottom = np.where(enough, bottom, -1)
    # a band with too few returns (a gap in the scan) takes its neighbours' extent
    top = np.where(enough, top, np.minimum(np.r_[top[1:], height], np.r_[height, top[:-1]]))
    bottom = np.where(enough, bottom, np.maximum(np.r_[bottom[1:], -1], np.r_[-1, bottom[:-1]]))
    # linear between band centres, then the margin
    centres = np.minimum(np.arange(bands) * band + (band - 1) / 2.0, width - 1)
    columns = np.arange(width)
    first = np.floor(np.interp(columns, centres, top)).astype(np.intp)
    last = np.ceil(np.interp(columns, centres, bottom)).astype(np.intp)
    none = first >= height  # columns without support get no margin either
    first = np.where(none, height, np.clip(first - int(config.margin), 0, height))
    last = np.where(none, -1, np.clip(last + int(config.margin), -1, height - 1))
    return first, last


def _second_row(counts: np.ndarray) -> np.ndarray:
    """Per row of ``counts`` (bands x rows), the index where the running count reaches 2.

    The same as ``argmax(cumsum(counts, axis=1) >= 2, axis=1)`` without the cumulative sums,
    which cost several times more: the first non-empty index if it holds two returns, else the
    next non-empty one.
    """
    assert MIN_RETURNS == 2
    filled = counts > 0
    first = filled.argmax(axis=1)
    index = np.arange(len(counts))
    filled[index, first] = False
    second = filled.argmax(axis=1)
    return np.where(counts[index, first] >= 2, first, second)


def outside_support(
    sparse: np.ndarray, config: SupportConfig = SupportConfig(), out: np.ndarray | None = None
) -> np.ndarray:
    """H x W bool: True where the LiDAR gives no support (above the top or below the bottom)."""
    first, last = support_rows(sparse, config)
    height = sparse.shape[0]
    rows = np.arange(height, dtype=np.intp)[:, None]
    out = np.empty(sparse.shape, dtype=bool) if out is None else out
    # each comparison only over the rows where it can be true
    above = int(np.clip(first.max(), 0, height))
    np.less(rows[:above], first[None, :], out=out[:above])
    out[above:] = False
    below = int(np.clip(last.min() + 1, 0, height))
    if below < height:
        out[below:] |= rows[below:] > last[None, :]
    return out
