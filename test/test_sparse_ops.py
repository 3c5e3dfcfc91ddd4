"""BP-Net's two non-standard ops against their definitions (direct loops, brute force)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from depth_completion_ros.networks import sparse_ops
from depth_completion_ros.networks.sparse_ops import dynamic_filter, nearest_valid_pixels

METHODS = ("separable", "brute_force", "kdtree", "kdtree_exact")


def _search(valid: torch.Tensor, k: int, method: str) -> tuple[torch.Tensor, torch.Tensor]:
    """nearest_valid_pixels through one of its four paths (torch picks brute force itself
    for small images, the kd-tree nudged queries; the tests force each path in turn)."""
    if method == "kdtree":
        return nearest_valid_pixels(valid, k, method="kdtree")
    if method == "kdtree_exact":  # the route of images too large for nudged queries
        saved = sparse_ops._NUDGE_LIMIT
        sparse_ops._NUDGE_LIMIT = 0.0
        try:
            return nearest_valid_pixels(valid, k, method="kdtree")
        finally:
            sparse_ops._NUDGE_LIMIT = saved
    if method == "brute_force" and valid[0].numel() > 6000:
        pytest.skip("brute force on this image would need over 100 MB")
    saved = sparse_ops._BRUTE_FORCE_MAX
    sparse_ops._BRUTE_FORCE_MAX = 0 if method == "separable" else 1 << 40
    try:
        return nearest_valid_pixels(valid, k, method="torch")
    finally:
        sparse_ops._BRUTE_FORCE_MAX = saved


def _loop_filter(x: np.ndarray, w: np.ndarray, k: int) -> np.ndarray:
    """The definition: out[y, x] = sum_ij x[y+i-r, x+j-r] * w[i*k+j, y, x], zero outside."""
    b, _, h, wd = x.shape
    r = k // 2
    out = np.zeros((b, 1, h, wd))
    for bi in range(b):
        for y in range(h):
            for xx in range(wd):
                acc = 0.0
                for i in range(k):
                    for j in range(k):
                        yy, xj = y + i - r, xx + j - r
                        if 0 <= yy < h and 0 <= xj < wd:
                            acc += x[bi, 0, yy, xj] * w[bi, i * k + j, y, xx]
                out[bi, 0, y, xx] = acc
    return out


@pytest.mark.parametrize("k", [3, 5, 7])
@pytest.mark.parametrize("seed", [0, 1])
def test_dynamic_filter_equals_direct_loop(k: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 1, 6, 9, generator=g, dtype=torch.float64)
    w = torch.randn(2, k * k, 6, 9, generator=g, dtype=torch.float64)
    got = dynamic_filter(x, w, k).numpy()
    np.testing.assert_allclose(got, _loop_filter(x.numpy(), w.numpy(), k), rtol=0, atol=1e-12)


def test_dynamic_filter_identity_kernel_and_errors() -> None:
    x = torch.randn(1, 1, 5, 7)
    w = torch.zeros(1, 25, 5, 7)
    w[:, 12] = 1.0  # the centre tap of a 5x5 kernel
    assert torch.equal(dynamic_filter(x, w, 5), x)
    with pytest.raises(ValueError, match="weights must be"):
        dynamic_filter(x, torch.zeros(1, 9, 5, 7), 5)
    with pytest.raises(ValueError, match="odd"):
        dynamic_filter(x, torch.zeros(1, 16, 5, 7), 4)
    with pytest.raises(ValueError, match="one channel"):
        dynamic_filter(torch.zeros(1, 2, 5, 7), w, 5)


def release_search(mask: np.ndarray, k: int = 4) -> np.ndarray:
    """The release's neighbour search (its CUDA kernel dist_kernel4), written out: valid pixels
    scanned in row-major order, each inserted before the first slot whose squared distance is
    >= its own (so among equal distances the later pixel comes first), missing slots repeat
    the previous one. Returns H*W x k flat indices (vectorised over pixels only)."""
    h, w = mask.shape
    pts = np.flatnonzero(mask)
    yy, xx = np.divmod(np.arange(h * w), w)
    best = np.full((h * w, k), np.inf)
    arg = np.zeros((h * w, k), dtype=np.int64)
    for m, p in enumerate(pts):
        py, px = divmod(int(p), w)
        d = (yy - py) ** 2 + (xx - px) ** 2
        ge = best >= d[:, None]
        has = ge.any(axis=1)
        slot = ge.argmax(axis=1)
        for j in range(k - 1, 0, -1):  # shift the slots behind the insertion point
            sel = has & (j > slot)
            best[sel, j] = best[sel, j - 1]
            arg[sel, j] = arg[sel, j - 1]
        rows = np.flatnonzero(has)
        best[rows, slot[rows]] = d[rows]
        arg[rows, slot[rows]] = m
    for j in range(1, k):
        miss = np.isinf(best[:, j])
        arg[miss, j] = arg[miss, j - 1]
    return pts[arg]


def _check_against_release(valid: torch.Tensor, k: int, method: str) -> None:
    offsets, indices = _search(valid, k, method)
    b, h, w = valid.shape
    assert offsets.shape == (b, 2, k, h * w) and offsets.dtype == torch.float32
    assert indices.shape == (b, k, h * w) and indices.dtype == torch.int64
    pix = torch.arange(h * w)
    for bi in range(b):
        mask = valid[bi].numpy()
        # offsets and indices name the same pixels
        nx = pix % w + offsets[bi, 0].long()
        ny = pix // w + offsets[bi, 1].long()
        assert torch.equal(ny * w + nx, indices[bi])
        # the very pixels the release picks, slot by slot
        np.testing.assert_array_equal(indices[bi].T.numpy(), release_search(mask, k))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("density", [0.01, 0.05, 0.3])
def test_nearest_valid_pixels_random_masks(method: str, seed: int, density: float) -> None:
    g = torch.Generator().manual_seed(seed)
    valid = torch.rand(2, 23, 41, generator=g) < density
    valid[:, 0, 0] = True  # at least k valid pixels in every image
    valid[:, -1, -1] = True
    valid[:, 11, 20] = True
    valid[:, 5, 33] = True
    _check_against_release(valid, 4, method)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("step", [(5, 4), (2, 2), (3, 3)])
def test_nearest_valid_pixels_ties_on_a_lattice(method: str, step: tuple[int, int]) -> None:
    """A regular lattice makes most distances tie: the release's tie rule decides the slots."""
    valid = torch.zeros(1, 30, 37, dtype=torch.bool)
    valid[:, 2 :: step[0], 3 :: step[1]] = True
    _check_against_release(valid, 4, method)


