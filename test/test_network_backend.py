"""NetworkBackend on real frames: geometry, intrinsics, refusals. Random weights saved by the
tests (plumbing, not accuracy); selfdc_r18 keeps them fast on a CPU."""

from __future__ import annotations

import logging

import cv2
import numpy as np
import pytest
import torch

from depth_completion_ros.backends.base import BackendError
from depth_completion_ros.backends.network import (
    NetworkBackend,
    adjust_intrinsics,
    fold_batchnorm,
    plan_geometry,
    resize_sparse,
)
from depth_completion_ros.networks.nlspn import selfdc_r18
from depth_completion_ros.networks.registry import get_model_spec


@pytest.fixture(scope="module")
def nyu_frame(nyu_frames):
    rgb = np.ascontiguousarray(cv2.imread(str(nyu_frames / "b" / "rgb.png"))[:, :, ::-1])
    dense = cv2.imread(str(nyu_frames / "b" / "depth.png"), cv2.IMREAD_UNCHANGED) / 1000.0
    rng = np.random.default_rng(0)
    idx = rng.choice(np.flatnonzero(dense > 0), 500, replace=False)  # NYU protocol: 500 samples
    sparse = np.zeros(dense.shape, np.float32)
    sparse.flat[idx] = dense.flat[idx]
    return rgb, sparse, np.load(nyu_frames / "b" / "intrinsics.npy").astype(np.float64)


def test_refuses_to_start_without_checkpoint():
    with pytest.raises(BackendError, match="needs a checkpoint.*random weights"):
        NetworkBackend(model="selfdc_r18", checkpoint="", device="cpu")
    with pytest.raises(BackendError, match="unknown model 'nlspn'.*bpnet, selfdc, selfdc_r18"):
        NetworkBackend(model="nlspn", checkpoint="x.pth")
    with pytest.raises(BackendError, match="unknown dataset"):
        NetworkBackend(model="selfdc_r18", allow_random_weights=True, dataset="cityscapes")
    with pytest.raises(BackendError, match="unknown precision"):
        NetworkBackend(model="selfdc_r18", allow_random_weights=True, precision="int8")


def test_wrong_checkpoint_is_a_backend_error(tmp_path, r18_weights):
    with pytest.raises(BackendError, match="not found"):
        NetworkBackend(model="selfdc_r18", checkpoint=tmp_path / "nope.pth", device="cpu")
    with pytest.raises(BackendError, match="looks like 'selfdc_r18'"):
        NetworkBackend(model="selfdc", checkpoint=r18_weights, device="cpu")


def test_kitti_frame_full_pipeline(kitti_frame, r18_weights):
    rgb, sparse, K = kitti_frame
    assert rgb.shape == (375, 1242, 3)
    backend = NetworkBackend(model="selfdc_r18", checkpoint=r18_weights, device="cpu")
    assert "selfdc_r18" in backend.describe() and "cpu" in backend.describe()
    # Built on the meta device and given the file's tensors: every weight real and equal.
    from safetensors.torch import load_file

    saved = load_file(str(r18_weights))
    assert not any(p.is_meta for p in backend.net.parameters())
    assert torch.equal(backend.net.conv1_rgb[0].weight, saved["conv1_rgb.0.weight"])
    assert torch.equal(
        backend.net.prop_layer.conv_offset_aff.weight, saved["prop_layer.conv_offset_aff.weight"]
    )
    g = backend.plan(375, 1242, backend.top_row(sparse))
    assert (g.y0, g.x0, g.ch, g.cw) == (23, 13, 352, 1216)  # bottom rows, centred columns
    assert g.tiles == ((0, 0, 13), (1210, 1229, 1242))  # and the columns beside them
    image, dep, _, _ = backend.prepare(rgb, sparse, K)
    # ImageNet statistics on 0-1 values, first pixel of the crop = input pixel (23, 13).
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    want = (rgb[23, 13] / 255.0 - mean) / std
    np.testing.assert_allclose(image[0, :, 0, 0].numpy(), want, rtol=1e-4, atol=1e-5)
    assert dep[0, 0].numpy() == pytest.approx(sparse[23:, 13:1229])
    out = backend.complete(rgb, sparse, K)
    assert out.shape == sparse.shape and out.dtype == np.float32
    assert np.isfinite(out).all()
    inside = np.zeros(out.shape, bool)
    inside[23:, :] = True  # the window's rows, every column (crop and edge tiles)
    assert (out[~inside] == 0).all()
    assert (out[inside] > 0).mean() > 0.5
    assert (out[23:, :13] > 0).any() and (out[23:, 1229:] > 0).any()
    # A second frame gives the same answer (no state kept between frames), also from a
    # negative-stride view (an RGB view of a BGR image) and float64 depth with NaN holes.
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    holes = np.where(sparse > 0, sparse, np.nan).astype(np.float64)
    again = backend.complete(bgr[:, :, ::-1], holes, K)
    np.testing.assert_array_equal(again, out)  # same tensors in, same kernels: bit-equal


