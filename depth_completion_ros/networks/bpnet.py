"""BP-Net, the network of DMD3C (Tang et al., "Bilateral Propagation Network for Depth
Completion", CVPR 2024), in plain PyTorch.

Attribute names and parameter shapes match the authors' release (1,648 state_dict keys,
89,873,730 parameters; /work/shared/reference/bpnet_state_dict.tsv), so the BP-Net and DMD3C
KITTI weights load unchanged. Colour normalisation, cropping and device choice stay with the
caller: the registry's InputSpec (``networks/registry.py``) says what each set of weights expects
(normalisation, depth unit, crop); :data:`SIZE_MULTIPLE` is the network's own constraint.

Data flow (H x W input, multiples of 32; level l works at H/2^l x W/2^l):
  rgb -> conv_img (32, 1/1) -> layer1_img (64, 1/2) -> ... -> layer5_img (256, 1/32)
  pred5 .. pred0, coarse to fine, each:
    upcat: upsample the previous level's features and depth, concatenate this level's image
           features (absent at level 5)
    wpool: pool the full-resolution sparse depth to this level with learned per-pixel weights
           (a softmax over the valid pixels of each 2^l x 2^l block; absent at level 0)
    prop:  bilateral propagation: every pixel's depth from its 4 nearest valid pixels (slots
           in the release's order: nearer first, among equal distances the later pixel), each
           term (1 + a) * d + b weighted by a softmax, a, b and the weight predicted by an MLP
           from both pixels' features, the neighbour's 3-D point and the pixel offset
    fuse:  a U-Net over features + the 3-D points of that depth; a 3x3 conv adds a residual
    cspn:  CSPN++ refinement: 3x3, 5x5 and 7x7 per-pixel kernels, 2*(6-l) steps, sparse depth
           re-injected through a learned mask, the steps mixed by learned confidences
  outputs: the 6 depths, each bilinearly upsampled to H x W; the last is the answer.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from functools import partial

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from depth_completion_ros.networks.sparse_ops import dynamic_filter, nearest_valid_pixels

__all__ = [
    "BPNet",
    "SIZE_MULTIPLE",
    "VALID_DEPTH",
    "NUM_OUTPUTS",
    "bpnet_kitti",
    "check_input_size",
    "init_weights",
]

#: input height and width must be multiples of this (five stride-2 stages)
SIZE_MULTIPLE = 32
#: sparse depth counts as a measurement where it is above this (metres)
VALID_DEPTH = 1e-3
#: depth maps returned by :meth:`BPNet.forward`, coarse to fine
NUM_OUTPUTS = 6
#: number of nearest valid pixels each pixel's depth is propagated from
NUM_NEIGHBOURS = 4


def check_input_size(height: int, width: int) -> None:
    """Raise a ValueError naming the fix unless both sides are multiples of 32."""
    if height % SIZE_MULTIPLE or width % SIZE_MULTIPLE or height <= 0 or width <= 0:
        raise ValueError(
            f"BP-Net needs height and width that are multiples of {SIZE_MULTIPLE}, got "
            f"{height} x {width}: crop or pad the image, sparse depth and K first (KITTI: the "
            "bottom 352 rows and the centred 1216 columns)"
        )


# --------------------------------------------------------------------------------------------
# blocks


def _drop_path(x: Tensor, rate: float, training: bool) -> Tensor:
    """Stochastic depth: drop the whole residual branch of random samples while training."""
    if rate <= 0.0 or not training:
        return x
    keep = 1.0 - rate
    mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
    return x * mask / keep


class ConvBNAct(nn.Module):
    """conv -> BN -> activation; without BN the conv has a bias (names: conv.conv, conv.bn)."""

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel_size: int = 3,
        bn: bool = True,
        act: Callable[[], nn.Module] | None = nn.ReLU,
    ) -> None:
        super().__init__()
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        layers["conv"] = nn.Conv2d(cin, cout, kernel_size, padding=kernel_size // 2, bias=not bn)
        if bn:
            layers["bn"] = nn.BatchNorm2d(cout)
        layers["act"] = act() if act is not None else nn.Identity()
        self.conv = nn.Sequential(layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class UpConvBNAct(nn.Module):
    """x2 transposed conv (4x4, stride 2) -> BN -> ReLU."""

    CONV_BN_PAIRS = (("conv", "bn"),)

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.bn(self.conv(x)))


class ResBlock(nn.Module):
    """ResNet basic block (two 3x3 convs), with stochastic depth on the residual branch."""

    #: run as bn(conv(x)): inference may fold each BN into its conv
    CONV_BN_PAIRS = (("conv1", "bn1"), ("conv2", "bn2"))

    def __init__(self, cin: int, cout: int, stride: int = 1, drop_path: float = 0.0) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )
        self.drop_path = drop_path

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        skip = x if self.downsample is None else self.downsample(x)
        return F.relu(_drop_path(out, self.drop_path, self.training) + skip)


def _res_stage(cin: int, cout: int, stride: int, rates: list[float]) -> nn.Sequential:
    """One ResNet stage: the first block changes size/channels, the rest keep them."""
    blocks = [ResBlock(cin, cout, stride, rates[0])]
    blocks += [ResBlock(cout, cout, 1, r) for r in rates[1:]]
    return nn.Sequential(*blocks)


class UpSkip(nn.Module):
    """U-Net decoder step: upsample x2, concatenate the skip, 3x3 conv."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.upf = UpConvBNAct(cin, cout)
        self.conv = ConvBNAct(2 * cout, cout)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        return self.conv(torch.cat([self.upf(x), skip], dim=1))


