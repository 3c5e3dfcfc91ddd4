"""Depth metrics with the benchmarks' definitions: KITTI depth completion and NYU Depth v2.

Evaluation, the demo, tests and training all call these, so every reported number means the same.
"""

from __future__ import annotations

import numpy as np


def fill_holes_like_kitti(prediction: np.ndarray) -> np.ndarray:
    """Fill missing predictions as the KITTI devkit does before scoring (``interpolateBackground``).

    The devkit (devkit_depth ``io_depth.h``) scores every ground-truth pixel, so empty prediction
    pixels (0 or NaN) are filled first: within a row, a hole bounded on both sides takes the
    smaller (nearer) of the two bounding depths, and the row's ends extend its outermost valid
    values outwards. Then, per column, rows above the first filled row and below the last one take
    that row's value. Fully empty rows between filled rows stay empty (the devkit scores them as -1;
    here they stay 0).
    """
    pred = np.asarray(prediction, dtype=np.float32).copy()
    valid = np.isfinite(pred) & (pred > 0)
    if valid.all() or not valid.any():
        return np.where(valid, pred, 0.0).astype(np.float32)
    height, width = pred.shape
    cols = np.arange(width)
    left_idx = np.where(valid, cols[None, :], -1)
    np.maximum.accumulate(left_idx, axis=1, out=left_idx)
    right_idx = np.where(valid, cols[None, :], width)
    right_idx = np.minimum.accumulate(right_idx[:, ::-1], axis=1)[:, ::-1]
    rows = np.arange(height)[:, None]
    safe = np.where(valid, pred, 0.0)
    left = np.where(left_idx >= 0, safe[rows, np.clip(left_idx, 0, width - 1)], np.nan)
    right = np.where(right_idx < width, safe[rows, np.clip(right_idx, 0, width - 1)], np.nan)
    fill = np.fmin(left, right)  # fmin ignores NaN: one-sided holes take the side that exists
    out = np.where(valid, pred, fill)

    # Column pass: after the row pass a row is either all filled or all empty.
    filled_rows = np.flatnonzero(valid.any(axis=1))
    first, last = filled_rows[0], filled_rows[-1]
    out[:first] = out[first]
    out[last + 1 :] = out[last]
    return np.nan_to_num(out, nan=0.0).astype(np.float32)


def kitti_metrics(prediction: np.ndarray, ground_truth: np.ndarray) -> dict[str, float]:
    """KITTI depth-completion metrics for one image, in the benchmark's units.

    RMSE and MAE in millimetres, iRMSE and iMAE in 1/km, over pixels with ground truth (> 0);
    holes in the prediction are filled first as the devkit does.
    """
    gt = np.asarray(ground_truth, dtype=np.float64)
    mask = gt > 0
    if not mask.any():
        raise ValueError("ground truth has no valid pixels")
    pred = fill_holes_like_kitti(prediction).astype(np.float64)[mask]
    gt = gt[mask]
    pred = np.maximum(pred, 1e-3)  # avoid division by zero where a hole stayed empty
    err = pred - gt
    inv_err = 1.0 / pred - 1.0 / gt
    return {
        "rmse_mm": float(np.sqrt(np.mean(err**2)) * 1000.0),
        "mae_mm": float(np.mean(np.abs(err)) * 1000.0),
        "irmse_1_per_km": float(np.sqrt(np.mean(inv_err**2)) * 1000.0),
        "imae_1_per_km": float(np.mean(np.abs(inv_err)) * 1000.0),
        "pixels": int(mask.sum()),
    }


def nyu_metrics(
    prediction: np.ndarray, ground_truth: np.ndarray, max_depth: float = 10.0
) -> dict[str, float]:
    """NYU Depth v2 metrics: RMSE (m), REL, delta_1..3, over 0 < gt <= max_depth."""
    gt = np.asarray(ground_truth, dtype=np.float64)
    pred = np.asarray(prediction, dtype=np.float64)
    mask = (gt > 1e-3) & (gt <= max_depth) & np.isfinite(pred)
    if not mask.any():
        raise ValueError("ground truth has no valid pixels")
    p = np.clip(pred[mask], 1e-3, max_depth)
    g = gt[mask]
    ratio = np.maximum(p / g, g / p)
    return {
        "rmse_m": float(np.sqrt(np.mean((p - g) ** 2))),
        "rel": float(np.mean(np.abs(p - g) / g)),
        "delta1": float(np.mean(ratio < 1.25)),
        "delta2": float(np.mean(ratio < 1.25**2)),
        "delta3": float(np.mean(ratio < 1.25**3)),
        "pixels": int(mask.sum()),
    }


def holdout_metrics(prediction: np.ndarray, holdout: np.ndarray) -> dict[str, float]:
    """Error at LiDAR returns held out of the input (data without ground truth, e.g. a bag).

    RMSE and MAE in millimetres over pixels with a held-out return (> 0); a prediction hole
    (0 or NaN) at such a pixel counts with the devkit's hole filling, as for KITTI.
    """
    ref = np.asarray(holdout, dtype=np.float64)
    mask = ref > 0
    if not mask.any():
        raise ValueError("no held-out LiDAR pixels to score")
    pred = fill_holes_like_kitti(prediction).astype(np.float64)[mask]
    err = pred - ref[mask]
    return {
        "holdout_rmse_mm": float(np.sqrt(np.mean(err**2)) * 1000.0),
        "holdout_mae_mm": float(np.mean(np.abs(err)) * 1000.0),
        "pixels": int(mask.sum()),
    }
