"""SelfDC/NLSPN network: released key layout, deformable sampling, propagation semantics."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from depth_completion_ros.networks.deformable import (
    deform_sample,
    modulated_deform_conv3x3,
    sampling_grid,
)
from depth_completion_ros.networks.nlspn import (
    NLSPNPropagation,
    SelfDCNet,
    selfdc,
    selfdc_r18,
    strip_training_heads,
)

REFERENCE_TSV = (
    Path(__file__).resolve().parents[1].parent
    / "shared"
    / "reference"
    / "nlspn_resnet34_state_dict.tsv"
)


def _reference_layout() -> dict[str, tuple[int, ...]]:
    if not REFERENCE_TSV.exists():
        pytest.skip(f"reference key list not found at {REFERENCE_TSV}")
    layout = {}
    for line in REFERENCE_TSV.read_text().splitlines()[1:]:
        key, shape, _dtype = line.split("\t")
        layout[key] = () if shape == "scalar" else tuple(int(s) for s in shape.split("x"))
    return layout


def test_selfdc_state_dict_matches_nlspn_release():
    ref = _reference_layout()
    with torch.device("meta"):
        net = selfdc()
    sd = net.state_dict()
    assert len(ref) == 274
    assert list(sd) == list(ref)  # same keys, same order
    assert {k: tuple(v.shape) for k, v in sd.items()} == ref
    assert sum(p.numel() for p in net.parameters()) == 26_231_790


def test_segmentation_decoder_only_when_asked():
    with torch.device("meta"):
        plain = selfdc()
        seg = selfdc(seg_classes=7)
    assert plain.seg_decoder is None and not any("seg" in k for k in plain.state_dict())
    seg_keys = [k for k in seg.state_dict() if k.startswith("seg_decoder.")]
    assert seg.state_dict()["seg_decoder.head.weight"].shape == (7, 128, 1, 1)
    # the same structure as the depth decoder, with its own weights
    for i in (5, 4, 3, 2):
        assert seg.state_dict()[f"seg_decoder.dec{i}.0.weight"].shape == (
            plain.state_dict()[f"dec{i}.0.weight"].shape
        )
    assert len(seg_keys) == 5 * (1 + 5) + 2  # 5 conv + BN blocks (BN: 5 entries), head w + b
    # The depth part is unchanged, in the released order, so released weights still load.
    depth_part = [k for k in seg.state_dict() if not k.startswith("seg_decoder.")]
    assert depth_part == list(plain.state_dict())


@pytest.mark.parametrize("ctor", [selfdc, selfdc_r18])
def test_forward_any_size_with_aux(ctor):
    torch.manual_seed(0)
    net = ctor(seg_classes=4).eval()
    rgb = torch.randn(1, 3, 50, 70)  # not a multiple of anything: decoder crops must cope
    dep = (torch.rand(1, 1, 50, 70) < 0.1).float() * 10
    with torch.inference_mode():
        depth, aux = net(rgb, dep, return_aux=True)
        plain = net(rgb, dep)
        train = net.forward_train(rgb, dep)
    assert depth.shape == (1, 1, 50, 70)
    assert torch.isfinite(depth).all() and (depth >= 0).all()
    assert torch.equal(depth, plain) and torch.equal(train["depth"], depth)
    assert torch.equal(train["init_depth"], aux["pred_init"])
    assert train["seg_logits"].shape == (1, 4, 50, 70) and "seg" not in aux
    assert aux["pred_init"].shape == aux["confidence"].shape == (1, 1, 50, 70)
    assert aux["offset"].shape == (1, 18, 50, 70) and aux["aff"].shape == (1, 9, 50, 70)
    # Affinities of each pixel sum to one (the reference pixel takes 1 - sum of neighbours).
    assert torch.allclose(aux["aff"].sum(1), torch.ones(1, 50, 70), atol=1e-5)


@pytest.mark.parametrize("ctor", [selfdc, selfdc_r18])
def test_training_heads_train_and_strip_off(ctor):
    """forward_train feeds both decoders' gradients; the stripped state_dict loads strictly
    into the inference model and gives the same forward."""
    torch.manual_seed(1)
    net = ctor(seg_classes=3).train()
    rgb = torch.randn(2, 3, 32, 64)
    dep = (torch.rand(2, 1, 32, 64) < 0.1).float() * 10
    out = net.forward_train(rgb, dep)
    assert out["seg_logits"].shape == (2, 3, 32, 64)
    assert out["depth"].shape == out["init_depth"].shape == (2, 1, 32, 64)
    same = net(rgb, dep, train=True)  # the DDP-friendly spelling
    assert set(same) == set(out)
    labels = torch.randint(0, 3, (2, 32, 64))
    loss = F.cross_entropy(out["seg_logits"], labels) + out["depth"].mean()
    loss.backward()
    for name in ("seg_decoder.dec5.0.weight", "seg_decoder.head.weight", "dec5.0.weight"):
        grad = net.get_parameter(name).grad
        assert grad is not None and grad.abs().sum() > 0, name
    net.eval()
    stripped = strip_training_heads(net.state_dict())
    assert not any(k.startswith("seg_decoder.") for k in stripped)
    plain = ctor().eval()
    plain.load_state_dict(stripped, strict=True)
    with torch.no_grad():
        assert torch.equal(plain(rgb, dep), net(rgb, dep))


def test_every_block_has_the_release_activation():
    """The release's conv_bn_relu / convt_bn_relu blocks (stems, conv6, decoders, heads) end in
    LeakyReLU(0.2); the torchvision BasicBlocks use ReLU; gd_dec0 has none, cf_dec0 a
    sigmoid. Every activation module of the network is named here."""
    net = selfdc(seg_classes=2)
    leaky = {
        "conv1_rgb.1", "conv1_dep.1", "conv6.2", "dec5.2", "dec4.2", "dec3.2", "dec2.2",
        "id_dec1.2", "id_dec0.1", "gd_dec1.2", "cf_dec1.2",
        *(f"seg_decoder.dec{i}.2" for i in (5, 4, 3, 2, 1)),
    }  # fmt: skip
    relu = {
        f"conv{i}.{j}.relu" for i, n in zip((2, 3, 4, 5), (3, 4, 6, 3), strict=True)
        for j in range(n)
    }  # fmt: skip
    found = {}
    for name, m in net.named_modules():
        if isinstance(m, (nn.ReLU, nn.LeakyReLU, nn.Sigmoid, nn.GELU, nn.Tanh, nn.ELU)):
            found[name] = m
    assert set(found) == leaky | relu | {"cf_dec0.1"}
    for name in leaky:
        assert type(found[name]) is nn.LeakyReLU and found[name].negative_slope == 0.2, name
    for name in relu:
        assert type(found[name]) is nn.ReLU, name
    assert type(found["cf_dec0.1"]) is nn.Sigmoid
    assert len(net.gd_dec0) == 1  # guidance: a plain conv (with bias)


def _regen():
    """scripts/regen_network_references.py: the crop and the seeded weights the pinned
    outputs were made with (and the release check that guards them)."""
    path = Path(__file__).resolve().parents[1] / "scripts" / "regen_network_references.py"
    spec = importlib.util.spec_from_file_location("regen_network_references", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


#: pinned outputs may differ from a fresh run by this much, relative to the map's largest
#: value. Measured: the same code on 1 vs 2 threads 9.3e-15 (selfdc) and 1.5e-14
#: (selfdc_r18); the project against the authors' code (other op order) 2.9e-14 (selfdc).
#: About 7x the largest.
PINNED_RTOL = 2e-13


@pytest.mark.parametrize("name", ["selfdc", "selfdc_r18"])
def test_output_pinned_on_real_kitti_crop(name, kitti_frame):
    """Seeded float64 weights on a 64 x 96 crop of the real KITTI frame give the stored
    outputs (written only after the release check passed; see the script)."""
    regen = _regen()
    stored = np.load(regen.OUT)
    inputs = regen.reference_inputs(*kitti_frame)
    for key, value in inputs.items():
        np.testing.assert_array_equal(value, stored[f"input_{key}"])
    got = regen.project_outputs(name, inputs)
    assert set(got) == {"depth", "init_depth"}
    for key, value in got.items():
        assert value.dtype == np.float64  # float64 end to end
        want = stored[f"{name}_{key}"]
        err = np.abs(value - want).max() / np.abs(want).max()
        assert err <= PINNED_RTOL, f"{name} {key}: relative difference {err:.3g}"


def _bilinear_zero(img: torch.Tensor, y: float, x: float) -> torch.Tensor:
    """Direct DCNv2 bilinear read of one point of a C x H x W map, zero outside."""
    h, w = img.shape[1:]
    y0, x0 = math.floor(y), math.floor(x)
    out = torch.zeros(img.shape[0], dtype=torch.float64)
    for yy, xx in ((y0, x0), (y0, x0 + 1), (y0 + 1, x0), (y0 + 1, x0 + 1)):
        if 0 <= yy < h and 0 <= xx < w:
            wgt = (1 - abs(y - yy)) * (1 - abs(x - xx))
            out += wgt * img[:, yy, xx].double()
    return out


def test_deformable_matches_direct_computation():
    torch.manual_seed(1)
    b, c, h, w = 2, 3, 6, 7
    feat = torch.randn(b, c, h, w)
    offset = torch.randn(b, 18, h, w) * 1.5  # some samples land outside the image
    mask = torch.rand(b, 9, h, w)
    got = modulated_deform_conv3x3(feat, offset, mask)
    want = torch.zeros(b, c, h, w, dtype=torch.float64)
    for n in range(b):
        for py in range(h):
            for px in range(w):
                for k in range(9):
                    ky, kx = k // 3 - 1, k % 3 - 1
                    y = py + ky + offset[n, 2 * k, py, px].item()
                    x = px + kx + offset[n, 2 * k + 1, py, px].item()
                    want[n, :, py, px] += mask[n, k, py, px].item() * _bilinear_zero(feat[n], y, x)
    assert torch.allclose(got.double(), want, atol=1e-5)


def test_zero_offsets_equal_a_plain_convolution():
    torch.manual_seed(2)
    feat = torch.randn(1, 1, 9, 11)
    weights = torch.rand(9)
    mask = weights.view(1, 9, 1, 1).expand(1, 9, 9, 11)
    got = modulated_deform_conv3x3(feat, torch.zeros(1, 18, 9, 11), mask)
    want = F.conv2d(feat, weights.view(1, 1, 3, 3), padding=1)
    assert torch.allclose(got, want, atol=1e-6)
    samples = deform_sample(feat, sampling_grid(torch.zeros(1, 18, 9, 11), 3, dilation=0))
    assert torch.allclose(samples, feat.unsqueeze(2).expand_as(samples))  # dilation 0: own pixel


@pytest.mark.parametrize("legacy, dilation", [(False, 1), (True, 2)])
def test_propagation_step_is_a_weighted_neighbour_average(legacy, dilation):
    """With constant raw affinities the step is a fixed 3x3 filter; the released ('legacy')
    layer reads its zero-offset neighbours two pixels away."""
    prop = NLSPNPropagation(prop_time=1, conf_prop=False, preserve_input=False, legacy=legacy)
    a = 0.25
    with torch.no_grad():
        prop.conv_offset_aff.bias[16:] = math.atanh(a)  # raw affinity channels
    torch.manual_seed(3)
    depth = torch.rand(1, 1, 12, 13) * 10
    guide = torch.zeros(1, 8, 12, 13)
    out, _, aff = prop(depth, guide, None, None)
    each = a / 4.0  # tanh(raw) / (gamma * 8); sum |aff| = 0.5 < 1, so no renormalisation
    kernel = torch.full((3, 3), each)
    kernel[1, 1] = 1 - 8 * each
    want = F.conv2d(depth, kernel.view(1, 1, 3, 3), padding=dilation, dilation=dilation)
    assert torch.allclose(out, want, atol=1e-5)


def test_preserve_input_and_confidence():
    torch.manual_seed(4)
    prop = NLSPNPropagation(prop_time=3, legacy=False)
    with torch.no_grad():
        prop.conv_offset_aff.weight.normal_(0, 0.05)  # small offsets, mixed affinities
    depth = torch.rand(1, 1, 16, 16)
    guide = torch.randn(1, 8, 16, 16)
    out_zero, _, aff = prop(depth, guide, torch.zeros(1, 1, 16, 16), None)
    # Zero confidence everywhere: neighbours get no weight and the map is unchanged.
    assert torch.allclose(out_zero, depth, atol=1e-5)
    assert torch.allclose(aff[:, 4], torch.ones(1, 16, 16))
    fixed = torch.zeros(1, 1, 16, 16)
    fixed[0, 0, 8, 8] = 50.0
    ones = torch.ones(1, 1, 16, 16)
    free, _, _ = prop(depth, guide, ones, None)
    kept, _, _ = prop(depth, guide, ones, fixed)
    gain = (kept - free)[0, 0]
    # The measured 50 m is written back before every step and spreads around its pixel,
    # but 3 steps cannot carry it to the far corner.
    assert gain[7:10, 7:10].sum() > 10
    assert gain[:3, :3].abs().max() < 1e-6


def test_propagation_stays_float32_under_bf16_autocast():
    torch.manual_seed(5)
    net = selfdc_r18().eval()
    rgb, dep = torch.randn(1, 3, 32, 64), (torch.rand(1, 1, 32, 64) < 0.2).float() * 5
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(rgb, dep)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_float64_end_to_end():
    """float64 weights give float64 depth (no float32 cast before the propagation)."""
    torch.manual_seed(6)
    net = selfdc_r18().double().eval()
    rgb = torch.randn(1, 3, 32, 64, dtype=torch.float64)
    dep = (torch.rand(1, 1, 32, 64) < 0.2).double() * 5
    with torch.no_grad():
        depth, aux = net(rgb, dep, return_aux=True)
    assert depth.dtype == aux["aff"].dtype == aux["offset"].dtype == torch.float64


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="seg_classes"):
        SelfDCNet(18, seg_classes=1)
    with pytest.raises(ValueError, match="seg_classes"):
        SelfDCNet(18, seg_classes=-2)
    with pytest.raises(ValueError, match="ResNet depth"):
        SelfDCNet(50)


@pytest.mark.parametrize("legacy", [False, True])
def test_neighbour_confidence_is_read_at_the_neighbour(legacy):
    prop = NLSPNPropagation(prop_time=1, preserve_input=False, legacy=legacy)
    with torch.no_grad():
        prop.conv_offset_aff.bias[16:] = math.atanh(0.25)
    conf = torch.ones(1, 1, 10, 10)
    conf[0, 0, 5, 7] = 0.0
    with torch.no_grad():
        _, aff, _ = prop.offsets_affinities(torch.zeros(1, 8, 10, 10), conf)
    right = 5  # kernel point (0, +1), row-major
    assert aff[0, right, 5, 6] == 0  # its right neighbour (5, 7) has no confidence
    assert aff[0, right, 5, 5] == pytest.approx(0.0625)
    assert aff[0, 4, 5, 6] == pytest.approx(1 - 7 * 0.0625)  # the pixel keeps the rest
