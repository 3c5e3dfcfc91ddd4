"""training/losses.py against values computed independently: by hand on tiny tensors, or from the
papers' equations written out as plain Python loops here (no code shared with the module)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from training import losses as L

# --- independent references (plain loops over nested lists / numpy, written from the papers) ---


def ref_grad(
    d: np.ndarray, seg: np.ndarray | None = None, unlabelled: str = "edge", rgb=None
) -> np.ndarray:
    """SelfDC |grad D| per pixel for one H x W image, pixel by pixel. With ``seg``: a difference
    across two segments is 0; one touching an unlabelled pixel is 0 ('edge') or kept
    ('smooth'). With ``rgb`` (3 x H x W, 0-255): each difference times exp(-mean |dI|/255)."""
    h, w = d.shape

    def keep(a, b):
        if seg is None:
            return True
        if unlabelled == "edge":
            return seg[a] == seg[b] and seg[a] >= 0
        return seg[a] == seg[b] or seg[a] < 0 or seg[b] < 0

    def weight(a, b):
        if rgb is None:
            return 1.0
        return math.exp(-sum(abs(float(rgb[c][b]) - float(rgb[c][a])) for c in range(3)) / 765)

    out = np.zeros((h, w))
    for i in range(h):
        for j in range(w):
            gx = gy = 0.0
            if j + 1 < w and keep((i, j), (i, j + 1)):
                gx = abs(d[i, j + 1] - d[i, j]) * weight((i, j), (i, j + 1))
            if i + 1 < h and keep((i, j), (i + 1, j)):
                gy = abs(d[i + 1, j] - d[i, j]) * weight((i, j), (i + 1, j))
            out[i, j] = gx + gy
    return out


def ref_gc(batch: np.ndarray, segs, window, frac: float, rgb=None) -> float:
    """Eq. 1: mean over all windows of the batch of the mean of its top ceil(frac*W^2) values;
    every pixel counts (unlabelled ones as no edge); window 'full' = the whole image."""
    per_window = []
    for b in range(batch.shape[0]):
        g = ref_grad(
            batch[b],
            None if segs is None else segs[b],
            "smooth",
            None if rgb is None else rgb[b],
        )
        wh, ww = g.shape if window == "full" else (window, window)
        for r in range(0, g.shape[0] - wh + 1, wh):
            for c in range(0, g.shape[1] - ww + 1, ww):
                vals = sorted(g[r : r + wh, c : c + ww].ravel().tolist(), reverse=True)
                n = math.ceil(frac * wh * ww)
                per_window.append(sum(vals[:n]) / n)
    return sum(per_window) / len(per_window)


def ref_sms(batch: np.ndarray, segs: np.ndarray, frac: float) -> float:
    """Eqs. 3-4: per (image, segment), mean of the top ceil(frac*n_s) gradients; mean of those."""
    per_segment = []
    for b in range(batch.shape[0]):
        g = ref_grad(batch[b], segs[b])
        groups: dict[int, list[float]] = {}
        for i in range(g.shape[0]):
            for j in range(g.shape[1]):
                if segs[b, i, j] >= 0:
                    groups.setdefault(int(segs[b, i, j]), []).append(g[i, j])
        for vals in groups.values():
            n = math.ceil(frac * len(vals))
            per_segment.append(sum(sorted(vals, reverse=True)[:n]) / n)
    return sum(per_segment) / len(per_segment)


def ref_aligned(pred: np.ndarray, teacher: np.ndarray, mask: np.ndarray, kind: str) -> np.ndarray:
    """The aligned teacher of one image, s, b from numpy's polyfit (least squares, degree 1)."""
    x, p = teacher[mask], pred[mask]
    if kind == "depth":
        s, b = np.polyfit(x, p, 1)
        return s * teacher + b
    s, b = np.polyfit(x, 1.0 / p, 1)  # disparity, 'inverse' mode: fit in inverse depth
    return 1.0 / np.clip(s * teacher + b, 1e-3, 1e3)


def ref_ssi(pred: np.ndarray, teacher: np.ndarray, mask: np.ndarray, kind: str) -> float:
    """Eq. 7 with least-squares s, b per image: mean |pred - aligned| over all valid pixels."""
    total, count = 0.0, 0
    for b in range(pred.shape[0]):
        aligned = ref_aligned(pred[b], teacher[b], mask[b], kind)
        for i, j in zip(*np.nonzero(mask[b]), strict=True):
            total += abs(pred[b, i, j] - aligned[i, j])
            count += 1
    return total / count


def ref_grad_matching(pred, teacher, mask, kind: str, scales: int) -> float:
    """Eq. 8 as MiDaS computes it: per scale (every 2^k-th pixel), sum of |dx R| + |dy R| where
    both pixels are valid, divided by the scale's valid count; summed over scales."""
    residual = [pred[b] - ref_aligned(pred[b], teacher[b], mask[b], kind) for b in range(len(pred))]
    total = 0.0
    for k in range(scales):
        step = 2**k
        s, n = 0.0, 0
        for b in range(len(pred)):
            r, m = residual[b][::step, ::step], mask[b][::step, ::step]
            n += int(m.sum())
            for i in range(r.shape[0]):
                for j in range(r.shape[1]):
                    if j + 1 < r.shape[1] and m[i, j] and m[i, j + 1]:
                        s += abs(r[i, j + 1] - r[i, j])
                    if i + 1 < r.shape[0] and m[i, j] and m[i + 1, j]:
                        s += abs(r[i + 1, j] - r[i, j])
        total += s / n
    return total


