"""Training configuration: YAML files (paper settings as defaults) + ``key=value`` overrides.

A config is a tree of dataclasses, so every key has a type and a default, an unknown key or a
bad value fails at once naming the key, and the resolved config is saved with the run. A YAML
file may start from another with ``base: other.yaml`` (resolved relative to the file, or to
``training/configs``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from depth_completion_ros.networks.registry import DATASETS, list_models

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


class ConfigError(ValueError):
    """A configuration key or value is unusable; the message names the key."""


@dataclass
class DataConfig:
    #: dataset spec: kitti:ROOT | nyu:ROOT | generated:DIR | bag:PATH (training.datasets)
    train: str = ""
    #: evaluation dataset spec ('' = none); evaluated with the node's backend on the EMA model
    val: str = ""
    train_split: str = "train"
    val_split: str = "val"
    #: options passed to training.datasets.build_dataset for training (crop, augment, ...)
    options: dict = field(default_factory=dict)
    #: options for the evaluation dataset (full frames, no augmentation by default)
    val_options: dict = field(default_factory=dict)
    #: samples per process and step (global batch = batch_size x world size)
    batch_size: int = 2
    workers: int = 4
    #: evaluate at most this many validation samples (0 = all)
    val_max_samples: int = 0


@dataclass
class ModelConfig:
    #: registry name: bpnet | selfdc | selfdc_r18
    name: str = "bpnet"
    #: input conventions of the weights (kitti | nyu): normalisation, depth units
    dataset: str = "kitti"
    #: extra constructor arguments (e.g. drop_path)
    kwargs: dict = field(default_factory=dict)
    #: weights to start from (e.g. the stage-1 result); '' = from scratch
    init: str = ""
    #: SelfDC segmentation classes (0 = no segmentation head; -1 = read from the labels' meta.json)
    seg_classes: int = 0
    #: selfdc / selfdc_r18 encoder start: '' = random, 'imagenet' = torchvision's ResNet weights
    #: from the torch hub cache (NLSPN's default), or the path of such a file (training/methods.py)
    encoder_init: str = ""


@dataclass
class LossConfig:
    #: dmd3c | selfdc (which total in training.losses)
    method: str = "dmd3c"
    #: term name -> weight (0 or absent = off); empty = the method's paper defaults
    weights: dict = field(default_factory=dict)
    #: method options (e.g. supervised: l1|mse, ssi_variant: closed_form|release, window, ...)
    options: dict = field(default_factory=dict)


@dataclass
class OptimConfig:
    #: adamw | adam
    name: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.05
    betas: list = field(default_factory=lambda: [0.9, 0.999])
    #: gradient clipping by global norm (0 = off)
    clip_norm: float = 0.1
    #: micro-batches per optimiser step (gradient accumulation): one step sees
    #: data.batch_size x accum_steps samples per process (DDP syncs on the last micro-batch only)
    accum_steps: int = 1


@dataclass
class ScheduleConfig:
    #: onecycle | multistep | constant (training/schedules.py)
    name: str = "onecycle"
    epochs: int = 30
    #: stop after this many optimiser steps (0 = epochs x steps per epoch)
    max_steps: int = 0
    pct_start: float = 0.1
    div_factor: float = 25.0
    final_div_factor: float = 1e4
    #: onecycle: Adam beta1 cycled between [base, max] ([] = no cycling; torch's default)
    momentum: list = field(default_factory=lambda: [0.85, 0.95])
    #: onecycle: each step's rate times 1 + lr_noise * U(-1, 1) (BP-Net/DMD3C releases: 0.1)
    lr_noise: float = 0.0
    noise_seed: int = 0
    #: multistep (NLSPN): factor k while the epoch is below milestones[k], then factors[-1]
    milestones: list = field(default_factory=list)
    factors: list = field(default_factory=list)
    #: multistep: linear warm-up over the first N epochs (NLSPN: 1)
    warmup_epochs: float = 0.0


@dataclass
class RunConfig:
    out: str = "runs/default"
    seed: int = 0
    #: auto | cpu | cuda
    device: str = "auto"
    #: fp32 | bf16 | fp16 (autocast; fp16 adds a gradient scaler)
    precision: str = "fp32"
    #: EMA decay per step (0 = no EMA); the EMA copy is what gets exported and evaluated
    ema_decay: float = 0.9999
    #: EMA decay warm-up (timm's ModelEmaV3): update t uses min(ema_decay, 1 - (1 + t)^-power),
    #: so a run from scratch does not average in its random initial weights for ~1/(1-decay) steps
    ema_warmup: bool = False
    #: the warm-up's power: 3/4 reaches 0.999 at 10K updates and 0.9999 at 215K; 2/3 at 31.6K, 1M
    ema_warmup_power: float = 0.75
    #: keep the best evaluated weights by this metric in best/ ('' = off): any key the
    #: evaluation returns (rmse_mm, mae_mm, delta1, holdout_rmse_mm, ...) or a short name that
    #: names one of them (rmse, mae, rel, ...)
    best_metric: str = ""
    #: auto (max for delta*, else min) | min | max
    best_mode: str = "auto"
    log_every: int = 10
    #: write the resumable checkpoint every N steps (and at the end)
    checkpoint_every: int = 500
    #: evaluate every N steps (0 = at the end only, when data.val is set)
    eval_every: int = 0
    #: stop when this many consecutive steps had a non-finite loss
    max_bad_steps: int = 20
    #: DDP: convert BatchNorm to SyncBatchNorm
    sync_batchnorm: bool = False
    tensorboard: bool = True
    progress: bool = True


@dataclass
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    run: RunConfig = field(default_factory=RunConfig)


CHOICES = {
    "model.name": tuple(list_models()),  # the node's registry: what it can load
    "model.dataset": DATASETS,
    "loss.method": ("dmd3c", "selfdc"),
    "optim.name": ("adamw", "adam"),
    "schedule.name": ("onecycle", "multistep", "constant"),
    "run.precision": ("fp32", "bf16", "fp16"),
    "run.device": ("auto", "cpu", "cuda"),
    "run.best_mode": ("auto", "min", "max"),
}
NON_NEGATIVE = (
    "optim.lr",
    "optim.weight_decay",
    "optim.clip_norm",
    "run.ema_decay",
    "run.eval_every",
    "schedule.max_steps",
    "data.val_max_samples",
)
POSITIVE = (
    "data.batch_size",
    "optim.accum_steps",
    "schedule.epochs",
    "run.log_every",
    "run.checkpoint_every",
    "run.ema_warmup_power",
)


def _coerce(key: str, value: Any, kind: Any) -> Any:
    """``value`` as the field's type, or a ConfigError naming ``key``."""
    origin = typing.get_origin(kind) or kind
    if origin in (types.UnionType, typing.Union):
        origin = typing.get_args(kind)[0]
    ok = {
        bool: lambda v: isinstance(v, bool),
        int: lambda v: isinstance(v, int) and not isinstance(v, bool),
        float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        str: lambda v: isinstance(v, str),
        list: lambda v: isinstance(v, list),
        dict: lambda v: isinstance(v, dict),
    }[origin]
    if origin is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if origin is float and isinstance(value, str):
        with contextlib.suppress(ValueError):  # YAML 1.1 reads '1e-4' (no dot) as a string
            value = float(value)
    if not ok(value):
        raise ConfigError(
            f"config key '{key}' must be {origin.__name__}, got {value!r} ({type(value).__name__})"
        )
    return float(value) if origin is float else value


