"""benchmarks/learning_check.py, reduced: its JSON, the baselines on the same frames as the
network, the held-out split, the training settings it must use (issue 17, item 4).

The full run and its figures are in training/README.md; here a few steps at tiny sizes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "learning_check.py"


def _run(tmp_path: Path, *args: str) -> dict:
    out = tmp_path / "report.json"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, str(SCRIPT), "--work", str(tmp_path / "work"), "--json", str(out)]
    proc = subprocess.run(
        [*cmd, *args], env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert json.loads(out.read_text()) == report  # --json writes what stdout prints
    return report


def _check_experiment(e: dict, steps: int, evals: int, metric: str, reference: str) -> None:
    keys = ("holdout_rmse_mm", "holdout_mae_mm") if metric == "holdout" else ("rmse_mm", "mae_mm")
    assert e["metric"] == metric
    assert set(e["baselines"]) == {"nearest", "linear", "classical"}
    # the baselines and the network scored the same frames and the same pixels, in order
    frames = [(r["name"], r["pixels"]) for r in e["network"]["per_image"]]
    assert frames and all(r[1] > 0 for r in frames)
    assert [f[0] for f in frames] == e["frames"]
    for name, b in e["baselines"].items():
        assert [(r["name"], r["pixels"]) for r in b["per_image"]] == frames, name
        assert b["mean"]["pixels"] == e["network"]["mean"]["pixels"] == sum(f[1] for f in frames)
        assert all(np.isfinite(b["mean"][k]) and b["mean"][k] > 0 for k in keys), name
    assert e["same_frames"] is True
    # the error curve: the untrained network, every eval_every steps, the last step
    every = max(1, steps // evals)
    assert [p["step"] for p in e["curve"]] == sorted({0, *range(every, steps + 1, every), steps})
    assert e["steps"] == steps and e["bad_steps"] == 0
    assert all(np.isfinite(p["rmse_mm"]) and p["rmse_mm"] >= p["mae_mm"] > 0 for p in e["curve"])
    # training moved the network: the last score is not the untrained one's
    assert e["curve"][-1]["rmse_mm"] != e["curve"][0]["rmse_mm"]
    assert e["network"]["mean"][keys[0]] == pytest.approx(e["curve"][-1]["rmse_mm"], abs=0.06)
    assert e["train_loss"] and all(np.isfinite(r["loss"]) for r in e["train_loss"])
    # SelfDC networks train with the release's inference settings off (L_dc would train nothing)
    cfg = e["config"]
    assert cfg["model"]["name"] == "selfdc_r18"
    assert cfg["model"]["kwargs"] == {"preserve_input": False, "legacy": False}
    assert cfg["schedule"]["max_steps"] == steps
    t = e["target"]
    assert t["beat"] == reference
    assert t["baseline_rmse_mm"] == pytest.approx(
        e["baselines"][reference]["mean"][keys[0]], abs=0.06
    )
    assert t["reached"] == (t["rmse_reached"] and t["mae_reached"])
    assert e["seconds"]["per_step"] > 0


def test_interpolation_baselines_are_exact_where_they_must_be():
    """Linear interpolation reproduces a plane inside the returns' hull and takes the nearest
    return outside it; nearest neighbour returns the input at every input pixel."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from learning_check import InterpolationFill

    rng = np.random.default_rng(0)
    height, width = 40, 60
    rows, cols = np.mgrid[0:height, 0:width]
    plane = (5.0 + 0.1 * rows + 0.05 * cols).astype(np.float32)
    sparse = np.where(rng.random((height, width)) < 0.05, plane, 0.0).astype(np.float32)
    for r, c in ((0, 0), (0, -1), (-1, 0), (-1, -1)):  # the corners: the hull is the image
        sparse[r, c] = plane[r, c]
    rgb = np.zeros((height, width, 3), np.uint8)
    linear = InterpolationFill("linear").complete(rgb, sparse, np.eye(3))
    np.testing.assert_allclose(linear, plane, atol=1e-4)
    nearest = InterpolationFill("nearest").complete(rgb, sparse, np.eye(3))
    hit = sparse > 0
    np.testing.assert_array_equal(nearest[hit], sparse[hit])
    assert np.all(nearest > 0) and not np.allclose(nearest, plane, atol=1e-3)
    # outside the hull (one return short of the corners) linear falls back to the nearest return
    sparse[0, 0] = 0.0
    linear = InterpolationFill("linear").complete(rgb, sparse, np.eye(3))
    assert np.all(np.isfinite(linear)) and linear[0, 0] > 0