def lower_median(values: list[float]) -> float:
    return sorted(values)[(len(values) - 1) // 2]


def ref_release(pred, disparity, crops, mask=None) -> float:
    """The DMD3C release's term written out: per crop and image, median/MAD-normalise pred and
    1/(d' + 0.5) (d' min-max normalised per image), mean |difference|; mean over both. With a
    mask, only its pixels (the release has none); crops with no valid pixel are skipped."""
    mask = np.ones(pred.shape, bool) if mask is None else mask
    terms = []
    for b in range(pred.shape[0]):
        d = disparity[b]
        lo, hi = d[mask[b]].min(), d[mask[b]].max()
        t = 1.0 / ((d - lo) / (hi - lo) + 0.5)
        for top, left, h, w in crops:
            inside = mask[b, top : top + h, left : left + w]
            if not inside.any():
                continue
            p = pred[b, top : top + h, left : left + w][inside].tolist()
            q = t[top : top + h, left : left + w][inside].tolist()
            pm, qm = lower_median(p), lower_median(q)
            pd = lower_median([abs(v - pm) for v in p])
            qd = lower_median([abs(v - qm) for v in q])
            terms.append(
                sum(
                    abs((a - pm) / (pd + 1e-6) - (c - qm) / (qd + 1e-6))
                    for a, c in zip(p, q, strict=True)
                )
                / len(p)
            )
    return sum(terms) / len(terms)


def _rand(shape, seed=0, low=1.0, high=10.0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return low + (high - low) * torch.rand(shape, generator=g, dtype=dtype)


def _segments(b, h, w, seed=0, classes=3):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(-1, classes, (b, h, w), generator=g)


# --- DMD3C: supervised terms ----------------------------------------------------------------------


def test_masked_l1_by_hand_and_masked_values_have_no_effect_or_gradient():
    pred = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]], dtype=torch.float64, requires_grad=True)
    target = torch.tensor([[[[0.0, 5.0], [float("nan"), 4.0]]]], dtype=torch.float64)
    mask = torch.tensor([[[[True, True], [False, True]]]])
    value = L.masked_l1(pred, target, mask)
    assert value.item() == pytest.approx((1 + 3 + 0) / 3)  # |1-0| + |2-5| + |4-4|, 3 pixels
    value.backward()
    # d/dpred of mean |.|: sign/3 on valid pixels (0 at the exact zero), nothing on the masked one
    assert pred.grad.tolist() == [[[[1 / 3, -1 / 3], [0.0, 0.0]]]]
    moved = pred.detach().clone()
    moved[0, 0, 1, 0] = 1e6
    assert L.masked_l1(moved, target, mask).item() == pytest.approx(4 / 3)


def test_masked_mse_by_hand_both_denominators():
    pred = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    target = torch.tensor([[[[0.0, 5.0], [0.0, 2.0]]]])
    mask = target > 0
    assert L.masked_mse(pred, target, mask).item() == pytest.approx((9 + 4) / 2)
    # the releases' MSMSE: the masked sum over every pixel (4 here)
    assert L.masked_mse(pred, target, mask, "all").item() == pytest.approx((9 + 4) / 4)
    with pytest.raises(ValueError, match="denominator"):
        L.masked_mse(pred, target, mask, "pixels")


def test_multi_scale_weights_coarse_to_fine():
    assert L.MULTI_SCALE_WEIGHTS == (2**-10, 2**-8, 2**-6, 2**-4, 2**-2, 1)
    target = torch.zeros(1, 1, 2, 2)
    mask = torch.ones(1, 1, 2, 2, dtype=torch.bool)
    preds = [torch.full((1, 1, 2, 2), float(k + 1)) for k in range(6)]  # output k has L1 = k + 1
    value = L.multi_scale(L.masked_l1, preds, target, mask)
    expected = 1 / 1024 + 2 / 256 + 3 / 64 + 4 / 16 + 5 / 4 + 6
    assert value.item() == pytest.approx(expected, rel=1e-7)
    with pytest.raises(ValueError, match="6 outputs but 2 weights"):
        L.multi_scale(L.masked_l1, preds, target, mask, weights=(1, 1))


# --- DMD3C: SSI (eq. 7) ---------------------------------------------------------------------------


@pytest.mark.parametrize("s, b", [(0.5, 0.0), (2.0, -3.0), (7.0, 11.5)])
def test_ssi_zero_for_affine_copy_of_a_depth_teacher(s, b):
    teacher = _rand((2, 1, 9, 11), seed=1)
    mask = _rand((2, 1, 9, 11), seed=2, low=0, high=1) > 0.3
    pred = s * teacher + b
    assert L.ssi_loss(pred, teacher, mask, "depth").item() < 1e-9
    assert L.gradient_matching_loss(pred, teacher, mask, teacher_kind="depth").item() < 1e-9


@pytest.mark.parametrize("s, b", [(0.02, 0.01), (0.5, -0.05)])
def test_ssi_zero_when_the_disparity_teacher_is_affine_in_inverse_depth(s, b):
    disparity = _rand((2, 1, 9, 11), seed=3, low=0.5, high=2.0)
    mask = torch.ones_like(disparity, dtype=torch.bool)
    pred = 1.0 / (s * disparity + b)  # metric depth whose inverse is affine in the disparity
    assert L.ssi_loss(pred, disparity, mask).item() < 1e-9
    assert L.gradient_matching_loss(pred, disparity, mask).item() < 1e-9
    # ... which no affine map of the disparity itself matches (why it is not fitted directly)
    assert L.ssi_loss(pred, disparity, mask, "depth").item() > 1e-3


