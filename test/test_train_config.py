"""Training configuration: YAML + overrides, every key typed and checked, saved with the run."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from training.config import CONFIG_DIR, ConfigError, dump, load_config


def test_defaults_are_the_papers_optimiser_settings():
    cfg = load_config(None, ["data.train=kitti:/data"])
    assert cfg.optim.name == "adamw"
    assert cfg.optim.weight_decay == 0.05
    assert cfg.optim.clip_norm == 0.1
    assert cfg.run.ema_decay == 0.9999
    assert cfg.schedule.name == "onecycle"


def test_overrides_parse_yaml_values_and_nest():
    cfg = load_config(
        None,
        [
            "data.train=kitti:/data",
            "optim.lr=2e-4",
            "data.options={crop: [256, 1216]}",
            "run.tensorboard=false",
            "optim.betas=[0.8, 0.9]",
        ],
    )
    assert cfg.optim.lr == pytest.approx(2e-4)
    assert cfg.data.options == {"crop": [256, 1216]}
    assert cfg.run.tensorboard is False
    assert cfg.optim.betas == [0.8, 0.9]


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("optim.lrr=1", "optim.lrr"),
        ("nosuch.key=1", "nosuch"),
        ("optim.lr=fast", "optim.lr"),
        ("data.batch_size=0", "data.batch_size"),
        ("data.batch_size=2.5", "data.batch_size"),
        ("run.precision=fp8", "run.precision"),
        ("model.name=resnet", "model.name"),
        ("run.ema_decay=1.0", "run.ema_decay"),
        ("optim.lr=-1", "optim.lr"),
        ("run.tensorboard=3", "run.tensorboard"),
        ("noequals", "noequals"),
    ],
)
def test_a_bad_key_or_value_fails_naming_the_key(override, named):
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        load_config(None, ["data.train=kitti:/data", override])


def test_missing_training_data_is_named():
    with pytest.raises(ConfigError, match="data.train"):
        load_config(None, [])


def test_base_files_merge_and_the_child_wins(tmp_path: Path):
    (tmp_path / "parent.yaml").write_text(
        "data: {train: 'kitti:/a', options: {crop: [256, 1216], flip: true}}\noptim: {lr: 0.01}\n"
    )
    (tmp_path / "child.yaml").write_text(
        "base: parent.yaml\ndata: {options: {flip: false}}\noptim: {lr: 0.002}\n"
    )
    cfg = load_config(tmp_path / "child.yaml", [])
    assert cfg.data.train == "kitti:/a"
    assert cfg.data.options == {"crop": [256, 1216], "flip": False}
    assert cfg.optim.lr == pytest.approx(0.002)


def test_the_saved_config_loads_back_to_the_same_config(tmp_path: Path):
    cfg = load_config(None, ["data.train=nyu:/n", "optim.lr=3e-4", "loss.weights={ssi: 0.5}"])
    saved = tmp_path / "config.yaml"
    saved.write_text(dump(cfg))
    again = load_config(saved, [])
    assert again == cfg
    assert yaml.safe_load(saved.read_text())["loss"]["weights"] == {"ssi": 0.5}


@pytest.mark.parametrize(
    "path",
    sorted(p for p in CONFIG_DIR.glob("*.yaml") if p.name != "empty.yaml"),
    ids=lambda p: p.name,
)
def test_every_shipped_config_is_valid(path: Path):
    cfg = load_config(path, [])
    assert cfg.data.train
