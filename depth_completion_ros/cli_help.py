"""Command-line help and checks shared by the console scripts.

- :class:`DefaultsFormatter`: ``--help`` shows every option's default (argparse's own formatter
  prints "(default: None)" for options without one).
- :func:`node_help` and :func:`prepare_node_arguments`: ``depth_completion_node --help`` prints
  the parameter table of :mod:`depth_completion_ros.parameters`, and ``--ros-args -p`` /
  ``--params-file`` are checked against it (names, types, ranges, choices) before rclpy starts,
  so a typo or a bad value ends in one line naming the parameter instead of being ignored.
"""

from __future__ import annotations

import argparse
import atexit
import sys
import textwrap
from pathlib import Path

import yaml

from depth_completion_ros import parameters


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


def _yaml_scalar(value: object) -> str:
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("\n...").strip()


def _check_params_file(path: str) -> str:
    """Check a --params-file; returns the path to use (a coerced copy when ints were given for
    doubles, since rclpy refuses INTEGER for a DOUBLE parameter)."""
    document, values = parameters.read_params_file(path)
    changed = False
    for _, section, _ in parameters.node_sections(document, path):
        for name, value in section.items():
            if name in values and repr(values[name]) != repr(value):
                section[name], changed = values[name], True
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
    except parameters.ParameterError as exc:
        print(f"depth_completion_node: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def _checked_ros_args(args: list[str]) -> list[str]:
    out, inside, index = [], False, 0
    overrides: dict[str, object] = {}
    while index < len(args):
        arg = args[index]
        if arg == "--ros-args":
            inside = True
        elif arg == "--":
            inside = False
        elif inside and arg in ("-p", "--param", "--params-file") and index + 1 >= len(args):
            raise parameters.ParameterError(f"{arg} needs a value")
        elif inside and arg in ("-p", "--param"):
            name, value = parameters.parse_assignment(args[index + 1])
            if name.startswith(f"{parameters.NODE_NAME}:"):
                name = name.split(":", 1)[1]
            if not parameters.is_ros_parameter(name):
                checked = parameters.check_parameters({name: value}, f"-p {args[index + 1]}")
                overrides[name] = checked[name]
                if repr(checked[name]) != repr(value):
                    out += [arg, f"{name}:={_yaml_scalar(checked[name])}"]
                    index += 2
                    continue
        elif inside and arg == "--params-file":
            out += [arg, _check_params_file(args[index + 1])]
            index += 2
            continue
        out.append(arg)
        index += 1
    parameters.check_relations(overrides)
    return out


def node_help() -> str:
    """``depth_completion_node --help``: usage and every parameter with its default."""
    lines = [
        "usage: depth_completion_node [--lifecycle] [--ros-args [-p NAME:=VALUE ...] "
        "[--params-file FILE] [-r FROM:=TO ...]]",
        "",
        "--lifecycle: a managed node (configure loads the model, activate subscribes, deactivate",
        "stops without unloading); without it the node starts active.",
        "",
        "Dense metric depth from a camera and a LiDAR: subscribes image, camera_info and points,",
        "publishes depth/image (32FC1, metres), depth/camera_info and depth/points.",
        "",
        "examples:",
        "  depth_completion_node --ros-args --params-file config/kitti.yaml \\",
        "      -p calibration_dir:=/data/kitti/2011_09_26 -r image:=/camera/image_raw",
        "  ros2 launch depth_completion_ros kitti.launch.py calibration_dir:=/data/kitti/DATE",
        "",
        "parameters (read-only unless marked 'settable at runtime' (ros2 param set)):",
    ]
    for param in parameters.PARAMETERS:
        lines.append(f"  {param.name} ({param.kind}, default {param.default!r})")
        lines += textwrap.wrap(
            param.help_text(), 96, initial_indent=" " * 6, subsequent_indent=" " * 6
        )
    lines += [
        "",
        "Every process of the graph needs the same Fast DDS profile: "
        "FASTDDS_DEFAULT_PROFILES_FILE=<share>/depth_completion_ros/config/fastdds_large_data.xml",
        "(traffic stays on this machine) or config/fastdds_robot.xml (other machines read it).",
    ]
    return "\n".join(lines)