@pytest.mark.parametrize("kind", ["depth", "disparity"])
def test_ssi_and_gradient_matching_match_the_equations_written_out(kind):
    pred = _rand((2, 1, 10, 13), seed=4)
    teacher = _rand((2, 1, 10, 13), seed=5, low=0.2, high=3.0)
    mask = _rand((2, 1, 10, 13), seed=6, low=0, high=1) > 0.25
    args = (pred[:, 0].numpy(), teacher[:, 0].numpy(), mask[:, 0].numpy(), kind)
    value = L.ssi_loss(pred, teacher, mask, kind).item()
    assert value > 0.1
    assert value == pytest.approx(ref_ssi(*args), rel=1e-9)
    grad = L.gradient_matching_loss(pred, teacher, mask, 4, kind).item()
    assert grad == pytest.approx(ref_grad_matching(*args, scales=4), rel=1e-9)
    assert L.gradient_matching_loss(pred, teacher, mask, 1, kind).item() == pytest.approx(
        ref_grad_matching(*args, scales=1), rel=1e-9
    )


def test_ssi_inverse_mode_scores_the_true_depth_zero_on_the_synthetic_street():
    """Why 'inverse' is the default: against a Depth-Anything-like teacher d = a / z + c of the
    street's exact depth z, the true depth is a perfect answer only when the teacher is fitted
    in inverse depth; the release's 1/(d' + 0.5) and an affine fit of d itself both charge the
    truth metres of error (4.7 and 6.7 m at 416x128, training/README.md, "Losses")."""
    from depth_completion_ros.simulation.street_scene import CameraRig, make_sequence

    frame = make_sequence(1, seed=0, rig=CameraRig.kitti(width=208, height=64))[0]
    z = torch.from_numpy(frame.depth_gt).double()[None, None]
    mask = (z > 0) & (z <= 80)
    for a, c in ((10.0, 0.2), (3.0, -0.01)):
        d = torch.where(z > 0, a / z.clamp(min=1e-6) + c, 0)
        assert L.ssi_loss(z, d, mask).item() < 1e-9
        assert L.gradient_matching_loss(z, d, mask).item() < 1e-9
        assert L.ssi_loss(z, d, mask, disparity_mode="pseudo_depth").item() > 1.0
        assert L.ssi_loss(z, d, mask, "depth").item() > 1.0


def test_ssi_inverse_fit_ignores_near_zero_predictions():
    """Pixels predicted below 0.1 m stay in the L1 but not in the inverse-depth fit (1/pred
    would dominate it): the fit on the rest is exact, so only those pixels cost."""
    disparity = _rand((1, 1, 8, 9), seed=36, low=0.5, high=2.0)
    mask = torch.ones_like(disparity, dtype=torch.bool)
    exact = 1.0 / (0.1 * disparity + 0.02)
    pred = exact.clone()
    pred[0, 0, 0, :3] = 1e-3  # e.g. not yet filled early in training
    expected = (exact[0, 0, 0, :3] - 1e-3).abs().sum() / 72
    assert L.ssi_loss(pred, disparity, mask).item() == pytest.approx(expected.item(), rel=1e-9)


def test_ssi_pseudo_depth_mode_is_the_release_conversion_then_eq7():
    pred = _rand((1, 1, 6, 7), seed=7)
    disp = _rand((1, 1, 6, 7), seed=8, low=3.0, high=40.0)
    mask = torch.ones_like(pred, dtype=torch.bool)
    d = disp[0, 0].numpy()
    pseudo = 1.0 / ((d - d.min()) / (d.max() - d.min()) + 0.5)
    expected = ref_ssi(pred[:, 0].numpy(), pseudo[None], mask[:, 0].numpy(), "depth")
    value = L.ssi_loss(pred, disp, mask, disparity_mode="pseudo_depth").item()
    assert value == pytest.approx(expected, rel=1e-9)


def test_least_squares_fit_is_the_optimum_envelope_theorem():
    """At the least-squares s, b the squared residual's gradient wrt pred is the same with s, b
    held fixed or not (their own gradient is zero there): fails if the closed form is wrong."""
    pred = _rand((2, 1, 5, 6), seed=9).requires_grad_()
    teacher = _rand((2, 1, 5, 6), seed=10)
    mask = _rand((2, 1, 5, 6), seed=11, low=0, high=1) > 0.2
    grads = []
    for detach in (False, True):
        s, b, ok = L.fit_scale_shift(teacher, pred, mask)
        assert ok.all()
        if detach:
            s, b = s.detach(), b.detach()
        sse = torch.where(mask, (pred - s * teacher - b) ** 2, 0).sum()
        grads.append(torch.autograd.grad(sse, pred)[0])
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-9, atol=1e-12)


def test_ssi_detached_scale_shift_is_the_l1_with_fixed_least_squares_s_b():
    """Same value either way; with s, b detached the gradient is that of mean |pred - (s t + b)|
    for s, b fixed at their least-squares values (numpy's polyfit here)."""
    pred = _rand((1, 1, 5, 7), seed=31).requires_grad_()
    teacher = _rand((1, 1, 5, 7), seed=32)
    mask = torch.ones_like(pred, dtype=torch.bool)
    full = L.ssi_loss(pred, teacher, mask, "depth", detach_scale_shift=False)
    fixed = L.ssi_loss(pred, teacher, mask, "depth")  # the default
    assert full.item() == pytest.approx(fixed.item(), rel=1e-12)
    s, b = np.polyfit(teacher.flatten().numpy(), pred.detach().flatten().numpy(), 1)
    expected = torch.autograd.grad((pred - (s * teacher + b)).abs().mean(), pred)[0]
    torch.testing.assert_close(torch.autograd.grad(fixed, pred)[0], expected)
    assert not torch.allclose(torch.autograd.grad(full, pred)[0], expected)  # L1 after LS