class UpCat(nn.Module):
    """Bring the coarser level's features + depth up to this level and merge image features."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.upf = UpConvBNAct(cin + 1, cout)
        self.conv = ConvBNAct(2 * cout, cout)

    def forward(self, image_feat: Tensor, feat: Tensor, depth: Tensor) -> Tensor:
        up = self.upf(torch.cat([feat, depth.to(feat.dtype)], dim=1))
        return self.conv(torch.cat([up, image_feat], dim=1))


class BlockWeights(nn.Module):
    """Per-pixel full-resolution logits from level features: 1x1 MLP, then pixel shuffle."""

    def __init__(self, channels: int, stride: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            ConvBNAct(channels, channels, kernel_size=1),
            ConvBNAct(channels, channels, kernel_size=1),
            nn.Conv2d(channels, stride * stride, 1, bias=True),
            nn.PixelShuffle(stride),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class WeightedPool(nn.Module):
    """Sparse depth -> level resolution: a softmax-weighted mean of each block's valid pixels.

    Blocks with no valid pixel give 0 (no measurement), so the pooled map is sparse too.
    """

    def __init__(self, channels: int, level: int) -> None:
        super().__init__()
        self.size = 2**level
        self.permute = BlockWeights(channels, self.size)

    def forward(self, sparse: Tensor, feat: Tensor) -> Tensor:
        logits = self.permute(feat)
        s = self.size
        # depth in float32 whatever the features' precision (bf16 would round 80 m to 0.25 m)
        with torch.autocast(device_type=sparse.device.type, enabled=False):
            logits, sparse = _at_least_fp32(logits), _at_least_fp32(sparse)
            valid = sparse > VALID_DEPTH
            with torch.no_grad():  # the block maximum only keeps exp() in range
                peak = F.max_pool2d(logits.masked_fill(~valid, float("-inf")), s, stride=s)
                peak = torch.nan_to_num(peak, neginf=0.0)
                peak = F.interpolate(peak, scale_factor=s, mode="nearest")
            weight = torch.exp(torch.where(valid, logits - peak, 0.0)) * valid
            num = F.avg_pool2d(sparse * weight, s, stride=s)
            den = F.avg_pool2d(weight, s, stride=s)
            return num / (den + 1e-6)


class Coef(nn.Module):
    """1x1 conv to the three propagation coefficients: scale, shift, weight logit."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, 3, 1, bias=True)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        a, b, w = self.conv(x).split(1, dim=1)
        return a, b, w


