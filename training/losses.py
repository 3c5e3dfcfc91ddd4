"""Both papers' losses as plain functions of tensors (no modules, no state, no config objects).

Conventions (so every number is reproducible):

- ``pred``, ``sparse``, ``gt``, ``teacher``: B x 1 x H x W float tensors, metres (0 = none for
  ``sparse`` and ``gt``); ``teacher`` is Depth Anything V2's relative inverse depth ("disparity")
  or a depth map, as ``teacher_kind`` says.
- masks: B x 1 x H x W bool; ``segments``: B x H x W int64, negative = ignore.
- Every loss returns a scalar tensor. Nothing valid to average over (an empty mask, every image
  degenerate) gives ``pred.sum() * 0``: zero, still on the graph, never NaN.
- Masked-out values never reach the result or its gradient (``torch.where``, not multiplication,
  so a NaN or inf in a masked-out target stays out).

DMD3C ("Distilling Monocular Foundation Model for Fine-grained Depth Completion"): eq. 2
(:func:`masked_l1`), eq. 6 (stage 1, :func:`masked_l1` to the dense target), eq. 7
(:func:`ssi_loss`), eq. 8 (:func:`gradient_matching_loss`), the release's multi-scale weighting
(:func:`multi_scale`) and its crop-normalised "SSI" (:func:`ssi_loss_release`).
SelfDC ("Training Self-Supervised Depth Completion Using Sparse Measurements and a Single
Image"): eq. 1 (:func:`local_gradient_constraint_loss`), eq. 2
(:func:`edge_aware_smoothness_loss`, Table 5's comparisons), eqs. 3-4
(:func:`selective_mask_smoothness_loss`), eq. 5 (:func:`depth_consistency_loss`), eq. 6
(:func:`segmentation_loss`), eq. 7 (:func:`selfdc_loss`). See training/README.md ("Losses") for the
decisions (teacher conversion, detaching s and b, downsampling, normalisations).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

#: BP-Net's six outputs, coarse to fine: 2^-10, 2^-8, 2^-6, 2^-4, 2^-2, 1 (the BP-Net and DMD3C
#: releases' ``deltas = 2 ** (-2 * k)`` for k = 5..0).
MULTI_SCALE_WEIGHTS: tuple[float, ...] = (2**-10, 2**-8, 2**-6, 2**-4, 2**-2, 1.0)

#: DMD3C stage 2 (paper sec. 3.3): L1 to sparse gt + SSI + gradient matching. The paper gives no
#: w_ssi / w_reg; 1.0 is what the release adds its SSI with, 0.5 is MiDaS's gradient weight.
DMD3C_STAGE2_WEIGHTS: dict[str, float] = {"l1": 1.0, "ssi": 1.0, "grad": 0.5}
#: DMD3C stage 1 (eq. 6): L1 to the dense simulated target; SSI optional (sec. 4.1).
DMD3C_STAGE1_WEIGHTS: dict[str, float] = {"l1": 1.0}
DMD3C_TERMS = ("l1", "mse", "ssi", "grad", "ssi_release")

#: SelfDC eq. 7: L_dc + 0.1 L_seg + L_gc + L_sms; 'ssi' (DMD3C's eq. 7 against cached teacher
#: maps) is this project's addition, off by default.
SELFDC_WEIGHTS: dict[str, float] = {"dc": 1.0, "seg": 0.1, "gc": 1.0, "sms": 1.0, "ssi": 0.0}
SELFDC_TERMS = ("dc", "seg", "gc", "sms", "ssi")

TEACHER_KINDS = ("disparity", "depth")
DISPARITY_MODES = ("inverse", "pseudo_depth")


# --- shared helpers ------------------------------------------------------------------------------


def _zero(like: Tensor) -> Tensor:
    """0 with a gradient path (for nothing-to-average cases): never NaN, never detached."""
    return like.sum() * 0


def _check_map(name: str, x: Tensor) -> None:
    if x.dim() != 4 or x.shape[1] != 1:
        raise ValueError(f"{name} must be B x 1 x H x W, got shape {tuple(x.shape)}")


def _check_same(name: str, x: Tensor, ref: Tensor) -> None:
    if x.shape != ref.shape:
        raise ValueError(
            f"{name} has shape {tuple(x.shape)} but pred has {tuple(ref.shape)}: "
            "crop/resize them together"
        )


def _check_segments(segments: Tensor, pred: Tensor) -> None:
    b, _, h, w = pred.shape
    if segments.shape != (b, h, w):
        raise ValueError(
            f"segments must be B x H x W = {(b, h, w)} like pred, got {tuple(segments.shape)}"
        )
    if segments.dtype in (torch.float16, torch.float32, torch.float64, torch.bool):
        raise ValueError(f"segments must be integer labels (int64), got {segments.dtype}")


def _wide(x: Tensor) -> Tensor:
    """float16/bfloat16 -> float32: sums of squared depths over an image overflow half
    precision (80 m^2 x 300k pixels > 65504), so losses never compute in it (AMP outputs)."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``values`` over ``mask`` (all images together); 0 on an empty mask."""
    count = mask.sum()
    if count == 0:
        return _zero(values)
    return torch.where(mask, values, torch.zeros_like(values)).sum() / count