def test_ssi_degenerate_images_are_left_out():
    pred = _rand((2, 1, 4, 5), seed=12).requires_grad_()
    teacher = _rand((2, 1, 4, 5), seed=13)
    mask = torch.ones_like(pred, dtype=torch.bool)
    flat = teacher.clone()
    flat[0] = 2.0  # image 0: constant teacher -> no scale can be fitted
    one = mask.clone()
    one[0] = False
    one[0, 0, 0, 0] = True  # image 0: a single valid pixel
    alone = L.ssi_loss(pred[1:], teacher[1:], mask[1:], "depth")
    for t, m in ((flat, mask), (teacher, one)):
        value = L.ssi_loss(pred, t, m, "depth")
        assert value.item() == pytest.approx(alone.item(), rel=1e-12)
        (g,) = torch.autograd.grad(value, pred)
        assert torch.isfinite(g).all() and (g[0] == 0).all()
    for m in (one[:1], torch.zeros_like(mask[:1])):  # nothing usable at all -> 0
        value = L.ssi_loss(pred[:1], teacher[:1], m, "depth")
        assert value.item() == 0.0
        assert torch.isfinite(torch.autograd.grad(value, pred)[0]).all()


# --- DMD3C: the release's term ----------------------------------------------------------------


def test_release_crops_follow_the_release_ranges():
    g = torch.Generator().manual_seed(0)
    crops = L.release_crops(256, 1216, 200, generator=g)
    for top, left, h, w in crops:
        assert int(256 * 0.125) <= h <= int(256 * 0.5) and int(1216 * 0.125) <= w <= 1216 // 2
        assert abs(h / 256 - w / 1216) < 0.01  # one fraction for both sides
        assert 0 <= top <= 256 - h and 0 <= left <= 1216 - w


def test_ssi_release_matches_the_release_written_out_and_is_affine_invariant():
    pred = _rand((2, 1, 24, 32), seed=14)
    disp = _rand((2, 1, 24, 32), seed=15, low=0.0, high=255.0)
    crops = L.release_crops(24, 32, 5, generator=torch.Generator().manual_seed(3))
    value = L.ssi_loss_release(pred, disp, crops=5, generator=torch.Generator().manual_seed(3))
    assert value.item() == pytest.approx(
        ref_release(pred[:, 0].numpy(), disp[:, 0].numpy(), crops), rel=1e-9
    )
    d = (disp - disp.amin((1, 2, 3), True)) / (
        disp.amax((1, 2, 3), True) - disp.amin((1, 2, 3), True)
    )
    copy = 3.0 * (1.0 / (d + 0.5)) + 4.0
    assert L.ssi_loss_release(copy, disp, crops=5).item() < 1e-5


def test_ssi_release_with_a_mask_uses_only_valid_pixels():
    pred = _rand((1, 1, 16, 16), seed=16)
    disp = _rand((1, 1, 16, 16), seed=17, low=1.0, high=9.0)
    mask = torch.zeros_like(pred, dtype=torch.bool)
    mask[..., :, :8] = True
    mask[..., 3, 2] = mask[..., 9, 5] = False
    crops = L.release_crops(16, 16, 8, generator=torch.Generator().manual_seed(5))
    value = L.ssi_loss_release(
        pred, disp, mask, crops=8, generator=torch.Generator().manual_seed(5)
    )
    expected = ref_release(pred[:, 0].numpy(), disp[:, 0].numpy(), crops, mask[:, 0].numpy())
    assert value.item() == pytest.approx(expected, rel=1e-9)
    other = pred.clone()
    other[..., :, 8:] = 1e3  # masked-out values change nothing
    g = lambda: torch.Generator().manual_seed(5)
    a = L.ssi_loss_release(pred, disp, mask, crops=8, generator=g())
    b = L.ssi_loss_release(other, disp, mask, crops=8, generator=g())
    assert a.item() == pytest.approx(b.item(), rel=1e-12)


# --- SelfDC -------------------------------------------------------------------------------------


def test_gradient_magnitude_by_hand_with_and_without_segments():
    d = torch.tensor([[[[1.0, 2.0, 4.0], [1.0, 5.0, 4.0]]]])
    # dx: [1, 2, 0], [4, -1, 0]; dy: [0, 3, 0], [0, 0, 0] (last column / row are 0)
    assert L.gradient_magnitude(d).tolist() == [[[1.0, 5.0, 0.0], [4.0, 1.0, 0.0]]]
    seg = torch.tensor([[[0, 0, 1], [0, -1, 1]]])
    # crossing 0|1 or touching the ignored pixel counts 0: only (0,0)->(0,1) and (0,2)->(1,2)
    assert L.gradient_magnitude(d, seg).tolist() == [[[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]]
    # L_gc's rule: only 0|1 is an edge; the differences touching the -1 pixel count:
    # (0,1) dy 3 to the -1 pixel, (1,0) dx 4 into it, (1,1) dx |4-5| = 1 out of it
    smooth = L.gradient_magnitude(d, seg, unlabelled="smooth")
    assert smooth.tolist() == [[[1.0, 3.0, 0.0], [4.0, 1.0, 0.0]]]
    # basis I: a black|white step between columns 0 and 1 weighs that dx by exp(-1)
    rgb = torch.zeros(1, 3, 2, 3)
    rgb[..., 1:] = 255.0
    weighted = L.gradient_magnitude(d, image=rgb)
    e = math.exp(-1.0)
    assert weighted.flatten().tolist() == pytest.approx([e, 5.0, 0.0, 4 * e, 1.0, 0.0], rel=1e-6)


def test_depth_consistency_by_hand():
    pred = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]], [[[5.0, 6.0], [7.0, 8.0]]]])
    sparse = torch.tensor([[[[0.0, 3.0], [0.0, 0.0]]], [[[5.5, 0.0], [0.0, 10.0]]]])
    # eq. 5 over the batch's 3 valid points: |2-3| + |5-5.5| + |8-10|
    assert L.depth_consistency_loss(pred, sparse).item() == pytest.approx(3.5 / 3)


