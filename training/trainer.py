"""The one training loop for both methods: DDP, AMP, EMA (with an optional decay warm-up), OneCycle,
clipping, gradient accumulation, atomic checkpoints, exact resume, the best checkpoint kept.

Built from torch's own parts (DistributedDataParallel, torch.amp, AveragedModel with
an EMA ``multi_avg_fn``, OneCycleLR, torch.utils.tensorboard). Only the primary process logs and
writes files. A run directory holds:

- ``config.yaml``: the resolved configuration;
- ``checkpoint.pt``: everything needed to resume exactly (model, EMA, optimiser, scheduler, scaler,
  step, epoch, RNG states), written atomically every ``run.checkpoint_every`` steps;
- ``weights.safetensors``: the exported EMA weights, training-only heads removed, which the node
  loads as they are (``model:=bpnet|selfdc checkpoint:=<run>/weights.safetensors``);
- ``best/weights.safetensors`` + ``best/best.json`` (metric, value, step): the evaluated weights
  that scored best so far on ``run.best_metric`` (like timm's CheckpointSaver), when it is set;
- ``metrics.jsonl`` (one line per log/eval event) and ``tb/`` (TensorBoard).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.optim.swa_utils import AveragedModel
from torch.utils.data import DataLoader, Dataset, Sampler

from depth_completion_ros.depth_io import write_atomic, write_bytes_atomic
from depth_completion_ros.networks.nlspn import strip_training_heads
from training.config import METRIC_KEYS, TrainConfig, best_mode, dump, resolve_metric, to_dict
from training.distributed import DistEnv, dist_env
from training.methods import Task, make_task
from training.sample import SKIP_KEY, SkipCounter, collate

log = logging.getLogger("training")

CHECKPOINT = "checkpoint.pt"
WEIGHTS = "weights.safetensors"
#: the best evaluated weights (best/weights.safetensors) and what they scored (best/best.json)
BEST_DIR = "best"
BEST_JSON = "best.json"
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class TrainingError(RuntimeError):
    """Training cannot go on; the message says why and what to change."""


# ---------------------------------------------------------------------------------------------
# Data order that survives a restart
# ---------------------------------------------------------------------------------------------


class SeededDataset(Dataset):
    """Seeds python/numpy/torch RNGs from (seed, epoch, index) around each ``__getitem__``.

    Random augmentation then depends only on which sample is drawn in which epoch, not on the
    worker that loads it or on what ran before: a resumed run sees exactly the same samples.
    The caller's RNG states are restored afterwards.
    """

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset = dataset
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Any:
        sample_seed = (self.seed * 1_000_003 + self.epoch * 10_007 + index) % (2**31)
        py_state, np_state = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            random.seed(sample_seed)
            np.random.seed(sample_seed)
            torch.manual_seed(sample_seed)
            try:
                return self.dataset[index]
            finally:
                random.setstate(py_state)
                np.random.set_state(np_state)


class ResumableSampler(Sampler[int]):
    """A per-epoch permutation (seeded by seed + epoch), this rank's share of it, from ``start``.

    Like DistributedSampler (padding to a multiple of the world size), plus a start offset so a
    run resumed in the middle of an epoch continues with the next unseen sample.
    """

    def __init__(self, size: int, env: DistEnv, seed: int, shuffle: bool = True) -> None:
        self.size, self.env, self.seed, self.shuffle = size, env, seed, shuffle
        self.epoch = 0
        self.start = 0
        self.per_rank = math.ceil(size / env.world_size)

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.size, generator=g).tolist()
        else:
            order = list(range(self.size))
        total = self.per_rank * self.env.world_size
        order += order[: total - len(order)]
        mine = order[self.env.rank : total : self.env.world_size]
        return iter(mine[self.start :])

    def __len__(self) -> int:
        return self.per_rank - self.start


# ---------------------------------------------------------------------------------------------
# Optimiser, schedule, EMA
# ---------------------------------------------------------------------------------------------


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on weights only: none on norms and biases (1-D parameters)."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    o = cfg.optim
    groups = parameter_groups(model, o.weight_decay)
    if o.name == "adamw":
        return torch.optim.AdamW(groups, lr=o.lr, betas=tuple(o.betas))
    return torch.optim.Adam(groups, lr=o.lr, betas=tuple(o.betas))


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int):
    from training import schedules

    return schedules.build_scheduler(optimizer, cfg, total_steps)


def ema_decay_at(updates: int, decay: float, warmup: bool = False, power: float = 0.75) -> float:
    """The decay of the EMA update that follows ``updates`` earlier ones.

    The first update copies the weights (decay 0, as AveragedModel and timm's ModelEmaV3 do).
    With ``warmup`` (ModelEmaV3's ``use_warmup``, its inv_gamma 1): min(decay, 1 - (1 + n)^-power)
    for the n-th update after that, so early on the average forgets the random initial weights
    within a few steps instead of ~1/(1 - decay).
    """
    if updates <= 0:
        return 0.0
    if not warmup:
        return decay
    return min(decay, 1.0 - (1.0 + updates) ** -power)


def ema_multi_avg_fn(decay: float, warmup: bool = False, power: float = 0.75):
    """AveragedModel's ``multi_avg_fn``: ema <- d ema + (1 - d) live, d = ema_decay_at(n) with n
    the updates averaged so far (AveragedModel's ``n_averaged``, saved in its state: a resumed
    run continues the warm-up exactly). Integer buffers (BatchNorm's batch counter) are copied."""

    @torch.no_grad()
    def update(ema: list[torch.Tensor], live: list[torch.Tensor], n_averaged: torch.Tensor) -> None:
        d = ema_decay_at(int(n_averaged), decay, warmup, power)
        if ema[0].is_floating_point() or ema[0].is_complex():
            torch._foreach_lerp_(ema, live, 1.0 - d)
        else:
            for e, v in zip(ema, live, strict=True):
                e.copy_(v)

    return update


def build_ema(
    model: nn.Module, decay: float, warmup: bool = False, power: float = 0.75
) -> AveragedModel | None:
    """EMA of parameters and buffers (BatchNorm statistics too), made before the DDP wrapper."""
    if decay <= 0:
        return None
    return AveragedModel(
        model, multi_avg_fn=ema_multi_avg_fn(decay, warmup, power), use_buffers=True
    )


# ---------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------


def rng_state() -> dict[str, Any]:
    """Every RNG the loop uses, in types torch.load(weights_only=True) accepts."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_resume_state(path: Path) -> dict[str, Any]:
    """A run checkpoint, read without unpickling code."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise TrainingError(
            f"cannot resume from {path} ({type(e).__name__}: {str(e)[:200]}): the file is not a "
            "checkpoint of this trainer or is damaged; delete it to start again"
        ) from e


def export_weights(path: Path, state_dict: dict[str, torch.Tensor], meta: dict[str, str]) -> Path:
    """The node's weight file: plain tensors (contiguous CPU copies) + string metadata."""
    from safetensors.torch import save_file

    tensors = {
        k: v.detach().cpu().contiguous() for k, v in strip_training_heads(state_dict).items()
    }
    return write_atomic(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def node_settings_applied(net: nn.Module, settings: dict[str, Any]) -> Iterator[None]:
    """Run ``net`` with the node's behaviour settings (SelfDC: ``preserve_input`` on at
    inference, trained off) for the duration, then restore the training ones."""
    current = getattr(net, "behaviour_settings", None)
    if current is None or not settings:
        yield
        return
    before = current()
    net.apply_settings({k: v for k, v in settings.items() if k in before})
    try:
        yield
    finally:
        net.apply_settings(before)


def resolve_device(name: str, env: DistEnv) -> torch.device:
    """The node's device rule, strict (no silent CPU fallback for a training run), on this
    process's GPU (LOCAL_RANK)."""
    from depth_completion_ros.backends import BackendError
    from depth_completion_ros.backends.network import resolve_device as node_device

    try:
        device = node_device(name, strict=True)
    except BackendError as exc:
        raise TrainingError(f"run.device: {exc}; use run.device=cpu") from exc
    if device.type != "cuda":
        return device
    torch.cuda.set_device(env.local_rank)
    return torch.device("cuda", env.local_rank)


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {
        k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v
        for k, v in batch.items()
    }


class Trainer:
    """Builds everything from a config and runs (or resumes) the loop to the end."""

    def __init__(self, cfg: TrainConfig, train_set: Dataset, val_set: Dataset | None = None):
        self.cfg = cfg
        self.env = dist_env()
        self.out = Path(cfg.run.out)
        self.task: Task = make_task(cfg)
        self.skips = SkipCounter(log)
        self._setup_process_group()
        self.device = resolve_device(cfg.run.device, self.env)
        torch.manual_seed(cfg.run.seed)
        np.random.seed(cfg.run.seed)
        random.seed(cfg.run.seed)

        net = self.task.build_model()
        if cfg.model.init:
            self._load_init(net, Path(cfg.model.init))
        net.to(self.device)
        if self.env.distributed and cfg.run.sync_batchnorm:
            net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
        self.net = net
        self.ema = build_ema(net, cfg.run.ema_decay, cfg.run.ema_warmup, cfg.run.ema_warmup_power)
        module: nn.Module = self.task.train_module(net)
        if self.env.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            module = nn.parallel.DistributedDataParallel(module, device_ids=ids)
        self.module = module

        self.train_set = SeededDataset(train_set, cfg.run.seed)
        self.val_set = val_set
        self.sampler = ResumableSampler(len(train_set), self.env, cfg.run.seed)
        #: micro-batches per optimiser step (gradient accumulation)
        self.accum_steps = cfg.optim.accum_steps
        self.steps_per_epoch = max(1, len(self.sampler) // (cfg.data.batch_size * self.accum_steps))
        self.total_steps = cfg.schedule.max_steps or cfg.schedule.epochs * self.steps_per_epoch
        self.optimizer = build_optimizer(net, cfg)
        self.scheduler = build_scheduler(self.optimizer, cfg, self.total_steps)
        amp = (
            cfg.run.precision
            if self.device.type == "cuda" or cfg.run.precision == "bf16"
            else "fp32"
        )
        self.amp_dtype = AMP_DTYPES.get(amp)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=amp == "fp16")
        self.step = 0
        self._saved_step = -1  # the step the files on disk hold (resume sets it)
        self._evaluated_step = -1  # the step the last evaluation scored
        self._val_metrics: dict[str, float] | None = None  # and what it returned
        self.bad_in_a_row = 0
        self.bad_steps = 0
        self.writer = None
        # the best checkpoint: the evaluation key, min|max, and the best value so far
        self.best_key: str | None = None
        self.best_mode = "min"
        self.best: dict[str, Any] | None = None  # {metric, mode, value, step}
        self._best_saved = True  # whether checkpoint.pt holds the current best
        if cfg.run.best_metric:
            if val_set is None:
                raise TrainingError(
                    f"run.best_metric is {cfg.run.best_metric!r} but there is no evaluation "
                    "dataset: set data.val"
                )
            kind = getattr(val_set, "metric", "kitti")
            self.best_key = resolve_metric(cfg.run.best_metric, METRIC_KEYS[kind])
            self.best_mode = best_mode(self.best_key, cfg.run.best_mode)

    # -- set-up ---------------------------------------------------------------------------------

    def _setup_process_group(self) -> None:
        if self.env.distributed and not dist.is_initialized():
            backend = (
                "nccl" if torch.cuda.is_available() and self.cfg.run.device != "cpu" else "gloo"
            )
            dist.init_process_group(backend=backend)

    def _load_init(self, net: nn.Module, path: Path) -> None:
        """Start from other weights (a stage-1 run, released weights): strict except for the
        training-only heads, which a file for the node does not have."""
        from depth_completion_ros.networks.checkpoints import fit_to_model, read_checkpoint

        ckpt = read_checkpoint(path)
        state = fit_to_model(ckpt, net, model_name=self.cfg.model.name, strict=False)
        missing = [k for k in net.state_dict() if k not in state]
        if any(not k.startswith("seg_decoder.") for k in missing):
            raise TrainingError(
                f"model.init {path} does not fit model '{self.cfg.model.name}': missing "
                f"{[k for k in missing if not k.startswith('seg_decoder.')][:5]}"
            )
        net.load_state_dict(state, strict=False)
        log.info("initialised from %s (%d tensors)", path, len(state))

    def _loader(self, epoch: int, start: int) -> DataLoader:
        self.sampler.set_epoch(epoch, start)
        self.train_set.epoch = epoch
        workers = self.cfg.data.workers
        return DataLoader(
            self.train_set,
            batch_size=self.cfg.data.batch_size,
            sampler=self.sampler,
            num_workers=workers,
            collate_fn=collate,
            drop_last=True,
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
            prefetch_factor=2 if workers else None,
        )

    # -- checkpoints ----------------------------------------------------------------------------

    def state(self, epoch: int, step_in_epoch: int) -> dict[str, Any]:
        return {
            "net": self.net.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else {},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "step": self.step,
            "epoch": epoch,
            "step_in_epoch": step_in_epoch,
            "bad_steps": self.bad_steps,
            "skipped": self.skips.summary(),
            "best": dict(self.best) if self.best else {},
            "rng": rng_state(),
            "config": to_dict(self.cfg),
        }

    def save(self, epoch: int, step_in_epoch: int) -> None:
        self._saved_step = self.step
        self._best_saved = True
        if not self.env.is_primary:
            return
        state = self.state(epoch, step_in_epoch)
        write_atomic(self.out / CHECKPOINT, lambda tmp: torch.save(state, tmp))
        self.export()

    def export(self, path: Path | None = None, extra: dict[str, str] | None = None) -> Path:
        """The weights the run produces (the EMA copy where there is one) for the node."""
        weights = self.ema.module.state_dict() if self.ema is not None else self.net.state_dict()
        meta = {
            "model": self.cfg.model.name,
            "dataset": self.cfg.model.dataset,
            "step": str(self.step),
            "source": "depth_completion_ros training" + (" (EMA)" if self.ema else ""),
            # settings the weights must run with besides the registry's (SelfDC's legacy flag)
            **(self.task.export_metadata() if hasattr(self.task, "export_metadata") else {}),
            **(extra or {}),
        }
        return export_weights(path or self.out / WEIGHTS, weights, meta)

    def update_best(self, metrics: dict[str, float] | None) -> bool:
        """Keep the evaluated weights in best/ when ``metrics`` beat the best so far on
        ``run.best_metric``; True when they did."""
        if self.best_key is None or not metrics:
            return False
        if self.best_key not in metrics:
            raise TrainingError(
                f"run.best_metric {self.best_key!r} is not among the evaluation's metrics "
                f"{sorted(metrics)}"
            )
        value = float(metrics[self.best_key])
        if not math.isfinite(value):
            log.warning("step %d: %s is %s: not a best checkpoint", self.step, self.best_key, value)
            return False
        if self.best is not None:
            old = self.best["value"]
            if not (value < old if self.best_mode == "min" else value > old):
                return False
        self.best = {"metric": self.best_key, "mode": self.best_mode, "value": value}
        self.best["step"] = self.step
        self._best_saved = False
        if self.env.is_primary:
            folder = self.out / BEST_DIR
            folder.mkdir(parents=True, exist_ok=True)
            self.export(folder / WEIGHTS, {"best_metric": self.best_key, "best_value": str(value)})
            record = {**self.best, "metrics": metrics}
            write_bytes_atomic(
                folder / BEST_JSON, (json.dumps(record, indent=2, sort_keys=True) + "\n").encode()
            )
            log.info("step %d: best %s so far (%.6g): %s", self.step, self.best_key, value, folder)
        return True

    def resume(self) -> tuple[int, int]:
        path = self.out / CHECKPOINT
        if not path.is_file():
            return 0, 0
        state = load_resume_state(path)
        self.net.load_state_dict(state["net"])
        if self.ema is not None and state["ema"]:
            self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.step = self._saved_step = int(state["step"])
        self.bad_steps = int(state.get("bad_steps", 0))
        self.skips.counts.update(state.get("skipped", {}))
        best = state.get("best") or None
        if best and (best.get("metric"), best.get("mode")) == (self.best_key, self.best_mode):
            self.best = dict(best)
        elif best:
            log.info(
                "resume: the checkpoint's best was by %s (%s): a new best by %s (%s) starts",
                best.get("metric"),
                best.get("mode"),
                self.best_key,
                self.best_mode,
            )
        set_rng_state(state["rng"])
        log.info("resumed %s at step %d (epoch %d)", path, self.step, state["epoch"])
        return int(state["epoch"]), int(state["step_in_epoch"])

    # -- one step -------------------------------------------------------------------------------

    def _all_agree(self, ok: bool) -> bool:
        """True only if every process says ok (so all of them skip a step together)."""
        return self._all_agree_each([ok])[0]

    def _all_agree_each(self, oks: list[bool]) -> list[bool]:
        """Per item, True only if every process says ok (one reduction for all of them)."""
        if not self.env.distributed:
            return list(oks)
        flags = torch.tensor([1.0 if ok else 0.0 for ok in oks], device=self.device)
        dist.all_reduce(flags, op=dist.ReduceOp.MIN)
        return [bool(f > 0) for f in flags.tolist()]

    def train_step(self, batches: dict[str, Any] | list[dict[str, Any]]) -> dict[str, float] | None:
        """One optimiser step: forward and backward over each micro-batch (one batch, or the
        ``optim.accum_steps`` batches of a step), then clip, step, EMA; None when the step was
        skipped (a non-finite loss or gradient).

        Gradient accumulation: each micro-batch's loss is weighted by its share of the step's
        samples, so the summed gradient is the gradient of the loss over the whole step's samples
        (exactly, for a loss that is a mean over samples; the same approximation DDP makes across
        processes for the pixel-pooled means). Under DDP all but the last micro-batch run in
        ``no_sync``: the gradients are reduced once, on the last backward pass.
        """
        micro = [batches] if isinstance(batches, dict) else list(batches)
        self.module.train()
        # BatchNorm statistics are updated by the forward pass: kept to undo a bad step's.
        buffers = {k: b.clone() for k, b in self.net.named_buffers() if b.is_floating_point()}
        samples = sum(int(b["size"]) for b in micro)
        finite = True
        loss_sum = 0.0
        terms: dict[str, float] = {}
        bad_terms: dict[str, float] = {}
        for i, batch in enumerate(micro):
            share = int(batch["size"]) / max(samples, 1)
            last = i == len(micro) - 1
            no_sync = self.env.distributed and not last and hasattr(self.module, "no_sync")
            with self.module.no_sync() if no_sync else contextlib.nullcontext():
                batch = to_device(batch, self.device)
                with torch.autocast(
                    self.device.type,
                    dtype=self.amp_dtype or torch.float32,
                    enabled=self.amp_dtype is not None,
                ):
                    outputs = self.task.forward(self.module, batch)
                loss, part = self.task.loss(outputs, batch)
                ok = self._all_agree(bool(torch.isfinite(loss).item()))
                # Every process runs backward, also on a bad micro-batch, so DDP's gradient
                # reduction matches.
                self.scaler.scale(
                    loss * share if ok else loss.detach() * 0 + _zero_like_graph(outputs)
                ).backward()
            if ok:
                loss_sum += share * float(loss.detach())
                for k, v in part.items():
                    terms[k] = terms.get(k, 0.0) + share * v
            else:
                finite, bad_terms = False, part
            del outputs, loss
        grad_norm = float("nan")
        if finite:
            self.scaler.unscale_(self.optimizer)
            params = [p for p in self.net.parameters() if p.grad is not None]
            if self.cfg.optim.clip_norm > 0:
                grad_norm = float(torch.nn.utils.clip_grad_norm_(params, self.cfg.optim.clip_norm))
            else:
                grad_norm = float(
                    torch.linalg.vector_norm(torch.stack([p.grad.detach().norm() for p in params]))
                )
            finite = math.isfinite(grad_norm) or self.scaler.is_enabled()
        if finite:
            self.scaler.step(self.optimizer)
            self.scaler.update()
            if self.ema is not None:
                self.ema.update_parameters(self.net)
        self.optimizer.zero_grad(set_to_none=True)
        lr = self.optimizer.param_groups[0]["lr"]  # the rate this step used
        self.scheduler.step()
        if not finite:
            with torch.no_grad():
                for name, buf in self.net.named_buffers():
                    if name in buffers:
                        buf.copy_(buffers[name])
            self.bad_in_a_row += 1
            self.bad_steps += 1
            log.warning(
                "step %d: non-finite loss or gradient (%s): step skipped (%d in a row)",
                self.step,
                bad_terms or terms,
                self.bad_in_a_row,
            )
            if self.bad_in_a_row >= self.cfg.run.max_bad_steps:
                raise TrainingError(
                    f"{self.bad_in_a_row} consecutive steps had a non-finite loss or gradient: "
                    "the run diverged or the data hold NaN/inf. Lower optim.lr, use "
                    "run.precision=fp32, check the inputs (sparse/gt/teacher maps); the last "
                    f"good state is in {self.out / CHECKPOINT}"
                )
            return None
        self.bad_in_a_row = 0
        return {
            "loss": loss_sum,
            **terms,
            "grad_norm": grad_norm,
            "lr": lr,
            "samples": samples,
        }

    # -- evaluation -----------------------------------------------------------------------------

    def evaluate(self) -> dict[str, float] | None:
        if self.val_set is None or not self.env.is_primary:
            return None
        from training.evaluate import backend_for_module, evaluate_dataset

        source = self.ema.module if self.ema is not None else self.net
        with node_settings_applied(source, self.task.node_settings()):
            # built inside: the backend may copy the network as it is now
            backend = backend_for_module(
                self.cfg.model.name, source, self.cfg.model.dataset, self.device
            )
            return evaluate_dataset(
                backend,
                self.val_set,
                metric=getattr(self.val_set, "metric", "kitti"),
                max_samples=self.cfg.data.val_max_samples,
                progress=False,
            )["mean"]

    # -- the run --------------------------------------------------------------------------------

    def _log(self, record: dict[str, Any]) -> None:
        if not self.env.is_primary:
            return
        with (self.out / "metrics.jsonl").open("a") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")
        if self.writer is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key != "step":
                    self.writer.add_scalar(f"{record.get('kind', 'train')}/{key}", value, self.step)

    def fit(self) -> dict[str, Any]:
        cfg = self.cfg
        if self.env.is_primary:
            self.out.mkdir(parents=True, exist_ok=True)
            write_bytes_atomic(self.out / "config.yaml", dump(cfg).encode())
            if cfg.run.tensorboard:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(self.out / "tb"))
        epoch, start = self.resume()
        if self.step >= self.total_steps:
            log.info("run %s already finished (%d steps)", self.out, self.step)
            return self._finish(epoch, start)
        bar = None
        if self.env.is_primary and cfg.run.progress:
            from tqdm import tqdm

            bar = tqdm(total=self.total_steps, initial=self.step, unit="step", dynamic_ncols=True)
        t_last, samples_since = time.perf_counter(), 0
        accum = self.accum_steps
        while self.step < self.total_steps:
            # a step takes `accum` micro-batches: the position in the epoch is in steps
            loader = self._loader(epoch, start * cfg.data.batch_size * accum)
            step_in_epoch = start
            group: list[dict[str, Any]] = []
            for batch in loader:
                self.skips.add(batch[SKIP_KEY])
                group.append(batch)
                if len(group) < accum:
                    continue
                keep = self._all_agree_each([b["size"] > 0 for b in group])
                usable = [b for b, ok in zip(group, keep, strict=True) if ok]
                if len(usable) < len(group):
                    log.warning(
                        "step %d: every sample of %d of a process's %d micro-batch(es) was "
                        "skipped: %s on all processes",
                        self.step,
                        len(group) - len(usable),
                        len(group),
                        "those left out" if usable else "step skipped",
                    )
                group = []
                if usable:
                    result = self.train_step(usable)
                    samples_since += sum(b["size"] for b in usable) * self.env.world_size
                else:
                    result = None
                    self.scheduler.step()
                self.step += 1
                step_in_epoch += 1
                if bar is not None:
                    bar.update(1)
                if result is not None and self.step % cfg.run.log_every == 0:
                    now = time.perf_counter()
                    result["samples_per_s"] = samples_since / max(now - t_last, 1e-9)
                    t_last, samples_since = now, 0
                    if bar is not None:
                        bar.set_postfix(
                            loss=f"{result['loss']:.4g}", sps=f"{result['samples_per_s']:.1f}"
                        )
                    self._log({"kind": "train", "step": self.step, "epoch": epoch, **result})
                if cfg.run.eval_every and self.step % cfg.run.eval_every == 0:
                    self._evaluate_and_keep_best()
                if self.step % cfg.run.checkpoint_every == 0:
                    self.save(epoch, step_in_epoch)
                if self.step >= self.total_steps:
                    break
            else:
                epoch, start = epoch + 1, 0
                continue
            break
        if bar is not None:
            bar.close()
        return self._finish(epoch, step_in_epoch)

    def _rank_checksums(self) -> list[float]:
        """Sum of the weights on every process (DDP keeps them equal; the summary shows it)."""
        mine = _weights_checksum(self.net)
        if not self.env.distributed:
            return [mine]
        gathered: list[Any] = [None] * self.env.world_size
        dist.all_gather_object(gathered, mine)
        return gathered

    def _evaluate_and_keep_best(self) -> dict[str, float] | None:
        metrics = self.evaluate()
        self._evaluated_step, self._val_metrics = self.step, metrics
        if metrics:
            self._log({"kind": "val", "step": self.step, **metrics})
            self.update_best(metrics)
        return metrics

    def _finish(self, epoch: int, step_in_epoch: int) -> dict[str, Any]:
        if self._evaluated_step == self.step:  # the loop has just scored this very step
            metrics = self._val_metrics
        else:
            metrics = self._evaluate_and_keep_best()
        # the loop may have just written this very step (and the best value with it)
        if self._saved_step != self.step or not self._best_saved:
            self.save(epoch, step_in_epoch)
        summary = {
            "steps": self.step,
            "rank_checksums": self._rank_checksums(),
            "bad_steps": self.bad_steps,
            "skipped_samples": self.skips.summary(),
            "weights": str(self.out / WEIGHTS),
            "val": metrics,
            "best": self.best,
        }
        if self.env.is_primary:
            write_bytes_atomic(
                self.out / "summary.json", (json.dumps(summary, indent=2) + "\n").encode()
            )
            if self.writer is not None:
                self.writer.close()
            log.info("finished: %s", summary)
        if self.env.distributed and dist.is_initialized():
            dist.barrier()
        return summary


def _weights_checksum(net: nn.Module) -> float:
    with torch.no_grad():
        return float(sum(p.double().sum() for p in net.parameters()))


def _zero_like_graph(outputs: Any) -> torch.Tensor:
    """0 connected to every output, so a skipped step still runs a (zero) backward pass."""
    tensors = outputs.values() if isinstance(outputs, dict) else outputs
    return sum((t.float().nan_to_num(0.0, 0.0, 0.0).sum() * 0.0 for t in tensors), torch.zeros(()))