# --- DMD3C: supervised terms ---------------------------------------------------------------------


def masked_l1(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """DMD3C eq. 2 (and eq. 6 with a dense target): mean |pred - target| over ``mask``, all
    images of the batch together."""
    _check_map("pred", pred)
    _check_same("target", target, pred)
    _check_same("mask", mask, pred)
    pred, target = _wide(pred), _wide(target)
    diff = torch.where(mask, pred - target, torch.zeros_like(pred))
    return _masked_mean(diff.abs(), mask)


def masked_mse(pred: Tensor, target: Tensor, mask: Tensor, denominator: str = "valid") -> Tensor:
    """Squared error on ``mask`` (the BP-Net/DMD3C releases' per-output MSE).

    ``denominator='valid'``: mean over the valid pixels. ``'all'``: the releases' exact value,
    which divides the masked sum by every pixel of the batch
    (``((est * valid - gt * valid) ** 2).mean()``),
    so its scale follows the ground truth's density.
    """
    _check_map("pred", pred)
    _check_same("target", target, pred)
    _check_same("mask", mask, pred)
    pred, target = _wide(pred), _wide(target)
    diff = torch.where(mask, pred - target, torch.zeros_like(pred))
    if denominator == "valid":
        return _masked_mean(diff.square(), mask)
    if denominator == "all":
        return diff.square().mean()
    raise ValueError(f"denominator must be 'valid' or 'all', got {denominator!r}")


def multi_scale(
    loss_fn: Callable[..., Tensor],
    preds: Sequence[Tensor],
    *args: Any,
    weights: Sequence[float] = MULTI_SCALE_WEIGHTS,
    **kwargs: Any,
) -> Tensor:
    """sum_i weights[i] * loss_fn(preds[i], *args, **kwargs): BP-Net's six full-size outputs,
    coarse to fine, weighted as the BP-Net and DMD3C releases do (the finest gets 1)."""
    if len(preds) != len(weights):
        raise ValueError(
            f"{len(preds)} outputs but {len(weights)} weights: give one weight per output "
            "(BP-Net has 6, coarse to fine)"
        )
    total = _zero(preds[-1])
    for pred, weight in zip(preds, weights, strict=True):
        if weight:
            total = total + weight * loss_fn(pred, *args, **kwargs)
    return total


# --- DMD3C: scale-and-shift-invariant terms (eqs. 7, 8) -------------------------------------------


def fit_scale_shift(
    x: Tensor, y: Tensor, mask: Tensor, eps: float = 1e-12
) -> tuple[Tensor, Tensor, Tensor]:
    """Per image, the least-squares s, b of y ~ s * x + b on ``mask`` (closed form).

    Returns s, b (B x 1 x 1 x 1) and ``ok`` (B bool): False where an image has fewer than two
    valid pixels or ``x`` has (near) zero variance there; s = 0, b = 0 for those. Centred sums
    (not the normal equations' raw moments) keep float32 accurate. Everything is differentiable,
    so the caller chooses whether s, b carry gradient.
    """
    m = mask.to(x.dtype)
    n = m.sum(dim=(1, 2, 3), keepdim=True)
    n_safe = n.clamp(min=1)
    mx = (x * m).sum(dim=(1, 2, 3), keepdim=True) / n_safe
    my = (y * m).sum(dim=(1, 2, 3), keepdim=True) / n_safe
    dx = torch.where(mask, x - mx, torch.zeros_like(x))
    dy = torch.where(mask, y - my, torch.zeros_like(y))
    var = (dx * dx).sum(dim=(1, 2, 3), keepdim=True)
    cov = (dx * dy).sum(dim=(1, 2, 3), keepdim=True)
    # zero variance relative to the values' magnitude (a constant map), or too few pixels
    scale2 = (mx * mx + 1.0) * n_safe
    ok = (n >= 2) & (var > eps * scale2)
    s = torch.where(ok, cov / torch.where(ok, var, torch.ones_like(var)), torch.zeros_like(var))
    b = torch.where(ok, my - s * mx, torch.zeros_like(my))
    return s, b, ok.view(-1)


def align_teacher(
    pred: Tensor,
    teacher: Tensor,
    mask: Tensor,
    teacher_kind: str = "disparity",
    disparity_mode: str = "inverse",
    detach_scale_shift: bool = True,
    min_depth: float = 0.1,
    max_depth: float = 1000.0,
) -> tuple[Tensor, Tensor]:
    """The teacher brought to ``pred``'s metric depth by a per-image scale and shift.

    - ``teacher_kind='depth'``: s * D_m + b with s, b the least-squares fit of D_m to pred
      (eq. 7 as printed).
    - ``'disparity'``, ``disparity_mode='inverse'`` (default): Depth Anything V2 predicts
      *affine-invariant inverse depth*, d = a / z + c with unknown a, c. No affine map of d, or of
      any fixed 1/(d + const), is metric depth, but an affine map of d is metric inverse depth. So
      s, b fit s * d + b to 1 / pred (MiDaS's alignment, exact for this teacher) and the aligned
      teacher depth is 1 / (s * d + b), clamped to [min_depth, max_depth]; the loss stays an
      L1 in metres as eq. 7 writes it. The fit uses only pixels where pred >= ``min_depth``:
      1 / pred explodes near 0, and a few near-zero predictions (early in training) would
      otherwise decide s and b for the whole image.
    - ``'disparity'``, ``disparity_mode='pseudo_depth'``: the release's conversion,
      D_m = 1 / (d' + 0.5) with d' the disparity min-max normalised to [0, 1] per image on the
      mask (the release reads 8-bit PNGs that Depth Anything's script normalised that way), then
      eq. 7 as printed. Exact only if the teacher's unknown shift happens to be that 0.5.

    Returns the aligned teacher depth and ``ok`` (B bool; False = degenerate image, see
    :func:`fit_scale_shift`). With ``detach_scale_shift`` s, b are constants for the backward.
    """
    if teacher_kind not in TEACHER_KINDS:
        raise ValueError(f"teacher_kind must be one of {TEACHER_KINDS}, got {teacher_kind!r}")
    if disparity_mode not in DISPARITY_MODES:
        raise ValueError(f"disparity_mode must be one of {DISPARITY_MODES}, got {disparity_mode!r}")
    _check_map("pred", pred)
    _check_same("teacher", teacher, pred)
    _check_same("mask", mask, pred)
    pred, teacher = _wide(pred), _wide(teacher)
    mask = mask & torch.isfinite(teacher)
    teacher = torch.where(mask, teacher, torch.zeros_like(teacher))
    if teacher_kind == "disparity" and disparity_mode == "inverse":
        inv_pred = 1.0 / pred.clamp(min=min_depth)
        s, b, ok = fit_scale_shift(teacher, inv_pred, mask & (pred.detach() >= min_depth))
        if detach_scale_shift:
            s, b = s.detach(), b.detach()
        aligned_inv = (s * teacher + b).clamp(min=1.0 / max_depth, max=1.0 / min_depth)
        return 1.0 / aligned_inv, ok
    if teacher_kind == "disparity":  # pseudo_depth, the release's 1 / (d + 0.5)
        big = torch.finfo(teacher.dtype).max
        lo = torch.where(mask, teacher, torch.full_like(teacher, big)).amin((1, 2, 3), True)
        hi = torch.where(mask, teacher, torch.full_like(teacher, -big)).amax((1, 2, 3), True)
        span = torch.where(hi > lo, hi - lo, torch.ones_like(hi))
        teacher = torch.where(mask, 1.0 / ((teacher - lo) / span + 0.5), torch.zeros_like(teacher))
    s, b, ok = fit_scale_shift(teacher, pred, mask)
    if detach_scale_shift:
        s, b = s.detach(), b.detach()
    return s * teacher + b, ok


def ssi_loss(
    pred: Tensor,
    teacher: Tensor,
    mask: Tensor,
    teacher_kind: str = "disparity",
    disparity_mode: str = "inverse",
    detach_scale_shift: bool = True,
) -> Tensor:
    """DMD3C eq. 7: L_SSI = min_{s,b} |D_f - (s * D_m + b)|, mean over the valid pixels.

    s, b are solved per image in closed form by least squares on the valid pixels (the issue's
    and MiDaS's choice; eq. 7's L1 minimiser has no closed form), then the L1 is taken. The
    closed form is computed in-graph, so with ``detach_scale_shift=False`` autograd returns the
    exact gradient of this function (checked by gradcheck). The default holds s, b fixed in the
    backward (the aligned teacher is a target, re-fitted every step). For a squared error the
    two gradients agree at the optimum (envelope theorem); for this L1 after a least-squares fit
    they do not, and the extra term rewards flattening the prediction (eq. 7 is 0 for a constant
    prediction, with s = 0): with a perfect teacher, a free depth map trained on L_dc + L_SSI
    ends 5-10x further from the truth with it (training/README.md, "Losses"). Degenerate images
    (< 2 valid pixels, constant teacher) are left out; none left gives 0. See
    :func:`align_teacher` for the teacher's conversion.
    """
    pred, teacher = _wide(pred), _wide(teacher)
    aligned, ok = align_teacher(
        pred, teacher, mask, teacher_kind, disparity_mode, detach_scale_shift
    )
    valid = mask & torch.isfinite(teacher) & ok.view(-1, 1, 1, 1)
    diff = torch.where(valid, pred - aligned, torch.zeros_like(pred))
    return _masked_mean(diff.abs(), valid)


def gradient_matching_loss(
    pred: Tensor,
    teacher: Tensor,
    mask: Tensor,
    scales: int = 4,
    teacher_kind: str = "disparity",
    disparity_mode: str = "inverse",
    detach_scale_shift: bool = True,
) -> Tensor:
    """DMD3C eq. 8: sum over K = ``scales`` scales of (1/N_k) sum (|dx R^k| + |dy R^k|).

    R = D_f - aligned D_m (aligned with the same s, b as :func:`ssi_loss`). As in MiDaS [44],
    whose term eq. 8 adopts: scale k takes every 2^k-th pixel of R and of the mask (strided
    sampling, no averaging, so no value mixes valid and invalid pixels); a difference counts
    only where both its pixels are valid; each scale is normalised by its own count N_k of
    valid pixels (batch-wide), and the scales are summed.
    """
    if scales < 1:
        raise ValueError(f"scales must be >= 1, got {scales}")
    pred, teacher = _wide(pred), _wide(teacher)
    aligned, ok = align_teacher(
        pred, teacher, mask, teacher_kind, disparity_mode, detach_scale_shift
    )
    valid = mask & torch.isfinite(teacher) & ok.view(-1, 1, 1, 1)
    residual = torch.where(valid, pred - aligned, torch.zeros_like(pred))
    total = _zero(pred)
    for k in range(scales):
        step = 2**k
        r = residual[:, :, ::step, ::step]
        m = valid[:, :, ::step, ::step]
        count = m.sum()
        if count == 0:
            continue
        mx = m[..., :, 1:] & m[..., :, :-1]
        my = m[..., 1:, :] & m[..., :-1, :]
        gx = (r[..., :, 1:] - r[..., :, :-1]).abs()
        gy = (r[..., 1:, :] - r[..., :-1, :]).abs()
        gx = torch.where(mx, gx, torch.zeros_like(gx))
        gy = torch.where(my, gy, torch.zeros_like(gy))
        total = total + (gx.sum() + gy.sum()) / count
    return total


def release_crops(
    height: int,
    width: int,
    crops: int = 32,
    min_frac: float = 0.125,
    max_frac: float = 0.5,
    generator: torch.Generator | None = None,
) -> list[tuple[int, int, int, int]]:
    """The release's random crops (top, left, h, w): one fraction per crop, drawn uniformly in
    [min_frac, max_frac) and applied to both sides (int(H * f), int(W * f)), placed uniformly."""
    if not 0 < min_frac <= max_frac <= 1:
        raise ValueError(f"need 0 < min_frac <= max_frac <= 1, got {min_frac}, {max_frac}")
    out = []
    for _ in range(crops):
        frac = torch.rand(1, generator=generator).item() * (max_frac - min_frac) + min_frac
        h, w = max(int(height * frac), 1), max(int(width * frac), 1)
        top = int(torch.randint(0, height - h + 1, (1,), generator=generator).item())
        left = int(torch.randint(0, width - w + 1, (1,), generator=generator).item())
        out.append((top, left, h, w))
    return out


def _masked_lower_median(values: Tensor, mask: Tensor) -> Tensor:
    """Per row of an N x P tensor, the lower median (torch.median's) of the masked entries;
    differentiable (the gradient goes to the chosen element). Rows with no entry give 0."""
    big = torch.finfo(values.dtype).max
    ordered, _ = torch.sort(torch.where(mask, values, torch.full_like(values, big)), dim=1)
    count = mask.sum(dim=1, keepdim=True)
    index = ((count - 1).clamp(min=0) // 2).long()
    med = ordered.gather(1, index)
    return torch.where(count > 0, med, torch.zeros_like(med))


def ssi_loss_release(
    pred: Tensor,
    teacher_disparity: Tensor,
    mask: Tensor | None = None,
    crops: int = 32,
    min_frac: float = 0.125,
    max_frac: float = 0.5,
    generator: torch.Generator | None = None,
    normalise: bool = True,
    eps: float = 1e-6,
) -> Tensor:
    """The DMD3C release's "SSI" term (rpnloss.py, RandomProposalNormalizationLoss).

    Pseudo-depth t = 1 / (d + 0.5), d the disparity (min-max normalised to [0, 1] per image when
    ``normalise``: the release reads 8-bit PNGs of Depth Anything's per-image normalised output
    and divides by 255). Then ``crops`` random crops (:func:`release_crops`, the same crop for
    every image of the batch, as the release does); per image and crop, pred and t are each
    normalised by their median and MAD (median absolute deviation, torch's lower median, + eps)
    and the mean |difference| is taken; the result is the mean over images and crops.
    ``mask=None`` uses every pixel (the release has no mask); with a mask, medians and means are
    over the crop's valid pixels, and image-crops with no valid pixel are left out.
    """
    _check_map("pred", pred)
    _check_same("teacher_disparity", teacher_disparity, pred)
    if mask is None:
        mask = torch.ones_like(pred, dtype=torch.bool)
    _check_same("mask", mask, pred)
    pred, teacher_disparity = _wide(pred), _wide(teacher_disparity)
    mask = mask & torch.isfinite(teacher_disparity)
    d = torch.where(mask, teacher_disparity, torch.zeros_like(teacher_disparity))
    if normalise:
        big = torch.finfo(d.dtype).max
        lo = torch.where(mask, d, torch.full_like(d, big)).amin((1, 2, 3), True)
        hi = torch.where(mask, d, torch.full_like(d, -big)).amax((1, 2, 3), True)
        d = (d - lo) / torch.where(hi > lo, hi - lo, torch.ones_like(hi))
    target = torch.where(mask, 1.0 / (d + 0.5), torch.ones_like(d))
    batch, _, height, width = pred.shape
    total, count = _zero(pred), 0
    for top, left, h, w in release_crops(height, width, crops, min_frac, max_frac, generator):
        p = pred[:, 0, top : top + h, left : left + w].reshape(batch, -1)
        t = target[:, 0, top : top + h, left : left + w].reshape(batch, -1)
        m = mask[:, 0, top : top + h, left : left + w].reshape(batch, -1)
        median = _masked_lower_median
        if bool(m.all()):  # the release's case: torch.median selects, no sort needed
            median = lambda x, _: x.median(dim=1, keepdim=True).values
        p_med, t_med = median(p, m), median(t, m)
        p_mad, t_mad = median((p - p_med).abs(), m), median((t - t_med).abs(), m)
        diff = (p - p_med) / (p_mad + eps) - (t - t_med) / (t_mad + eps)
        n = m.sum(dim=1)
        has = n > 0
        per_image = torch.where(m, diff.abs(), torch.zeros_like(diff)).sum(1) / n.clamp(min=1)
        total = total + per_image[has].sum()
        count += int(has.sum())
    return total / count if count else total


# --- SelfDC --------------------------------------------------------------------------------------


def image_edge_weights(rgb: Tensor, dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
    """Edge-aware weights exp(-|dx I|), exp(-|dy I|) of eq. 2 (SelfDC; monodepth's form), for
    the forward differences of :func:`gradient_magnitude`: B x H x (W-1) and B x (H-1) x W.

    ``rgb``: B x 3 x H x W, 0-255 (uint8 or float); I is taken in [0, 1] and |dI| is the mean
    absolute difference over the three channels, so a black-white step weighs exp(-1)."""
    if rgb.dim() != 4 or rgb.shape[1] != 3:
        raise ValueError(f"rgb must be B x 3 x H x W, got shape {tuple(rgb.shape)}")
    image = rgb.to(dtype) / 255.0
    wx = torch.exp(-(image[..., :, 1:] - image[..., :, :-1]).abs().mean(1))
    wy = torch.exp(-(image[..., 1:, :] - image[..., :-1, :]).abs().mean(1))
    return wx, wy


def gradient_magnitude(
    pred: Tensor,
    segments: Tensor | None = None,
    *,
    image: Tensor | None = None,
    unlabelled: str = "edge",
) -> Tensor:
    """|grad D| = |dx D| + |dy D| per pixel, B x H x W (SelfDC's |nabla D(i, j)|).

    Forward differences D(i, j+1) - D(i, j) and D(i+1, j) - D(i, j), 0 in the last column (dx) and
    last row (dy), so the map keeps H x W. With ``segments`` (the paper's constraint basis M), a
    difference whose two pixels lie in different segments is 0: depth may jump at object
    boundaries for free. A difference touching an unlabelled (negative) pixel is 0 as well with
    ``unlabelled='edge'`` (L_sms: only differences inside a segment count), and kept with
    ``unlabelled='smooth'`` (L_gc: M only says where the edges are; where it says nothing, eq.
    1 applies unchanged). With ``image`` (B x 3 x H x W, 0-255; the basis I of Table 4), each
    difference is weighted by :func:`image_edge_weights` instead.
    """
    _check_map("pred", pred)
    if unlabelled not in ("edge", "smooth"):
        raise ValueError(f"unlabelled must be 'edge' or 'smooth', got {unlabelled!r}")
    d = _wide(pred)[:, 0]
    dx = (d[:, :, 1:] - d[:, :, :-1]).abs()
    dy = (d[:, 1:, :] - d[:, :-1, :]).abs()
    if segments is not None:
        _check_segments(segments, pred)
        if unlabelled == "edge":
            same_x = (segments[:, :, 1:] == segments[:, :, :-1]) & (segments[:, :, 1:] >= 0)
            same_y = (segments[:, 1:, :] == segments[:, :-1, :]) & (segments[:, 1:, :] >= 0)
        else:  # only two labelled pixels of different segments make an edge
            known = segments >= 0
            same_x = (segments[:, :, 1:] == segments[:, :, :-1]) | ~(
                known[:, :, 1:] & known[:, :, :-1]
            )
            same_y = (segments[:, 1:, :] == segments[:, :-1, :]) | ~(
                known[:, 1:, :] & known[:, :-1, :]
            )
        dx = torch.where(same_x, dx, torch.zeros_like(dx))
        dy = torch.where(same_y, dy, torch.zeros_like(dy))
    if image is not None:
        if image.shape[0] != pred.shape[0] or image.shape[2:] != pred.shape[2:]:
            raise ValueError(
                f"image has shape {tuple(image.shape)} but pred has {tuple(pred.shape)}"
            )
        wx, wy = image_edge_weights(image, dx.dtype)
        dx, dy = dx * wx, dy * wy
    gx = F.pad(dx, (0, 1, 0, 0))
    gy = F.pad(dy, (0, 0, 0, 1))
    return gx + gy


def depth_consistency_loss(pred: Tensor, sparse: Tensor) -> Tensor:
    """SelfDC eq. 5: L_dc = (1/|V|) sum_{i in V} |D(i) - S(i)|, V the valid (> 0) sparse pixels
    of the whole batch."""
    _check_same("sparse", sparse, pred)
    return masked_l1(pred, sparse, sparse > 0)


def _top_count(fraction: float, n: Tensor | int) -> Tensor | int:
    """ceil(fraction * n), at least 1 for n >= 1 (Top-N of a non-empty set is never empty).

    The product is rounded to 1e-9 first, so that 0.07 x 100 is 7 (not 8, float error)."""
    if isinstance(n, Tensor):
        x = n.to(torch.float64) * fraction
        return torch.ceil(torch.round(x * 1e9) / 1e9).long().clamp(min=1)
    return max(1, math.ceil(round(fraction * n, 9)))


def local_gradient_constraint_loss(
    pred: Tensor,
    segments: Tensor | None = None,
    window: int | str = 8,
    top_fraction: float = 0.02,
    *,
    image: Tensor | None = None,
) -> Tensor:
    """SelfDC eq. 1: L_gc = (1/K)(1/N) sum_k sum_{(i,j) in S_k} |grad D(i, j)|.

    The map is cut into K non-overlapping ``window`` x ``window`` windows from the top-left (a
    right/bottom remainder that does not fill a window is ignored); S_k is the set of the
    N = ceil(top_fraction * W^2) largest gradient magnitudes of window k (2 of 64 at the paper's
    W = 8, 2 %); K counts the windows of the whole batch. ``window='full'`` makes each image one
    window (Table 4, method 1: N = 2 % of the image's pixels). Every pixel takes part: with
    ``segments`` (the constraint basis M, the paper's best) a difference between two labelled
    pixels of different segments is free, and unlabelled pixels are treated as no edge
    (``gradient_magnitude(..., unlabelled='smooth')``); with ``image`` (basis I, Table 4
    method 6) differences are weighted by exp(-|grad I|); with neither, eq. 1 as printed.
    """
    full = window == "full"
    if not full and not (isinstance(window, int) and window >= 1):
        raise ValueError(f"window must be a positive int or 'full', got {window!r}")
    if not 0 < top_fraction <= 1:
        raise ValueError(f"top_fraction must be in (0, 1], got {top_fraction}")
    if segments is not None and image is not None:
        raise ValueError("give segments (basis M) or image (basis I), not both")
    grad = gradient_magnitude(pred, segments, image=image, unlabelled="smooth")
    batch, height, width = grad.shape
    if full:
        windows = grad.reshape(batch, -1)
        return windows.topk(_top_count(top_fraction, height * width), dim=1).values.mean()
    rows, cols = height // window, width // window
    if rows == 0 or cols == 0:
        raise ValueError(
            f"the {height}x{width} map holds no {window}x{window} window: use a smaller window "
            "or larger crops"
        )
    grad = grad[:, : rows * window, : cols * window]
    windows = grad.reshape(batch, rows, window, cols, window).permute(0, 1, 3, 2, 4)
    windows = windows.reshape(-1, window * window)
    n_top = _top_count(top_fraction, window * window)
    return windows.topk(n_top, dim=1).values.mean()


def edge_aware_smoothness_loss(
    pred: Tensor, rgb: Tensor | None = None, segments: Tensor | None = None
) -> Tensor:
    """SelfDC eq. 2, L_smooth = sum |grad D| e^{-|grad I|}, as a mean over the pixels (the sum
    grows with the image; the mean keeps its weight beside the other terms): basis I with
    ``rgb`` (Table 5, method 1). With ``segments`` instead (Table 5, method 2, "mask-based
    L_smooth"): the mean of |grad D| where a difference across two segments is free
    (unlabelled pixels are no edge, as in L_gc)."""
    if (rgb is None) == (segments is None):
        raise ValueError("give rgb (basis I) or segments (basis M), exactly one")
    grad = gradient_magnitude(pred, segments, image=rgb, unlabelled="smooth")
    return grad.mean()


def selective_mask_smoothness_loss(
    pred: Tensor, segments: Tensor, top_fraction: float = 0.4
) -> Tensor:
    """SelfDC eqs. 3-4: L_sms = (1/|S|) sum_s (1/|Q_s|) sum_{p in Q_s} (|dx D(p)| + |dy D(p)|).

    S: the (image, segment) pairs of the batch (negative labels ignored); Q_s: the
    ceil(top_fraction * n_s) pixels of segment s with the largest gradient magnitude (basis M
    gradients, :func:`gradient_magnitude`). Vectorised: one sort of the pixels by
    (segment, -value), and each keeps the ones whose rank within its segment is below its
    segment's count. The sort key is segment + 0.5 * (1 - value / max value) in float64, so
    values closer than ~1e-10 of the largest may swap places: a change below 1e-10 of the loss.
    """
    if not 0 < top_fraction <= 1:
        raise ValueError(f"top_fraction must be in (0, 1], got {top_fraction}")
    grad = gradient_magnitude(pred, segments)
    batch = grad.shape[0]
    labels = segments.reshape(batch, -1)
    values = grad.reshape(batch, -1)
    keep = labels >= 0
    if not keep.any():
        return _zero(pred)
    n_labels = int(labels.max()) + 1
    image = torch.arange(batch, device=grad.device).unsqueeze(1)
    segment = (image * n_labels + labels)[keep]  # (image, label) -> one id
    values = values[keep]
    if batch * n_labels <= 4 * segment.numel() + 4096:  # ids dense enough: count directly
        counts = torch.bincount(segment, minlength=batch * n_labels)
    else:  # few segments with large ids (SAM instance numbers): compact them first
        _, segment, counts = torch.unique(segment, return_inverse=True, return_counts=True)
    v = values.detach().double()
    top = v.max().clamp(min=torch.finfo(torch.float64).tiny)
    order = torch.argsort(segment.double() + 0.5 * (1.0 - v / top))
    segment, values = segment[order], values[order]
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(len(segment), device=grad.device) - starts[segment]
    n_top = _top_count(top_fraction, counts)
    chosen = rank < n_top[segment]
    sums = torch.zeros(len(counts), dtype=values.dtype, device=values.device)
    sums = sums.index_add(0, segment[chosen], values[chosen])
    present = counts > 0
    return (sums[present] / n_top[present].to(values.dtype)).mean()


def segmentation_loss(logits: Tensor, segments: Tensor) -> Tensor:
    """SelfDC eq. 6: cross-entropy of the segmentation head (B x C x H x W logits) against the
    pseudo-labels (B x H x W int64, negative = ignored); 0 when every pixel is ignored."""
    if logits.dim() != 4 or segments.shape != (logits.shape[0], *logits.shape[2:]):
        raise ValueError(
            f"seg logits must be B x C x H x W and segments B x H x W of the same B, H, W; got "
            f"{tuple(logits.shape)} and {tuple(segments.shape)}"
        )
    valid = segments >= 0
    if not valid.any():
        return _zero(logits)
    top = int(segments.max())
    if top >= logits.shape[1]:
        raise ValueError(
            f"segment label {top} needs {top + 1} classes but the head has {logits.shape[1]}: "
            "raise the head's class count or cap the labels when they are made"
        )
    return F.cross_entropy(_wide(logits), torch.where(valid, segments, -100), ignore_index=-100)


# --- totals --------------------------------------------------------------------------------------


def _active(weights: Mapping[str, float], known: Sequence[str]) -> dict[str, float]:
    unknown = sorted(set(weights) - set(known))
    if unknown:
        raise ValueError(f"unknown loss term(s) {unknown}: the terms are {list(known)}")
    return {name: float(w) for name, w in weights.items() if float(w) != 0.0}


def _need(batch: Mapping[str, Any], key: str, term: str) -> Any:
    if key not in batch:
        raise ValueError(
            f"loss term '{term}' needs '{key}' in the batch, which has none: give the dataset "
            f"{key} maps or set the weight of '{term}' to 0"
        )
    return batch[key]


def _teacher_mask(teacher: Tensor) -> Tensor:
    """Where a teacher map says something: finite and > 0. Depth Anything V2's head ends in a
    ReLU, so sky comes out as disparity 0 (infinitely far), which no metric depth can match."""
    return torch.isfinite(teacher) & (teacher > 0)


def dmd3c_loss(
    outputs: Sequence[Tensor] | Tensor,
    batch: Mapping[str, Any],
    weights: Mapping[str, float] = DMD3C_STAGE2_WEIGHTS,
    *,
    output_weights: Sequence[float] = MULTI_SCALE_WEIGHTS,
    scales: int = 4,
    disparity_mode: str = "inverse",
    detach_scale_shift: bool = True,
    mse_denominator: str = "all",
    generator: torch.Generator | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """DMD3C's total on BP-Net's outputs (list coarse to fine, or one tensor with weight 1).

    Terms (``weights``: name -> weight, 0 or absent = off), each summed over the outputs with
    ``output_weights``: 'l1' (eq. 2 on valid ``gt``; eq. 6 in stage 1, where ``gt`` is the dense
    target), 'mse' (the releases' MSE, divided by all pixels as they do unless
    ``mse_denominator='valid'``), 'ssi' (eq. 7 against ``teacher``), 'grad'
    (eq. 8), 'ssi_release' (the release's crop-normalised term). 'ssi' and 'grad' use the
    pixels where the teacher is finite and > 0 (zero disparity is sky: no metric depth);
    'ssi_release' uses every pixel, as the release does. Returns the total and the
    unweighted value of each active term (floats, for logging).
    """
    preds = [outputs] if isinstance(outputs, Tensor) else list(outputs)
    ow = (1.0,) if isinstance(outputs, Tensor) else tuple(output_weights)
    active = _active(weights, DMD3C_TERMS)
    terms: dict[str, Tensor] = {}
    if "l1" in active or "mse" in active:
        gt = _need(batch, "gt", "l1" if "l1" in active else "mse")
        valid = gt > 0
        if "l1" in active:
            terms["l1"] = multi_scale(masked_l1, preds, gt, valid, weights=ow)
        if "mse" in active:
            terms["mse"] = multi_scale(masked_mse, preds, gt, valid, mse_denominator, weights=ow)
    if {"ssi", "grad", "ssi_release"} & set(active):
        term = next(t for t in ("ssi", "grad", "ssi_release") if t in active)
        teacher = _need(batch, "teacher", term)
        kind = batch.get("teacher_kind", "disparity")
        tmask = _teacher_mask(teacher)
        if "ssi" in active:
            terms["ssi"] = multi_scale(
                ssi_loss, preds, teacher, tmask, kind, disparity_mode, detach_scale_shift,
                weights=ow,
            )  # fmt: skip
        if "grad" in active:
            terms["grad"] = multi_scale(
                gradient_matching_loss, preds, teacher, tmask, scales, kind, disparity_mode,
                detach_scale_shift, weights=ow,
            )  # fmt: skip
        if "ssi_release" in active:
            if kind != "disparity":
                raise ValueError("'ssi_release' needs a disparity teacher (teacher_kind)")
            terms["ssi_release"] = multi_scale(  # the release masks nothing, sky included
                ssi_loss_release, preds, teacher, None, generator=generator, weights=ow
            )
    return _total(terms, active, preds[-1])


#: SelfDC's L_gc bases (Table 4): segmentation mask M, image I, none (eq. 1 as printed)
GC_BASES = ("mask", "image", "none")
#: what the 'sms' term computes (Table 5, methods 4, 1, 2, 3): L_sms (eqs. 3-4), L_smooth
#: (eq. 2, basis I), mask-based L_smooth, mask-aware smoothness (L_sms over all of each segment)
SMOOTHNESS = ("sms", "edge_aware", "mask_smooth", "mask_aware")


def selfdc_loss(
    outputs: Mapping[str, Tensor],
    batch: Mapping[str, Any],
    weights: Mapping[str, float] = SELFDC_WEIGHTS,
    *,
    window: int | str = 8,
    gc_top_fraction: float = 0.02,
    sms_top_fraction: float = 0.4,
    gc_basis: str = "mask",
    smoothness: str = "sms",
    disparity_mode: str = "inverse",
    detach_scale_shift: bool = True,
) -> tuple[Tensor, dict[str, float]]:
    """SelfDC eq. 7: L_dc + alpha L_seg + L_gc + L_sms, every term weighted by ``weights``.

    ``outputs``: {'depth': B x 1 x H x W, 'seg_logits': B x C x H x W (optional)}. Terms: 'dc'
    (eq. 5 on ``sparse``), 'seg' (eq. 6, alpha = 0.1), 'gc' (eq. 1 over every pixel, in
    ``window`` x ``window`` windows or 'full'; ``gc_basis``: 'mask' uses ``segments`` as the
    constraint basis M, 'image' the image's edges (basis I), 'none' is eq. 1 as printed), 'sms'
    (``smoothness``: 'sms' eqs. 3-4; 'edge_aware' eq. 2 on the image; 'mask_smooth' eq. 2 with
    the mask instead of the image; 'mask_aware' L_sms with all of each segment's gradients,
    Table 5's rows 4, 1, 2, 3), 'ssi' (DMD3C's eq. 7 against ``teacher``; neither paper
    combines the two). Returns the total and the unweighted value of each active term (floats).
    """
    if gc_basis not in GC_BASES:
        raise ValueError(f"gc_basis must be one of {GC_BASES}, got {gc_basis!r}")
    if smoothness not in SMOOTHNESS:
        raise ValueError(f"smoothness must be one of {SMOOTHNESS}, got {smoothness!r}")
    pred = outputs["depth"]
    active = _active(weights, SELFDC_TERMS)
    terms: dict[str, Tensor] = {}
    if "dc" in active:
        terms["dc"] = depth_consistency_loss(pred, _need(batch, "sparse", "dc"))
    if "seg" in active:
        if outputs.get("seg_logits") is None:
            raise ValueError(
                "loss term 'seg' needs the network's 'seg_logits' (build the model with its "
                "segmentation head) or set the weight of 'seg' to 0"
            )
        terms["seg"] = segmentation_loss(outputs["seg_logits"], _need(batch, "segments", "seg"))
    if "gc" in active:
        segments = _need(batch, "segments", "gc") if gc_basis == "mask" else None
        image = _need(batch, "rgb", "gc") if gc_basis == "image" else None
        terms["gc"] = local_gradient_constraint_loss(
            pred, segments, window, gc_top_fraction, image=image
        )
    if "sms" in active:
        if smoothness == "edge_aware":
            terms["sms"] = edge_aware_smoothness_loss(pred, rgb=_need(batch, "rgb", "sms"))
        elif smoothness == "mask_smooth":
            segments = _need(batch, "segments", "sms")
            terms["sms"] = edge_aware_smoothness_loss(pred, segments=segments)
        else:
            segments = _need(batch, "segments", "sms")
            fraction = 1.0 if smoothness == "mask_aware" else sms_top_fraction
            terms["sms"] = selective_mask_smoothness_loss(pred, segments, fraction)
    if "ssi" in active:
        teacher = _need(batch, "teacher", "ssi")
        kind = batch.get("teacher_kind", "disparity")
        tmask = _teacher_mask(teacher)
        terms["ssi"] = ssi_loss(pred, teacher, tmask, kind, disparity_mode, detach_scale_shift)
    return _total(terms, active, pred)


def _total(
    terms: Mapping[str, Tensor], active: Mapping[str, float], like: Tensor
) -> tuple[Tensor, dict[str, float]]:
    total = _zero(like)
    for name, value in terms.items():
        total = total + active[name] * value
    logged = {name: float(value.detach()) for name, value in terms.items()}
    logged["total"] = float(total.detach())
    return total, logged
