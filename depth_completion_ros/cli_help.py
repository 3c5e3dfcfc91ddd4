"""Command-line help and checks shared by the console scripts.

- :class:`DefaultsFormatter`: ``--help`` shows every option's default (argparse's own formatter
  prints "(default: None)" for options without one).
- :func:`node_help` and :func:`check_node_arguments`: ``depth_completion_node --help`` prints the
  parameter table with defaults, and ``--ros-args -p``/``--params-file`` are checked against the
  node's parameter list (names, types, ranges, choices) before rclpy starts, so a typo or a bad
  value ends in one line naming the parameter instead of being ignored or a traceback.
"""

from __future__ import annotations

import argparse
import atexit
import sys
import textwrap
from pathlib import Path

import yaml


class DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends "(default: X)" where an option has a meaningful default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        unset = default is None or default is False or default is argparse.SUPPRESS
        if "%(default)" in text or unset or (isinstance(default, str | list) and not default):
            return text
        if isinstance(action, argparse._HelpAction | argparse._VersionAction):
            return text
        return text + " (default: %(default)s)"


# --- the node's parameters on the command line ----------------------------------------------

NODE_NAME = "depth_completion"
ROS_BUILTIN_PARAMETERS = ("use_sim_time", "start_type_description_service")


class ParameterError(ValueError):
    """A node parameter is unknown or its value unusable; the message names it and the fix."""


def node_parameters() -> dict:
    """The node's parameter table by name (imported late: it pulls in rclpy and the backends)."""
    from depth_completion_ros.node import PARAMETERS

    return {p.name: p for p in PARAMETERS}


def _kind(default: object) -> str:
    if isinstance(default, bool):
        return "bool"
    if isinstance(default, float):
        return "double"
    if isinstance(default, int):
        return "integer"
    if isinstance(default, list):
        return "double array"
    return "string"


def check_parameter(param, value: object, source: str = "") -> object:
    """``value`` checked against the node's declaration of ``param``; returns it coerced (an
    integer given for a double parameter becomes a float, as the node needs)."""
    where = f" ({source})" if source else ""
    kind = _kind(param.default)
    wrong = ParameterError(
        f"parameter '{param.name}'{where}: {value!r} is not {'an' if kind[0] in 'ai' else 'a'} "
        f"{kind}; "
        f"default {param.default!r}: {param.description}"
    )
    if kind == "bool":
        if not isinstance(value, bool):
            raise wrong
    elif kind == "double":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise wrong
        value = float(value)
    elif kind == "integer":
        if isinstance(value, bool) or not isinstance(value, int):
            raise wrong
    elif kind == "double array":
        if not isinstance(value, list) or not all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in value
        ):
            raise wrong
        value = [float(v) for v in value]
    elif not isinstance(value, str):
        raise wrong
    limits = param.float_range or param.int_range
    if limits and not (limits[0] <= value <= limits[1]):
        raise ParameterError(
            f"parameter '{param.name}'{where}: {value!r} is outside its range "
            f"[{limits[0]}, {limits[1]}]: {param.description}"
        )
    if param.choices and value not in param.choices:
        raise ParameterError(
            f"parameter '{param.name}'{where}: {value!r} is not one of: {', '.join(param.choices)}"
        )
    return value


