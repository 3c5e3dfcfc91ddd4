"""Load released and home-made checkpoints safely, and say clearly why a file does not fit.

Accepted: torch files holding a state_dict or a dict that contains one (``{'net': ...}`` as in the
BP-Net/DMD3C and NLSPN releases, ``'state_dict'``, ``'model'``, EMA copies under ``'ema'`` /
``'state_dict_ema'`` / ...), keys with ``module.`` (DDP) or ``_orig_mod.`` (torch.compile)
prefixes, and safetensors files. Never unpickles code: ``torch.load(weights_only=True)``, with
exactly one extra class allowed, ``argparse.Namespace``, which NLSPN's release stores under
``'args'``. Other people's key layouts are adapted by :func:`checkpoint_filter_fn`, never by
bending the model.
"""

from __future__ import annotations

import argparse
import json
import logging
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

log = logging.getLogger(__name__)

#: where EMA weights live in the containers people write (timm, our trainer, others)
EMA_KEYS = ("state_dict_ema", "ema", "model_ema", "ema_state_dict", "ema_model")
#: where the plain weights live
WEIGHT_KEYS = ("net", "state_dict", "model", "model_state_dict", "module", "weights")
#: prefixes added by wrappers, never part of a model's own names
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
#: bookkeeping entries of averaging wrappers (torch.optim.swa_utils.AveragedModel)
WRAPPER_KEYS = ("n_averaged",)

_SHOW = 5  # how many key names an error message lists


class CheckpointError(ValueError):
    """A checkpoint cannot be read or does not fit; the message says why and what to do."""


@dataclass
class Checkpoint:
    """Weights read from a file, plus where in the file they came from."""

    state_dict: dict[str, torch.Tensor]
    path: Path
    #: which entry of the container held the weights ('' for a bare state_dict)
    source: str = ""
    #: other entries (epoch, args as a dict, safetensors metadata, ...)
    metadata: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------