@pytest.mark.slow
def test_learning_check_synthetic_reduced(tmp_path):
    """Both synthetic experiments at 128 x 64, 6 steps: the JSON's structure, baselines on the
    same frames as the network, held-out streets, the recipes' settings."""
    steps, evals = 6, 2
    report = _run(
        tmp_path,
        "--parts", "synthetic_supervised", "synthetic_selfsup",
        "--width", "128", "--height", "64", "--train-scenes", "2", "--train-poses", "2",
        "--val-scenes", "1", "--val-poses", "2", "--supervised-steps", str(steps),
        "--selfsup-steps", str(steps), "--evals", str(evals), "--batch-size", "2",
    )  # fmt: skip
    assert report["benchmark"] == "learning_check"
    assert {"cpu_count", "torch", "load_average_1min"} <= set(report["machine"])
    assert report["settings"]["width"] == 128 and report["settings"]["supervised_steps"] == steps
    assert set(report["targets"]) == {"synthetic_supervised", "synthetic_selfsup"}
    assert report["seconds"]["total"] > 0 and report["seconds"]["budget"] == 1500
    data = report["experiments"]["synthetic_data"]
    assert not set(data["train"]["scenes"]) & set(data["held_out"]["scenes"])  # other streets
    assert data["held_out"]["frames"] == 2 and data["train"]["frames"] == 4
    assert 0.01 < data["held_out"]["sparse_density"] < 0.3
    assert data["pseudo_labels"]["method"] == "felzenszwalb"
    sup = report["experiments"]["synthetic_supervised"]
    _check_experiment(sup, steps, evals, "kitti", "classical")
    assert sup["config"]["optim"]["name"] == "adamw"  # DMD3C stage 1's recipe
    assert sup["config"]["schedule"]["name"] == "onecycle"
    assert sup["config"]["model"]["seg_classes"] == 0
    selfsup = report["experiments"]["synthetic_selfsup"]
    _check_experiment(selfsup, steps, evals, "kitti", "linear")
    assert selfsup["config"]["loss"]["weights"] == {"dc": 1.0, "seg": 0.1, "gc": 1.0, "sms": 1.0}
    assert selfsup["config"]["model"]["seg_classes"] == data["pseudo_labels"]["num_classes"]
    # both synthetic experiments are scored on the same held-out frames
    assert sup["frames"] == selfsup["frames"]
    assert sup["baselines"]["linear"]["mean"] == selfsup["baselines"]["linear"]["mean"]


@pytest.mark.slow
def test_learning_check_kitti_bag_reduced(tmp_path, data_root):
    """The real sequence as a bag, 4 training frames, 1 held-out frame, 4 steps on 64 x 128
    crops: scored at held-out returns of a frame that is not trained on."""
    steps, evals = 4, 2
    report = _run(
        tmp_path,
        "--data", str(data_root), "--parts", "kitti_bag", "--bag-steps", str(steps),
        "--evals", str(evals), "--batch-size", "2", "--bag-crop", "64", "128",
        "--bag-val-frames", "1", "--bag-train-frames", "4",
    )  # fmt: skip
    e = report["experiments"]["kitti_bag"]
    _check_experiment(e, steps, evals, "holdout", "linear")
    assert len(e["frames"]) == 1
    assert len(e["data"]["train_names"]) == 4
    assert not set(e["data"]["train_names"]) & set(e["frames"])  # held-out frame not trained on
    assert e["config"]["data"]["options"]["holdout_fraction"] == 0.1
    assert e["config"]["data"]["val_options"]["holdout_fraction"] == 0.1
    assert e["config"]["loss"]["method"] == "selfdc"
    assert e["data"]["pseudo_labels"]["method"] == "felzenszwalb"