def test_local_gradient_constraint_by_hand():
    d = torch.zeros(1, 1, 4, 4)
    d[0, 0, 0, 1] = 2.0  # window (0,0) of 2x2: gradients (0,0) 2, (0,1) |0-2| + |0-2| = 4, 0, 0
    d[0, 0, 3, 3] = 1.0  # window (1,1): (2,3) dy 1, (3,2) dx 1, 0, 0
    # windows (0,1) and (1,0) hold only zeros -> top 1: (4 + 0 + 0 + 1) / 4
    assert L.local_gradient_constraint_loss(d, window=2, top_fraction=0.25).item() == 5 / 4
    # top 2 of 4 per window: (4+2)/2, 0, 0, (1+1)/2 -> mean 4/4
    assert L.local_gradient_constraint_loss(d, window=2, top_fraction=0.5).item() == 1.0


@pytest.mark.parametrize("with_segments", [False, True])
def test_local_gradient_constraint_matches_eq1_written_out(with_segments):
    pred = _rand((2, 1, 13, 18), seed=18)
    segs = _segments(2, 13, 18, seed=19) if with_segments else None
    # window 4, 10 %: N = ceil(1.6) = 2 (floor would give 1); 13x18 leaves a remainder
    value = L.local_gradient_constraint_loss(pred, segs, window=4, top_fraction=0.1)
    expected = ref_gc(pred[:, 0].numpy(), None if segs is None else segs.numpy(), 4, 0.1)
    assert value.item() == pytest.approx(expected, rel=1e-12)
    default = L.local_gradient_constraint_loss(pred, segs)  # W = 8, 2 % -> N = 2
    assert default.item() == pytest.approx(
        ref_gc(pred[:, 0].numpy(), None if segs is None else segs.numpy(), 8, 0.02), rel=1e-12
    )


def test_local_gradient_constraint_covers_unlabelled_pixels():
    """Eq. 1 covers every window: a depth step inside a region without labels (-1) is penalised
    (with gradient there), as it is without any basis; a step between two labelled segments
    is free."""
    h, w = 8, 8
    seg = torch.full((1, h, w), -1)
    seg[:, :, :4] = 0  # left half labelled, right half unlabelled
    inside_unlabelled = torch.full((1, 1, h, w), 5.0)
    inside_unlabelled[..., 6:] = 9.0  # a step between columns 5 and 6, both unlabelled
    p = inside_unlabelled.clone().requires_grad_()
    value = L.local_gradient_constraint_loss(p, seg, window=8)
    plain = L.local_gradient_constraint_loss(inside_unlabelled, None, window=8)
    assert value.item() == plain.item() > 0
    (g,) = torch.autograd.grad(value, p)
    assert g[..., 5:7].abs().sum() > 0
    labelled = seg.clone()
    labelled[:, :, 4:6] = 0
    labelled[:, :, 6:] = 1  # now the step lies between two labelled segments: free
    assert L.local_gradient_constraint_loss(inside_unlabelled, labelled, window=8).item() == 0.0


def test_local_gradient_constraint_full_window_and_image_basis_match_the_reference():
    pred = _rand((2, 1, 9, 12), seed=60)
    segs = _segments(2, 9, 12, seed=61)
    rgb = _rand((2, 3, 9, 12), seed=62, low=0, high=255).round()
    for basis in (None, segs):
        value = L.local_gradient_constraint_loss(pred, basis, window="full", top_fraction=0.05)
        b = None if basis is None else basis.numpy()
        assert value.item() == pytest.approx(ref_gc(pred[:, 0].numpy(), b, "full", 0.05))
    value = L.local_gradient_constraint_loss(pred, window=4, top_fraction=0.1, image=rgb)
    ref = ref_gc(pred[:, 0].numpy(), None, 4, 0.1, rgb.numpy())
    assert value.item() == pytest.approx(ref, rel=1e-12)
    # the image basis changes the value (it is not ignored)
    assert value.item() < L.local_gradient_constraint_loss(pred, window=4, top_fraction=0.1)
    with pytest.raises(ValueError, match="not both"):
        L.local_gradient_constraint_loss(pred, segs, image=rgb)
    with pytest.raises(ValueError, match="'full'"):
        L.local_gradient_constraint_loss(pred, window="whole")


def test_edge_aware_smoothness_eq2_and_its_mask_variant():
    pred = _rand((2, 1, 7, 9), seed=63)
    segs = _segments(2, 7, 9, seed=64)
    rgb = _rand((2, 3, 7, 9), seed=65, low=0, high=255).round()
    value = L.edge_aware_smoothness_loss(pred, rgb=rgb)
    ref = np.mean([ref_grad(pred[b, 0].numpy(), rgb=rgb[b].numpy()) for b in range(2)])
    assert value.item() == pytest.approx(ref, rel=1e-12)
    value = L.edge_aware_smoothness_loss(pred, segments=segs)
    ref = np.mean([ref_grad(pred[b, 0].numpy(), segs[b].numpy(), "smooth") for b in range(2)])
    assert value.item() == pytest.approx(ref, rel=1e-12)
    with pytest.raises(ValueError, match="exactly one"):
        L.edge_aware_smoothness_loss(pred)


