"""torchrun / SLURM environment in one place: rank, world size, local rank, sharding.

Every multi-process job (training, teacher cache, stage-1 generation, pseudo-labels) reads its
place in the job here, so one ``torchrun --nproc_per_node N`` or a SLURM array spreads any of
them across GPUs and machines.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_primary(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _int_env(*names: str, default: int) -> int:
    for name in names:
        value = os.environ.get(name)
        if value not in (None, ""):
            try:
                return int(value)
            except ValueError:
                raise ValueError(
                    f"environment variable {name}={value!r} is not an integer"
                ) from None
    return default


def dist_env() -> DistEnv:
    """The job's place from torchrun's RANK/WORLD_SIZE/LOCAL_RANK, else a SLURM array's
    SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT, else a single process."""
    if "RANK" in os.environ or "WORLD_SIZE" in os.environ:
        rank = _int_env("RANK", default=0)
        world = _int_env("WORLD_SIZE", default=1)
        local = _int_env("LOCAL_RANK", default=0)
    elif "SLURM_ARRAY_TASK_ID" in os.environ:
        rank = _int_env("SLURM_ARRAY_TASK_ID", default=0) - _int_env(
            "SLURM_ARRAY_TASK_MIN", default=0
        )
        world = _int_env("SLURM_ARRAY_TASK_COUNT", default=1)
        local = 0
    else:
        return DistEnv()
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"bad process placement: rank {rank} of world size {world}")
    return DistEnv(rank=rank, world_size=world, local_rank=local)


def shard(items: Sequence[T], env: DistEnv | None = None) -> list[T]:
    """This process's share of ``items``: every world_size-th item from its rank (deterministic,
    so a restarted process takes the same share and resumes from its manifest)."""
    env = env or dist_env()
    return list(items[env.rank :: env.world_size])


def job_device(requested: str, env: DistEnv | None = None) -> str:
    """The device of one process of a data job: under torchrun, 'auto' and 'cuda' mean this
    process's own GPU (``cuda:LOCAL_RANK``), so N processes use N GPUs; otherwise as given."""
    env = env or dist_env()
    if requested in ("auto", "cuda") and env.distributed:
        import torch

        if torch.cuda.is_available():
            return f"cuda:{env.local_rank}"
        return "cpu" if requested == "auto" else requested
    return requested
