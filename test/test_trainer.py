"""The one trainer on real KITTI crops: exact resume after a kill, DDP with gloo, skipped steps
and samples, exported weights that the node's backend loads."""

from __future__ import annotations

import json
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
    ema_decay_at,
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
    # the node runs the weights with its inference settings (preserve_input on) plus those the
    # file records (legacy off); training ran preserve_input off: compare like with like
    import copy

    ema = copy.deepcopy(trainer.ema.module)
    flags = {k: getattr(node.net.prop_layer, k) for k in ema.BEHAVIOUR_SETTINGS}
    assert flags == {"legacy": False, "preserve_input": True}
    ema.apply_settings(flags)
    memory = backend_for_module("selfdc_r18", ema, "kitti", "cpu")
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


# ---------------------------------------------------------------------------------------------
# EMA: the exported weights are the average of the weights training produced
# ---------------------------------------------------------------------------------------------


def _record_live_weights(trainer: Trainer) -> list[dict[str, torch.Tensor]]:
    """The live network's state after every optimiser step (what the EMA must average)."""
    seen: list[dict[str, torch.Tensor]] = []
    step = trainer.train_step

    def recorded(batches):
        out = step(batches)
        seen.append({k: v.detach().clone() for k, v in trainer.net.state_dict().items()})
        return out

    trainer.train_step = recorded
    return seen


@pytest.mark.parametrize("warmup", [False, True], ids=["constant_decay", "warmup"])
def test_exported_weights_are_the_decay_weighted_average_of_the_live_weights(
    kitti_frame, tmp_path, warmup
):
    """EMA_1 = W_1, EMA_k = d_k EMA_(k-1) + (1 - d_k) W_k, computed here from the live weights
    after each step; d_k = 0.9, or with the warm-up (timm's ModelEmaV3, power 3/4)
    min(0.9, 1 - k^-0.75): 0.405, 0.561, 0.646 for k = 2, 3, 4."""
    decay, steps = 0.9, 4
    cfg = _config(
        tmp_path,
        f"schedule.max_steps={steps}",
        f"run.ema_decay={decay}",
        f"run.ema_warmup={str(warmup).lower()}",
        "run.checkpoint_every=100",
    )
    trainer = Trainer(cfg, _Frames(kitti_frame))
    initial = {k: v.clone() for k, v in trainer.net.state_dict().items()}
    seen = _record_live_weights(trainer)
    trainer.fit()
    assert len(seen) == steps

    expected = {k: v.double() for k, v in seen[0].items()}
    for k in range(2, steps + 1):
        d = min(decay, 1.0 - k**-0.75) if warmup else decay
        live = seen[k - 1]
        expected = {
            name: (d * e + (1 - d) * live[name].double()) if e.is_floating_point() else live[name]
            for name, e in expected.items()
        }
    ema = trainer.ema.module.state_dict()
    exported = _tensors(tmp_path / "run" / WEIGHTS)
    floats = [k for k in exported if exported[k].is_floating_point()]
    assert floats and set(exported) <= set(ema)
    for name in floats:
        torch.testing.assert_close(exported[name], ema[name], rtol=0, atol=0)
        torch.testing.assert_close(
            ema[name].double(), expected[name], rtol=1e-5, atol=1e-6, msg=name
        )
    for name in exported:
        if not exported[name].is_floating_point():  # BatchNorm's counter: the live one
            assert torch.equal(exported[name], seen[-1][name])
    # the average moved away from the initial weights and differs from the last live weights
    weights = [k for k in floats if k in initial and initial[k].ndim > 1]
    # and the file says which settings the trained weights run with (SelfDC: legacy off)
    from safetensors import safe_open

    with safe_open(str(tmp_path / "run" / WEIGHTS), "pt") as f:
        assert json.loads(f.metadata()["model_kwargs"]) == {"legacy": False}
    moved = [k for k in weights if not torch.equal(exported[k], initial[k])]
    assert len(moved) > 0.9 * len(weights), sorted(set(weights) - set(moved))
    assert any(not torch.allclose(exported[k], seen[-1][k]) for k in weights)


