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

Ties follow the authors' kernel (``dist_kernel4``), because each of the k slots has its own
weights in BP-Net and another pick among equally distant pixels changes the output of the
released weights. That kernel scans the valid pixels in row-major order and inserts each before
the first slot whose squared distance is >= its own, so the slots are in ascending squared
distance and, among equal distances, the LATER valid pixel (larger flat index y * W + x) comes
first. Every path here ranks by the integer key

    key = d2 * 2**28 + (2**28 - 1 - (y * W + x))

(smaller is nearer), which is that order exactly; the key also carries the pixel's index, so
the searches move one int64 per candidate. The window proofs are strict (a point outside as far
as the k-th would rank ahead of it), and the kd-tree nudges its query points so that its own
order is this one (see :func:`_kdtree_search`).
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

_NONE = 1 << 30  # squared distances from here up mean "no point" (real ones stay below 2**29)
_TIE_BITS = 28  # flat pixel indices stay below 2**28 (MAX_SIDE**2 < 2**28)
_TIE = (1 << _TIE_BITS) - 1
_NONE_KEY = 1 << 62  # keys from here up mean "no point" (real ones stay below 2**57; adding a
# squared column offset shifted by _TIE_BITS, below 2**56, stays inside int64)
_BLOCK = 32  # columns per block for the lower bound on columns outside the window
_BRUTE_FORCE_MAX = 1 << 26  # B * (H*W)^2 up to which every pixel pair is scored directly
_WINDOWS = (7, 31, 127, 511)  # half-widths of the row-pass windows, then the whole row
_NUDGE_LIMIT = 2.0**53  # kd-tree: nudged queries while d2max * H * W * 2048 stays below
_WINDOW_CELLS = 1 << 23  # candidate-table cells per chunk of the row pass (~250 MB of temps)


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
    """For every pixel, its ``k`` nearest valid pixels (Euclidean, in pixels), in the release's
    order: ascending squared distance, and among equal distances the later pixel (row-major)
    first.

    Args:
        valid: B x H x W or B x 1 x H x W bool mask of valid (sparse) pixels.
        k: how many neighbours (BP-Net uses 4).
        method: "torch" (the separable search, any device, no host copy), "kdtree" (scipy's
            cKDTree, CPU tensors only: faster on a CPU) or "auto" (kdtree for CPU tensors when
            scipy is installed, torch otherwise). All are exact and give the same answer.
    Returns:
        offsets: B x 2 x k x H*W float32, neighbour minus pixel: channel 0 = x (column),
            channel 1 = y (row).
        indices: B x k x H*W int64, flat index y * W + x of each neighbour.

    Images with fewer than ``k`` valid pixels repeat the previous slot in the missing ones (as
    the release does); an image with none gets each pixel itself (offset 0) in every slot, so
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
        return _finish(_kdtree_search(valid, k), bsz, h, w, k)
    if method != "torch":
        raise ValueError(
            f"nearest_valid_pixels: method must be 'auto', 'torch' or 'kdtree', got {method!r}"
        )
    if bsz * (h * w) ** 2 <= _BRUTE_FORCE_MAX:
        # small images (BP-Net's coarse levels): no host sync
        return _finish(_brute_force(valid, k), bsz, h, w, k)
    col_keys = _column_neighbours(valid, k)
    return _finish(_row_pass(col_keys, k), bsz, h, w, k)


def _brute_force(valid: Tensor, k: int) -> Tensor:
    """Every pixel against every pixel: a few large kernels and no data-dependent shapes, which
    beats the separable search on small images (and needs no host round trip on a GPU).

    Ranks by d2 * n + (n - 1 - index), the release's order, in int32 where it fits (half the
    memory of the int64 keys); returns the usual keys, B*H*W x k."""
    bsz, h, w = valid.shape
    n = h * w
    dev = valid.device
    max_key = ((h - 1) ** 2 + (w - 1) ** 2 + 1) * n
    dtype = torch.int32 if max_key < (1 << 31) - 1 else torch.int64
    none = torch.iinfo(dtype).max
    pix = torch.arange(n, device=dev, dtype=dtype)
    py, px = pix // w, pix % w
    key = ((py[:, None] - py[None]) ** 2 + (px[:, None] - px[None]) ** 2) * n + (n - 1 - pix)
    key = torch.where(valid.reshape(bsz, 1, n), key, none)  # B x n x n
    kk = min(k, n)
    best = torch.topk(key, kk, dim=2, largest=False, sorted=True)[0].view(-1, kk).long()
    idx = (n - 1) - best % n
    out = torch.where(best >= none, _NONE_KEY, ((best // n) << _TIE_BITS) + (_TIE - idx))
    if kk < k:  # fewer pixels than neighbours asked for: the missing slots are filled later
        out = F.pad(out, (0, k - kk), value=_NONE_KEY)
    return out


def _column_neighbours(valid: Tensor, k: int) -> Tensor:
    """Per pixel, the keys of the k nearest valid pixels of its own column, nearest first
    (``_NONE_KEY`` if none): B x W x H x k (column-major, one column's rows contiguous).

    In a column the release's order is (|dy|, then the lower pixel first); a point that is not
    among its column's k first has k points of that column ahead of it everywhere on the row,
    so the plane's k nearest are among these lists."""
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
    dy = rows - q_row[:, None]
    # int32 rank: dy^2, and of the two rows at the same |dy| the lower one (later) first
    rank = torch.where(same_col, 2 * dy * dy + (dy < 0), 1 << 30)
    best, arg = torch.topk(rank, k, dim=1, largest=False, sorted=True)
    dy = dy.gather(1, arg).long()
    flat = (q_row[:, None] + dy) * w + (q_col % w)[:, None]
    best = torch.where(best < (1 << 30), ((dy * dy) << _TIE_BITS) + (_TIE - flat), _NONE_KEY)
    return best.view(bsz, w, h, k)


def _block_minima(near_sq: Tensor) -> Tensor:
    """B x nblocks x H: the smallest nearest-in-column dy^2 over each block of columns."""
    bsz, w, h = near_sq.shape
    pad = (-w) % _BLOCK
    if pad:
        near_sq = F.pad(near_sq, (0, 0, 0, pad), value=_NONE)
    return near_sq.view(bsz, -1, _BLOCK, h).amin(dim=2)


def _row_pass(col_keys: Tensor, k: int) -> Tensor:
    """Merge the column lists over widening windows until every pixel's answer is proven.

    In a window, only the k columns whose first key is smallest can hold the k nearest points
    (any other column's points rank behind the first points of those k columns), so each pixel
    scores every window column once and merges just k lists. A point dx columns away has key
    (dx^2 << 28) + its column key, so the merge is additions of int64 keys.

    Returns the keys of the k nearest, B*H*W x k, pixels in (b, y, x) order.
    """
    bsz, w, h, _ = col_keys.shape
    dev = col_keys.device
    n = bsz * h * w
    near = col_keys[..., 0]  # B x W x H: the first point of each column
    near_sq = (near >> _TIE_BITS).clamp(max=_NONE)  # its dy^2 (``_NONE``: empty column)
    # W empty columns on either side: every window column is then a real index, and the ones
    # outside the image rank behind every point without a test
    padded = F.pad(col_keys, (0, 0, 0, 0, w, w), value=_NONE_KEY)  # B x 3W x H x k
    flat_near = padded[..., 0].contiguous().view(-1)
    flat_keys = padded.view(-1, k)
    bmin_sq = _block_minima(near_sq)  # B x nb x H
    nb = bmin_sq.shape[1]
    block_lo = torch.arange(nb, device=dev) * _BLOCK
    block_hi = block_lo + (_BLOCK - 1)

    out = torch.empty((n, k), dtype=torch.int64, device=dev)
    pix = torch.arange(n, device=dev)
    for half in (*_WINDOWS, w):
        half = min(half, w)
        # chunks bound the m x (2 half + 1) candidate tables (wide windows on sparse scans)
        step = max(1, _WINDOW_CELLS // (2 * half + 1))
        kth_parts = []
        for start in range(0, pix.numel(), step):
            part = pix[start : start + step]
            best = _window_pass(part, half, h, w, k, flat_near, flat_keys)
            out[part] = best
            kth_parts.append(best[:, -1])
        if half >= w:
            break
        # proven: no point outside the window can rank ahead of the k-th, i.e. every one is
        # strictly farther (an equally far one with a larger index would come first); the
        # rest go round again with a wider window
        kth = (torch.cat(kth_parts) >> _TIE_BITS).clamp(max=_NONE)
        open_ = kth >= (half + 1) ** 2
        pix, kth = pix[open_], kth[open_]
        if pix.numel() == 0:  # one host sync per pass: the loop must know when to stop
            break
        b = pix // (h * w)
        y = pix // w % h
        x = pix % w
        bound = _outside_bound(x, half, block_lo, block_hi, bmin_sq, b, y)
        pix = pix[(bound <= kth) & (bound < _NONE)]
        if pix.numel() == 0:
            break
    return out


def _window_pass(
    pix: Tensor,
    half: int,
    h: int,
    w: int,
    k: int,
    flat_near: Tensor,
    flat_keys: Tensor,
) -> Tensor:
    """The keys of the k nearest among the columns within +-half of each pixel in ``pix``,
    nearest first: m x k (int64). ``flat_near``/``flat_keys``: the column tables padded with
    W empty columns on either side."""
    b = pix // (h * w)
    y = pix // w % h
    x = pix % w
    offs = torch.arange(-half, half + 1, device=pix.device)
    # flat index of (b, column x + w + off, y) in the column-padded B x 3W x H tables
    gidx = (b * (3 * w * h) + y + (x + w) * h)[:, None] + offs * h  # m x (2 half + 1)
    shift = (offs * offs) << _TIE_BITS
    d0 = shift + flat_near[gidx]
    pick = torch.topk(d0, min(k, d0.shape[1]), dim=1, largest=False, sorted=False)[1]
    cand = shift[pick][..., None] + flat_keys[gidx.gather(1, pick)]  # m x k x k
    return torch.topk(cand.flatten(1), k, dim=1, largest=False, sorted=True)[0]


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


def _kdtree_search(valid: Tensor, k: int) -> Tensor:
    """CPU path: one cKDTree per image over the valid pixels, queried at every pixel.

    cKDTree breaks ties its own way, so the query points are moved by a tiny (ex, ey): a point
    dy rows and dx columns away then counts as d2 - 2 ey dy - 2 ex dx (+ const) far. With
    ey = 1/(16 H) and ex = ey / (4 W) that changes no order between different integer d2, and
    among equal d2 puts the later row, then the later column, first: the release's order,
    with no ties left (the smallest gap, 2 ex, stays far above float64 rounding at these
    sizes). Larger images, where it would not, take the exact route: ask for more neighbours
    than needed, re-rank by key, and prove the k-th (a returned neighbour strictly farther)."""
    bsz, h, w = valid.shape
    n = h * w
    out = np.full((bsz * n, k), _NONE_KEY, dtype=np.int64)
    masks = valid.numpy()
    ey = 1.0 / (16 * h)
    ex = ey / (4 * w)
    nudge = ((h - 1) ** 2 + (w - 1) ** 2 + 1) * h * w * 2048 < _NUDGE_LIMIT
    for b in range(bsz):
        pts = np.flatnonzero(masks[b])  # row-major, as the release scans them
        if pts.size == 0:
            continue
        tree = cKDTree(np.stack([pts % w, pts // w], axis=1).astype(np.float64))
        todo = np.arange(n)
        want = k if nudge else k + 2  # k + 2: ~2.5 % of a KITTI frame unproven
        while todo.size:
            want = min(want, pts.size)
            qy, qx = np.divmod(todo, w)
            query = np.stack([qx + ex, qy + ey], axis=1) if nudge else np.stack([qx, qy], 1)
            arg = tree.query(query.astype(np.float64), k=list(range(1, want + 1)), workers=-1)[1]
            found = pts[arg]  # m x want flat indices
            fy, fx = np.divmod(found, w)
            key = (((fy - qy[:, None]) ** 2 + (fx - qx[:, None]) ** 2) << _TIE_BITS) + (
                _TIE - found
            )
            key.sort(axis=1)
            kk = min(k, want)
            out[b * n + todo, :kk] = key[:, :kk]
            if nudge or want == pts.size:
                break
            # unproven: the farthest returned is exactly as far as the k-th
            tied = (key[:, -1] >> _TIE_BITS) == (key[:, k - 1] >> _TIE_BITS)
            todo = todo[tied]
            want = 3 * want
    return torch.from_numpy(out)


def _finish(keys: Tensor, bsz: int, h: int, w: int, k: int) -> tuple[Tensor, Tensor]:
    """Keys (B*H*W x k, nearest first) -> BP-Net's offsets and indices; missing slots (fewer
    than k valid pixels) repeat the previous one, as in the release."""
    n = bsz * h * w
    dev = keys.device
    pix = torch.arange(n, device=dev) % (h * w)
    idx = _TIE - (keys & _TIE)
    missing = keys >= _NONE_KEY
    # slot 0 missing means no valid pixel at all: point at the pixel itself
    idx[:, 0] = torch.where(missing[:, 0], pix, idx[:, 0])
    for j in range(1, k):  # k is tiny: repeat the previous slot
        idx[:, j] = torch.where(missing[:, j], idx[:, j - 1], idx[:, j])
    row, col = idx // w, idx % w
    offsets = torch.stack([col - (pix % w)[:, None], row - (pix // w)[:, None]], dim=0)
    offsets = offsets.view(2, bsz, h * w, k).permute(1, 0, 3, 2).float().contiguous()
    indices = idx.view(bsz, h * w, k).transpose(1, 2).contiguous()
    return offsets, indices
