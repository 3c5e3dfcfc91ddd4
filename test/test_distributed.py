"""A job's place from torchrun or a SLURM array, and its share of the items."""

from __future__ import annotations

import pytest

from training.distributed import DistEnv, dist_env, job_device, shard


def test_torchrun_variables(monkeypatch):
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert dist_env() == DistEnv(3, 4, 1)


def test_slurm_array_with_an_offset_first_task(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "12")
    monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", "10")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "4")
    assert dist_env() == DistEnv(2, 4, 0)


def test_bad_placement_is_named(monkeypatch):
    monkeypatch.setenv("RANK", "4")
    monkeypatch.setenv("WORLD_SIZE", "4")
    with pytest.raises(ValueError, match="rank 4 of world size 4"):
        dist_env()
    monkeypatch.setenv("RANK", "x")
    with pytest.raises(ValueError, match="RANK='x'"):
        dist_env()


def test_shards_cover_every_item_once():
    items = list(range(11))
    parts = [shard(items, DistEnv(r, 3, 0)) for r in range(3)]
    assert sorted(sum(parts, [])) == items
    assert parts[0] == [0, 3, 6, 9]


def test_job_device_without_cuda_under_torchrun():
    env = DistEnv(1, 2, 1)
    assert job_device("auto", env) == "cpu"  # this machine has no CUDA
    assert job_device("cpu", env) == "cpu"
    assert job_device("auto", DistEnv()) == "auto"