def unknown_parameter(name: str, known, source: str = "") -> ParameterError:
    """The error for a name the node does not declare, with the closest known names."""
    import difflib

    where = f" ({source})" if source else ""
    close = difflib.get_close_matches(name, list(known), n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else f"; known: {', '.join(known)}"
    return ParameterError(f"unknown node parameter '{name}'{where}{hint}")


def check_parameters(values: dict, source: str = "") -> dict:
    """Every name known and every value valid; returns the values coerced."""
    table = node_parameters()
    checked = {}
    for name, value in values.items():
        if name in ROS_BUILTIN_PARAMETERS:
            checked[name] = value
            continue
        if name not in table:
            raise unknown_parameter(name, table, source)
        checked[name] = check_parameter(table[name], value, source)
    return checked


def check_depth_range(config: dict) -> None:
    """min_depth < max_depth (the one rule between two parameters)."""
    low, high = config.get("min_depth"), config.get("max_depth")
    if low is not None and high is not None and low >= high:
        raise ParameterError(
            f"parameters 'min_depth' ({low}) must be smaller than 'max_depth' ({high})"
        )


def parse_assignment(text: str) -> tuple[str, object]:
    """``name:=value`` -> (name, value parsed as YAML, as rcl parses ``-p``)."""
    name, sep, raw = text.partition(":=")
    if not sep or not name:
        raise ParameterError(f"expected NAME:=VALUE, got {text!r}")
    try:
        return name, yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        return name, raw


def _yaml_scalar(value: object) -> str:
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("\n...").strip()


def _node_sections(document: dict, path: str) -> list[tuple[str, dict, bool]]:
    """(key, parameters, is_for_this_node) of a params file's ros__parameters sections."""
    if not isinstance(document, dict):
        raise ParameterError(f"parameter file {path}: not a YAML mapping of node names")
    sections = []
    for key, body in document.items():
        if not isinstance(body, dict) or "ros__parameters" not in body:
            continue
        parameters = body["ros__parameters"]
        if not isinstance(parameters, dict):
            raise ParameterError(f"parameter file {path}: {key}.ros__parameters is not a mapping")
        own = str(key).strip("/").split("/")[-1] == NODE_NAME
        wildcard = str(key).strip("/") in ("**", "*")
        if own or wildcard:
            sections.append((str(key), parameters, own))
    return sections


def _check_params_file(path: str) -> str:
    """Check a --params-file; returns the path to use (a coerced copy when ints were given for
    doubles, since rclpy refuses INTEGER for a DOUBLE parameter)."""
    file = Path(path)
    if not file.is_file():
        raise ParameterError(f"--params-file {path}: no such file")
    try:
        document = yaml.safe_load(file.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ParameterError(f"--params-file {path}: cannot read it as YAML: {exc}") from exc
    table = node_parameters()
    changed = False
    for key, parameters, own in _node_sections(document or {}, path):
        for name, value in list(parameters.items()):
            if name in ROS_BUILTIN_PARAMETERS:
                continue
            if name not in table:
                if own:  # a '/**' section may hold other nodes' parameters
                    raise unknown_parameter(name, table, f"{path}, section {key}")
                continue
            checked = check_parameter(table[name], value, f"{path}, section {key}")
            if repr(checked) != repr(value):
                parameters[name], changed = checked, True
    if not changed:
        return path
    import tempfile

    handle, copy = tempfile.mkstemp(prefix="depth_completion_params_", suffix=".yaml")
    with open(handle, "w") as out:
        yaml.safe_dump(document, out)
    atexit.register(Path(copy).unlink, missing_ok=True)  # rcl reads it in rclpy.init
    return copy


def prepare_node_arguments(argv: list[str] | None = None) -> list[str]:
    """``depth_completion_node``'s command line, checked before rclpy sees it.

    ``--help`` prints the parameter table and exits 0; an unknown parameter, a value of the wrong
    type or out of range, or a missing ``--params-file`` prints one line naming it and exits 2.
    Returns the arguments for ``rclpy.init`` (integers given for double parameters rewritten as
    doubles). Call it first in ``node.main``: ``args = prepare_node_arguments(args)``.
    """
    args = list(sys.argv if argv is None else argv)
    try:
        ros_start = args.index("--ros-args")
    except ValueError:
        ros_start = len(args)
    if any(a in ("-h", "--help") for a in args[1:ros_start]):
        print(node_help())
        raise SystemExit(0)
    try:
        return _checked_ros_args(args)
    except ParameterError as exc:
        print(f"depth_completion_node: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def _checked_ros_args(args: list[str]) -> list[str]:
    out, inside, index = [], False, 0
    table = None
    overrides: dict[str, object] = {}
    while index < len(args):
        arg = args[index]
        if arg == "--ros-args":
            inside = True
        elif arg == "--":
            inside = False
        elif inside and arg in ("-p", "--param", "--params-file") and index + 1 >= len(args):
            raise ParameterError(f"{arg} needs a value")
        elif inside and arg in ("-p", "--param"):
            name, value = parse_assignment(args[index + 1])
            table = table or node_parameters()
            if name.startswith(f"{NODE_NAME}:"):
                name = name.split(":", 1)[1]
            if name not in ROS_BUILTIN_PARAMETERS:
                if name not in table:
                    raise unknown_parameter(name, table, f"-p {args[index + 1]}")
                checked = check_parameter(table[name], value, f"-p {args[index + 1]}")
                overrides[name] = checked
                if repr(checked) != repr(value):
                    out += [arg, f"{name}:={_yaml_scalar(checked)}"]
                    index += 2
                    continue
        elif inside and arg == "--params-file":
            out += [arg, _check_params_file(args[index + 1])]
            index += 2
            continue
        out.append(arg)
        index += 1
    check_depth_range(overrides)
    return out


def node_help() -> str:
    """``depth_completion_node --help``: usage and every parameter with its default."""
    lines = [
        "usage: depth_completion_node [--ros-args [-p NAME:=VALUE ...] [--params-file FILE] "
        "[-r FROM:=TO ...]]",
        "",
        "Dense metric depth from a camera and a LiDAR: subscribes image, camera_info and points,",
        "publishes depth/image (32FC1, metres), depth/camera_info and depth/points.",
        "",
        "examples:",
        "  depth_completion_node --ros-args --params-file config/kitti.yaml \\",
        "      -p calibration_dir:=/data/kitti/2011_09_26 -r image:=/camera/image_raw",
        "  ros2 launch depth_completion_ros kitti.launch.py calibration_dir:=/data/kitti/DATE",
        "",
        "parameters (all read-only: change them with a restart):",
    ]
    for param in node_parameters().values():
        limits = param.float_range or param.int_range
        extra = []
        if param.choices:
            extra.append(f"one of {', '.join(param.choices)}")
        if limits:
            extra.append(f"range [{limits[0]}, {limits[1]}]")
        detail = f" ({'; '.join(extra)})" if extra else ""
        lines.append(f"  {param.name} ({_kind(param.default)}, default {param.default!r})")
        lines += textwrap.wrap(
            f"{param.description}{detail}", 96, initial_indent=" " * 6, subsequent_indent=" " * 6
        )
    lines += [
        "",
        "Every process of the graph needs the same Fast DDS profile: "
        "FASTDDS_DEFAULT_PROFILES_FILE=<share>/depth_completion_ros/config/fastdds_large_data.xml",
        "(traffic stays on this machine) or config/fastdds_robot.xml (other machines read it).",
    ]
    return "\n".join(lines)