def test_ema_warmup_decay_is_timms_model_ema_v3():
    # ModelEmaV3.get_decay(step) with use_warmup, inv_gamma 1: 1 - (1 + (step - 1))^-power,
    # 0 on the first update, capped at the decay; update n follows n - 1 earlier ones
    assert ema_decay_at(0, 0.9999, warmup=True) == 0.0
    assert ema_decay_at(0, 0.9999) == 0.0  # AveragedModel copies on the first update
    assert ema_decay_at(1, 0.9999, warmup=True) == pytest.approx(1 - 2**-0.75)
    assert ema_decay_at(9999, 0.9999, warmup=True) == pytest.approx(0.999, abs=1e-9)
    assert ema_decay_at(10**7, 0.9999, warmup=True) == 0.9999
    assert ema_decay_at(31622, 0.9999, warmup=True, power=2 / 3) == pytest.approx(0.999, 1e-5)
    assert ema_decay_at(1, 0.9999) == 0.9999


# ---------------------------------------------------------------------------------------------
# Gradient accumulation
# ---------------------------------------------------------------------------------------------


class _TinyTask:
    """A network without BatchNorm and a loss that is a mean over samples: the gradient of a
    large batch is then exactly the samples' shares of the micro-batches' gradients. In float64,
    so that summation order (~1e-7 relative in float32) does not blur the comparison."""

    def __init__(self, cfg) -> None:
        self.cfg = cfg

    def build_model(self) -> torch.nn.Module:
        torch.manual_seed(0)
        return torch.nn.Sequential(
            torch.nn.Conv2d(4, 8, 3, padding=1), torch.nn.Tanh(), torch.nn.Conv2d(8, 1, 3)
        ).double()

    def train_module(self, net: torch.nn.Module) -> torch.nn.Module:
        return net

    def forward(self, module, batch):
        x = torch.cat([batch["rgb"].double() / 255.0, batch["sparse"].double()], 1)
        return {"depth": module(x)}

    def loss(self, outputs, batch):
        target = batch["sparse"][..., 1:-1, 1:-1].double()
        per_sample = (outputs["depth"] - target).square().flatten(1).mean(1)
        loss = per_sample.mean()
        return loss, {"l2": float(loss.detach())}


def _tiny_samples(n: int = 4) -> list[dict]:
    rng = np.random.default_rng(0)
    K = np.array([[10.0, 0, 4], [0, 10.0, 4], [0, 0, 1]], np.float32)
    return [
        {
            "rgb": rng.integers(0, 255, (8, 8, 3), dtype=np.uint8),
            "sparse": rng.uniform(1, 20, (8, 8)).astype(np.float32),
            "K": K,
            "name": f"s{i}",
        }
        for i in range(n)
    ]


def _tiny_trainer(tmp_path: Path, batch: int, accum: int, monkeypatch) -> Trainer:
    monkeypatch.setattr("training.trainer.make_task", _TinyTask)
    cfg = load_config(
        None,
        _overrides(
            Path("/unused"),
            tmp_path / f"tiny_{batch}x{accum}",
            2,
            (
                f"data.batch_size={batch}",
                f"optim.accum_steps={accum}",
                "optim.clip_norm=0",
                "run.ema_decay=0",
            ),
        ),
    )
    return Trainer(cfg, _tiny_samples())


def _gradients_of_one_step(trainer: Trainer, batches) -> dict[str, torch.Tensor]:
    """The gradients the optimiser is handed (the step itself then runs as usual)."""
    grads: dict[str, torch.Tensor] = {}
    step = trainer.optimizer.step

    def recording(*args, **kwargs):
        for name, p in trainer.net.named_parameters():
            grads[name] = p.grad.detach().clone()
        return step(*args, **kwargs)

    trainer.optimizer.step = recording
    assert trainer.train_step(batches) is not None
    return grads