@pytest.mark.parametrize("method", METHODS)
def test_nearest_valid_pixels_tie_rule_known_answers(method: str) -> None:
    """Hand-made: a diamond of 4 points around (2, 2) in a 5 x 5 image, plus (0, 0).

    Flat indices: (0,0)=0, (0,2)=2, (2,0)=10, (2,4)=14, (4,2)=22. At (2,2) the diamond's four
    points are all at d2 = 4: later first -> 22, 14, 10, 2. At (0,0): itself (0), then 10 and
    2 at d2 = 4 (later first), then 22 and 14 at d2 = 20 -> 22. At (4,4): 22 and 14 at d2 = 4,
    then 10 and 2 at d2 = 20 -> 22, 14, 10, 2. At (0,4): 14, 2 (d2 = 4), 22, 0 (d2 = 20, 16)
    -> 0 has d2 = 16, so 14, 2, 0, 22."""
    valid = torch.zeros(1, 5, 5, dtype=torch.bool)
    for y, x in ((0, 0), (0, 2), (2, 0), (2, 4), (4, 2)):
        valid[0, y, x] = True
    _, indices = _search(valid, 4, method)
    got = indices[0].T  # 25 x 4
    assert got[2 * 5 + 2].tolist() == [22, 14, 10, 2]
    assert got[0].tolist() == [0, 10, 2, 22]
    assert got[4 * 5 + 4].tolist() == [22, 14, 10, 2]
    assert got[0 * 5 + 4].tolist() == [14, 2, 0, 22]


@pytest.mark.parametrize("method", METHODS)
def test_nearest_valid_pixels_fewer_than_k_known_answers(method: str) -> None:
    """Two points at equal distance from the middle column: later first, then the last slot
    repeats (the release's rule for missing slots)."""
    valid = torch.zeros(1, 3, 5, dtype=torch.bool)
    valid[0, 1, 0] = True  # index 5
    valid[0, 1, 4] = True  # index 9
    _, indices = _search(valid, 4, method)
    got = indices[0].T
    assert got[1 * 5 + 2].tolist() == [9, 5, 5, 5]  # (1, 2): both at d2 = 4
    assert got[0].tolist() == [5, 9, 9, 9]  # (0, 0): 5 at d2 = 1, 9 at d2 = 17


@pytest.mark.parametrize("method", METHODS)
def test_nearest_valid_pixels_far_from_data(method: str) -> None:
    """Data only in a wavy band at the bottom of a wide image (like the sky above a LiDAR):
    the torch search must widen its window up to the whole row."""
    g = torch.Generator().manual_seed(7)
    h, w = 40, 420
    valid = torch.zeros(1, h, w, dtype=torch.bool)
    top = (30 + 8 * torch.sin(torch.arange(w) / 40.0)).long()
    for x in range(0, w, 3):
        rows = torch.arange(int(top[x]), h, 4)
        valid[0, rows, x] = torch.rand(rows.numel(), generator=g) < 0.7
    valid[0, 0, 400] = True  # one lone point far from the band
    _check_against_release(valid, 4, method)