def test_local_gradient_constraint_ignores_the_window_remainder():
    """An 11 x 14 map has 2 x 3 windows of 4: rows 8-10 and columns 12-13 are left over. Pixels
    the kept windows' differences never reach (rows >= 9, column 13) change nothing."""
    pred = _rand((1, 1, 11, 14), seed=20)
    other = pred.clone()
    other[..., 9:, :] = _rand((1, 1, 2, 14), seed=29, low=-1e3, high=1e3)
    other[..., :, 13] = 1e4
    a = L.local_gradient_constraint_loss(pred, window=4, top_fraction=0.1)
    b = L.local_gradient_constraint_loss(other, window=4, top_fraction=0.1)
    assert a.item() == b.item()
    # 6 windows, not 9 or 12: the mean over the kept windows only
    assert a.item() == pytest.approx(ref_gc(pred[:, 0].numpy(), None, 4, 0.1), rel=1e-12)


def test_local_gradient_constraint_top_n_with_ties():
    d = torch.zeros(1, 1, 4, 4)
    d[0, 0, :, 1] = 1.0  # three equal gradients of 1 in column 0 and 2 per row in column 1 ...
    # per pixel: col0 = 1 (dx), col1 = 1 (dx to col2), col2/col3 = 0, all rows alike
    # 4x4 window, N = ceil(0.5 * 16) = 8: exactly the eight 1s -> mean 1
    assert L.local_gradient_constraint_loss(d, window=4, top_fraction=0.5).item() == 1.0
    # N = 12: eight 1s and four tied zeros (which four does not matter) -> 8/12
    assert L.local_gradient_constraint_loss(d, window=4, top_fraction=0.75).item() == (
        pytest.approx(8 / 12, rel=1e-7)
    )


def test_selective_mask_smoothness_by_hand():
    d = torch.tensor([[[[0.0, 1.0, 3.0], [0.0, 0.0, 0.0]]]])
    seg = torch.tensor([[[0, 0, 0], [1, 1, -1]]])
    # segment 0: gradients (0,0) 1, (0,1) 2, (0,2) 0 (dy to an ignored pixel); top ceil(1.2)=2 -> 1.5
    # segment 1: (1,0) 0, (1,1) 0 (dx into ignored) -> top ceil(0.8) = 1 -> 0
    assert L.selective_mask_smoothness_loss(d, seg, 0.4).item() == pytest.approx(0.75)


def test_selective_mask_smoothness_matches_eqs_3_4_written_out():
    pred = _rand((2, 1, 9, 12), seed=21)
    segs = _segments(2, 9, 12, seed=22, classes=4)
    segs[1, :3] = 40  # a label id with unused ids below it (counted directly)
    sam_like = segs.clone()
    sam_like[0, 4:] = 60000  # ids far more than the pixels (compacted first)
    for labels in (segs, sam_like):
        for frac in (0.4, 0.13, 1.0):
            value = L.selective_mask_smoothness_loss(pred, labels, frac)
            assert value.item() == pytest.approx(
                ref_sms(pred[:, 0].numpy(), labels.numpy(), frac), rel=1e-12
            )


def test_selfdc_terms_zero_on_constant_map_and_step_inside_vs_along_boundary():
    h, w = 16, 16
    seg = torch.zeros(1, h, w, dtype=torch.long)
    seg[:, :, 8:] = 1  # two segments meeting between columns 7 and 8
    const = torch.full((1, 1, h, w), 5.0)
    assert L.local_gradient_constraint_loss(const, seg).item() == 0.0
    assert L.local_gradient_constraint_loss(const).item() == 0.0
    assert L.selective_mask_smoothness_loss(const, seg).item() == 0.0
    along = const.clone()
    along[..., 8:] = 9.0  # a depth step exactly on the segment boundary
    inside = const.clone()
    inside[..., 4:] = 9.0  # the same step inside segment 0
    assert L.local_gradient_constraint_loss(along, seg).item() == 0.0
    assert L.selective_mask_smoothness_loss(along, seg).item() == 0.0
    assert L.local_gradient_constraint_loss(inside, seg).item() > 0.0
    assert L.selective_mask_smoothness_loss(inside, seg).item() > 0.0
    assert L.local_gradient_constraint_loss(along).item() > 0.0  # no basis M: it counts


def test_segmentation_loss_by_hand_and_ignored_labels():
    logits = torch.tensor([[[[2.0, 0.0]], [[0.0, 1.0]], [[0.0, 0.0]]]])  # B=1, C=3, 1x2
    labels = torch.tensor([[[0, -1]]])
    expected = -math.log(math.exp(2) / (math.exp(2) + 2))
    assert L.segmentation_loss(logits, labels).item() == pytest.approx(expected)
    assert L.segmentation_loss(logits, torch.tensor([[[-1, -5]]])).item() == 0.0
    with pytest.raises(ValueError, match="label 3 needs 4 classes"):
        L.segmentation_loss(logits, torch.tensor([[[3, 0]]]))


# --- robustness: empty masks, gradients ------------------------------------------------------------


