"""Modulated deformable sampling (DCNv2 style) in plain PyTorch.

NLSPN refines depth by repeating one operation: every pixel becomes a weighted sum of its K
neighbours, each read by bilinear interpolation at a learned, fractional position. The authors
ran it with a compiled CUDA extension; here it is one ``grid_sample`` call, which computes the
same thing (zero outside the image, bilinear inside) on CPU and GPU without compiled code.

Offsets follow the DCNv2 layout so that released weights mean the same thing here:
``offset`` has 2*K channels, channel 2k is the row (y) shift and 2k+1 the column (x) shift of
kernel point k, kernel points in row-major order.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def kernel_grid(kernel_size: int, dilation: int = 1, *, device=None, dtype=None) -> torch.Tensor:
    """K x 2 (dy, dx) positions of a square kernel's points around its centre, row-major."""
    r = (kernel_size - 1) // 2
    steps = torch.arange(-r, r + 1, device=device, dtype=dtype) * dilation
    dy, dx = torch.meshgrid(steps, steps, indexing="ij")
    return torch.stack((dy.reshape(-1), dx.reshape(-1)), dim=1)


def sampling_grid(offset: torch.Tensor, kernel_size: int, dilation: int = 1) -> torch.Tensor:
    """Normalised ``grid_sample`` coordinates for every kernel point: B x (K*H) x W x 2.

    Built once per offset field and reused: NLSPN propagates 18 times with the same offsets.
    Computed in float32 at least, because half precision cannot address pixels of a 1216-wide
    image exactly (a 0.6 px error at the right border).
    """
    b, c, h, w = offset.shape
    k = kernel_size * kernel_size
    if c != 2 * k:
        raise ValueError(
            f"offset has {c} channels, a {kernel_size}x{kernel_size} kernel needs {2 * k}"
        )
    dtype = torch.promote_types(offset.dtype, torch.float32)
    off = offset.to(dtype).view(b, k, 2, h, w)
    ys = torch.arange(h, device=offset.device, dtype=dtype).view(1, 1, h, 1)
    xs = torch.arange(w, device=offset.device, dtype=dtype).view(1, 1, 1, w)
    kg = kernel_grid(kernel_size, dilation, device=offset.device, dtype=dtype)
    y = ys + kg[:, 0].view(1, k, 1, 1) + off[:, :, 0]  # B x K x H x W, pixel units
    x = xs + kg[:, 1].view(1, k, 1, 1) + off[:, :, 1]
    # align_corners=True: -1 and +1 are the centres of the first and last pixel.
    gx = x * (2.0 / max(w - 1, 1)) - 1.0
    gy = y * (2.0 / max(h - 1, 1)) - 1.0
    return torch.stack((gx, gy), dim=-1).view(b, k * h, w, 2)


def deform_sample(feat: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Bilinear samples of ``feat`` (B x C x H x W) at ``grid``: B x C x K x H x W.

    Positions outside the image read zero, like DCNv2's im2col.
    """
    b, c, h, w = feat.shape
    k = grid.shape[1] // h
    out = F.grid_sample(
        feat.to(grid.dtype), grid, mode="bilinear", padding_mode="zeros", align_corners=True
    )
    return out.view(b, c, k, h, w)


def modulated_deform_sum(
    feat: torch.Tensor, grid: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """sum_k mask_k(p) * feat(p + p_k + offset_k(p)): B x C x H x W.

    This is DCNv2's modulated deformable convolution with an all-ones kernel and zero bias,
    which is exactly the layer NLSPN's release uses for propagation. ``mask`` is B x K x H x W.
    """
    samples = deform_sample(feat, grid)
    return (samples * mask.to(samples.dtype).unsqueeze(1)).sum(dim=2)


def modulated_deform_conv3x3(
    feat: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor, dilation: int = 1
) -> torch.Tensor:
    """One-shot convenience: 3x3 modulated deformable sum with offsets and mask given."""
    return modulated_deform_sum(feat, sampling_grid(offset, 3, dilation), mask)