def test_nyu_frame_resize_pad(nyu_frame, r18_weights):
    """NYU settings resize to half the Kinect's focal length (240 x 320, as the release ran)
    and, with samples everywhere, run the whole image padded to 256 x 320: no pixel is left
    out (the release's 228 x 304 centre crop was the benchmark's, for NYU's white borders)."""
    rgb, sparse, K = nyu_frame
    backend = NetworkBackend(
        model="selfdc_r18", checkpoint=r18_weights, device="cpu", dataset="nyu"
    )
    g = backend.plan(480, 640, backend.top_row(sparse), backend.scale(K))
    assert (g.rh, g.rw, g.ch, g.cw) == (240, 320, 240, 320)
    assert g.net_size == (256, 320) and g.top == 8  # padded to multiples of 32
    out = backend.complete(rgb, sparse, K)
    assert out.shape == (480, 640) and np.isfinite(out).all()
    assert (out > 0).mean() > 0.5 and (out[0] > 0).any() and (out[:, -1] > 0).any()


def test_kitti_settings_pad_small_images(nyu_frame, r18_weights):
    """An image smaller than the KITTI crop is padded to multiples of 32, not cropped (every
    row wanted: no support limit; with one, the rows above the LiDAR's top may be left out)."""
    rgb, sparse, K = nyu_frame
    rgb, sparse = rgb[:470, :630], sparse[:470, :630]
    backend = NetworkBackend(model="selfdc_r18", checkpoint=r18_weights, device="cpu", support=None)
    g = backend.plan(470, 630, backend.top_row(sparse))
    assert (g.ch, g.cw) == (470, 630) and g.net_size == (480, 640)
    assert (g.top, g.left) == (5, 5)
    image, dep, k_net, _ = backend.prepare(rgb, sparse, K)
    assert image.shape == (1, 3, 480, 640) and dep.shape == (1, 1, 480, 640)
    assert k_net[0, 0, 2].item() == pytest.approx(K[0, 2] + 5)
    assert (dep[0, 0, :5] == 0).all() and (
        dep[0, 0, 5:475, 5:635] == torch.from_numpy(sparse)
    ).all()
    out = backend.complete(rgb, sparse, K)
    assert out.shape == (470, 630) and np.isfinite(out).all() and (out > 0).mean() > 0.5


def test_intrinsics_follow_resize_crop_and_pad():
    """A 3D point projects to the same place through the geometry as through the new K."""
    K = np.array([[518.9, 0, 325.6], [0, 519.5, 253.7], [0, 0, 1.0]])
    spec = get_model_spec("bpnet").input_spec("kitti")
    g = plan_geometry(480, 640, spec, top_row=300, scale=1.31)
    assert g.resized and g.y0 > 0 and g.left > 0  # 629 x 838: bottom 352 rows, padded to 864
    K2 = adjust_intrinsics(K, g)
    rng = np.random.default_rng(1)
    pts = np.column_stack([rng.uniform(-1, 1, 20), rng.uniform(-1, 1, 20), rng.uniform(1, 5, 20)])
    uv = (K @ pts.T).T
    uv = uv[:, :2] / uv[:, 2:]
    # Input pixel -> resized pixel (centres scale) -> crop -> pad.
    u2 = (uv[:, 0] + 0.5) * g.sx - 0.5 - g.x0 + g.left
    v2 = (uv[:, 1] + 0.5) * g.sy - 0.5 - g.y0 + g.top
    uv_net = (K2 @ pts.T).T
    np.testing.assert_allclose(uv_net[:, 0] / uv_net[:, 2], u2, atol=1e-9)
    np.testing.assert_allclose(uv_net[:, 1] / uv_net[:, 2], v2, atol=1e-9)