def _is_safetensors(path: Path) -> bool:
    """safetensors: an 8-byte little-endian header length, then a JSON header."""
    if path.suffix == ".safetensors":
        return True
    with path.open("rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 1 << 27


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = _decode_metadata(f.metadata() or {})
            names = f.keys()  # safe_open is not iterable
            tensors = {k: f.get_tensor(k) for k in names}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(
            f"could not read '{path}' as safetensors ({e}): the file is truncated or corrupt; "
            "download or export it again"
        ) from e
    return tensors, meta


#: safetensors metadata key where training records the constructor settings the weights must
#: run with that do not show in their shapes (JSON; e.g. SelfDC's ``legacy``): applied to the
#: model by :func:`load_checkpoint` through its ``apply_settings``
RECORDED_SETTINGS = "model_kwargs"


def _decode_metadata(meta: dict[str, str]) -> dict[str, Any]:
    """safetensors metadata is str -> str: training args are stored as JSON (convert_checkpoint
    writes them so), and come back as a dict for the settings check; so do the settings
    training records (:data:`RECORDED_SETTINGS`)."""
    out: dict[str, Any] = dict(meta)
    for key in ("args", RECORDED_SETTINGS):
        if key not in out:
            continue
        try:
            args = json.loads(out[key])
        except RecursionError:  # crafted or broken: nested deeper than Python's stack
            log.warning(
                "checkpoint metadata '%s' is JSON nested too deeply to read: ignored (the "
                "weights load; the settings it holds are not checked or applied)",
                key,
            )
            args = None
        except ValueError:
            args = None
        if isinstance(args, dict):
            out[key] = args
        elif key == RECORDED_SETTINGS:
            out.pop(key)
    return out


def apply_recorded_settings(model: nn.Module, metadata: dict[str, Any]) -> dict[str, Any]:
    """Set the behaviour-only settings a checkpoint records (:data:`RECORDED_SETTINGS`) on
    ``model`` through its ``apply_settings``; returns what was applied."""
    settings = metadata.get(RECORDED_SETTINGS)
    if not isinstance(settings, dict) or not settings:
        return {}
    apply = getattr(model, "apply_settings", None)
    if apply is None:
        log.warning("checkpoint records settings %s the model cannot take: ignored", settings)
        return {}
    return apply(settings)


#: how torch files begin: a zip archive (torch.save since 1.6) or a pickle (protocol 2+ opcode)
_TORCH_MAGIC = (b"PK\x03\x04", b"\x80")


def _check_torch_file(path: Path) -> None:
    """Refuse what is not a zip, pickle or safetensors file before the unpickler reads it (a
    text file would be read as pickle opcodes and blamed as 'could run code')."""
    with path.open("rb") as f:
        head = f.read(32)
    if head.startswith(_TORCH_MAGIC):
        return
    kind = "text" if all(32 <= b < 127 or b in b"\t\r\n" for b in head) else "binary"
    raise CheckpointError(
        f"'{path}' is not a checkpoint: it is not a zip (torch.save), pickle or safetensors "
        f"file ({kind}, it begins with {head[:16]!r}); give the path to the .pth/.pt/.safetensors "
        "weights file"
    )


def _torch_load(path: Path) -> Any:
    if not hasattr(torch.serialization, "safe_globals"):  # torch < 2.5
        raise CheckpointError(
            f"cannot load '{path}' safely with torch {torch.__version__}: loading .pth/.pt "
            "files without running code from them needs torch >= 2.5 (weights_only with an "
            "allow-list). Upgrade torch, or convert the file once on a machine with a newer "
            "torch (convert_checkpoint in.pth out.safetensors): any torch loads safetensors"
        )
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        text = str(e)
        if "Weights only load failed" in text:
            found = re.search(r"GLOBAL ([\w.]+)", text)
            what = found.group(1) if found else "a Python object that is not a tensor"
            raise CheckpointError(
                f"refused to load '{path}': it contains {what}, and unpickling it could run code. "
                "Only tensors, plain containers and argparse.Namespace are allowed. If you trust "
                "the file, re-save just its weights: torch.save(ckpt['net'], 'weights.pth') or "
                "safetensors.torch.save_file(state_dict, 'weights.safetensors')"
            ) from e
        raise _unreadable(path, e) from e
    except Exception as e:  # the unpickler fails in many ways on foreign or cut files
        raise _unreadable(path, e) from e


def _unreadable(path: Path, err: BaseException) -> CheckpointError:
    detail = str(err).split("\n")[0][:160] or type(err).__name__
    return CheckpointError(
        f"could not read '{path}' ({type(err).__name__}: {detail}): the file is truncated or is "
        "not a PyTorch (.pth/.pt) or safetensors checkpoint; download or export it again"
    )


def _is_state_dict(obj: Any) -> bool:
    return (
        isinstance(obj, dict)
        and len(obj) > 0
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


def _plain(value: Any) -> Any:
    """Metadata in plain Python (argparse.Namespace -> dict) for logs and config checks."""
    if isinstance(value, argparse.Namespace):
        return vars(value)
    return value


def _find_weights(obj: Any, use_ema: bool, path: Path, where: str = "") -> tuple[dict, str]:
    if _is_state_dict(obj):
        return obj, where
    if not isinstance(obj, dict):
        raise CheckpointError(
            f"'{path}' is not a checkpoint: it holds a {type(obj).__name__}"
            f"{' at ' + where if where else ''}, not a dict of weights"
        )
    order = (EMA_KEYS + WEIGHT_KEYS) if use_ema else (WEIGHT_KEYS + EMA_KEYS)
    for key in order:
        if key in obj and isinstance(obj[key], dict):
            return _find_weights(obj[key], use_ema, path, f"{where}.{key}" if where else key)
    keys = ", ".join(repr(k) for k in list(obj)[:10])
    raise CheckpointError(
        f"'{path}' holds a dict without weights (keys: {keys}); expected a state_dict or one "
        f"under {', '.join(repr(k) for k in WEIGHT_KEYS + EMA_KEYS)}"
    )


def read_checkpoint(path: str | Path, *, use_ema: bool = True) -> Checkpoint:
    """Read the weights of ``path`` (EMA copy first when present and ``use_ema``)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(
            f"checkpoint not found: '{path}' (give the path to a .pth/.safetensors file)"
        )
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint '{path}' is empty (0 bytes): download it again")
    if _is_safetensors(path):
        tensors, meta = _read_safetensors(path)
        if not tensors:
            raise CheckpointError(f"'{path}' is a safetensors file without tensors")
        return Checkpoint(tensors, path, "", meta)
    _check_torch_file(path)
    obj = _torch_load(path)
    state_dict, source = _find_weights(obj, use_ema, path)
    meta: dict[str, Any] = {}
    if isinstance(obj, dict) and source:
        top = source.split(".")[0]
        meta = {k: _plain(v) for k, v in obj.items() if k != top and not _is_state_dict(v)}
    return Checkpoint(dict(state_dict), path, source, meta)


# ---------------------------------------------------------------------------------------------
# Adapting and matching
# ---------------------------------------------------------------------------------------------


def strip_wrapper_prefixes(key: str) -> str:
    """'module._orig_mod.conv.weight' -> 'conv.weight'."""
    changed = True
    while changed:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key, changed = key[len(prefix) :], True
    return key


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict:
    """Adapt a checkpoint's keys to ``model`` without changing the model.

    Strips wrapper prefixes, drops averaging bookkeeping, and drops training-only parts the
    model was built without (a SelfDC training checkpoint carries the segmentation decoder;
    inference models do not have it). Everything else is left for the key check to report.
    """
    own = model.state_dict()
    training_only = tuple(getattr(model, "training_only_prefixes", ()))
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        key = strip_wrapper_prefixes(key)
        if key in WRAPPER_KEYS and key not in own:
            continue
        if training_only and key.startswith(training_only) and key not in own:
            continue
        out[key] = value
    return out


@dataclass
class KeyReport:
    """How a state_dict's keys and shapes compare with a model's."""

    missing: list[str]
    unexpected: list[str]
    mismatched: list[tuple[str, tuple, tuple]]  # key, file shape, model shape

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)


def compare_keys(
    state_dict: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]
) -> KeyReport:
    """Missing (in reference only), unexpected (in state_dict only) and wrong-shape keys."""
    missing = [k for k in reference if k not in state_dict]
    unexpected = [k for k in state_dict if k not in reference]
    mismatched = [
        (k, tuple(v.shape), tuple(reference[k].shape))
        for k, v in state_dict.items()
        if k in reference and tuple(v.shape) != tuple(reference[k].shape)
    ]
    return KeyReport(missing, unexpected, mismatched)


def _known_layouts() -> dict[str, dict[str, torch.Size]]:
    """Key -> shape of every registry model (built on the meta device: no memory, no time)."""
    from depth_completion_ros.networks.registry import MODELS

    layouts: dict[str, dict[str, torch.Size]] = {}
    for name, spec in MODELS.items():
        try:
            with torch.device("meta"):
                net = spec.build(None)
        except Exception as e:  # a model whose module is missing or broken: not a candidate
            log.debug("cannot build %s for checkpoint identification: %s", name, e)
            continue
        layouts[name] = {k: v.shape for k, v in net.state_dict().items()}
    return layouts


def identify_model(state_dict: dict[str, torch.Tensor]) -> list[tuple[str, float]]:
    """Registry models ranked by how well ``state_dict`` fits them (share of matching keys)."""
    keys = {strip_wrapper_prefixes(k): tuple(v.shape) for k, v in state_dict.items()}
    keys = {k: s for k, s in keys.items() if k not in WRAPPER_KEYS and not k.startswith("seg_")}
    scores = []
    for name, layout in _known_layouts().items():
        same = sum(1 for k, s in layout.items() if keys.get(k) == tuple(s))
        scores.append((name, same / max(len(layout), len(keys), 1)))
    return sorted(scores, key=lambda x: -x[1])


def _first(items: list, n: int = _SHOW) -> str:
    shown = ", ".join(str(i) for i in items[:n])
    return shown + (f", ... ({len(items)} in all)" if len(items) > n else "")


def describe_mismatch(report: KeyReport, state_dict: dict, model_name: str, path: Path) -> str:
    """The error text for a file that does not fit: first keys, and which model it looks like."""
    lines = [f"checkpoint '{path}' does not fit model '{model_name}':"]
    if report.missing:
        lines.append(f"  {len(report.missing)} missing keys: {_first(report.missing)}")
    if report.unexpected:
        lines.append(f"  {len(report.unexpected)} unexpected keys: {_first(report.unexpected)}")
    if report.mismatched:
        shown = [f"{k} file {a} vs model {b}" for k, a, b in report.mismatched]
        lines.append(f"  {len(report.mismatched)} keys with other shapes: {_first(shown, 3)}")
    ranked = identify_model(state_dict)
    if ranked and ranked[0][1] >= 0.5 and ranked[0][0] != model_name:
        best, score = ranked[0]
        lines.append(
            f"  The file looks like '{best}' weights ({score:.0%} of keys and shapes match): "
            f"set model to '{best}'."
        )
    elif ranked and ranked[0][1] >= 0.5:
        lines.append(
            f"  It is close to '{model_name}' ({ranked[0][1]:.0%} match): it may come from another "
            "version or settings of that network (see the model card in models/)."
        )
    else:
        lines.append(
            f"  It matches no known model ({', '.join(n for n, _ in ranked) or 'none'}); "
            "check that this is a depth-completion checkpoint."
        )
    return "\n".join(lines)


def fit_to_model(
    ckpt: Checkpoint, model: nn.Module, *, model_name: str = "model", strict: bool = True
) -> dict[str, torch.Tensor]:
    """``ckpt``'s weights with keys adapted to ``model`` (:func:`checkpoint_filter_fn`), checked
    key by key and shape by shape.

    With ``strict`` any missing, unexpected or wrong-shape key raises :class:`CheckpointError`
    naming the first ones and the model the file resembles; otherwise they are logged and only
    the wrong-shape keys are dropped. ``model`` may live on the meta device.
    """
    state_dict = checkpoint_filter_fn(ckpt.state_dict, model)
    report = compare_keys(state_dict, model.state_dict())
    if not report.ok:
        message = describe_mismatch(report, ckpt.state_dict, model_name, ckpt.path)
        if strict:
            raise CheckpointError(message)
        log.warning("%s\n  Loading the matching part only (strict=False).", message)
        bad = {k for k, _, _ in report.mismatched}
        state_dict = {k: v for k, v in state_dict.items() if k not in bad}
    return state_dict


def load_checkpoint(
    model: nn.Module,
    path: str | Path,
    *,
    model_name: str = "model",
    use_ema: bool = True,
    strict: bool = True,
    assign: bool = False,
) -> Checkpoint:
    """Read ``path``, adapt its keys with :func:`checkpoint_filter_fn` and load it into ``model``.

    With ``strict`` any missing, unexpected or wrong-shape key raises :class:`CheckpointError`
    naming the first ones and the model the file resembles; otherwise they are logged and the
    matching part is loaded. ``assign=True`` hands the file's tensors to the model instead of
    copying them, for a model built on the meta device (no random init to throw away).
    """
    ckpt = read_checkpoint(path, use_ema=use_ema)
    state_dict = fit_to_model(ckpt, model, model_name=model_name, strict=strict)
    model.load_state_dict(state_dict, strict=strict, assign=assign)
    apply_recorded_settings(model, ckpt.metadata)
    ckpt.state_dict = state_dict
    log.info(
        "loaded %s weights from %s%s (%d tensors)",
        model_name,
        ckpt.path,
        f" [{ckpt.source}]" if ckpt.source else "",
        len(state_dict),
    )
    return ckpt
