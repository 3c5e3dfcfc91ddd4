"""The node's command line is checked before rclpy: --help, unknown names, types, ranges, files.

The last test runs the real node with the one line node.main needs
(``args = cli_help.prepare_node_arguments(args)``), wired here from outside.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from depth_completion_ros.cli_help import node_help, prepare_node_arguments
from depth_completion_ros.parameters import PARAMETERS
from depth_completion_ros.tools.graph import ros_environment, stop_process

REPO = Path(__file__).resolve().parents[1]


def _error(capsys, *ros_args: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        prepare_node_arguments(["depth_completion_node", "--ros-args", *ros_args])
    assert exit_info.value.code == 2
    return capsys.readouterr().err


def test_help_lists_every_parameter_with_its_default(capsys):
    with pytest.raises(SystemExit) as exit_info:
        prepare_node_arguments(["depth_completion_node", "--help"])
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    assert printed == node_help() + "\n"
    for param in PARAMETERS:
        assert f"  {param.name} (" in printed and f"default {param.default!r}" in printed


def test_bad_parameters_are_named(capsys, tmp_path):
    assert "'max_depth'" in _error(capsys, "-p", "max_depth:=-1")
    assert "outside its range [0.1, 1000.0]" in _error(capsys, "-p", "max_depth:=-1")
    assert "'abc' is not a double" in _error(capsys, "-p", "max_depth:=abc")
    assert "did you mean max_depth" in _error(capsys, "-p", "max_deph:=3.0")
    assert "one of: classical" in _error(capsys, "-p", "model:=resnet")
    assert "is not an integer" in _error(capsys, "-p", "occlusion_window:=2.5")
    assert "must be smaller" in _error(capsys, "-p", "min_depth:=5.0", "-p", "max_depth:=2.0")
    missing = tmp_path / "missing.yaml"
    assert f"--params-file {missing}: no such file" in _error(capsys, "--params-file", str(missing))
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"depth_completion": {"ros__parameters": {"modle": "x"}}}))
    assert "unknown node parameter 'modle'" in _error(capsys, "--params-file", str(bad))


def test_good_arguments_pass_and_integers_become_doubles(tmp_path):
    args = prepare_node_arguments(
        ["node", "--ros-args", "-p", "max_depth:=50", "-p", "model:=classical", "-r", "a:=b"]
    )
    assert args == ["node", "--ros-args", "-p", "max_depth:=50.0", "-p", "model:=classical",
                    "-r", "a:=b"]  # fmt: skip
    kitti = str(REPO / "config" / "kitti.yaml")
    assert prepare_node_arguments(["node", "--ros-args", "--params-file", kitti])[-1] == kitti
    ints = tmp_path / "ints.yaml"
    ints.write_text(yaml.safe_dump({"/**": {"ros__parameters": {"max_depth": 80, "other": 1}}}))
    copy = prepare_node_arguments(["node", "--ros-args", "--params-file", str(ints)])[-1]
    assert yaml.safe_load(Path(copy).read_text())["/**"]["ros__parameters"]["max_depth"] == 80.0


#: the console script's own entry point (node.main checks the command line first)
NODE = "import sys\nfrom depth_completion_ros import node\nsys.exit(node.main(sys.argv))\n"


def _start(ros_domain_id: int, code: str, *ros_args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", code, "--ros-args", *ros_args],
        env=ros_environment(ros_domain_id),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_the_node_checks_its_command_line(ros_domain_id):
    # an integer for a double parameter (rclpy alone refuses INTEGER vs DOUBLE): with the check
    # it is a double and the node runs until Ctrl-C
    process = _start(ros_domain_id, NODE, "-p", "max_depth:=50")
    try:
        time.sleep(8)
        assert process.poll() is None, process.communicate()[0]
        assert stop_process(process) == 0
    finally:
        if process.poll() is None:  # a failed check must not leave a node running
            process.kill()
            process.wait()
    # and a bad value ends in one line, exit 2, before rclpy starts
    process = _start(ros_domain_id, NODE, "-p", "max_depth:=-1")
    try:
        output, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 2
    assert "Traceback" not in output and "'max_depth'" in output
