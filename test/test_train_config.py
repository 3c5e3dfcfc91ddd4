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


@pytest.mark.parametrize(
    ("override", "named", "lists"),
    [
        # loss.options: the loss function's keyword arguments
        ("loss.options={windw: 8}", "loss.options", "window"),
        ("loss.options={disparity_mod: inverse}", "loss.options", "disparity_mode"),
        # model.kwargs: the registry constructor's, followed into the network class
        ("model.kwargs={prop_tme: 6}", "model.kwargs", "prop_time"),
        ("loss.weights={d: 1.0}", "loss.weights", "dc"),
    ],
)
def test_unknown_loss_options_and_model_kwargs_fail_when_the_config_loads(override, named, lists):
    base = ["data.train=kitti:/d", "model.name=selfdc", "loss.method=selfdc"]
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")) as err:
        load_config(None, [*base, override])
    assert lists in str(err.value)  # the accepted names are listed


def test_known_options_and_kwargs_load():
    cfg = load_config(
        None,
        [
            "data.train=kitti:/d",
            "model.name=bpnet",
            "model.kwargs={drop_path: 0.0}",
            "loss.options={disparity_mode: inverse, scales: 3}",
        ],
    )
    assert cfg.model.kwargs == {"drop_path": 0.0}
    cfg = load_config(
        None,
        [
            "data.train=kitti:/d",
            "model.name=selfdc_r18",
            "model.kwargs={prop_time: 6, preserve_input: false}",
            "loss.method=selfdc",
            "loss.options={window: 4, gc_basis: none}",
        ],
    )
    assert cfg.loss.options == {"window": 4, "gc_basis": "none"}


def test_loss_options_are_read_from_the_loss_functions_signature(monkeypatch):
    """No hard-coded list: an option the loss function gains is accepted at once."""
    import training.losses

    def selfdc_loss(outputs, batch, weights=None, *, window=8, new_option=1.0):
        raise AssertionError("not called when the config loads")

    monkeypatch.setattr(training.losses, "selfdc_loss", selfdc_loss)
    base = ["data.train=kitti:/d", "model.name=selfdc", "loss.method=selfdc"]
    assert load_config(None, [*base, "loss.options={new_option: 2.0}"]).loss.options == {
        "new_option": 2.0
    }
    with pytest.raises(ConfigError, match="new_option, window"):
        load_config(None, [*base, "loss.options={gc_basis: none}"])


def test_best_metric_names_an_evaluation_key():
    from training.config import METRIC_KEYS, best_mode, resolve_metric

    cfg = load_config(None, ["data.train=kitti:/d", "data.val=kitti:/d", "run.best_metric=mae"])
    assert cfg.run.best_metric == "mae" and cfg.run.best_mode == "auto"
    assert resolve_metric("rmse", METRIC_KEYS["kitti"]) == "rmse_mm"
    assert resolve_metric("rmse", METRIC_KEYS["nyu"]) == "rmse_m"
    assert resolve_metric("rmse", METRIC_KEYS["holdout"]) == "holdout_rmse_mm"
    assert resolve_metric("irmse_1_per_km", METRIC_KEYS["kitti"]) == "irmse_1_per_km"
    assert best_mode("delta1", "auto") == "max" and best_mode("rmse_mm", "auto") == "min"
    assert best_mode("rel", "max") == "max"
    with pytest.raises(ConfigError, match=r"run\.best_metric.*several"):
        resolve_metric("km", METRIC_KEYS["kitti"])
    with pytest.raises(ConfigError, match=r"run\.best_metric.*delta1"):
        resolve_metric("delta1", METRIC_KEYS["kitti"])
    with pytest.raises(ConfigError, match=r"run\.best_metric.*rmse_mm"):
        load_config(None, ["data.train=kitti:/d", "data.val=kitti:/d", "run.best_metric=rmsee"])
    with pytest.raises(ConfigError, match=r"run\.best_metric.*data\.val"):
        load_config(None, ["data.train=kitti:/d", "run.best_metric=rmse"])
    with pytest.raises(ConfigError, match=r"run\.best_mode"):
        load_config(None, ["data.train=kitti:/d", "run.best_mode=lowest"])


def test_metric_keys_are_what_the_evaluation_returns():
    import numpy as np

    from depth_completion_ros.metrics import holdout_metrics, kitti_metrics, nyu_metrics
    from training.config import METRIC_KEYS

    depth = np.full((4, 4), 5.0, np.float32)
    for kind, fn in {
        "kitti": kitti_metrics,
        "nyu": nyu_metrics,
        "holdout": holdout_metrics,
    }.items():
        assert set(fn(depth, depth)) - {"pixels"} == set(METRIC_KEYS[kind])


def test_accumulation_and_ema_warmup_keys():
    cfg = load_config(None, ["data.train=kitti:/d", "optim.accum_steps=4", "run.ema_warmup=true"])
    assert cfg.optim.accum_steps == 4 and cfg.run.ema_warmup is True
    with pytest.raises(ConfigError, match=r"optim\.accum_steps"):
        load_config(None, ["data.train=kitti:/d", "optim.accum_steps=0"])
