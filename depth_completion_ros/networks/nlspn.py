"""SelfDC's network: NLSPN (Park et al., ECCV 2020) plus a training-only segmentation decoder.

Attribute names and parameter shapes match the NLSPN release (ResNet-34, 274 state_dict keys,
26,231,790 parameters; /work/shared/reference/nlspn_resnet34_state_dict.tsv), so its KITTI and
NYU weights load unchanged. Layout, one file per architecture: blocks, the propagation layer,
the model, named constructors.

Data flow (H x W input, any size; decoder outputs are cropped to the skip they meet):
  rgb -> conv1_rgb (48) --+
  dep -> conv1_dep (16) --+-> fe1 (64, 1/1) -> conv2..conv5 (ResNet layers 1-4: 1/1..1/8)
      -> conv6 (1/16) -> dec5..dec2 (transposed convs with skips, back to 1/1)
      -> heads: initial depth (id_), guidance for 8 neighbours (gd_), confidence (cf_)
      -> NLSPN: 18 x modulated deformable 3x3 propagation -> depth (clamped at 0)
SelfDC adds ``seg_decoder``, a second decoder of the same structure with a 1x1 class head,
trained with pseudo-labels and dropped at inference (its keys exist only when ``seg_classes``
> 0; :func:`strip_training_heads` removes them from a training state_dict).
Activations follow the release: LeakyReLU(0.2) in every conv/convt block outside the ResNet
(stems, conv6, decoder, heads), ReLU inside the torchvision-style BasicBlocks.
``selfdc_r18`` (``encoder_stride=4``) is this project's CPU variant: same modules, ResNet-18,
encoder from 1/4 and heads at 1/2 resolution, propagation at full resolution (~0.75 s per
KITTI frame on 2 CPU cores in fp32 against ~7.4 s for the ResNet-34 release layout).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from depth_completion_ros.networks.deformable import (
    deform_sample,
    modulated_deform_sum,
    sampling_grid,
)

__all__ = [
    "NLSPNPropagation",
    "SegDecoder",
    "SelfDCNet",
    "selfdc",
    "selfdc_r18",
    "strip_training_heads",
]

_log = logging.getLogger(__name__)

#: negative slope of the release's conv_bn_relu / convt_bn_relu blocks (common.py)
LEAKY_SLOPE = 0.2


# ---------------------------------------------------------------------------------------------
# Blocks
# ---------------------------------------------------------------------------------------------


def conv_bn_relu(
    cin: int, cout: int, stride: int = 1, *, bn: bool = True, relu: bool = True
) -> nn.Sequential:
    """3x3 conv (+ BN) (+ LeakyReLU(0.2), the release's "relu"); index 0 is the conv, 1 the
    BN, as in the release's keys."""
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, stride, 1, bias=not bn)]
    if bn:
        layers.append(nn.BatchNorm2d(cout))
    if relu:
        layers.append(nn.LeakyReLU(LEAKY_SLOPE, inplace=True))
    return nn.Sequential(*layers)