def _merge(obj: Any, values: dict, prefix: str = "") -> None:
    if not isinstance(values, dict):
        raise ConfigError(
            f"config section '{prefix.rstrip('.')}' must be a mapping, got {values!r}"
        )
    fields = {f.name: f for f in dataclasses.fields(obj)}
    hints = typing.get_type_hints(type(obj))
    for name, value in values.items():
        key = prefix + str(name)
        if name not in fields:
            raise ConfigError(
                f"unknown config key '{key}'; known keys here: {', '.join(sorted(fields))}"
            )
        current = getattr(obj, name)
        if dataclasses.is_dataclass(current):
            _merge(current, value, key + ".")
        elif isinstance(current, dict) and isinstance(value, dict):
            current.update(value)  # option maps merge key by key (a base config's stay)
        else:
            setattr(obj, name, _coerce(key, value, hints[name]))


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    if not path.is_file():
        raise ConfigError(f"config file {path} not found (configs live in {CONFIG_DIR})")
    if path in seen:
        raise ConfigError(f"config {path} includes itself through 'base'")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    base = data.pop("base", None)
    if base is None:
        return data
    base_path = (path.parent / base) if (path.parent / base).is_file() else CONFIG_DIR / base
    merged = _read_yaml(base_path.resolve(), (*seen, path))
    return _deep_update(merged, data)


