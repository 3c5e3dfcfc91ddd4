"""Checkpoint loading: every accepted format, and a clear refusal for everything else."""

from __future__ import annotations

import argparse
import os
import pickle

import pytest
import torch
import torch.nn as nn
from safetensors.torch import save_file

from depth_completion_ros.networks.checkpoints import (
    CheckpointError,
    identify_model,
    load_checkpoint,
    read_checkpoint,
)
from depth_completion_ros.networks.nlspn import selfdc, selfdc_r18


def _small() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1))
    with torch.no_grad():
        for p in net.parameters():
            p.normal_()
    return net


def _assert_same(a: nn.Module, b: nn.Module) -> None:
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb), ka


def _fresh() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1))


@pytest.mark.parametrize(
    "wrap",
    [
        pytest.param(lambda sd: sd, id="plain"),
        pytest.param(lambda sd: {"net": sd, "epoch": 3}, id="release-net"),
        pytest.param(lambda sd: {"state_dict": sd}, id="state_dict"),
        pytest.param(lambda sd: {f"module.{k}": v for k, v in sd.items()}, id="ddp"),
        pytest.param(lambda sd: {f"_orig_mod.{k}": v for k, v in sd.items()}, id="compiled"),
        pytest.param(
            lambda sd: {"net": {f"module._orig_mod.{k}": v for k, v in sd.items()}}, id="both"
        ),
        pytest.param(
            lambda sd: {
                "n_averaged": torch.tensor(5),
                **{f"module.{k}": v for k, v in sd.items()},
            },
            id="averaged-model",
        ),
    ],
)
def test_torch_formats_load(tmp_path, wrap):
    src = _small()
    path = tmp_path / "w.pth"
    torch.save(wrap(src.state_dict()), path)
    dst = _fresh()
    load_checkpoint(dst, path)
    _assert_same(src, dst)


def test_nlspn_release_layout_with_namespace_args(tmp_path):
    """NLSPN's release: {'net': state_dict, 'args': argparse.Namespace}; loads into selfdc."""
    torch.manual_seed(1)
    src = selfdc()
    path = tmp_path / "NLSPN_KITTI_DC.pt"
    args = argparse.Namespace(network="resnet34", prop_time=18, affinity="TGASS", legacy=False)
    torch.save({"net": src.state_dict(), "args": args}, path)
    dst = selfdc()
    ckpt = load_checkpoint(dst, path, model_name="selfdc")
    assert ckpt.source == "net"
    assert ckpt.metadata["args"]["affinity"] == "TGASS"  # Namespace turned into a dict
    assert torch.equal(dst.conv6[0].weight, src.conv6[0].weight)
    assert torch.equal(dst.prop_layer.conv_offset_aff.weight, src.prop_layer.conv_offset_aff.weight)


def test_ema_copy_preferred(tmp_path):
    live, ema = _small(), _small()
    with torch.no_grad():
        for p in ema.parameters():
            p.add_(1.0)
    for key in ("ema", "state_dict_ema"):
        path = tmp_path / f"{key}.pth"
        torch.save({"net": live.state_dict(), key: ema.state_dict(), "step": 10}, path)
        dst = _fresh()
        assert load_checkpoint(dst, path).source == key
        _assert_same(ema, dst)
        dst = _fresh()
        assert load_checkpoint(dst, path, use_ema=False).source == "net"
        _assert_same(live, dst)


def test_safetensors(tmp_path):
    src = _small()
    for name in ("w.safetensors", "w.bin"):  # found by its header too, not only its name
        path = tmp_path / name
        save_file(src.state_dict(), str(path), metadata={"model": "small"})
        dst = _fresh()
        ckpt = load_checkpoint(dst, path)
        assert ckpt.metadata == {"model": "small"}
        _assert_same(src, dst)


def test_training_checkpoint_with_seg_head_loads_into_inference_model(tmp_path):
    src = selfdc_r18(seg_classes=5)
    path = tmp_path / "train.pth"
    torch.save({"net": src.state_dict()}, path)
    dst = selfdc_r18()
    loaded = load_checkpoint(dst, path, model_name="selfdc_r18")
    assert not any(k.startswith("seg_") for k in loaded.state_dict)
    assert torch.equal(dst.id_dec0[0].weight, src.id_dec0[0].weight)