def convt_bn_relu(cin: int, cout: int) -> nn.Sequential:
    """3x3 stride-2 transposed conv + BN + LeakyReLU(0.2): doubles the resolution exactly."""
    return nn.Sequential(
        nn.ConvTranspose2d(cin, cout, 3, 2, 1, output_padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.LeakyReLU(LEAKY_SLOPE, inplace=True),
    )


class BasicBlock(nn.Module):
    """ResNet basic block (two 3x3 convs and a shortcut), torchvision attribute names."""

    #: run as bn(conv(x)): inference may fold each BN into its conv
    CONV_BN_PAIRS = (("conv1", "bn1"), ("conv2", "bn2"))

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


def resnet_layer(cin: int, cout: int, blocks: int, stride: int) -> nn.Sequential:
    """One ResNet stage; the first block changes resolution and width."""
    layers = [BasicBlock(cin, cout, stride)]
    layers += [BasicBlock(cout, cout) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


RESNET_BLOCKS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}


def _cat(fd: torch.Tensor, fe: torch.Tensor) -> torch.Tensor:
    """Concatenate a decoder feature with its skip, cropping the decoder's extra rows/columns.

    Stride-2 convs round up (ceil(H/2)) and transposed convs double, so at odd sizes the
    decoder is one pixel larger than the skip; cropping it lets any input size through.
    """
    return torch.cat((fd[:, :, : fe.shape[2], : fe.shape[3]], fe), dim=1)


# ---------------------------------------------------------------------------------------------
# NLSPN propagation
# ---------------------------------------------------------------------------------------------


class NLSPNPropagation(nn.Module):
    """Non-local spatial propagation with TGASS affinities and confidence (NLSPN, Sec. 3).

    From 8 guidance channels a 3x3 conv predicts, per pixel, 8 neighbour offsets and 8 raw
    affinities. Affinities are tanh(a) / gamma (gamma learned, initialised to 0.5 * 8), scaled by
    the neighbours' confidence, divided by max(1, sum |a|) so the update is stable, and the pixel
    itself gets 1 - sum(a). Depth is then propagated ``prop_time`` times; measured pixels are
    written back before each step when ``preserve_input`` is on.

    ``legacy``: the released KITTI/NYU weights were trained with code whose confidence lookup
    added each neighbour's kernel position p_k into the *shared* offset tensor in place, so
    the confidence was read at p + p_k + o_k but the propagation read neighbours at
    p + 2*p_k + o_k (the authors evaluate them with ``--legacy`` to keep that behaviour).
    On: reproduce it, needed for those weights. Off (our own trainings): both read at
    p + p_k + o_k, the layer the paper describes.
    """

    def __init__(
        self,
        guide_channels: int = 8,
        kernel: int = 3,
        prop_time: int = 18,
        gamma: float = 0.5,
        *,
        conf_prop: bool = True,
        preserve_input: bool = True,
        legacy: bool = True,
    ) -> None:
        super().__init__()
        if kernel != 3:
            raise ValueError("only the released 3x3 propagation kernel is implemented")
        self.kernel = kernel
        self.num = kernel * kernel - 1
        self.idx_ref = self.num // 2
        self.prop_time = prop_time
        self.conf_prop = conf_prop
        self.preserve_input = preserve_input
        self.legacy = legacy
        # Learnable affinity normaliser gamma * num (the "TG" of TGASS).
        self.aff_scale_const = nn.Parameter(gamma * self.num * torch.ones(1))
        # Fixed all-ones kernels and zero bias of the release's deformable convs (kept as frozen
        # parameters so its state_dict keys match).
        self.w = nn.Parameter(torch.ones(1, 1, kernel, kernel), requires_grad=False)
        self.b = nn.Parameter(torch.zeros(1), requires_grad=False)
        self.w_conf = nn.Parameter(torch.ones(1, 1, 1, 1), requires_grad=False)
        self.conv_offset_aff = nn.Conv2d(guide_channels, 3 * self.num, 3, 1, 1)
        # Zero offsets and equal affinities at the start of training, as in the paper.
        nn.init.zeros_(self.conv_offset_aff.weight)
        nn.init.zeros_(self.conv_offset_aff.bias)

    def offsets_affinities(
        self, guide: torch.Tensor, confidence: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Offsets (B x 18 x H x W, DCN layout), affinities (B x 9 x H x W), sampling grid."""
        b, _, h, w = guide.shape
        o1, o2, aff = torch.chunk(self.conv_offset_aff(guide), 3, dim=1)
        off = torch.cat((o1, o2), dim=1).view(b, self.num, 2, h, w)
        zero = off.new_zeros(b, 1, 2, h, w)
        off = torch.cat((off[:, : self.idx_ref], zero, off[:, self.idx_ref :]), dim=1)
        if self.legacy:
            # Neighbour k's own kernel position added once more (see the class docstring).
            r = (self.kernel - 1) // 2
            steps = torch.arange(-r, r + 1, device=off.device, dtype=off.dtype)
            dy, dx = torch.meshgrid(steps, steps, indexing="ij")
            pos = torch.stack((dy.reshape(-1), dx.reshape(-1)), dim=1).view(1, -1, 2, 1, 1)
            off = off + pos
        offset = off.reshape(b, 2 * (self.num + 1), h, w)
        grid = sampling_grid(offset, self.kernel)

        aff = torch.tanh(aff) / (self.aff_scale_const + 1e-8)
        if self.conf_prop:
            if confidence is None:
                raise ValueError("conf_prop is on: pass the confidence map")
            # Each neighbour's confidence, read where that neighbour is sampled (legacy: at
            # p + p_k + o_k, one kernel step nearer than its depth). Offsets get no gradient here.
            if self.legacy:
                conf_grid = sampling_grid(offset.detach(), self.kernel, dilation=0)
            else:
                conf_grid = grid.detach()
            conf = modulated_deform_sum_1x1(confidence, conf_grid, self.w_conf, self.b)
            conf = torch.cat((conf[:, : self.idx_ref], conf[:, self.idx_ref + 1 :]), dim=1)
            aff = aff * conf.to(aff.dtype)
        abs_sum = (aff.abs().sum(dim=1, keepdim=True) + 1e-4).clamp(min=1.0)
        aff = aff / abs_sum
        aff_ref = 1.0 - aff.sum(dim=1, keepdim=True)
        aff = torch.cat((aff[:, : self.idx_ref], aff_ref, aff[:, self.idx_ref :]), dim=1)
        return offset, aff, grid

    def forward(
        self,
        init: torch.Tensor,
        guide: torch.Tensor,
        confidence: torch.Tensor | None,
        fixed: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Propagate ``init`` (B x 1 x H x W); returns (depth, offsets, affinities)."""
        offset, aff, grid = self.offsets_affinities(guide, confidence)
        weight = aff * self.w.reshape(1, -1, 1, 1)
        depth = init
        if self.preserve_input and fixed is not None:
            keep = (fixed > 0).to(init.dtype)
            fixed_part = keep * fixed
            free = 1.0 - keep
        for _ in range(self.prop_time):
            if self.preserve_input and fixed is not None:
                depth = free * depth + fixed_part
            depth = modulated_deform_sum(depth, grid, weight) + self.b.view(1, -1, 1, 1)
        return depth, offset, aff


def modulated_deform_sum_1x1(
    feat: torch.Tensor, grid: torch.Tensor, w: torch.Tensor, b: torch.Tensor
) -> torch.Tensor:
    """Per-neighbour 1x1 deformable read, B x K x H x W (the release's confidence lookup)."""
    return deform_sample(feat, grid)[:, 0] * w.reshape(()) + b.reshape(())


# ---------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------


class SegDecoder(nn.Module):
    """SelfDC's training-only segmentation decoder: the depth decoder's structure (transposed
    convs meeting the encoder skips) with its own weights, and a 1x1 head to class logits."""

    def __init__(self, classes: int) -> None:
        super().__init__()
        self.dec5 = convt_bn_relu(512, 256)
        self.dec4 = convt_bn_relu(256 + 512, 128)
        self.dec3 = convt_bn_relu(128 + 256, 64)
        self.dec2 = convt_bn_relu(64 + 128, 64)
        self.dec1 = conv_bn_relu(64 + 64, 64)
        self.head = nn.Conv2d(64 + 64, classes, 1)

    def forward(self, feats: list[torch.Tensor], up: Any) -> torch.Tensor:
        """``feats``: the encoder's fe1..fe6; ``up``: the model's head upsampling (identity in
        NLSPN). Logits at the resolution of fe1."""
        fe1, fe2, fe3, fe4, fe5, fe6 = feats
        x = self.dec5(fe6)
        x = self.dec4(_cat(x, fe5))
        x = self.dec3(_cat(x, fe4))
        x = self.dec2(_cat(x, fe3))
        x = self.dec1(_cat(x, fe2))
        return self.head(_cat(up(x), fe1))


class SelfDCNet(nn.Module):
    """NLSPN depth completion network with SelfDC's optional segmentation decoder.

    forward(rgb, dep): rgb B x 3 x H x W normalised as the weights expect (see the registry),
    dep B x 1 x H x W metric sparse depth (0 = none). Returns B x 1 x H x W depth, or with
    ``return_aux=True`` (depth, dict with 'pred_init', 'confidence', 'guidance', 'offset',
    'aff'). Training uses :meth:`forward_train` (or ``forward(..., train=True)``, the same
    through a DDP wrapper), which also returns the segmentation logits.

    Precision: the whole network runs in the weights' dtype (float64 included); under
    autocast the propagation, which addresses pixels by coordinate and repeats 18 times, runs
    in float32 at least.
    """

    #: a confidence head: ``forward(..., return_aux=True)[1]['confidence']`` (B x 1 x H x W,
    #: 0-1), published on depth/confidence by the network backend
    provides_confidence = True
    #: prefixes of training-only parts; a checkpoint may carry them for a model built without
    training_only_prefixes: tuple[str, ...] = ("seg_decoder.",)

    def __init__(
        self,
        depth: int = 34,
        *,
        seg_classes: int = 0,
        prop_time: int = 18,
        gamma: float = 0.5,
        conf_prop: bool = True,
        preserve_input: bool = True,
        legacy: bool = True,
        encoder_stride: int = 1,
    ) -> None:
        super().__init__()
        if encoder_stride not in (1, 4):
            raise ValueError(f"encoder_stride must be 1 (NLSPN) or 4 (light), got {encoder_stride}")
        if depth not in RESNET_BLOCKS:
            raise ValueError(
                f"ResNet depth {depth} not supported; use one of {list(RESNET_BLOCKS)}"
            )
        if seg_classes is None:
            seg_classes = 0
        if seg_classes < 0 or seg_classes == 1:
            raise ValueError(
                f"seg_classes must be 0 (no segmentation decoder) or >= 2, got {seg_classes}"
            )
        n1, n2, n3, n4 = RESNET_BLOCKS[depth]
        self.seg_classes = seg_classes
        self.encoder_stride = encoder_stride
        self.conv1_rgb = conv_bn_relu(3, 48, bn=False)
        self.conv1_dep = conv_bn_relu(1, 16, bn=False)
        self.conv2 = resnet_layer(64, 64, n1, 1 if encoder_stride == 1 else 2)
        self.conv3 = resnet_layer(64, 128, n2, 2)
        self.conv4 = resnet_layer(128, 256, n3, 2)
        self.conv5 = resnet_layer(256, 512, n4, 2)
        self.conv6 = conv_bn_relu(512, 512, stride=2)
        self.dec5 = convt_bn_relu(512, 256)
        self.dec4 = convt_bn_relu(256 + 512, 128)
        self.dec3 = convt_bn_relu(128 + 256, 64)
        self.dec2 = convt_bn_relu(64 + 128, 64)
        self.id_dec1 = conv_bn_relu(64 + 64, 64)
        self.id_dec0 = conv_bn_relu(64 + 64, 1, bn=False, relu=True)
        self.gd_dec1 = conv_bn_relu(64 + 64, 64)
        self.gd_dec0 = conv_bn_relu(64 + 64, 8, bn=False, relu=False)
        self.cf_dec1 = conv_bn_relu(64 + 64, 32)
        self.cf_dec0 = nn.Sequential(nn.Conv2d(32 + 64, 1, 3, 1, 1), nn.Sigmoid())
        self.prop_layer = NLSPNPropagation(
            8,
            3,
            prop_time,
            gamma,
            conf_prop=conf_prop,
            preserve_input=preserve_input,
            legacy=legacy,
        )
        # registered after the depth part, so the released key order is unchanged
        self.seg_decoder = SegDecoder(seg_classes) if seg_classes else None
        self._init_weights()

    #: constructor settings that change how the weights run but not their shapes
    BEHAVIOUR_SETTINGS = ("legacy", "preserve_input")

    def behaviour_settings(self) -> dict[str, Any]:
        """The behaviour-only settings as they are now (see :meth:`apply_settings`)."""
        return {key: getattr(self.prop_layer, key) for key in self.BEHAVIOUR_SETTINGS}

    def apply_settings(self, settings: dict[str, Any]) -> dict[str, Any]:
        """Set behaviour-only settings after construction (a checkpoint's recorded training
        settings, applied by ``checkpoints.load_checkpoint``); unknown keys are ignored with a
        warning. Returns what was set."""
        applied = {}
        for key, value in settings.items():
            if key in self.BEHAVIOUR_SETTINGS and isinstance(value, bool):
                setattr(self.prop_layer, key, value)
                applied[key] = value
            else:
                _log.warning(
                    "setting %s=%r ignored: not one of %s", key, value, self.BEHAVIOUR_SETTINGS
                )
        return applied

    def _init_weights(self) -> None:
        for name, m in self.named_modules():
            if name.startswith("prop_layer"):
                continue
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def _up(self, x: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        """Light variant only: head features up one level (or to ``size``); identity in NLSPN."""
        if self.encoder_stride == 1:
            return x
        if size is None:
            return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)

    def _encode(self, rgb: torch.Tensor, dep: torch.Tensor) -> list[torch.Tensor]:
        """fe1 .. fe6, the encoder's outputs (the skips of both decoders)."""
        fe_rgb, fe_dep = self.conv1_rgb(rgb), self.conv1_dep(dep)
        if self.encoder_stride != 1:
            # Light variant: the encoder starts at 1/2 (max-pool keeps sparse returns), the
            # heads end at 1/2 and are upsampled; only stems and propagation see full size.
            fe_rgb = F.max_pool2d(fe_rgb, 2, ceil_mode=True)
            fe_dep = F.max_pool2d(fe_dep, 2, ceil_mode=True)
        fe1 = torch.cat((fe_rgb, fe_dep), dim=1)
        fe2 = self.conv2(fe1)
        fe3 = self.conv3(fe2)
        fe4 = self.conv4(fe3)
        fe5 = self.conv5(fe4)
        fe6 = self.conv6(fe5)
        return [fe1, fe2, fe3, fe4, fe5, fe6]

    def _depth(
        self, feats: list[torch.Tensor], dep: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        """Depth decoder, heads and propagation: final depth and the intermediate maps."""
        fe1, fe2, fe3, fe4, fe5, fe6 = feats
        fd5 = self.dec5(fe6)
        fd4 = self.dec4(_cat(fd5, fe5))
        fd3 = self.dec3(_cat(fd4, fe4))
        fd2 = self.dec2(_cat(fd3, fe3))
        skip = _cat(fd2, fe2)
        pred_init = self.id_dec0(_cat(self._up(self.id_dec1(skip)), fe1))
        guide = self.gd_dec0(_cat(self._up(self.gd_dec1(skip)), fe1))
        confidence = self.cf_dec0(_cat(self._up(self.cf_dec1(skip)), fe1))
        if self.encoder_stride != 1:
            full = (dep.shape[2], dep.shape[3])
            pred_init, guide, confidence = (
                self._up(t, full) for t in (pred_init, guide, confidence)
            )

        # The propagation addresses pixels by coordinate and repeats 18 times: float32 at
        # least under autocast (half precision cannot address a 1216-wide image exactly);
        # float64 weights keep float64.
        dtype = torch.promote_types(self.prop_layer.conv_offset_aff.weight.dtype, torch.float32)
        with torch.autocast(device_type=pred_init.device.type, enabled=False):
            depth, offset, aff = self.prop_layer(
                pred_init.to(dtype), guide.to(dtype), confidence.to(dtype), dep.to(dtype)
            )
        depth = depth.clamp(min=0)
        aux: dict[str, Any] = {
            "pred_init": pred_init,
            "confidence": confidence,
            "guidance": guide,
            "offset": offset,
            "aff": aff,
        }
        return depth, aux

    def forward(
        self,
        rgb: torch.Tensor,
        dep: torch.Tensor,
        *,
        return_aux: bool = False,
        train: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, dict[str, Any]] | dict[str, torch.Tensor]:
        if train:
            return self.forward_train(rgb, dep)
        depth, aux = self._depth(self._encode(rgb, dep), dep)
        return (depth, aux) if return_aux else depth

    def forward_train(self, rgb: torch.Tensor, dep: torch.Tensor) -> dict[str, torch.Tensor]:
        """Everything the SelfDC losses need, in one pass over the encoder.

        Returns 'depth' (final, B x 1 x H x W), 'init_depth' (before propagation),
        'confidence', 'guidance', 'offset', 'aff' and, with a segmentation decoder,
        'seg_logits' (B x seg_classes x H x W, raw logits at the input's resolution).
        """
        feats = self._encode(rgb, dep)
        depth, aux = self._depth(feats, dep)
        out = {"depth": depth, "init_depth": aux.pop("pred_init"), **aux}
        if self.seg_decoder is not None:
            logits = self.seg_decoder(feats, self._up)
            out["seg_logits"] = self._up(logits, (dep.shape[2], dep.shape[3]))
        return out


def strip_training_heads(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A copy of a training state_dict without the training-only parts (the segmentation
    decoder), so exported weights load strictly into ``selfdc`` / ``selfdc_r18`` as built for
    inference (``model:=selfdc``)."""
    prefixes = SelfDCNet.training_only_prefixes
    return {k: v for k, v in state_dict.items() if not k.startswith(prefixes)}


# ---------------------------------------------------------------------------------------------
# Named constructors (differ only in their arguments)
# ---------------------------------------------------------------------------------------------


def selfdc(**kwargs: Any) -> SelfDCNet:
    """ResNet-34 SelfDC/NLSPN: loads NLSPN's released KITTI and NYU weights."""
    return SelfDCNet(34, **kwargs)


def selfdc_r18(**kwargs: Any) -> SelfDCNet:
    """Light ResNet-18 variant for CPU speed (about 15x fewer FLOPs than ``selfdc``).

    The encoder runs from 1/4 resolution like a standard ResNet and the heads end at 1/2;
    the stems and the 18-step propagation (guided by the upsampled heads, with the measured
    points written back) stay at full resolution. No released weights: train it with
    training/.
    """
    kwargs.setdefault("encoder_stride", 4)
    kwargs.setdefault("legacy", False)
    return SelfDCNet(18, **kwargs)