@pytest.mark.parametrize("method", METHODS)
def test_nearest_valid_pixels_long_strip(method: str) -> None:
    """Points only at one end of a 900-pixel strip: the far end's neighbours are 800+ columns
    away, beyond every window, so the torch search must fall back to whole rows."""
    valid = torch.zeros(1, 6, 900, dtype=torch.bool)
    valid[0, [0, 5, 2, 3, 1], [0, 1, 40, 41, 90]] = True
    _check_against_release(valid, 4, method)


@pytest.mark.parametrize("method", METHODS)
def test_nearest_valid_pixels_fewer_than_k(method: str) -> None:
    """Fewer than k valid pixels: the farthest one found repeats; none: the pixel itself."""
    valid = torch.zeros(3, 6, 8, dtype=torch.bool)
    valid[0, 1, 2] = True
    valid[1, 4, 6] = True
    valid[1, 0, 0] = True
    # image 2 has no valid pixel at all
    offsets, indices = _search(valid, 4, method)
    assert (indices[0] == 1 * 8 + 2).all()
    d2 = (offsets[1] ** 2).sum(0)  # k x N
    assert set(indices[1].unique().tolist()) == {0, 4 * 8 + 6}
    assert torch.equal(indices[1][2], indices[1][1]) and torch.equal(indices[1][3], indices[1][1])
    assert (d2[0] <= d2[1]).all()
    assert torch.equal(indices[2], torch.arange(48).expand(4, 48))
    assert (offsets[2] == 0).all()


@pytest.mark.parametrize("method", METHODS)
def test_nearest_valid_pixels_release_order_on_kitti(method: str, kitti_velodyne_raw_path: Path):
    """Real LiDAR map (a bottom-centre patch of the KITTI crop, ~4 % filled, ties everywhere
    along the scan lines): every path picks the release's pixels, slot by slot, and so does
    the map pooled 2x as BP-Net's level 1 sees it."""
    depth = cv2.imread(str(kitti_velodyne_raw_path), cv2.IMREAD_UNCHANGED)
    h, w = depth.shape
    crop = depth[h - 64 :, (w - 256) // 2 : (w - 256) // 2 + 256]
    valid = torch.from_numpy(crop > 0)[None]
    assert 300 < int(valid.sum()) < 3000
    _check_against_release(valid, 4, method)
    pooled = torch.nn.functional.max_pool2d(valid[None].float(), 2)[0] > 0
    _check_against_release(pooled, 4, method)


def test_nearest_valid_pixels_bad_input() -> None:
    with pytest.raises(ValueError, match="bool mask"):
        nearest_valid_pixels(torch.zeros(1, 4, 4))
    with pytest.raises(ValueError, match="B x H x W"):
        nearest_valid_pixels(torch.zeros(4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="method"):
        nearest_valid_pixels(torch.zeros(1, 4, 4, dtype=torch.bool), method="grid")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_sparse_ops_on_cuda_match_cpu() -> None:
    g = torch.Generator().manual_seed(3)
    valid = torch.rand(2, 64, 96, generator=g) < 0.05
    o_cpu, i_cpu = nearest_valid_pixels(valid, method="kdtree")
    o_gpu, i_gpu = nearest_valid_pixels(valid.cuda())  # separable path
    assert torch.equal(o_cpu, o_gpu.cpu()) and torch.equal(i_cpu, i_gpu.cpu())
    small = valid[:, :24, :32]
    o_cpu, i_cpu = nearest_valid_pixels(small, method="kdtree")
    o_gpu, i_gpu = nearest_valid_pixels(small.cuda())  # brute-force path
    assert torch.equal(o_cpu, o_gpu.cpu()) and torch.equal(i_cpu, i_gpu.cpu())
    for bi in range(2):
        np.testing.assert_array_equal(i_gpu[bi].cpu().T.numpy(), release_search(small[bi].numpy()))
    x = torch.randn(2, 1, 64, 96, generator=g)
    wt = torch.randn(2, 49, 64, 96, generator=g)
    torch.testing.assert_close(
        dynamic_filter(x.cuda(), wt.cuda(), 7).cpu(), dynamic_filter(x, wt, 7)
    )


def test_row_pass_in_chunks_is_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fewer valid pixels than neighbours asked for sends every pixel to the whole-row window;
    the row pass then works in chunks (a 352 x 1216 frame with three points once needed ~18 GB
    of candidate tables in one piece). Tiny chunks must give the same neighbours."""
    import depth_completion_ros.networks.sparse_ops as ops

    valid = torch.zeros(2, 40, 300, dtype=torch.bool)
    valid[0, [0, 20, 39], [0, 150, 299]] = True
    valid[1] = torch.rand(40, 300, generator=torch.Generator().manual_seed(4)) < 0.01
    want, want_idx = nearest_valid_pixels(valid, method="kdtree")
    monkeypatch.setattr(ops, "_WINDOW_CELLS", 1000)  # chunks of 1 to 66 pixels
    got, idx = nearest_valid_pixels(valid, method="torch")
    assert torch.equal(want, got) and torch.equal(want_idx, idx)