def test_wrong_model_names_the_model_it_looks_like(tmp_path):
    path = tmp_path / "r18.pth"
    torch.save({"net": selfdc_r18().state_dict()}, path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(selfdc(), path, model_name="selfdc")
    msg = str(info.value)
    assert "does not fit model 'selfdc'" in msg
    assert "missing keys: conv2.2.conv1.weight" in msg  # ResNet-34 has a third block
    assert "looks like 'selfdc_r18'" in msg
    ranked = identify_model(torch.load(path, weights_only=True)["net"])
    assert ranked[0][0] == "selfdc_r18" and ranked[0][1] == pytest.approx(1.0)


def test_unrelated_weights_match_nothing(tmp_path):
    path = tmp_path / "other.pth"
    torch.save(_small().state_dict(), path)
    with pytest.raises(CheckpointError, match="matches no known model"):
        load_checkpoint(selfdc_r18(), path, model_name="selfdc_r18")


def test_truncated_file(tmp_path):
    path = tmp_path / "cut.pth"
    torch.save({"net": _small().state_dict()}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        read_checkpoint(path)
    st = tmp_path / "cut.safetensors"
    save_file(_small().state_dict(), str(st))
    st.write_bytes(st.read_bytes()[:-20])
    with pytest.raises(CheckpointError, match="truncated"):
        read_checkpoint(st)


def test_not_a_checkpoint(tmp_path):
    text = tmp_path / "notes.pth"
    text.write_text("these are not weights\n")
    with pytest.raises(CheckpointError, match="is not a checkpoint: it is not a zip"):
        read_checkpoint(text)
    numbers = tmp_path / "list.pth"
    torch.save([1, 2, 3], numbers)
    with pytest.raises(CheckpointError, match="not a checkpoint: it holds a list"):
        read_checkpoint(numbers)
    no_weights = tmp_path / "meta.pth"
    torch.save({"epoch": 3, "lr": 0.1}, no_weights)
    with pytest.raises(CheckpointError, match="without weights"):
        read_checkpoint(no_weights)
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        read_checkpoint(empty)
    with pytest.raises(CheckpointError, match="not found"):
        read_checkpoint(tmp_path / "missing.pth")


class _RunsCode:
    """Unpickling this calls os.system: a checkpoint must never be able to do that."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_pickle_that_runs_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    for i, payload in enumerate(
        [
            {"net": _small().state_dict(), "args": _RunsCode(str(marker))},
            _RunsCode(str(marker)),
        ]
    ):
        path = tmp_path / f"evil{i}.pth"
        torch.save(payload, path)
        with pytest.raises(CheckpointError, match="refused .* could run code"):
            read_checkpoint(path)
    # A raw (non-torch) pickle is refused as well.
    raw = tmp_path / "evil.pkl"
    raw.write_bytes(pickle.dumps(_RunsCode(str(marker))))
    with pytest.raises(CheckpointError):
        read_checkpoint(raw)
    assert not marker.exists()


def test_torch_without_safe_globals_is_named_not_called_corrupt(tmp_path, monkeypatch):
    """torch < 2.5 (common on robots) has no safe_globals: the error must say so and point to
    safetensors, not call a good file truncated; safetensors files still load."""
    src = _small()
    pth, st = tmp_path / "w.pth", tmp_path / "w.safetensors"
    torch.save({"net": src.state_dict()}, pth)
    save_file(src.state_dict(), str(st))
    monkeypatch.delattr(torch.serialization, "safe_globals")
    with pytest.raises(
        CheckpointError, match=r"needs torch >= 2\.5.*convert_checkpoint.*safetensors"
    ):
        load_checkpoint(_fresh(), pth)
    dst = _fresh()
    load_checkpoint(dst, st)
    _assert_same(src, dst)


def test_text_file_is_called_not_a_checkpoint(kitti_calib_dir):
    """A KITTI calibration file starts with 'calib_time:'; read as pickle opcodes it was refused
    as 'it contains alib_time, and unpickling it could run code'."""
    path = kitti_calib_dir / "calib_cam_to_cam.txt"
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(path)
    message = str(info.value)
    assert "is not a checkpoint" in message and "(text, it begins with b'calib_time" in message
    assert "could run code" not in message and "alib_time" not in message.replace("calib", "")


def test_deeply_nested_safetensors_metadata_is_ignored_with_a_warning(tmp_path, caplog):
    """json.loads of 100,000 nested lists raised RecursionError, which crashed start-up."""
    src = _small()
    path = tmp_path / "deep.safetensors"
    deep = "[" * 100_000 + "]" * 100_000
    save_file(src.state_dict(), str(path), metadata={"args": deep, "model": "small"})
    dst = _fresh()
    with caplog.at_level("WARNING"):
        ckpt = load_checkpoint(dst, path)
    _assert_same(src, dst)
    assert ckpt.metadata["model"] == "small" and not isinstance(ckpt.metadata["args"], dict)
    assert "nested too deeply" in caplog.text
