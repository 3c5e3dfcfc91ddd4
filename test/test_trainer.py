"""The one trainer on real KITTI crops: exact resume after a kill, DDP with gloo, skipped steps
and samples, exported weights that the node's backend loads."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from training.config import load_config
from training.distributed import DistEnv
from training.sample import skipped
from training.trainer import (
    CHECKPOINT,
    WEIGHTS,
    ResumableSampler,
    Trainer,
    TrainingError,
    parameter_groups,
)

REPO = Path(__file__).resolve().parents[1]
#: an empty YAML file: everything comes from the overrides
EMPTY_CONFIG = REPO / "training" / "configs" / "empty.yaml"


def _overrides(
    kitti_root: Path, out: Path, steps: int = 6, extra: tuple[str, ...] = ()
) -> list[str]:
    return [
        f"data.train=kitti:{kitti_root}",
        "data.train_split=train",
        "data.options={crop: [64, 128], crop_mode: random, random_crop_rows: 160}",
        "data.batch_size=1",
        "data.workers=0",
        "model.name=selfdc_r18",
        "loss.method=selfdc",
        "loss.weights={dc: 1.0, gc: 1.0}",
        "loss.options={gc_basis: none}",
        "optim.name=adam",
        "optim.lr=1.0e-3",
        f"schedule.max_steps={steps}",
        "run.ema_decay=0.5",
        "run.checkpoint_every=2",
        "run.log_every=1",
        "run.device=cpu",
        "run.progress=false",
        "run.tensorboard=false",
        f"run.out={out}",
        *extra,
    ]


def _env() -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    return env


def _run(args: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "training.train", "--config", str(EMPTY_CONFIG), *args],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def test_killed_and_resumed_run_ends_with_the_same_weights(kitti_dc_frame, tmp_path):
    """Random crops and flips in a DataLoader worker: a resumed run must draw the same ones."""
    steps = 8
    worker = ("data.workers=1",)
    full = tmp_path / "full"
    done = _run(_overrides(kitti_dc_frame, full, steps, worker))
    assert done.returncode == 0, done.stderr[-3000:]

    cut = tmp_path / "cut"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "training.train",
            "--config",
            str(EMPTY_CONFIG),
            *_overrides(kitti_dc_frame, cut, steps, worker),
        ],
        cwd=REPO,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 300
    while not (cut / CHECKPOINT).exists() and time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    state = torch.load(cut / CHECKPOINT, weights_only=True)
    assert 0 < state["step"] < steps

    resumed = _run(_overrides(kitti_dc_frame, cut, steps, worker))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed" in resumed.stderr
    a, b = _tensors(full / WEIGHTS), _tensors(cut / WEIGHTS)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed run differs from the uninterrupted one"
    na = torch.load(full / CHECKPOINT, weights_only=True)["net"]
    nb = torch.load(cut / CHECKPOINT, weights_only=True)["net"]
    assert all(torch.equal(na[k], nb[k]) for k in na)


def test_ddp_with_gloo_keeps_two_processes_in_step(kitti_dc_frame, tmp_path):
    """The whole SelfDC objective (L_dc, L_gc and L_sms on segments, L_seg through the
    training-only decoder) on two processes: DDP must see every parameter used."""
    import json

    from training.pseudo_labels import main as pseudo_labels

    segments = tmp_path / "segments"
    assert (
        pseudo_labels(
            [
                "--method",
                "felzenszwalb",
                "--images",
                f"kitti:{kitti_dc_frame}:train",
                "--out",
                str(segments),
                "--num-classes",
                "8",
            ]
        )
        == 0
    )
    out = tmp_path / "ddp"
    torchrun = Path(sys.executable).with_name("torchrun")
    env = dict(_env(), GLOO_SOCKET_IFNAME="lo", MASTER_ADDR="127.0.0.1")
    args = _overrides(
        kitti_dc_frame,
        out,
        4,
        (
            f"data.options.segments_root={segments}",
            "model.seg_classes=-1",
            "loss.weights={dc: 1.0, seg: 0.1, gc: 1.0, sms: 1.0}",
            "loss.options={}",
        ),
    )
    result = subprocess.run(
        [
            str(torchrun),
            "--standalone",
            "--nproc_per_node=2",
            "-m",
            "training.train",
            "--config",
            str(EMPTY_CONFIG),
            *args,
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    sums = summary["rank_checksums"]
    assert len(sums) == 2 and sums[0] == sums[1]
    assert summary["steps"] == 4 and summary["bad_steps"] == 0
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {"dc", "seg", "gc", "sms"} <= set(logged[-1])
    exported = _tensors(out / WEIGHTS)
    assert not any(k.startswith("seg_decoder.") for k in exported)
    state = torch.load(out / CHECKPOINT, weights_only=True)["net"]
    assert any(k.startswith("seg_decoder.") for k in state)


class _Frames(torch.utils.data.Dataset):
    """Real KITTI crops, with chosen items made bad."""

    def __init__(self, frame, bad: dict[int, str] | None = None, n: int = 4) -> None:
        self.rgb, self.sparse, self.K = frame
        self.bad = bad or {}
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        y0, x0 = self.rgb.shape[0] - 64, 200 + 64 * i
        K = self.K.astype(np.float32).copy()
        K[0, 2] -= x0
        K[1, 2] -= y0
        sparse = self.sparse[y0:, x0 : x0 + 128].copy()
        if self.bad.get(i) == "nan":
            sparse[sparse > 0] = np.nan
        if self.bad.get(i) == "skip":
            return skipped("unreadable", "cannot read image", f"frame{i}")
        return {
            "rgb": self.rgb[y0:, x0 : x0 + 128].copy(),
            "sparse": sparse,
            "K": K,
            "name": f"frame{i}",
        }


def _config(tmp_path: Path, *extra: str):
    return load_config(None, _overrides(Path("/unused"), tmp_path / "run", 4, extra))


def test_non_finite_losses_are_skipped_counted_and_stop_the_run(kitti_frame, tmp_path):
    cfg = _config(tmp_path, "run.max_bad_steps=3", "run.checkpoint_every=100")
    trainer = Trainer(cfg, _Frames(kitti_frame, {i: "nan" for i in range(4)}))
    with pytest.raises(TrainingError, match="3 consecutive steps had a non-finite"):
        trainer.fit()
    assert trainer.bad_steps == 3


def test_one_bad_step_is_skipped_and_the_run_goes_on(kitti_frame, tmp_path):
    cfg = _config(tmp_path, "run.checkpoint_every=100", "schedule.max_steps=4")
    trainer = Trainer(cfg, _Frames(kitti_frame, {1: "nan"}))
    before = {k: v.clone() for k, v in trainer.net.state_dict().items()}
    summary = trainer.fit()
    assert summary["bad_steps"] == 1
    assert summary["steps"] == 4
    after = trainer.net.state_dict()
    assert all(torch.isfinite(v).all() for v in after.values() if v.is_floating_point())
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_bad_samples_are_skipped_and_counted_by_cause(kitti_frame, tmp_path):
    cfg = _config(tmp_path, "run.checkpoint_every=100")
    summary = Trainer(cfg, _Frames(kitti_frame, {2: "skip"})).fit()
    assert summary["skipped_samples"] == {"unreadable": 1}
    assert summary["bad_steps"] == 0


def test_exported_weights_are_the_ema_copy_and_load_in_the_node_backend(kitti_frame, tmp_path):
    from depth_completion_ros.backends import make_backend
    from training.evaluate import backend_for_module

    cfg = _config(tmp_path, "schedule.max_steps=3")
    trainer = Trainer(cfg, _Frames(kitti_frame))
    trainer.fit()
    weights = _tensors(tmp_path / "run" / WEIGHTS)
    ema = trainer.ema.module.state_dict()
    raw = trainer.net.state_dict()
    assert all(torch.equal(weights[k], ema[k]) for k in weights)
    assert any(not torch.equal(weights[k], raw[k]) for k in weights if raw[k].is_floating_point())

    rgb, sparse, K = kitti_frame
    node = make_backend("selfdc_r18", str(tmp_path / "run" / WEIGHTS), device="cpu")
    memory = backend_for_module("selfdc_r18", trainer.ema.module, "kitti", "cpu")
    a = node.complete(rgb, sparse, K)
    b = memory.complete(rgb, sparse, K)
    assert np.isfinite(a).all() and (a > 0).mean() > 0.5
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_no_weight_decay_on_norms_and_biases():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    decay, no_decay = parameter_groups(net, 0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert [p.shape for p in decay["params"]] == [torch.Size([4, 3, 3, 3])]
    assert len(no_decay["params"]) == 3  # conv bias, BN weight, BN bias


def test_sampler_shards_and_resumes_mid_epoch():
    a = ResumableSampler(10, DistEnv(0, 2, 0), seed=3)
    b = ResumableSampler(10, DistEnv(1, 2, 0), seed=3)
    a.set_epoch(1)
    b.set_epoch(1)
    first, second = list(a), list(b)
    assert sorted(first + second) == list(range(10))
    a.set_epoch(1, start=2)
    assert list(a) == first[2:]
    a.set_epoch(2)
    assert list(a) != first  # a new permutation each epoch


def test_resume_restores_every_random_generator(kitti_frame, tmp_path):
    """Layers like BP-Net's drop-path draw from torch's RNG: a resumed run must continue the
    same random stream as the run that wrote the checkpoint."""
    import random

    cfg = _config(tmp_path, "schedule.max_steps=2", "run.checkpoint_every=1")
    first = Trainer(cfg, _Frames(kitti_frame))
    first.fit()  # the last save holds the RNG states at the end of step 2
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(123)
    np.random.seed(123)
    random.seed(123)
    second = Trainer(cfg, _Frames(kitti_frame))
    second.resume()
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], got[0])
    np.testing.assert_array_equal(expected[1], got[1])
    assert expected[2] == got[2]