class BilateralPropagation(nn.Module):
    """Depth at every pixel from its nearest valid pixels (the paper's pre-processing stage).

    For neighbour j of pixel p: an MLP sees [f(p), f(q_j), xyz(q_j), q_j - p] and predicts
    a_j, b_j, w_j; d(p) = sum_j softmax_j(w) * ((1 + a_j) * d(q_j) + b_j).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        c = channels
        gelu = nn.GELU
        self.convXF = nn.Sequential(
            ConvBNAct(2 * c + 5, c, kernel_size=1, act=gelu),
            ConvBNAct(c, c, kernel_size=1, act=gelu),
        )
        self.convXL = nn.Sequential(
            ConvBNAct(c, c, kernel_size=1, act=gelu),
            ConvBNAct(c, c, kernel_size=1, act=None),
        )
        self.coef = Coef(c)

    def forward(self, feat: Tensor, points: Tensor, offsets: Tensor, indices: Tensor) -> Tensor:
        """feat: BxCxHxW; points: Bx3xHxW (xyz of the valid pixels); offsets: Bx2xkxHW;
        indices: BxkxHW. Returns Bx1xHxW in float32: the MLP may run in reduced precision,
        the depth arithmetic does not."""
        bsz, c, h, w = feat.shape
        k = indices.shape[1]
        first = self.convXF[0].conv
        # The first layer is linear in the concatenation, so its self and neighbour parts are
        # applied per pixel and only the (C-channel) results are gathered: no (2C+5) x k x HW
        # tensor is ever built.
        w_self, w_nb, w_pt, w_off = first.conv.weight.split([c, c, 3, 2], dim=1)
        own = F.conv2d(feat, w_self).view(bsz, c, 1, h * w)
        src = F.conv2d(feat, w_nb) + F.conv2d(points.to(w_pt.dtype), w_pt)
        src = src.view(bsz, c, h * w)
        gathered = torch.gather(
            src.unsqueeze(2).expand(bsz, c, k, h * w),
            3,
            indices.view(bsz, 1, k, h * w).expand(bsz, c, k, h * w),
        )
        x = own + gathered + F.conv2d(offsets.to(w_off.dtype), w_off)
        if first.conv.bias is not None:  # only after BN folding; the release has none
            x = x + first.conv.bias.view(1, c, 1, 1)
        x = first.act(first.bn(x))
        x = self.convXF[1](x)
        x = F.gelu(x + self.convXL(x))
        a, b, logit = (_at_least_fp32(t) for t in self.coef(x))
        z = torch.gather(
            _at_least_fp32(points[:, 2:3]).reshape(bsz, 1, 1, h * w).expand(bsz, 1, k, h * w),
            3,
            indices.view(bsz, 1, k, h * w),
        )
        weight = torch.softmax(logit, dim=2)
        depth = (((1.0 + a) * z + b) * weight).sum(dim=2)
        return depth.view(bsz, 1, h, w)


class UNet(nn.Module):
    """Multi-modal fusion: ResNet encoder over features + xyz, transposed-conv decoder."""

    def __init__(self, channels: int, depth: int, drop_path: float, extra: int = 3) -> None:
        super().__init__()
        rates = np.linspace(0, drop_path, 2 * (1 + depth)).tolist()
        stem = nn.Sequential(
            ConvBNAct(channels + extra, channels), _res_stage(channels, channels, 1, rates[:2])
        )
        encoder: list[nn.Module] = [stem]
        decoder: list[nn.Module] = []
        cin = channels
        for i in range(depth):
            cout = min(2 * cin, 256)
            encoder.append(_res_stage(cin, cout, 2, rates[2 * (i + 1) : 2 * (i + 2)]))
            decoder.append(UpSkip(cout, cin))
            cin = cout
        self.encoder = nn.ModuleList(encoder)
        self.decoder = nn.ModuleList(decoder)

    def forward(self, x: Tensor) -> Tensor:
        skips = []
        for layer in self.encoder:
            x = layer(x)
            skips.append(x)
        for i in range(len(self.decoder) - 1, -1, -1):
            x = self.decoder[i](x, skips[i])
        return x


class KernelHead(nn.Module):
    """Per-pixel K x K propagation kernel: K*K-1 free taps normalised by their L1 norm, centre
    tap 1 - sum, so every kernel sums to one (CSPN's stability condition)."""

    def __init__(self, channels: int, size: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.conv = nn.Sequential(
            ConvBNAct(channels, channels),
            ConvBNAct(channels, size * size - 1, act=None),
        )

    def forward(self, feat: Tensor) -> Tensor:
        taps = self.conv(feat)
        taps = taps / (taps.abs().sum(dim=1, keepdim=True) + self.eps)
        centre = 1.0 - taps.sum(dim=1, keepdim=True)
        half = taps.shape[1] // 2
        return torch.cat([taps[:, :half], centre, taps[:, half:]], dim=1)


class CSPNRefine(nn.Module):
    """CSPN++ refinement with three kernel sizes, sparse re-injection and learned mixing."""

    sizes = (3, 5, 7)

    def __init__(self, channels: int, steps: int) -> None:
        super().__init__()
        self.steps = steps
        self.weight3x3 = KernelHead(channels, 3)
        self.weight5x5 = KernelHead(channels, 5)
        self.weight7x7 = KernelHead(channels, 7)
        self.convmask = nn.Sequential(
            ConvBNAct(channels, channels), ConvBNAct(channels, 3, bn=False, act=nn.Sigmoid)
        )
        softmax = partial(nn.Softmax, dim=1)
        self.convck = nn.Sequential(
            ConvBNAct(channels, channels), ConvBNAct(channels, 3, bn=False, act=softmax)
        )
        self.convct = nn.Sequential(
            ConvBNAct(channels + 3, channels), ConvBNAct(channels, 3, bn=False, act=softmax)
        )

    def forward(self, feat: Tensor, depth: Tensor, sparse: Tensor) -> Tensor:
        # in the weights' precision (float32 under autocast): many small steps of propagation
        # lose too much in half precision
        dtype = self.weight3x3.conv[0].conv.conv.weight.dtype
        with torch.autocast(device_type=feat.device.type, enabled=False):
            feat, depth, sparse = feat.to(dtype), depth.to(dtype), sparse.to(dtype)
            heads = (self.weight3x3, self.weight5x5, self.weight7x7)
            masks = (self.convmask(feat) * (sparse > VALID_DEPTH)).split(1, dim=1)
            conf = self.convck(feat)
            # Each step is h <- (1 - m) * filter(h, kernel) + m * sparse. Both m terms are the
            # same at every step, so (1 - m) is folded into the kernel and m * sparse computed
            # once: after the filter, one pass over the image per branch and step, not four.
            kernels = [head(feat) * (1.0 - m) for head, m in zip(heads, masks, strict=True)]
            inject = [m * sparse for m in masks]
            hs = [depth, depth, depth]
            history = [depth]
            for step in range(self.steps):
                hs = [
                    dynamic_filter(hi, kern, size) + inj
                    for hi, kern, inj, size in zip(hs, kernels, inject, self.sizes, strict=True)
                ]
                if step == self.steps // 2 - 1:
                    history.append((conf * torch.cat(hs, dim=1)).sum(dim=1, keepdim=True))
            history.append((conf * torch.cat(hs, dim=1)).sum(dim=1, keepdim=True))
            stack = torch.cat(history, dim=1)
            mix = self.convct(torch.cat([feat, stack], dim=1))
            return (mix * stack).sum(dim=1, keepdim=True)


def _at_least_fp32(t: Tensor) -> Tensor:
    """float16 / bfloat16 -> float32; float32 and float64 unchanged."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def _backproject(depth: Tensor, K: Tensor) -> Tensor:
    """B x 1 x H x W depth -> B x 3 x H x W camera points (x right, y down, z forward)."""
    _, _, h, w = depth.shape
    fx = K[:, 0, 0].view(-1, 1, 1, 1)
    fy = K[:, 1, 1].view(-1, 1, 1, 1)
    cx = K[:, 0, 2].view(-1, 1, 1, 1)
    cy = K[:, 1, 2].view(-1, 1, 1, 1)
    u = torch.arange(w, device=depth.device, dtype=depth.dtype).view(1, 1, 1, w)
    v = torch.arange(h, device=depth.device, dtype=depth.dtype).view(1, 1, h, 1)
    return torch.cat([depth * (u - cx) / fx, depth * (v - cy) / fy, depth], dim=1)


class Level(nn.Module):
    """One scale of BP-Net: propagate, fuse, refine (the paper's Pre + MF + Post)."""

    def __init__(
        self, level: int, cin: int, channels: int, drop_path: float, up: bool, pool: bool
    ) -> None:
        super().__init__()
        self.level = level
        self.upcat = UpCat(cin, channels) if up else None
        self.wpool = WeightedPool(channels, level) if pool else None
        self.prop = BilateralPropagation(channels)
        self.fuse = UNet(channels, depth=5 - level, drop_path=drop_path)
        self.conv = nn.Conv2d(channels, 1, 3, padding=1, bias=True)
        self.cspn = CSPNRefine(channels, steps=2 * (6 - level))

    def forward(
        self,
        feat: Tensor | None,
        depth: Tensor | None,
        image_feat: Tensor,
        sparse: Tensor,
        K: Tensor,
        neighbours: tuple[Tensor, Tensor] | None = None,
    ) -> tuple[Tensor, Tensor]:
        """``neighbours``: this level's (offsets, indices) computed outside the model (an
        exported graph, which cannot hold the data-dependent search; see
        :func:`precompute_neighbours`); None searches here."""
        if self.upcat is not None:
            if feat is None or depth is None:
                raise ValueError(f"BP-Net level {self.level} needs the coarser level's output")
            feat = self.upcat(image_feat, feat, depth)
        else:
            feat = image_feat
        sp = self.wpool(sparse, feat) if self.wpool is not None else sparse
        k_level = K.clone()
        k_level[:, :2] = K[:, :2] / 2**self.level
        # Pre: bilateral propagation from the nearest valid pixels (no gradient through the
        # neighbour choice, as in the paper)
        with torch.autocast(device_type=sp.device.type, enabled=False):
            sp32 = _at_least_fp32(sp)
            if neighbours is None:
                offsets, indices = nearest_valid_pixels(sp32.detach() > VALID_DEPTH, NUM_NEIGHBOURS)
            else:
                offsets, indices = neighbours
            points = _backproject(sp32, k_level.to(sp32.dtype))
        depth = self.prop(feat, points, offsets, indices)  # float32
        # MF: fuse features with the 3-D points of that depth, add a residual
        xyz = _backproject(depth, k_level.to(depth.dtype)).to(feat.dtype)
        feat = self.fuse(torch.cat([feat, xyz], dim=1))
        depth = depth + _at_least_fp32(self.conv(feat))
        # Post: CSPN++ refinement with the level's sparse depth
        depth = self.cspn(feat, depth, sp)
        return feat, depth


# --------------------------------------------------------------------------------------------
# the model


class BPNet(nn.Module):
    """BP-Net: ``forward(I, S, K)`` -> 6 depth maps B x 1 x H x W, coarse to fine.

    I: B x 3 x H x W normalised RGB (the registry's InputSpec); S: B x 1 x H x W metric sparse
    depth, 0 = none; K: B x 3 x 3 intrinsics of that (cropped) image; H, W multiples of 32.
    ``drop_path`` is the stochastic-depth rate used while training (no effect in eval mode).
    """

    def __init__(self, base_channels: int = 16, drop_path: float = 0.1) -> None:
        super().__init__()
        bc = base_channels
        rates = np.linspace(0, drop_path, 12).tolist()  # 2 blocks in each of 6 image stages
        self.conv_img = nn.Sequential(
            ConvBNAct(3, 2 * bc), _res_stage(2 * bc, 2 * bc, 1, rates[0:2])
        )
        self.layer1_img = _res_stage(2 * bc, 4 * bc, 2, rates[2:4])
        self.layer2_img = _res_stage(4 * bc, 8 * bc, 2, rates[4:6])
        self.layer3_img = _res_stage(8 * bc, 16 * bc, 2, rates[6:8])
        self.layer4_img = _res_stage(16 * bc, 16 * bc, 2, rates[8:10])
        self.layer5_img = _res_stage(16 * bc, 16 * bc, 2, rates[10:12])
        c = (2 * bc, 4 * bc, 8 * bc, 16 * bc, 16 * bc, 16 * bc)  # channels per level
        self.pred0 = Level(0, c[1], c[0], drop_path, up=True, pool=False)
        self.pred1 = Level(1, c[2], c[1], drop_path, up=True, pool=True)
        self.pred2 = Level(2, c[3], c[2], drop_path, up=True, pool=True)
        self.pred3 = Level(3, c[4], c[3], drop_path, up=True, pool=True)
        self.pred4 = Level(4, c[5], c[4], drop_path, up=True, pool=True)
        self.pred5 = Level(5, c[5], c[5], drop_path, up=False, pool=True)

    def forward(
        self,
        I: Tensor,  # noqa: N803, E741
        S: Tensor,  # noqa: N803
        K: Tensor,  # noqa: N803
        neighbours: list[tuple[Tensor, Tensor]] | None = None,
    ) -> list[Tensor]:
        """``neighbours``: per level 0..5, (offsets, indices) as :func:`precompute_neighbours`
        returns them, for a graph without the neighbour search (ONNX export); None: searched
        inside, as released."""
        _check_inputs(I, S, K)
        x0 = self.conv_img(I)
        x1 = self.layer1_img(x0)
        x2 = self.layer2_img(x1)
        x3 = self.layer3_img(x2)
        x4 = self.layer4_img(x3)
        x5 = self.layer5_img(x4)
        levels = (
            (self.pred5, x5),
            (self.pred4, x4),
            (self.pred3, x3),
            (self.pred2, x2),
            (self.pred1, x1),
            (self.pred0, x0),
        )
        outputs = []
        feat: Tensor | None = None
        depth: Tensor | None = None
        for module, image_feat in levels:
            nb = None if neighbours is None else neighbours[module.level]
            feat, depth = module(feat, depth, image_feat, S, K, nb)
            scale = 2**module.level
            if scale == 1:
                outputs.append(depth)
            else:
                outputs.append(
                    F.interpolate(depth, scale_factor=scale, mode="bilinear", align_corners=True)
                )
        return outputs

    def init_weights(self) -> None:
        """Training start: see :func:`init_weights`."""
        init_weights(self)


def level_valid_masks(S: Tensor) -> list[Tensor]:  # noqa: N803
    """Valid-pixel masks B x H_l x W_l of the sparse depth each level searches, levels 0..5.

    Level 0 searches ``S`` itself; level l > 0 searches :class:`WeightedPool`'s output, a
    weighted mean of each 2^l x 2^l block's valid depths, which is valid exactly where the
    block holds a valid pixel (for depths above 1.002e-3: the mean of values > 1e-3 with
    weights whose sum is at least 4^-l, divided by that sum + 1e-6). So the masks, and the
    neighbours, depend on ``S`` only, not on the network's weights.
    """
    valid = (S > VALID_DEPTH).float()
    masks = [valid[:, 0] > 0]
    for level in range(1, NUM_OUTPUTS):
        s = 2**level
        masks.append(F.max_pool2d(valid, s, stride=s)[:, 0] > 0)
    return masks


def precompute_neighbours(S: Tensor, method: str = "auto") -> list[tuple[Tensor, Tensor]]:  # noqa: N803
    """(offsets B x 2 x 4 x H_l*W_l, indices B x 4 x H_l*W_l) for levels 0..5: the neighbour
    search BP-Net runs inside :meth:`Level.forward`, done beforehand (an exported graph gets
    them as inputs, see ``depth_completion_ros.export``)."""
    return [
        nearest_valid_pixels(mask, NUM_NEIGHBOURS, method=method) for mask in level_valid_masks(S)
    ]


def init_weights(module: nn.Module) -> None:
    """Training start for BP-Net or any of its parts, as the release's weights_init: convs
    drawn from a normal with std sqrt(2 / (fan_in + fan_out)) truncated to [-2, 2] (absolute
    bounds: nn.init.trunc_normal_'s defaults, so in practice untruncated), zero biases, and
    zero BN gain on the last layer of every kernel head, so that propagation starts as the
    identity."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.Conv2d):  # transposed convs keep PyTorch's default
                fan_in, fan_out = m.weight[0].numel(), m.weight[:, 0].numel()
                _truncated_normal_(m.weight, (2.0 / (fan_in + fan_out)) ** 0.5)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        for m in module.modules():
            if isinstance(m, KernelHead):
                nn.init.zeros_(m.conv[1].conv.bn.weight)


def _truncated_normal_(w: Tensor, std: float, bound: float = 2.0) -> None:
    """Normal(0, std) truncated to [-bound, bound] by redrawing the outliers (exact, and much
    faster on a CPU than nn.init.trunc_normal_'s inverse-CDF sampling)."""
    w.normal_(0.0, std)
    out = w.abs() > bound
    redraw = torch.randn(int(out.sum()), dtype=w.dtype, device=w.device) * std
    while True:
        bad = redraw.abs() > bound
        count = int(bad.sum())
        if count == 0:
            break
        redraw[bad] = torch.randn(count, dtype=w.dtype, device=w.device) * std
    w[out] = redraw


def _check_inputs(I: Tensor, S: Tensor, K: Tensor) -> None:  # noqa: N803, E741
    """Clear errors for the mistakes callers make: shapes, batch sizes, sizes not /32."""
    if I.dim() != 4 or I.shape[1] != 3:
        raise ValueError(f"BP-Net: I must be B x 3 x H x W normalised RGB, got {tuple(I.shape)}")
    if S.dim() != 4 or S.shape[1] != 1 or S.shape[0] != I.shape[0] or S.shape[2:] != I.shape[2:]:
        raise ValueError(
            f"BP-Net: S must be B x 1 x H x W sparse depth matching I {tuple(I.shape)}, got "
            f"{tuple(S.shape)}"
        )
    if K.shape != (I.shape[0], 3, 3):
        raise ValueError(
            f"BP-Net: K must be B x 3 x 3 intrinsics (B = {I.shape[0]}), got {tuple(K.shape)}"
        )
    check_input_size(I.shape[2], I.shape[3])


def bpnet_kitti(weights: str | None = None) -> BPNet:
    """BP-Net as released for KITTI; loads a checkpoint (e.g. DMD3C's) when a path is given.

    Loading goes through networks.checkpoints (``weights_only=True``, strict): the error lists
    what is missing or unexpected and which model the file looks like.
    """
    if weights is None:
        return BPNet().eval()
    from depth_completion_ros.networks.checkpoints import load_checkpoint

    with torch.device("meta"):  # no random init of 90 M parameters that are overwritten
        net = BPNet()
    load_checkpoint(net, weights, model_name="bpnet", assign=True)  # weights_only, strict
    return net.eval()
