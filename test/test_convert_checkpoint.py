"""convert_checkpoint: a released-style .pth in, a clean .safetensors out that the node loads."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from depth_completion_ros.backends.network import NetworkBackend
from depth_completion_ros.networks.checkpoints import read_checkpoint
from depth_completion_ros.networks.nlspn import selfdc_r18
from depth_completion_ros.tools.convert_checkpoint import main


@pytest.fixture(scope="module")
def release_like(tmp_path_factory):
    """selfdc_r18 weights as the NLSPN release stores them: DataParallel prefixes under 'net',
    training args as an argparse.Namespace, plus an EMA copy that must win by default."""
    torch.manual_seed(1)
    live, ema = selfdc_r18().eval(), selfdc_r18().eval()
    path = tmp_path_factory.mktemp("release") / "release.pth"
    torch.save(
        {
            "net": {f"module.{k}": v for k, v in live.state_dict().items()},
            "ema": ema.state_dict(),
            "args": argparse.Namespace(prop_time=18, affinity="TGASS", lr=1e-3),
            "epoch": 20,
        },
        path,
    )
    return path, live, ema


def test_release_pth_becomes_safetensors_the_node_loads(release_like, tmp_path, kitti_frame):
    path, live, ema = release_like
    out = tmp_path / "weights.safetensors"
    proc = subprocess.run(
        [sys.executable, "-m", "depth_completion_ros.tools.convert_checkpoint", path, out],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["model"] == "selfdc_r18" and summary["source_key"] == "ema"
    ckpt = read_checkpoint(out)
    assert set(ckpt.state_dict) == set(ema.state_dict())
    for key, value in ema.state_dict().items():
        assert torch.equal(ckpt.state_dict[key], value), key
    assert ckpt.metadata["args"] == {"affinity": "TGASS", "lr": 0.001, "prop_time": 18}
    assert ckpt.metadata["model"] == "selfdc_r18"
    # the node's backend loads it and computes what it computes from the original file
    rgb, sparse, K = kitti_frame
    crop = (slice(200, 264), slice(300, 396))
    rgb, sparse = np.ascontiguousarray(rgb[crop]), np.ascontiguousarray(sparse[crop])
    a = NetworkBackend(model="selfdc_r18", checkpoint=out, device="cpu").complete(rgb, sparse, K)
    b = NetworkBackend(model="selfdc_r18", checkpoint=path, device="cpu").complete(rgb, sparse, K)
    np.testing.assert_array_equal(a, b)


def test_no_ema_takes_the_live_weights(release_like, tmp_path, capsys):
    path, live, _ = release_like
    out = tmp_path / "live.safetensors"
    assert main([str(path), str(out), "--no-ema", "--model", "selfdc_r18"]) == 0
    assert json.loads(capsys.readouterr().out)["source_key"] == "net"
    got = read_checkpoint(out).state_dict
    assert all(torch.equal(got[k], v) for k, v in live.state_dict().items())


def test_bad_inputs_exit_non_zero_and_write_nothing(release_like, tmp_path, capsys):
    path, _, _ = release_like
    out = tmp_path / "out.safetensors"
    assert main([str(path), str(out), "--model", "selfdc"]) == 1
    assert "looks like 'selfdc_r18'" in capsys.readouterr().err
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"this is not a checkpoint at all " * 10)
    assert main([str(garbage), str(out)]) == 1
    assert "is not a checkpoint" in capsys.readouterr().err
    other = tmp_path / "other.pth"
    torch.save(torch.nn.Linear(3, 2).state_dict(), other)
    assert main([str(other), str(out)]) == 1
    assert "fits no model completely" in capsys.readouterr().err
    assert main([str(path), str(tmp_path / "out.pth")]) == 2
    assert "must end in .safetensors" in capsys.readouterr().err
    assert main([str(tmp_path / "missing.pth"), str(out)]) == 1
    assert "not found" in capsys.readouterr().err
    assert set(tmp_path.iterdir()) == {garbage, other}  # no output, no temporary file left