@pytest.mark.parametrize("sizes", [[2, 2], [1, 1, 1, 1], [3, 1]], ids=str)
def test_accumulated_gradient_equals_the_large_batch_gradient(tmp_path, monkeypatch, sizes):
    """Micro-batches of unequal size too (a batch that lost a bad sample): each counts by its
    share of the step's samples, as in the large batch."""
    from training.sample import collate

    samples = _tiny_samples()
    large = _tiny_trainer(tmp_path, 4, 1, monkeypatch)
    expected = _gradients_of_one_step(large, collate(samples))
    accumulated = _tiny_trainer(tmp_path, 1, len(sizes), monkeypatch)
    bounds = np.cumsum([0, *sizes])
    micro = [collate(samples[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    got = _gradients_of_one_step(accumulated, micro)
    assert expected.keys() == got.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=1e-6)
    # and the optimiser took the same step
    for a, b in zip(large.net.parameters(), accumulated.net.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


_DDP_ACCUM_WORKER = """
import json, os, sys
from pathlib import Path
import torch
import torch.distributed as dist
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

sys.path.insert(0, {test_dir!r})
import test_trainer as t
from training.sample import collate
import training.trainer

training.trainer.make_task = t._TinyTask
cfg = t.load_config(None, t._overrides(Path("/unused"), Path({out!r}), 2, (
    "data.batch_size=1", "optim.accum_steps=2", "optim.clip_norm=0", "run.ema_decay=0")))
trainer = training.trainer.Trainer(cfg, t._tiny_samples())
reductions = []

def counting(state, bucket):
    reductions.append(bucket.index())
    return allreduce_hook(state, bucket)

trainer.module.register_comm_hook(None, counting)
rank = dist.get_rank()
samples = t._tiny_samples()[2 * rank : 2 * rank + 2]
grads = t._gradients_of_one_step(trainer, [collate([s]) for s in samples])
torch.save({{"grads": grads, "reductions": len(reductions)}}, Path({out!r}) / f"rank{{rank}}.pt")
dist.destroy_process_group()
"""


def test_ddp_accumulation_reduces_once_per_step_and_matches_the_large_batch(tmp_path, monkeypatch):
    """Two gloo processes x 2 micro-batches of 1 = the large batch of 4: the same gradient, and
    DDP reduces it once (no_sync on the first micro-batch), not once per micro-batch."""
    from training.sample import collate

    out = tmp_path / "ddp_accum"
    out.mkdir()
    worker = tmp_path / "worker.py"
    worker.write_text(_DDP_ACCUM_WORKER.format(test_dir=str(REPO / "test"), out=str(out)))
    torchrun = Path(sys.executable).with_name("torchrun")
    env = dict(_env(), GLOO_SOCKET_IFNAME="lo", MASTER_ADDR="127.0.0.1")
    result = subprocess.run(
        [str(torchrun), "--standalone", "--nproc_per_node=2", str(worker)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    expected = _gradients_of_one_step(
        _tiny_trainer(tmp_path, 4, 1, monkeypatch), collate(_tiny_samples())
    )
    for rank in (0, 1):
        got = torch.load(out / f"rank{rank}.pt", weights_only=True)
        assert got["reductions"] == 1, "DDP reduced the gradients once per micro-batch"
        for name in expected:
            torch.testing.assert_close(got["grads"][name], expected[name], rtol=0, atol=1e-6)


def test_accumulating_run_resumed_after_a_crash_ends_with_the_same_weights(kitti_frame, tmp_path):
    """4 steps of 2 micro-batches over 8 crops (one epoch), checkpoint at step 2 (mid-epoch):
    the resumed run must start at sample 4, not 2."""
    extra = ("data.batch_size=1", "optim.accum_steps=2", "run.checkpoint_every=2")
    full = Trainer(_config(tmp_path / "full", *extra), _Frames(kitti_frame, n=8))
    full.fit()

    crashed = Trainer(_config(tmp_path / "cut", *extra), _Frames(kitti_frame, n=8))
    step, calls = crashed.train_step, []

    def crash_at_the_third_step(batches):
        calls.append(len(batches))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return step(batches)

    crashed.train_step = crash_at_the_third_step
    with pytest.raises(KeyboardInterrupt):
        crashed.fit()
    assert calls == [2, 2, 2]
    resumed = Trainer(_config(tmp_path / "cut", *extra), _Frames(kitti_frame, n=8))
    assert resumed.fit()["steps"] == 4
    a, b = full.net.state_dict(), resumed.net.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed run differs from the uninterrupted one"


# ---------------------------------------------------------------------------------------------
# The best checkpoint
# ---------------------------------------------------------------------------------------------


def _scripted_evaluation(trainer: Trainer, rmse_by_step: dict[int, float]) -> list[dict]:
    """The evaluation replaced by fixed scores per step; keeps the EMA weights it 'scored'."""
    scored: list[dict] = []

    def evaluate():
        scored.append({k: v.clone() for k, v in trainer.ema.module.state_dict().items()})
        rmse = rmse_by_step[trainer.step]
        return {"rmse_mm": rmse, "mae_mm": rmse / 3, "irmse_1_per_km": 1.0, "pixels": 10}

    trainer.evaluate = evaluate
    return scored


def test_the_best_checkpoint_is_kept_and_survives_a_resume(kitti_frame, tmp_path):
    import json

    from training.trainer import BEST_DIR, BEST_JSON

    extra = (
        "data.val=kitti:/unused",
        "run.best_metric=rmse",  # rmse_mm on KITTI
        "run.eval_every=1",
        "run.checkpoint_every=2",
    )
    rmse = {1: 900.0, 2: 700.0, 3: 800.0, 4: 750.0}
    first = Trainer(_config(tmp_path, *extra), _Frames(kitti_frame), _Frames(kitti_frame))
    scored = _scripted_evaluation(first, rmse)
    step, calls = first.train_step, []

    def crash_at_the_fourth_step(batches):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return step(batches)

    first.train_step = crash_at_the_fourth_step
    with pytest.raises(KeyboardInterrupt):
        first.fit()  # scored steps 1-3, the checkpoint of step 2 holds the best (700 at 2)
    best = tmp_path / "run" / BEST_DIR
    record = json.loads((best / BEST_JSON).read_text())
    assert (record["metric"], record["mode"], record["value"], record["step"]) == (
        "rmse_mm",
        "min",
        700.0,
        2,
    )
    kept = _tensors(best / WEIGHTS)
    assert all(torch.equal(kept[k], scored[1][k]) for k in kept)
    assert any(not torch.equal(kept[k], scored[2][k]) for k in kept)

    # resumed at step 2: step 3 (800) and 4 (750) are worse than the 700 the checkpoint holds
    second = Trainer(_config(tmp_path, *extra), _Frames(kitti_frame), _Frames(kitti_frame))
    _scripted_evaluation(second, rmse)
    summary = second.fit()
    assert summary["best"] == {"metric": "rmse_mm", "mode": "min", "value": 700.0, "step": 2}
    assert json.loads((best / BEST_JSON).read_text())["step"] == 2
    again = _tensors(best / WEIGHTS)
    assert all(torch.equal(kept[k], again[k]) for k in kept)
    assert torch.load(tmp_path / "run" / CHECKPOINT, weights_only=True)["best"]["value"] == 700.0


def test_a_higher_is_better_metric_keeps_the_maximum(kitti_frame, tmp_path):
    import json

    from training.trainer import BEST_DIR, BEST_JSON

    extra = ("data.val=nyu:/unused", "run.best_metric=delta1", "run.eval_every=1")
    val = _Frames(kitti_frame)
    val.metric = "nyu"
    trainer = Trainer(_config(tmp_path, *extra, "schedule.max_steps=3"), _Frames(kitti_frame), val)
    deltas = {1: 0.5, 2: 0.9, 3: 0.7}
    trainer.evaluate = lambda: {"rmse_m": 1.0, "delta1": deltas[trainer.step]}
    trainer.fit()
    record = json.loads((tmp_path / "run" / BEST_DIR / BEST_JSON).read_text())
    assert (record["metric"], record["mode"], record["value"], record["step"]) == (
        "delta1",
        "max",
        0.9,
        2,
    )


class _Scored(_Frames):
    """_Frames with ground truth (the LiDAR itself), for evaluation during training."""

    metric = "kitti"

    def __getitem__(self, i: int):
        sample = super().__getitem__(i)
        sample["gt"] = sample["sparse"].copy()
        return sample


def test_validation_scores_what_the_node_runs(kitti_frame, tmp_path):
    """Evaluation during training (and so the best checkpoint) runs the EMA with the node's
    settings (SelfDC: preserve_input on, trained off), equal to the node loading the exported
    weights; the training settings are restored afterwards."""
    from depth_completion_ros.backends import make_backend
    from training.evaluate import evaluate_dataset

    cfg = _config(tmp_path, "schedule.max_steps=3")
    trainer = Trainer(cfg, _Frames(kitti_frame), _Scored(kitti_frame))
    trainer.fit()
    assert trainer.ema.module.prop_layer.preserve_input is False
    during = trainer.evaluate()
    assert trainer.ema.module.prop_layer.preserve_input is False  # restored
    node = make_backend("selfdc_r18", str(tmp_path / "run" / WEIGHTS), device="cpu")
    assert node.net.prop_layer.preserve_input is True
    expected = evaluate_dataset(node, _Scored(kitti_frame), metric="kitti", progress=False)
    # (with the training settings, preserve_input off, it scored 5820 mm RMSE against 638)
    for key in ("rmse_mm", "mae_mm"):
        assert during[key] == pytest.approx(expected["mean"][key], rel=1e-4), key
