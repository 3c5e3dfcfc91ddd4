"""The two non-standard ops of BP-Net, in plain PyTorch (CPU and CUDA, no compiled extension).

* :func:`dynamic_filter`: a per-pixel K x K filter on one channel (CSPN++-style propagation).
* :func:`nearest_valid_pixels`: for every pixel, its k nearest valid (sparse) pixels, exactly.

The authors ship both as CUDA kernels; the neighbour search there is brute force (every pixel
against every valid pixel), which is O(H*W*M) and takes tens of seconds on a CPU at 352 x 1216.
Here the search is separable and exact:

1. column pass: for every pixel (y, c), the k nearest valid pixels *in column c* (a prefix sum
   gives each pixel's rank among the valid ones of its column, so this is O(H*W*k));
2. row pass: the k nearest in the plane are among those column lists (a point of column c that
   is not among the k nearest of its column to row y has k closer points in that same column).
   Within a window of +-w columns only the k columns whose nearest point is closest can hold
   the answer, so each pixel scores each window column once and merges just k lists. A lower
   bound on every column outside the window (block minima of the column distances) proves the
   answer exact; the pixels it cannot prove (far from any data, e.g. the sky above a LiDAR's
   top beam) repeat with wider windows, the last of which covers the whole row.

Distances are integers (int32) so comparisons are exact; ties between equally distant pixels
are broken arbitrarily, as in any k-nearest-neighbour search.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

try:  # optional: the fastest exact search on a CPU
    from scipy.spatial import cKDTree

    _HAVE_SCIPY = True
except ImportError:  # pragma: no cover - scipy is a declared dependency
    _HAVE_SCIPY = False

__all__ = ["dynamic_filter", "nearest_valid_pixels", "DYNAMIC_KERNEL_SIZES", "MAX_SIDE"]

#: kernel sizes BP-Net's refinement uses
DYNAMIC_KERNEL_SIZES = (3, 5, 7)
#: largest image side the integer distance arithmetic supports (squares stay below 2**31)
MAX_SIDE = 16383

_FAR = 1 << 15  # "no point" vertical distance in a column (larger than any real one)
_NONE = 1 << 30  # squared distances from here up mean "no point" (real ones stay below 2**29;
# a square below 2**28 added to it stays inside int32)
_BLOCK = 32  # columns per block for the lower bound on columns outside the window
_BRUTE_FORCE_MAX = 1 << 26  # B * (H*W)^2 up to which every pixel pair is scored directly
_WINDOWS = (7, 31, 127, 511)  # half-widths of the row-pass windows, then the whole row
_WINDOW_CELLS = 1 << 24  # candidate-table cells per chunk of the row pass (~250 MB of temps)


def dynamic_filter(x: Tensor, weights: Tensor, kernel_size: int) -> Tensor:
    """Filter one channel with a different K x K kernel at every pixel (zero padding).

    out[b, 0, y, x] = sum_{i, j} x[b, 0, y + i - r, x + j - r] * weights[b, i * K + j, y, x],
    r = K // 2: kernel taps in row-major order, the centre tap at index K*K // 2.

    Args:
        x: B x 1 x H x W.
        weights: B x K*K x H x W.
        kernel_size: K, odd.
    Returns:
        B x 1 x H x W.
    """
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"dynamic_filter: kernel_size must be odd and >= 1, got {kernel_size}")
    if x.dim() != 4 or x.shape[1] != 1:
        raise ValueError(
            f"dynamic_filter: x must be B x 1 x H x W (one channel), got {tuple(x.shape)}"
        )
    b, _, h, w = x.shape
    taps = kernel_size * kernel_size
    if tuple(weights.shape) != (b, taps, h, w):
        raise ValueError(
            f"dynamic_filter: weights must be {(b, taps, h, w)} for a {kernel_size}x"
            f"{kernel_size} kernel on x of shape {tuple(x.shape)}, got {tuple(weights.shape)}"
        )
    patches = F.unfold(x, kernel_size, padding=kernel_size // 2)  # B x K*K x H*W
    out = (patches * weights.reshape(b, taps, h * w)).sum(dim=1, keepdim=True)
    return out.view(b, 1, h, w)


def nearest_valid_pixels(valid: Tensor, k: int = 4, method: str = "auto") -> tuple[Tensor, Tensor]:
    """For every pixel, its ``k`` nearest valid pixels (Euclidean, in pixels), nearest first.

    Args:
        valid: B x H x W or B x 1 x H x W bool mask of valid (sparse) pixels.
        k: how many neighbours (BP-Net uses 4).
        method: "torch" (the separable search, any device, no host copy), "kdtree" (scipy's
            cKDTree, CPU tensors only: faster on a CPU) or "auto" (kdtree for CPU tensors when
            scipy is installed, torch otherwise). All are exact.
    Returns:
        offsets: B x 2 x k x H*W float32, neighbour minus pixel: channel 0 = x (column),
            channel 1 = y (row).
        indices: B x k x H*W int64, flat index y * W + x of each neighbour.

    Images with fewer than ``k`` valid pixels repeat their farthest found neighbour in the
    missing slots; an image with none gets each pixel itself (offset 0) in every slot, so
    callers that gather with ``indices`` always get an in-range index.
    """
    if valid.dim() == 4 and valid.shape[1] == 1:
        valid = valid[:, 0]
    if valid.dim() != 3:
        raise ValueError(
            f"nearest_valid_pixels: valid must be B x H x W or B x 1 x H x W, got "
            f"{tuple(valid.shape)}"
        )
    if valid.dtype != torch.bool:
        raise ValueError(
            f"nearest_valid_pixels: valid must be a bool mask (e.g. sparse > 1e-3), got "
            f"{valid.dtype}"
        )
    if k < 1:
        raise ValueError(f"nearest_valid_pixels: k must be >= 1, got {k}")
    bsz, h, w = valid.shape
    if max(h, w) > MAX_SIDE:
        raise ValueError(
            f"nearest_valid_pixels: image sides must be <= {MAX_SIDE}, got {h} x {w}; "
            "downscale the sparse map first"
        )
    if method == "auto":
        method = "kdtree" if valid.device.type == "cpu" and _HAVE_SCIPY else "torch"
    if method == "kdtree":
        if valid.device.type != "cpu":
            raise ValueError(
                "nearest_valid_pixels: method='kdtree' needs a CPU tensor; use method='torch' "
                f"on {valid.device}"
            )
        return _kdtree_search(valid, k)
    if method != "torch":
        raise ValueError(
            f"nearest_valid_pixels: method must be 'auto', 'torch' or 'kdtree', got {method!r}"
        )
    if bsz * (h * w) ** 2 <= _BRUTE_FORCE_MAX:
        return _brute_force(valid, k)  # small images (BP-Net's coarse levels): no host sync
    col_dy, col_row = _column_neighbours(valid, k)
    d2, col, row = _row_pass(col_dy, col_row, k)
    return _finish(d2, col, row, bsz, h, w, k)


def _brute_force(valid: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Every pixel against every pixel: a few large kernels and no data-dependent shapes, which
    beats the separable search on small images (and needs no host round trip on a GPU)."""
    bsz, h, w = valid.shape
    n = h * w
    dev = valid.device
    pix = torch.arange(n, device=dev, dtype=torch.int32)
    py, px = pix // w, pix % w
    d2 = (py[:, None] - py[None]) ** 2 + (px[:, None] - px[None]) ** 2  # n x n
    d2 = torch.where(valid.reshape(bsz, 1, n), d2, _NONE)  # B x n x n
    kk = min(k, n)
    best, arg = torch.topk(d2, kk, dim=2, largest=False, sorted=True)
    best, arg = best.view(-1, kk), arg.view(-1, kk).to(torch.int32)
    if kk < k:  # fewer pixels than neighbours asked for: the missing slots are filled later
        best = F.pad(best, (0, k - kk), value=_NONE)
        arg = F.pad(arg, (0, k - kk))
    return _finish(best, arg % w, arg // w, bsz, h, w, k)


def _column_neighbours(valid: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Per pixel, the k nearest valid pixels of its own column: |dy| (``_FAR`` if none), row.

    Both returned B x W x H x k (column-major, so one column's rows are contiguous).
    """
    bsz, h, w = valid.shape
    dev = valid.device
    vt = valid.transpose(1, 2).reshape(-1)  # (b, c, y) flattened: column-major per image
    n = vt.numel()
    csum = torch.cumsum(vt, 0, dtype=torch.int64)
    total = csum[-1:]  # kept as a tensor: no host sync
    below = csum - vt.long()  # how many valid pixels come before (b, c, y) in this order
    q = torch.arange(n, device=dev)
    # flat positions of the valid pixels, ascending, padded with a sentinel that lies in no
    # column: each valid pixel is scattered to its rank, the rest to a spare last slot. Fixed
    # size, so no host round trip on a GPU (and no need for nonzero_static, which older torch
    # builds lack on CUDA); the padding keeps gathers in range when the mask is empty.
    keys = torch.full((n + 1,), n + h, dtype=torch.long, device=dev)
    keys.scatter_(0, torch.where(vt, below, n), q)
    keys[n:].fill_(n + h)
    key_col = keys // h  # b * W + c
    key_row = (keys % h).to(torch.int32)
    q_col = q // h
    q_row = (q % h).to(torch.int32)
    # candidates: k valid pixels before and k at/after in column-major order
    steps = torch.arange(-k, k, device=dev)
    cand = below[:, None] + steps  # n x 2k
    inside = (cand >= 0) & (cand < total)
    cand = cand.clamp(min=0).minimum(total)
    same_col = inside & (key_col[cand] == q_col[:, None])
    rows = key_row[cand]
    dy = torch.where(same_col, (rows - q_row[:, None]).abs(), _FAR)
    best, arg = torch.topk(dy, k, dim=1, largest=False, sorted=True)
    best_row = torch.gather(rows, 1, arg)
    return best.view(bsz, w, h, k), best_row.view(bsz, w, h, k)


def _block_minima(near_sq: Tensor) -> Tensor:
    """B x nblocks x H: the smallest nearest-in-column dy^2 over each block of columns."""
    bsz, w, h = near_sq.shape
    pad = (-w) % _BLOCK
    if pad:
        near_sq = F.pad(near_sq, (0, 0, 0, pad), value=_NONE)
    return near_sq.view(bsz, -1, _BLOCK, h).amin(dim=2)


def _row_pass(col_dy: Tensor, col_row: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """Merge the column lists over widening windows until every pixel's answer is proven.

    In a window, only the k columns whose nearest point is closest can hold the k nearest
    points (any other column's points are no closer than the k-th of those columns' nearest
    points), so each pixel scores every window column once and merges just k lists.

    Returns squared distances (>= ``_NONE``: no neighbour), columns and rows of the k nearest,
    each B*H*W x k, pixels in (b, y, x) order.
    """
    bsz, w, h, _ = col_dy.shape
    dev = col_dy.device
    n = bsz * h * w
    dysq = torch.where(col_dy >= _FAR, _NONE, col_dy * col_dy)  # B x W x H x k
    near_sq = dysq[..., 0].contiguous()  # B x W x H: the nearest point of each column
    flat_near = near_sq.view(-1)
    flat_dysq = dysq.view(-1, k)
    flat_row = col_row.reshape(-1, k)
    bmin_sq = _block_minima(near_sq)  # B x nb x H
    nb = bmin_sq.shape[1]
    block_lo = torch.arange(nb, device=dev, dtype=torch.int32) * _BLOCK
    block_hi = block_lo + (_BLOCK - 1)

    out_d2 = torch.empty((n, k), dtype=torch.int32, device=dev)
    out_col = torch.empty((n, k), dtype=torch.int32, device=dev)
    out_row = torch.empty((n, k), dtype=torch.int32, device=dev)
    pix = torch.arange(n, device=dev)
    for half in (*_WINDOWS, w):
        half = min(half, w)
        # chunks bound the m x (2 half + 1) candidate tables (wide windows on sparse scans)
        step = max(1, _WINDOW_CELLS // (2 * half + 1))
        kth_parts = []
        for start in range(0, pix.numel(), step):
            part = pix[start : start + step]
            best, best_col, best_row = _window_pass(
                part, half, h, w, k, flat_near, flat_dysq, flat_row
            )
            out_d2[part], out_col[part], out_row[part] = best, best_col, best_row
            kth_parts.append(best[:, -1])
        if half >= w:
            break
        # proven: the k-th distance is within the window's half-width, or no column outside
        # the window can beat it; the rest go round again with a wider window
        kth = torch.cat(kth_parts).clamp(max=_NONE)
        open_ = kth > (half + 1) ** 2
        pix, kth = pix[open_], kth[open_]
        if pix.numel() == 0:  # one host sync per pass: the loop must know when to stop
            break
        b = pix // (h * w)
        y = pix // w % h
        x = (pix % w).to(torch.int32)
        bound = _outside_bound(x, half, block_lo, block_hi, bmin_sq, b, y)
        pix = pix[bound < kth]
        if pix.numel() == 0:
            break
    return out_d2, out_col, out_row


def _window_pass(
    pix: Tensor,
    half: int,
    h: int,
    w: int,
    k: int,
    flat_near: Tensor,
    flat_dysq: Tensor,
    flat_row: Tensor,
) -> tuple[Tensor, Tensor, Tensor]:
    """The k nearest among the columns within +-half of each pixel in ``pix``: squared
    distances, columns and rows, each m x k (int32)."""
    b = pix // (h * w)
    y = pix // w % h
    x = (pix % w).to(torch.int32)
    offs = torch.arange(-half, half + 1, device=pix.device, dtype=torch.int32)
    cols = x[:, None] + offs  # m x (2 half + 1)
    in_img = (cols >= 0) & (cols < w)
    gidx = (b * (w * h) + y)[:, None] + cols.clamp(0, w - 1).long() * h
    d0 = torch.where(in_img, (offs * offs) + flat_near[gidx], _NONE)
    pick = torch.topk(d0, min(k, d0.shape[1]), dim=1, largest=False, sorted=False)[1]
    pick_g = gidx.gather(1, pick)
    pick_off = offs[pick]
    d2 = (pick_off * pick_off)[..., None] + flat_dysq[pick_g]  # m x k x k
    d2 = torch.where(in_img.gather(1, pick)[..., None], d2, _NONE).flatten(1)
    best, arg = torch.topk(d2, k, dim=1, largest=False, sorted=True)
    which = arg // k
    best_col = x[:, None] + pick_off.gather(1, which)
    best_row = flat_row[pick_g.gather(1, which), arg % k]
    return best.to(torch.int32), best_col.to(torch.int32), best_row.to(torch.int32)


def _outside_bound(
    x: Tensor,
    half: int,
    block_lo: Tensor,
    block_hi: Tensor,
    bmin_sq: Tensor,
    b: Tensor,
    y: Tensor,
) -> Tensor:
    """Lower bound on the squared distance from (x, y) to any valid pixel outside the window
    (capped at ``_NONE``, which means none).

    A column c outside [x - half, x + half] is at least max(half + 1, gap to c's block) away
    horizontally, and its points are at least the block's smallest nearest-in-column |dy| away
    vertically. Blocks wholly inside the window are skipped.
    """
    xb = x[:, None]
    gap = torch.maximum(block_lo[None] - xb, xb - block_hi[None]).clamp(min=half + 1)
    inside = (block_lo[None] >= xb - half) & (block_hi[None] <= xb + half)
    bound = torch.where(inside, _NONE, gap * gap + bmin_sq[b, :, y])  # m x nb
    return bound.amin(dim=1).clamp(max=_NONE)


def _kdtree_search(valid: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """CPU path: one cKDTree per image over the valid pixels, queried at every pixel."""
    bsz, h, w = valid.shape
    n = h * w
    d2 = np.full((bsz * n, k), _NONE, dtype=np.int64)
    col = np.zeros((bsz * n, k), dtype=np.int64)
    row = np.zeros((bsz * n, k), dtype=np.int64)
    yy, xx = np.divmod(np.arange(n), w)
    grid = np.stack([xx, yy], axis=1).astype(np.float64)
    masks = valid.numpy()
    for b in range(bsz):
        pts = np.flatnonzero(masks[b])
        found = min(k, pts.size)
        if found == 0:
            continue
        px, py = pts % w, pts // w
        tree = cKDTree(np.stack([px, py], axis=1).astype(np.float64))
        _, arg = tree.query(grid, k=list(range(1, found + 1)), workers=-1)
        sl = slice(b * n, (b + 1) * n)
        col[sl, :found] = px[arg]
        row[sl, :found] = py[arg]
        d2[sl, :found] = (px[arg] - xx[:, None]) ** 2 + (py[arg] - yy[:, None]) ** 2
    return _finish(torch.from_numpy(d2), torch.from_numpy(col), torch.from_numpy(row), bsz, h, w, k)


def _finish(
    d2: Tensor, col: Tensor, row: Tensor, bsz: int, h: int, w: int, k: int
) -> tuple[Tensor, Tensor]:
    """Fill missing slots (fewer than k valid pixels) and shape the outputs for BP-Net."""
    n = bsz * h * w
    dev = d2.device
    pix = torch.arange(n, device=dev)
    self_x = (pix % w).to(col.dtype)
    self_y = (pix // w % h).to(col.dtype)
    missing = d2 >= _NONE
    # slot 0 missing means no valid pixel at all: point at the pixel itself
    col = col.clone()
    row = row.clone()
    col[:, 0] = torch.where(missing[:, 0], self_x, col[:, 0])
    row[:, 0] = torch.where(missing[:, 0], self_y, row[:, 0])
    for j in range(1, k):  # k is tiny: repeat the previous (farthest found) neighbour
        col[:, j] = torch.where(missing[:, j], col[:, j - 1], col[:, j])
        row[:, j] = torch.where(missing[:, j], row[:, j - 1], row[:, j])
    offsets = torch.stack([col - self_x[:, None], row - self_y[:, None]], dim=0)  # 2 x n x k
    offsets = offsets.view(2, bsz, h * w, k).permute(1, 0, 3, 2).float().contiguous()
    indices = (row.long() * w + col.long()).view(bsz, h * w, k).transpose(1, 2).contiguous()
    return offsets, indices
