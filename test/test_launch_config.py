"""The shipped launch file, parameter file and Fast DDS profile agree with the node.

launch/launch_ros do not install from PyPI, so the launch file is checked statically; what it
sets is exercised by starting the node with ``--params-file config/kitti.yaml`` and the XML
profile, exactly as the launch file does.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml
from ros_graph import node_graph

from depth_completion_ros.kitti import KittiDrive
from depth_completion_ros.parameters import PARAMETERS, load_parameters
from depth_completion_ros.resources import package_file
from depth_completion_ros.tools.graph import SensorFrame

REPO = Path(__file__).resolve().parents[1]
NODE_PARAMETERS = {p.name for p in PARAMETERS}


@pytest.mark.parametrize("name", ["kitti.yaml", "robot_example.yaml"])
def test_params_file_only_sets_declared_parameters(name):
    config = yaml.safe_load((REPO / "config" / name).read_text())
    parameters = config["depth_completion"]["ros__parameters"]
    assert set(parameters) <= NODE_PARAMETERS, set(parameters) - NODE_PARAMETERS
    defaults = {p.name: p.default for p in PARAMETERS}
    for key, value in parameters.items():
        assert type(value) is type(defaults[key]) or key == "extrinsics", key
    load_parameters(REPO / "config" / name)  # every value valid, as the node checks it


def test_launch_file_matches_node_parameters_and_topics():
    tree = ast.parse((REPO / "launch" / "kitti.launch.py").read_text())
    dict_keys = {
        key.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Dict)
        for key in node.keys
        if isinstance(key, ast.Constant)
    }
    assert dict_keys - {"use_sim_time"} <= NODE_PARAMETERS, dict_keys - NODE_PARAMETERS
    remapped = {
        element.elts[0].value
        for node in ast.walk(tree)
        if isinstance(node, ast.Tuple) and len(node.elts) == 2
        for element in [node]
        if isinstance(node.elts[0], ast.Constant)
    }
    assert {"image", "camera_info", "points"} <= remapped
    text = (REPO / "launch" / "kitti.launch.py").read_text()
    assert "fastdds_large_data.xml" in text and "fastdds_robot.xml" in text
    assert "IfCondition" in text
    declared = {
        node.args[0].value: {k.arg: k.value for k in node.keywords}
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "DeclareLaunchArgument"
    }
    # the process's own DDS configuration is left alone unless a profile is asked for
    assert declared["dds_profile"]["default_value"].value == ""
    assert "LaunchConfigurationNotEquals" in text
    assert all(getattr(v.get("description"), "value", "x") for v in declared.values())


def test_node_runs_with_params_file_and_xml_profile(
    kitti_raw_seq, ros_domain_id, tmp_path, monkeypatch
):
    """--params-file config/kitti.yaml + the XML large-data profile: frames flow as launched."""
    monkeypatch.delenv("FASTDDS_BUILTIN_TRANSPORTS", raising=False)
    monkeypatch.setenv(
        "FASTDDS_DEFAULT_PROFILES_FILE", str(package_file("config/fastdds_large_data.xml"))
    )
    drive = KittiDrive(kitti_raw_seq / "2011_09_26_drive_0000_sync")
    frames = [
        SensorFrame(3_000.0 + f.stamp, f.rgb, f.points, drive.calibration.camera)
        for f in (drive.frame(i) for i in drive.frame_ids[:3])
    ]
    extra = ["--params-file", str(REPO / "config" / "kitti.yaml")]
    # the generated parameter file comes first; kitti.yaml overrides all but calibration_dir,
    # which it leaves empty, so give that one explicitly last
    extra += [
        "-p",
        f"calibration_dir:={drive.calibration_dir}",
        "-p",
        "input_reliability:=reliable",
    ]
    with node_graph({}, ros_domain_id, tmp_path, transport="profile", extra_args=extra) as graph:
        result = graph.player.play(
            frames, graph.executor, wait_topics=("depth/image", "depth/colored"), timeout=15.0
        )
    received = [v for v in result.outputs.values() if "depth/colored" in v]
    assert len(received) == 3, graph.log()


def _generic_launch():
    """launch/depth_completion.launch.py as a module (launch itself is imported only inside
    generate_launch_description, so its pure helpers run here)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "generic_launch", REPO / "launch" / "depth_completion.launch.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generic_launch_sets_only_the_parameters_given():
    """Empty arguments stay unset (the team's params file decides); given ones are typed as
    -p would type them, and every argument names a node parameter."""
    launch = _generic_launch()
    assert set(launch.PARAMETER_ARGUMENTS) <= NODE_PARAMETERS
    assert launch.node_parameter_overrides({name: "" for name in launch.PARAMETER_ARGUMENTS}) == {}
    overrides = launch.node_parameter_overrides(
        {
            "image_transport": "compressed",
            "extrinsics": "[0, 0, 0, 0, 0, 0, 1]",
            "cloud_in_camera_frame": "true",
            "max_time_offset": "0.05",
            "model": "",
        }
    )
    assert overrides == {
        "image_transport": "compressed",
        "extrinsics": [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0],
        "cloud_in_camera_frame": True,
        "max_time_offset": 0.05,
    }
    from depth_completion_ros.parameters import check_parameters

    check_parameters(overrides)  # the node accepts exactly these values


def test_generic_launch_leaves_dds_alone_unless_asked(tmp_path):
    launch = _generic_launch()
    assert launch.dds_profile_file(str(tmp_path), "") is None
    assert launch.node_arguments("true") == ["--lifecycle"] and launch.node_arguments("false") == []
    for name, file in launch.DDS_PROFILES.items():
        path = launch.dds_profile_file(str(REPO), name)
        assert path == str(REPO / "config" / file) and Path(path).is_file()
    text = (REPO / "launch" / "depth_completion.launch.py").read_text()
    assert "remappings" in text and "OpaqueFunction" in text