def _deep_update(base: dict, new: dict) -> dict:
    out = dict(base)
    for k, v in new.items():
        out[k] = (
            _deep_update(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
        )
    return out


def parse_override(text: str) -> tuple[str, Any]:
    """``a.b=value`` -> ('a.b', YAML-parsed value)."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({e})") from None
    return key.strip(), value


def _nest(key: str, value: Any) -> dict:
    out: Any = value
    for part in reversed(key.split(".")):
        out = {part: out}
    return out


#: loss.method -> the loss function (training.losses) that loss.options go to as keywords
LOSS_FUNCTIONS = {"dmd3c": "dmd3c_loss", "selfdc": "selfdc_loss"}


def _keyword_names(fn: Any, skip: int = 0) -> set[str] | None:
    """Names ``fn`` takes as keywords (after its first ``skip`` parameters); None = any
    (``**kwargs`` that cannot be followed). A factory ``f(**kwargs) -> SomeClass`` is followed
    into the class's constructor through its return annotation."""
    import inspect

    params = list(inspect.signature(fn).parameters.values())[skip:]
    names = {
        p.name
        for p in params
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and not p.name.startswith("_")
    }
    if not any(p.kind is p.VAR_KEYWORD for p in params):
        return names
    try:
        target = typing.get_type_hints(fn).get("return")
    except Exception:
        target = None
    if not isinstance(target, type):
        return None
    inner = _keyword_names(target.__init__, skip=1)
    return None if inner is None else names | inner


def _check_keywords(key: str, given: dict, accepted: set[str] | None, target: str) -> None:
    if accepted is None:
        return
    unknown = sorted(str(k) for k in given if k not in accepted)
    if unknown:
        raise ConfigError(
            f"config key '{key}' has unknown option(s) {', '.join(unknown)} for {target}; "
            f"it accepts: {', '.join(sorted(accepted))}"
        )


def check_loss_options(cfg: TrainConfig) -> None:
    """``loss.options`` against the loss function's keyword arguments (read from its signature:
    the options are whatever training.losses takes today) and ``loss.weights`` against its
    terms."""
    from training import losses

    fn = getattr(losses, LOSS_FUNCTIONS[cfg.loss.method])
    # the Task passes (outputs, batch, weights) positionally; the rest are the options
    _check_keywords("loss.options", cfg.loss.options, _keyword_names(fn, skip=3), fn.__name__)
    terms = getattr(losses, f"{cfg.loss.method.upper()}_TERMS", None)
    if terms is not None:
        unknown = sorted(str(k) for k in cfg.loss.weights if k not in terms)
        if unknown:
            raise ConfigError(
                f"config key 'loss.weights' has unknown term(s) {', '.join(unknown)} for "
                f"{fn.__name__}; its terms are: {', '.join(terms)}"
            )


def check_model_kwargs(cfg: TrainConfig) -> None:
    """``model.kwargs`` against the registry constructor's arguments (followed into the network
    class where the constructor passes ``**kwargs`` on)."""
    from depth_completion_ros.networks.registry import get_model_spec

    spec = get_model_spec(cfg.model.name)
    accepted = _keyword_names(spec.factory())
    _check_keywords("model.kwargs", cfg.model.kwargs, accepted, f"model '{cfg.model.name}'")


#: what each evaluation (training.evaluate.METRICS: kitti, nyu, holdout) returns, besides
#: 'pixels' (a count, no score)
METRIC_KEYS = {
    "kitti": ("rmse_mm", "mae_mm", "irmse_1_per_km", "imae_1_per_km"),
    "nyu": ("rmse_m", "rel", "delta1", "delta2", "delta3"),
    "holdout": ("holdout_rmse_mm", "holdout_mae_mm"),
}


def resolve_metric(name: str, keys: typing.Iterable[str]) -> str:
    """The evaluation key ``name`` means: the key itself, or the one key that has ``name`` as
    one of its '_'-separated words (rmse -> rmse_mm on KITTI, rmse_m on NYU, holdout_rmse_mm on
    a bag). ConfigError naming ``run.best_metric`` and the keys otherwise."""
    keys = [k for k in keys if k != "pixels"]
    if name in keys:
        return name
    found = [k for k in keys if name in k.split("_")]
    if len(found) == 1:
        return found[0]
    why = "matches several" if found else "is none"
    raise ConfigError(
        f"config key 'run.best_metric' is {name!r}, which {why} of the evaluation's metrics: "
        f"use one of {', '.join(keys)}"
    )


def best_mode(metric_key: str, mode: str) -> str:
    """min or max: ``run.best_mode``, or for auto max for accuracies (delta*), min for errors."""
    if mode != "auto":
        return mode
    return "max" if metric_key.startswith("delta") else "min"


def check_best_metric(cfg: TrainConfig) -> None:
    name = cfg.run.best_metric
    if not name:
        return
    if not cfg.data.val:
        raise ConfigError(
            f"config key 'run.best_metric' is {name!r} but 'data.val' is empty: the best "
            "checkpoint needs an evaluation dataset"
        )
    for keys in METRIC_KEYS.values():  # the dataset's own kind is checked when training starts
        with contextlib.suppress(ConfigError):
            resolve_metric(name, keys)
            return
    every = sorted({k for keys in METRIC_KEYS.values() for k in keys})
    raise ConfigError(
        f"config key 'run.best_metric' is {name!r}, which no evaluation returns: use one of "
        f"{', '.join(every)} (or rmse, mae, rel, ...)"
    )


def validate(cfg: TrainConfig) -> TrainConfig:
    """Check choices and ranges; raise ConfigError naming the first bad key."""
    for key, choices in CHOICES.items():
        value = get_key(cfg, key)
        if value not in choices:
            raise ConfigError(
                f"config key '{key}' is {value!r}; choose one of {', '.join(choices)}"
            )
    for key in NON_NEGATIVE:
        if get_key(cfg, key) < 0:
            raise ConfigError(f"config key '{key}' must be >= 0, got {get_key(cfg, key)}")
    for key in POSITIVE:
        if get_key(cfg, key) <= 0:
            raise ConfigError(f"config key '{key}' must be > 0, got {get_key(cfg, key)}")
    if cfg.run.ema_decay >= 1:
        raise ConfigError(f"config key 'run.ema_decay' must be < 1, got {cfg.run.ema_decay}")
    if len(cfg.optim.betas) != 2:
        raise ConfigError(f"config key 'optim.betas' needs two values, got {cfg.optim.betas}")
    if not cfg.data.train:
        raise ConfigError(
            "config key 'data.train' is empty: give a dataset, e.g. kitti:/data/kitti"
        )
    check_loss_options(cfg)
    check_model_kwargs(cfg)
    check_best_metric(cfg)
    return cfg


def get_key(cfg: Any, key: str) -> Any:
    obj = cfg
    for part in key.split("."):
        obj = getattr(obj, part)
    return obj


def load_config(path: str | Path | None, overrides: list[str] = ()) -> TrainConfig:
    """Config from a YAML file (or the defaults) with ``key=value`` overrides, validated."""
    cfg = TrainConfig()
    if path:
        path = Path(path)
        if not path.is_file() and (CONFIG_DIR / path).is_file():
            path = CONFIG_DIR / path
        _merge(cfg, _read_yaml(path.resolve()))
    for text in overrides:
        key, value = parse_override(text)
        _merge(cfg, _nest(key, value))
    return validate(cfg)


def to_dict(cfg: TrainConfig) -> dict:
    return dataclasses.asdict(cfg)


def dump(cfg: TrainConfig) -> str:
    """The resolved config as YAML (what gets saved beside the run's outputs)."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