def test_resize_sparse_keeps_real_measurements():
    sparse = torch.zeros(8, 8)
    sparse[0, 0], sparse[1, 1], sparse[5, 6] = 4.0, 3.0, 7.0  # first two share a target pixel
    small = resize_sparse(sparse, 4, 4)
    assert small[0, 0] == 3.0  # nearest return wins
    assert small[2, 3] == 7.0
    assert (small > 0).sum() == 2


def test_batchnorm_folding_keeps_outputs():
    torch.manual_seed(2)
    net = selfdc_r18().eval()
    with torch.no_grad():  # non-trivial BN statistics
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 2.0)
    rgb, dep = torch.randn(1, 3, 64, 96), (torch.rand(1, 1, 64, 96) < 0.1).float() * 20
    with torch.inference_mode():
        want = net(rgb, dep)
        assert fold_batchnorm(net) > 20
        got = net(rgb, dep)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-3)


def test_batchnorm_folding_keeps_bpnet_outputs():
    """BP-Net folds too, including the first propagation layer whose weight it reads directly
    (it then adds the folded bias): float64, so any wiring mistake shows."""
    from depth_completion_ros.networks.bpnet import BPNet

    torch.manual_seed(3)
    net = BPNet(base_channels=4).eval().double()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
    g = torch.Generator().manual_seed(3)
    image = torch.randn(1, 3, 64, 96, generator=g, dtype=torch.float64)
    sparse = torch.rand(1, 1, 64, 96, generator=g, dtype=torch.float64) * 40
    sparse = sparse * (torch.rand(1, 1, 64, 96, generator=g) < 0.1)
    K = torch.tensor([[[60.0, 0, 48], [0, 60, 32], [0, 0, 1]]], dtype=torch.float64)
    with torch.inference_mode():
        want = net(image, sparse, K)
        assert fold_batchnorm(net) > 250
        got = net(image, sparse, K)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    for a, b in zip(want, got, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-9)


def test_bad_inputs_are_explained(kitti_frame, r18_weights):
    rgb, sparse, K = kitti_frame
    backend = NetworkBackend(model="selfdc_r18", checkpoint=r18_weights, device="cpu")
    with pytest.raises(BackendError, match="rgb must be uint8"):
        backend.complete(rgb.astype(np.float32) / 255, sparse, K)
    with pytest.raises(BackendError, match="sparse depth must be H x W"):
        backend.complete(rgb, sparse[:-1], K)
    with pytest.raises(BackendError, match="K must be"):
        backend.complete(rgb, sparse, np.zeros((3, 3)))


def test_precision_and_device_fallbacks(kitti_frame, r18_weights, caplog):
    rgb, sparse, K = kitti_frame
    crop = (slice(200, 264), slice(300, 396))  # 64 x 96: small and fast
    rgb, sparse = np.ascontiguousarray(rgb[crop]), np.ascontiguousarray(sparse[crop])
    with caplog.at_level(logging.WARNING):
        half = NetworkBackend(
            model="selfdc_r18", checkpoint=r18_weights, device="cpu", precision="fp16"
        )
    assert half.precision == "fp32" and "fp16" in caplog.text
    bf16 = NetworkBackend(
        model="selfdc_r18", checkpoint=r18_weights, device="cpu", precision="bf16"
    )
    fp32 = NetworkBackend(model="selfdc_r18", checkpoint=r18_weights, device="cpu")
    a, b = bf16.complete(rgb, sparse, K), fp32.complete(rgb, sparse, K)
    assert np.isfinite(a).all() and a.shape == b.shape == (64, 96)
    assert np.median(np.abs(a - b) / np.maximum(b, 1e-3)) < 0.1  # bf16 is close, not equal
    if not torch.cuda.is_available():
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            cpu = NetworkBackend(model="selfdc_r18", checkpoint=r18_weights, device="cuda")
        assert cpu.device.type == "cpu" and "CUDA is not available" in caplog.text