def _all_losses(pred, teacher, mask, segs, sparse):
    full = {"detach_scale_shift": False}  # gradcheck checks the function's own gradient; the
    # detached one is checked against fixed s, b in test_ssi_detached_scale_shift_...
    return {
        "l1": lambda p: L.masked_l1(p, teacher, mask),
        "mse": lambda p: L.masked_mse(p, teacher, mask),
        "ssi_depth": lambda p: L.ssi_loss(p, teacher, mask, "depth", **full),
        "ssi_inverse": lambda p: L.ssi_loss(p, teacher, mask, **full),
        "ssi_pseudo": lambda p: L.ssi_loss(p, teacher, mask, disparity_mode="pseudo_depth", **full),
        "grad": lambda p: L.gradient_matching_loss(p, teacher, mask, scales=2, **full),
        "release": lambda p: L.ssi_loss_release(
            p,
            teacher,
            mask,
            crops=3,
            min_frac=0.5,
            max_frac=1.0,
            generator=torch.Generator().manual_seed(0),
        ),  # fmt: skip
        "dc": lambda p: L.depth_consistency_loss(p, sparse),
        "gc": lambda p: L.local_gradient_constraint_loss(p, segs, window=2, top_fraction=0.3),
        "gc_full": lambda p: L.local_gradient_constraint_loss(p, segs, "full", 0.3),
        "gc_image": lambda p: L.local_gradient_constraint_loss(p, None, 2, 0.3, image=_rgb(p)),
        "sms": lambda p: L.selective_mask_smoothness_loss(p, segs),
        "smooth_image": lambda p: L.edge_aware_smoothness_loss(p, rgb=_rgb(p)),
        "smooth_mask": lambda p: L.edge_aware_smoothness_loss(p, segments=segs),
    }


def _rgb(like):
    b, _, h, w = like.shape
    return _rand((b, 3, h, w), seed=66, low=0, high=255).round()  # integers: exact in half


#: terms that take every pixel whatever the labels (eq. 1, eq. 2): never empty
_NEVER_EMPTY = ("gc", "gc_full", "gc_image", "smooth_image", "smooth_mask")


def test_empty_inputs_give_zero_without_nan():
    pred = _rand((2, 1, 6, 6), seed=23, dtype=torch.float32).requires_grad_()
    teacher = _rand((2, 1, 6, 6), seed=24, dtype=torch.float32)
    empty = torch.zeros_like(pred, dtype=torch.bool)
    ignored = torch.full((2, 6, 6), -1)
    for name, fn in _all_losses(pred, teacher, empty, ignored, torch.zeros_like(pred)).items():
        if name in _NEVER_EMPTY:
            continue
        value = fn(pred)
        (g,) = torch.autograd.grad(value, pred, allow_unused=False)
        assert value.item() == 0.0, name
        assert torch.isfinite(g).all(), name


def test_float32_gradients_finite_and_float64_gradcheck():
    for dtype in (torch.float32, torch.float64):
        pred = _rand((2, 1, 6, 8), seed=25, dtype=dtype).requires_grad_()
        teacher = _rand((2, 1, 6, 8), seed=26, low=0.5, high=3.0, dtype=dtype)
        mask = _rand((2, 1, 6, 8), seed=27, low=0, high=1, dtype=dtype) > 0.3
        sparse = torch.where(mask, teacher, 0)
        segs = _segments(2, 6, 8, seed=28)
        for name, fn in _all_losses(pred, teacher, mask, segs, sparse).items():
            if dtype == torch.float32:
                (g,) = torch.autograd.grad(fn(pred), pred)
                assert torch.isfinite(g).all() and g.abs().sum() > 0, name
            else:
                assert torch.autograd.gradcheck(fn, (pred,), eps=1e-7, atol=1e-6), name


def test_half_precision_inputs_are_computed_in_float32():
    """AMP hands the losses float16/bfloat16 maps: sums of squared depths would overflow there
    (80 m deep, 128 x 128 pixels: 1e8 > 65504); every loss computes in float32 instead."""
    pred = _rand((1, 1, 128, 128), seed=33, low=60, high=80, dtype=torch.float32)
    teacher = 1.0 / _rand((1, 1, 128, 128), seed=34, low=60, high=80, dtype=torch.float32)
    mask = torch.ones_like(pred, dtype=torch.bool)
    segs = _segments(1, 128, 128, seed=35)
    sparse = torch.where(segs[:, None] == 0, pred, 0)
    for name, fn in _all_losses(pred, teacher, mask, segs, sparse).items():
        reference = fn(pred.bfloat16().float())
        value = fn(pred.bfloat16())
        assert value.dtype == torch.float32, name
        assert torch.isfinite(value) and value.item() == pytest.approx(reference.item()), name


# --- totals ----------------------------------------------------------------------------------------


def _batch(seed=30):
    b, h, w = 2, 16, 24
    gt = _rand((b, 1, h, w), seed=seed, low=2, high=20, dtype=torch.float32)
    keep = _rand((b, 1, h, w), seed=seed + 1, low=0, high=1, dtype=torch.float32)
    return {
        "sparse": torch.where(keep > 0.9, gt, 0),
        "gt": torch.where(keep > 0.7, gt, 0),
        "teacher": 1.0 / gt,
        "teacher_kind": "disparity",
        "segments": _segments(b, h, w, seed=seed + 2, classes=4),
    }


