"""Start depth_completion_node for any camera + LiDAR rig (see README, "Your own robot").

    ros2 launch depth_completion_ros depth_completion.launch.py \
        params_file:=/robot/config/depth_completion.yaml \
        image:=/camera/image_raw camera_info:=/camera/camera_info points:=/ouster/points \
        image_transport:=compressed camera_model:=raw odometry_topic:=/odom

Topics are remapped (image, camera_info, points); everything else is a node parameter. A
parameter argument left empty ('') is not set here, so the params file (or the node's default)
decides it: the launch file never overrides a value the team keeps in its own YAML.
``lifecycle:=true`` starts the managed (lifecycle) node for a system manager to configure and
activate (nav2's lifecycle_manager, or ``ros2 lifecycle set /depth_completion configure``).

DDS: by default the process keeps the DDS configuration it was started with (the team's own
FASTDDS_DEFAULT_PROFILES_FILE, or Fast DDS's defaults). ``dds_profile:=localhost`` keeps all
traffic on this machine (shared memory and loopback); ``dds_profile:=robot`` lets other machines
read the topics with large messages (every process of the graph needs the same profile).
"""

from __future__ import annotations

import os

#: launch argument -> node parameter, set only when the argument is not empty
PARAMETER_ARGUMENTS = {
    "image_transport": "raw | compressed (subscribes to '<image>/compressed')",
    "camera_model": "rectified | raw (raw: project with K and the distortion D)",
    "odometry_topic": "nav_msgs/Odometry for deskewing ('' = off)",
    "points_time_field": "per-point time field: auto | none | a field name",
    "points_time_unit": "auto | s | ms | us | ns (a named field needs it)",
    "points_time_reference": "auto | relative | absolute (a named field needs it)",
    "calibration_dir": "KITTI date folder with calib_*.txt",
    "extrinsics": "LiDAR->camera optical: [16 | 12 | 7 values]; unset: TF",
    "cloud_in_camera_frame": "true: a cloud with an empty frame_id is in the camera frame",
    "model": "classical | bpnet | selfdc | selfdc_r18",
    "checkpoint": "weights file (.pth/.safetensors; .onnx with runtime:=onnxruntime)",
    "runtime": "torch | onnxruntime",
    "device": "auto | cpu | cuda",
    "precision": "fp32 | fp16 | bf16",
    "dataset": "kitti | nyu: the input conventions of the weights",
    "network_input": "how the network sees other cameras (see the README)",
    "max_time_offset": "s; largest image-scan stamp difference of a pair",
    "input_reliability": "best_effort | reliable",
}
#: the DDS profiles the package ships, by name ('' = leave the process's configuration alone)
DDS_PROFILES = {
    "localhost": "fastdds_large_data.xml",
    "robot": "fastdds_robot.xml",
}


def node_parameter_overrides(values: dict[str, str]) -> dict[str, object]:
    """The launch arguments that were given (not empty), as node parameters with YAML types
    ("true" -> True, "[1, 2]" -> a list, "0.05" -> a float), as ``-p`` would read them."""
    import yaml

    out: dict[str, object] = {}
    for name in PARAMETER_ARGUMENTS:
        text = values.get(name, "")
        if text != "":
            value = yaml.safe_load(text)
            out[name] = [float(v) for v in value] if name == "extrinsics" else value
    return out


def node_arguments(lifecycle: str) -> list[str]:
    """The node's own command-line arguments (before --ros-args) for the ``lifecycle`` argument."""
    return ["--lifecycle"] if lifecycle.strip().lower() in ("true", "1", "yes") else []


def dds_profile_file(share: str, name: str) -> str | None:
    """The profile file to export for ``dds_profile`` (None: leave the environment alone)."""
    if not name:
        return None
    if name not in DDS_PROFILES:
        raise ValueError(f"dds_profile {name!r}: use '', {', '.join(DDS_PROFILES)}")
    return os.path.join(share, "config", DDS_PROFILES[name])


def generate_launch_description():
    from ament_index_python.packages import get_package_share_directory
    from launch import LaunchDescription
    from launch.actions import DeclareLaunchArgument, OpaqueFunction, SetEnvironmentVariable
    from launch.conditions import IfCondition
    from launch.substitutions import LaunchConfiguration
    from launch_ros.actions import Node

    share = get_package_share_directory("depth_completion_ros")
    arguments = [
        DeclareLaunchArgument(
            "params_file",
            default_value="",
            description="the node's parameter YAML (a 'depth_completion: ros__parameters:' "
            "section); '' = the node's defaults",
        ),
        DeclareLaunchArgument("image", default_value="image", description="camera image topic"),
        DeclareLaunchArgument(
            "camera_info", default_value="camera_info", description="CameraInfo topic"
        ),
        DeclareLaunchArgument("points", default_value="points", description="PointCloud2 topic"),
        DeclareLaunchArgument(
            "use_sim_time", default_value="false", description="true when replaying with --clock"
        ),
        DeclareLaunchArgument(
            "dds_profile",
            default_value="",
            choices=["", *DDS_PROFILES],
            description="'' = keep this process's DDS configuration; localhost = traffic stays "
            "on this machine; robot = other machines reach the topics",
        ),
        DeclareLaunchArgument(
            "rviz", default_value="false", description="start RViz (needs rviz2 installed)"
        ),
        DeclareLaunchArgument(
            "lifecycle",
            default_value="false",
            description="true: a managed node (unconfigured until a lifecycle manager "
            "configures and activates it); false: the plain node, active at once",
        ),
        *(
            DeclareLaunchArgument(name, default_value="", description=f"{text} ('' = not set)")
            for name, text in PARAMETER_ARGUMENTS.items()
        ),
    ]

    def actions(context):
        values = {name: LaunchConfiguration(name).perform(context) for name in PARAMETER_ARGUMENTS}
        parameters: list = []
        params_file = LaunchConfiguration("params_file").perform(context)
        if params_file:
            parameters.append(params_file)
        overrides = node_parameter_overrides(values)
        overrides["use_sim_time"] = LaunchConfiguration("use_sim_time").perform(context) == "true"
        parameters.append(overrides)
        out = []
        profile = dds_profile_file(share, LaunchConfiguration("dds_profile").perform(context))
        if profile is not None:
            out.append(SetEnvironmentVariable("FASTDDS_DEFAULT_PROFILES_FILE", profile))
        out.append(
            Node(
                package="depth_completion_ros",
                executable="depth_completion_node",
                name="depth_completion",
                output="screen",
                arguments=node_arguments(LaunchConfiguration("lifecycle").perform(context)),
                parameters=parameters,
                remappings=[
                    ("image", LaunchConfiguration("image")),
                    ("camera_info", LaunchConfiguration("camera_info")),
                    ("points", LaunchConfiguration("points")),
                ],
            )
        )
        return out

    rviz = Node(
        package="rviz2",
        executable="rviz2",
        arguments=["-d", os.path.join(share, "config", "depth_completion.rviz")],
        condition=IfCondition(LaunchConfiguration("rviz")),
        output="screen",
    )
    return LaunchDescription([*arguments, OpaqueFunction(function=actions), rviz])