def test_bpnet_inputs_follow_its_nyu_settings(nyu_frame):
    """BP-Net plumbing without its (slow) forward: ImageNet statistics, metres x 10, K, 256x320."""
    rgb, sparse, K = nyu_frame
    backend = NetworkBackend(model="bpnet", device="cpu", dataset="nyu", allow_random_weights=True)
    assert backend.folded > 250  # every BN of BP-Net folds, its propagation MLP's too
    image, dep, k_net, g = backend.prepare(rgb, sparse, K)
    assert image.shape == (1, 3, 256, 320) and dep.shape == (1, 1, 256, 320)
    assert k_net.shape == (1, 3, 3)
    np.testing.assert_allclose(k_net[0].numpy(), adjust_intrinsics(K, g), rtol=1e-6)
    assert dep.max().item() == pytest.approx(10 * sparse.max(), rel=1e-6)  # metres x 10
    # A mid-grey pixel normalises to (0.5 - mean) / std on 0-1 values.
    grey = np.full((480, 640, 3), 128, np.uint8)
    image, _, _, _ = backend.prepare(grey, sparse, K)
    want = (128 / 255 - 0.485) / 0.229
    assert image[0, 0, 128, 160].item() == pytest.approx(want, rel=1e-4)


def test_registry_knows_every_backend_model():
    from depth_completion_ros.backends import MODEL_NAMES
    from depth_completion_ros.networks.registry import MODELS

    assert set(MODEL_NAMES) - {"classical"} == set(MODELS)
    for name, spec in MODELS.items():
        for dataset in ("kitti", "nyu"):
            s = spec.input_spec(dataset)
            assert s.input_range in (1.0, 255.0) and s.depth_scale > 0, name
    assert MODELS["bpnet"].input_spec("nyu").depth_scale == 10.0
    assert MODELS["bpnet"].input_spec("kitti").input_range == 255.0
    assert MODELS["selfdc"].input_spec("kitti").model_kwargs["legacy"] is True
    grey = torch.full((1, 3, 2, 2), 128, dtype=torch.uint8)
    kitti_bp = MODELS["bpnet"].input_spec("kitti").normalize(grey)
    assert kitti_bp[0, 0, 0, 0].item() == pytest.approx((128 - 90.9950) / 79.2382)
    nyu = MODELS["selfdc"].input_spec("nyu").normalize(grey)
    assert nyu[0, 2, 0, 0].item() == pytest.approx((128 / 255 - 0.406) / 0.225)
    with pytest.raises(KeyError, match="known models: bpnet, selfdc, selfdc_r18"):
        get_model_spec("resnet")
    with pytest.raises(KeyError, match="no settings for dataset 'vkitti'"):
        MODELS["selfdc"].input_spec("vkitti")


def test_release_args_that_disagree_are_reported(tmp_path, caplog):
    """NLSPN's release records its training settings; ones the model does not share are named."""
    import argparse

    torch.manual_seed(0)
    path = tmp_path / "r18_args.pth"
    args = argparse.Namespace(prop_time=6, affinity="TGASS", conf_prop=True, lr=0.001)
    torch.save({"net": selfdc_r18().state_dict(), "args": args}, path)
    with caplog.at_level(logging.WARNING):
        NetworkBackend(model="selfdc_r18", checkpoint=path, device="cpu")
    assert "trained with prop_time=6 but the model uses 18" in caplog.text
    assert "conf_prop" not in caplog.text
