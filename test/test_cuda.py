"""The GPU path: every network op and backend on CUDA against the CPU, on real KITTI frames.

Skipped without a CUDA device (CI has none); run on a GPU machine with
``python -m pytest test/test_cuda.py test/test_sparse_ops.py test/test_bpnet.py``.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from depth_completion_ros.backends.network import NetworkBackend
from depth_completion_ros.networks.bpnet import BPNet
from depth_completion_ros.networks.deformable import modulated_deform_conv3x3
from depth_completion_ros.networks.sparse_ops import dynamic_filter, nearest_valid_pixels

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_neighbour_search_on_cuda_is_exact_at_kitti_size(kitti_frame) -> None:
    """The full-resolution search BP-Net runs at level 0, on the real LiDAR mask and on
    edge cases: the very pixels of the CPU kd-tree, slot by slot (both follow the release's
    tie rule, which test_sparse_ops checks against the release's kernel written out)."""
    _, sparse, _ = kitti_frame
    h, w = sparse.shape
    real = torch.from_numpy(sparse[h - 352 :, (w - 1216) // 2 :][:, :1216] > 0)[None]
    g = torch.Generator().manual_seed(11)
    masks = {
        "real": real,
        "random": torch.rand(1, 352, 1216, generator=g) < 0.02,
        "three_points": torch.zeros(1, 352, 1216, dtype=torch.bool),
        "empty": torch.zeros(1, 352, 1216, dtype=torch.bool),
        "batch": torch.cat([real, torch.rand(1, 352, 1216, generator=g) < 0.005]),
    }
    masks["three_points"][0, [0, 100, 351], [0, 600, 1215]] = True
    for name, valid in masks.items():
        o_cpu, i_cpu = nearest_valid_pixels(valid, method="kdtree")
        o_gpu, i_gpu = nearest_valid_pixels(valid.cuda(), method="torch")
        assert torch.equal(i_cpu, i_gpu.cpu()), name
        assert torch.equal(o_cpu, o_gpu.cpu()), name


def test_dynamic_filter_and_deformable_on_cuda_match_cpu() -> None:
    g = torch.Generator().manual_seed(5)
    x = torch.randn(1, 1, 96, 160, generator=g)
    for k in (3, 5, 7):
        wt = torch.randn(1, k * k, 96, 160, generator=g)
        torch.testing.assert_close(
            dynamic_filter(x.cuda(), wt.cuda(), k).cpu(), dynamic_filter(x, wt, k)
        )
    feat = torch.randn(1, 8, 48, 64, generator=g)
    offset = torch.randn(1, 18, 48, 64, generator=g) * 2
    mask = torch.rand(1, 9, 48, 64, generator=g)
    want = modulated_deform_conv3x3(feat, offset, mask)
    got = modulated_deform_conv3x3(feat.cuda(), offset.cuda(), mask.cuda())
    torch.testing.assert_close(got.cpu(), want, rtol=1e-4, atol=1e-4)


def test_bpnet_full_frame_on_cuda_matches_cpu_float64() -> None:
    """BP-Net's whole forward at KITTI size on CUDA in float64 equals the CPU's: no op behaves
    differently on the GPU (float64 so that only a real difference could show)."""
    torch.manual_seed(2)
    net = BPNet(base_channels=4).eval().double()
    g = torch.Generator().manual_seed(2)
    image = torch.randn(1, 3, 352, 1216, generator=g, dtype=torch.float64)
    sparse = torch.rand(1, 1, 352, 1216, generator=g, dtype=torch.float64) * 80
    sparse = sparse * (torch.rand(1, 1, 352, 1216, generator=g) < 0.05)
    K = torch.tensor([[[721.5, 0, 596.5], [0, 721.5, 149.9], [0, 0, 1]]], dtype=torch.float64)
    with torch.no_grad():
        want = net(image, sparse, K)
        got = copy.deepcopy(net).cuda()(image.cuda(), sparse.cuda(), K.cuda())
    for a, b in zip(want, got, strict=True):
        torch.testing.assert_close(b.cpu(), a, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
def test_backend_on_cuda_matches_cpu(kitti_frame, r18_weights, precision) -> None:
    """The node's backend on the real frame: CUDA (every precision) against CPU fp32."""
    rgb, sparse, K = kitti_frame
    cpu = NetworkBackend(model="selfdc_r18", checkpoint=r18_weights, device="cpu")
    gpu = NetworkBackend(
        model="selfdc_r18", checkpoint=r18_weights, device="cuda", precision=precision
    )
    want = cpu.complete(rgb, sparse, K)
    got = gpu.complete(rgb, sparse, K)
    assert got.shape == want.shape == sparse.shape and got.dtype == np.float32
    inside = want > 0
    assert inside.mean() > 0.5 and np.array_equal(got > 0, inside)
    rel = np.abs(got[inside] - want[inside]) / want[inside]
    limit = 1e-3 if precision == "fp32" else 3e-2  # TF32 convs; half-precision features
    assert np.median(rel) < limit, (precision, float(np.median(rel)))


def test_bpnet_backend_on_cuda_reuses_memory(kitti_frame) -> None:
    """BP-Net at full KITTI size through the backend, frame after frame: finite output and no
    growth of allocated CUDA memory (buffers are reused, nothing is kept per frame)."""
    rgb, sparse, K = kitti_frame
    backend = NetworkBackend(
        model="bpnet", device="cuda", precision="bf16", allow_random_weights=True
    )
    first = backend.complete(rgb, sparse, K)
    torch.cuda.synchronize()
    allocated = torch.cuda.memory_allocated()
    for _ in range(3):
        out = backend.complete(rgb, sparse, K)
    torch.cuda.synchronize()
    assert torch.cuda.memory_allocated() <= allocated
    assert np.isfinite(out).all() and (out > 0).mean() > 0.5
    np.testing.assert_array_equal(out > 0, first > 0)


def test_compiled_backend_matches_eager(kitti_frame, r18_weights) -> None:
    rgb, sparse, K = kitti_frame
    eager = NetworkBackend(model="selfdc_r18", checkpoint=r18_weights, device="cuda")
    compiled = NetworkBackend(
        model="selfdc_r18", checkpoint=r18_weights, device="cuda", compile=True
    )
    want = eager.complete(rgb, sparse, K)
    got = compiled.complete(rgb, sparse, K)
    assert compiled.compiled, "torch.compile fell back to eager"
    inside = want > 0
    assert np.median(np.abs(got[inside] - want[inside]) / want[inside]) < 1e-3
