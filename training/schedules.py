"""Learning-rate schedules, one builder: :func:`build_scheduler` (the trainer steps it once per
optimiser step).

- ``onecycle``: torch's OneCycleLR (warm-up to ``optim.lr`` over ``pct_start`` of the run, cosine
  annealing down to ``lr / div_factor / final_div_factor``), with the momentum (Adam's beta1)
  cycled between ``schedule.momentum`` = [base, max] (torch's default [0.85, 0.95]; [] = off),
  and optionally the BP-Net/DMD3C releases' noise: every step's rate multiplied by
  ``1 + lr_noise * u``, u uniform in [-1, 1], drawn from (``noise_seed``, step) alone, so the
  schedule is a pure function of the step (an exact resume needs no extra state).
  The releases' "NoiseOneCycleCosMo" (configs/sched/lr/NoiseOneCycleCosMo.yaml, schedulers.py
  NoiseLR): div_factor 40, final_div_factor 0.1 (so the run ends at lr / 4, above where it
  starts), pct_start 0.1, cosine, momentum 0.85-0.95 (0.90 in their training commands),
  lr_noise 0.1; the noise multiplies the rate only, not the momentum.
- ``multistep``: NLSPN's schedule (src/config.py ``--decay 10,15,20 --gamma 1.0,0.2,0.04
  --warm_up``; src/utility.py LRFactor; src/main.py warm-up): a linear warm-up over the first
  ``warmup_epochs`` epochs (NLSPN: the first, iteration i of n at lr * i / (n + 1)), then the
  factor ``factors[k]`` while the epoch is below ``milestones[k]`` and ``factors[-1]`` after
  the last milestone.
- ``constant``: ``optim.lr`` throughout.

Epochs here are ``total_steps / schedule.epochs`` steps long, so when ``schedule.max_steps``
cuts a run short the milestones and the warm-up keep their share of it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.optim.lr_scheduler import LambdaLR, OneCycleLR

SCHEDULES = ("onecycle", "multistep", "constant")


def lr_noise_factor(step: int, noise: float, seed: int = 0) -> float:
    """1 + noise * u with u uniform in [-1, 1), a function of (seed, step) only."""
    if noise == 0:
        return 1.0
    u = np.random.default_rng([int(seed), int(step)]).uniform(-1.0, 1.0)
    return 1.0 + noise * float(u)


class NoisyOneCycleLR(OneCycleLR):
    """OneCycleLR whose rate at each step is multiplied by :func:`lr_noise_factor` (the
    momentum is cycled without noise). OneCycleLR computes every step's rate from the step
    number alone, so the noise never accumulates."""

    def __init__(self, optimizer: torch.optim.Optimizer, *, noise: float, noise_seed: int = 0,
                 **kwargs: Any) -> None:  # fmt: skip
        self.noise = float(noise)
        self.noise_seed = int(noise_seed)
        super().__init__(optimizer, **kwargs)

    def get_lr(self) -> list[float]:
        factor = lr_noise_factor(self.last_epoch, self.noise, self.noise_seed)
        return [lr * factor for lr in super().get_lr()]


def multistep_factor(
    step: int,
    steps_per_epoch: float,
    milestones: list[float],
    factors: list[float],
    warmup_epochs: float = 0.0,
) -> float:
    """NLSPN's LR factor at optimiser step ``step`` (0-based): linear warm-up, then steps."""
    epoch = step / steps_per_epoch
    factor = factors[-1]
    for milestone, value in zip(milestones, factors, strict=False):
        if epoch < milestone:
            factor = value
            break
    warmup_steps = warmup_epochs * steps_per_epoch
    if step < warmup_steps:
        # NLSPN: iteration i (1-based) of the first epoch runs at lr * i / (n + 1)
        factor *= (step + 1) / (warmup_steps + 1)
    return factor


def check_schedule(s: Any) -> None:
    """Raise ValueError naming the ``schedule.*`` key that cannot work."""
    if s.name not in SCHEDULES:
        raise ValueError(f"schedule.name is {s.name!r}; choose one of {', '.join(SCHEDULES)}")
    if s.name == "onecycle":
        if len(s.momentum) not in (0, 2):
            raise ValueError(
                f"schedule.momentum must be [base, max] or [] (no cycling), got {s.momentum}"
            )
        if not 0 <= s.lr_noise < 1:
            raise ValueError(f"schedule.lr_noise must lie in [0, 1), got {s.lr_noise}")
    if s.name == "multistep":
        if len(s.factors) != len(s.milestones) + 1:
            raise ValueError(
                "schedule.factors needs one value more than schedule.milestones (the factor "
                f"before the first, between each, after the last), got {s.factors} and "
                f"{s.milestones}"
            )
        if list(s.milestones) != sorted(s.milestones):
            raise ValueError(f"schedule.milestones must increase, got {s.milestones}")
        if s.warmup_epochs < 0:
            raise ValueError(f"schedule.warmup_epochs must be >= 0, got {s.warmup_epochs}")


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: Any, total_steps: int):
    """The schedule of ``cfg.schedule`` over ``total_steps`` optimiser steps."""
    s = cfg.schedule
    check_schedule(s)
    total_steps = max(int(total_steps), 1)
    if s.name == "constant":
        return LambdaLR(optimizer, lambda _: 1.0)
    if s.name == "multistep":
        steps_per_epoch = total_steps / max(s.epochs, 1)
        milestones = [float(m) for m in s.milestones]
        factors = [float(f) for f in s.factors]
        return LambdaLR(
            optimizer,
            lambda step: multistep_factor(
                step, steps_per_epoch, milestones, factors, s.warmup_epochs
            ),
        )
    momentum = list(s.momentum)
    kwargs = dict(
        max_lr=cfg.optim.lr,
        total_steps=total_steps + 1,  # the loop steps it once per iteration
        pct_start=s.pct_start,
        div_factor=s.div_factor,
        final_div_factor=s.final_div_factor,
        anneal_strategy="cos",
        cycle_momentum=bool(momentum),
    )
    if momentum:
        kwargs.update(base_momentum=momentum[0], max_momentum=momentum[1])
    if s.lr_noise:
        return NoisyOneCycleLR(optimizer, noise=s.lr_noise, noise_seed=s.noise_seed, **kwargs)
    return OneCycleLR(optimizer, **kwargs)