def test_dmd3c_total_is_the_weighted_sum_of_its_terms():
    batch = _batch()
    outs = [
        _rand((2, 1, 16, 24), seed=40 + k, low=2, high=20, dtype=torch.float32) for k in range(6)
    ]
    batch["teacher"][..., :3, :] = 0.0  # "sky": disparity 0, left out of ssi and grad
    weights = {"l1": 1.0, "mse": 0.3, "ssi": 0.7, "grad": 0.5, "ssi_release": 0.2}
    total, logged = L.dmd3c_loss(outs, batch, weights, generator=torch.Generator().manual_seed(7))
    valid = batch["gt"] > 0
    tmask = batch["teacher"] > 0
    l1 = L.multi_scale(L.masked_l1, outs, batch["gt"], valid)
    mse = sum(
        w * L.masked_mse(o, batch["gt"], valid, "all")
        for o, w in zip(outs, L.MULTI_SCALE_WEIGHTS, strict=True)
    )
    ssi = sum(
        w * L.ssi_loss(o, batch["teacher"], tmask)
        for o, w in zip(outs, L.MULTI_SCALE_WEIGHTS, strict=True)
    )
    grad = L.multi_scale(L.gradient_matching_loss, outs, batch["teacher"], tmask)
    g = torch.Generator().manual_seed(7)  # the release masks nothing: every pixel, sky too
    release = sum(
        w * L.ssi_loss_release(o, batch["teacher"], None, generator=g)
        for o, w in zip(outs, L.MULTI_SCALE_WEIGHTS, strict=True)
    )
    assert set(logged) == {"l1", "mse", "ssi", "grad", "ssi_release", "total"}
    for name, v in (
        ("l1", l1),
        ("mse", mse),
        ("ssi", ssi),
        ("grad", grad),
        ("ssi_release", release),
    ):
        assert logged[name] == pytest.approx(v.item(), rel=1e-6)
    total_expected = l1 + 0.3 * mse + 0.7 * ssi + 0.5 * grad + 0.2 * release
    assert total.item() == pytest.approx(total_expected.item(), rel=1e-6)
    single, _ = L.dmd3c_loss(outs[-1], batch, {"l1": 1.0})
    assert single.item() == pytest.approx(L.masked_l1(outs[-1], batch["gt"], valid).item())


def test_selfdc_total_is_the_weighted_sum_of_its_terms():
    batch = _batch(seed=50)
    depth = _rand((2, 1, 16, 24), seed=51, low=2, high=20, dtype=torch.float32)
    logits = _rand((2, 4, 16, 24), seed=52, low=-1, high=1, dtype=torch.float32)
    total, logged = L.selfdc_loss({"depth": depth, "seg_logits": logits}, batch, L.SELFDC_WEIGHTS)
    segs = batch["segments"]
    dc = L.depth_consistency_loss(depth, batch["sparse"])
    seg = L.segmentation_loss(logits, segs)
    gc = L.local_gradient_constraint_loss(depth, segs)
    sms = L.selective_mask_smoothness_loss(depth, segs)
    assert set(logged) == {"dc", "seg", "gc", "sms", "total"}  # 'ssi' is off by default
    assert total.item() == pytest.approx((dc + 0.1 * seg + gc + sms).item(), rel=1e-6)
    _, with_ssi = L.selfdc_loss({"depth": depth}, batch, {"dc": 1, "ssi": 0.5})
    assert with_ssi["total"] == pytest.approx(
        (
            dc + 0.5 * L.ssi_loss(depth, batch["teacher"], torch.ones_like(depth, dtype=torch.bool))
        ).item(),
        rel=1e-6,
    )


def test_selfdc_options_select_the_table_4_and_5_variants():
    """loss.options reach the variants: Table 4 (window 'full', gc_basis 'image') and Table 5
    (smoothness 'edge_aware', 'mask_smooth', 'mask_aware'), each the function it names."""
    batch = _batch(seed=53)
    batch["rgb"] = _rand((2, 3, 16, 24), seed=54, low=0, high=255, dtype=torch.float32).round()
    depth = _rand((2, 1, 16, 24), seed=55, low=2, high=20, dtype=torch.float32)
    segs, rgb = batch["segments"], batch["rgb"]

    def term(name, **options):
        return L.selfdc_loss({"depth": depth}, batch, {name: 1.0}, **options)[1][name]

    gc = L.local_gradient_constraint_loss
    assert term("gc", window="full") == pytest.approx(gc(depth, segs, "full").item())
    assert term("gc", gc_basis="image") == pytest.approx(gc(depth, image=rgb).item())
    assert term("gc", gc_basis="none", window=4) == pytest.approx(gc(depth, None, 4).item())
    smooth = L.edge_aware_smoothness_loss
    assert term("sms", smoothness="edge_aware") == pytest.approx(smooth(depth, rgb=rgb).item())
    assert term("sms", smoothness="mask_smooth") == pytest.approx(
        smooth(depth, segments=segs).item()
    )
    sms = L.selective_mask_smoothness_loss
    assert term("sms", smoothness="mask_aware") == pytest.approx(sms(depth, segs, 1.0).item())
    assert term("sms") == pytest.approx(sms(depth, segs, 0.4).item())
    values = {term("sms", smoothness=v) for v in L.SMOOTHNESS}
    assert len(values) == len(L.SMOOTHNESS)  # four different losses
    with pytest.raises(ValueError, match="smoothness must be one of"):
        term("sms", smoothness="edges")
    no_rgb = {k: v for k, v in batch.items() if k != "rgb"}
    with pytest.raises(ValueError, match="'gc' needs 'rgb'"):
        L.selfdc_loss({"depth": depth}, no_rgb, {"gc": 1.0}, gc_basis="image")


def test_totals_reject_unknown_terms_and_missing_inputs():
    batch = _batch()
    depth = batch["gt"].clone()
    with pytest.raises(ValueError, match=r"unknown loss term\(s\) \['smooth'\]"):
        L.selfdc_loss({"depth": depth}, batch, {"smooth": 1.0})
    with pytest.raises(ValueError, match="'seg' needs the network's 'seg_logits'"):
        L.selfdc_loss({"depth": depth}, batch, {"seg": 0.1})
    no_teacher = {k: v for k, v in batch.items() if k != "teacher"}
    with pytest.raises(ValueError, match="'ssi' needs 'teacher'"):
        L.dmd3c_loss([depth], no_teacher, {"ssi": 1.0}, output_weights=(1.0,))
    with pytest.raises(ValueError, match="segments must be B x H x W"):
        L.selective_mask_smoothness_loss(depth, batch["segments"][:, :4])
    with pytest.raises(ValueError, match="holds no 8x8 window"):
        L.local_gradient_constraint_loss(depth[..., :5, :])
