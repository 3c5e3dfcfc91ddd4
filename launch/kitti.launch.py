"""Start depth_completion_node with config/kitti.yaml (and RViz on request).

    ros2 launch depth_completion_ros kitti.launch.py calibration_dir:=/data/kitti/2011_09_26
    ros2 launch depth_completion_ros kitti.launch.py model:=bpnet \
        checkpoint:=/models/dmd3c_distillation_depth_anything_v2.pth device:=cuda rviz:=true

Topics are remapped to the names of the bags written by ``kitti_to_bag``; change them with the
image/camera_info/points arguments for other drivers.

DDS: by default the process keeps the DDS configuration it was started with (the team's own
FASTDDS_DEFAULT_PROFILES_FILE, or Fast DDS's defaults). ``dds_profile:=localhost`` keeps all
traffic on this machine (shared memory and loopback UDP); ``dds_profile:=robot`` lets other
machines read the topics (RViz on a laptop). Every other process of the graph needs the same
profile in FASTDDS_DEFAULT_PROFILES_FILE.
``rviz:=true`` needs rviz2 installed (it is not a dependency: headless robots do not get Qt).
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, SetEnvironmentVariable
from launch.conditions import IfCondition, LaunchConfigurationNotEquals
from launch.substitutions import LaunchConfiguration, PythonExpression
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue


def generate_launch_description() -> LaunchDescription:
    share = get_package_share_directory("depth_completion_ros")
    config = os.path.join(share, "config", "kitti.yaml")
    profiles = dict(  # noqa: C408 - the parameter dict below is the only dict literal
        localhost=os.path.join(share, "config", "fastdds_large_data.xml"),
        robot=os.path.join(share, "config", "fastdds_robot.xml"),
    )
    rviz_config = os.path.join(share, "config", "depth_completion.rviz")

    arguments = [
        DeclareLaunchArgument(
            "calibration_dir",
            default_value="",
            description="KITTI date folder with calib_*.txt ('' = use TF-free "
            "'extrinsics' from the params file)",
        ),
        DeclareLaunchArgument(
            "model",
            default_value="classical",
            description="classical | bpnet | selfdc | selfdc_r18",
        ),
        DeclareLaunchArgument(
            "checkpoint", default_value="", description="weights file for a network model"
        ),
        DeclareLaunchArgument("device", default_value="auto", description="auto | cpu | cuda"),
        DeclareLaunchArgument("precision", default_value="fp32", description="fp32 | fp16 | bf16"),
        DeclareLaunchArgument(
            "image",
            default_value="/kitti/camera_color_left/image_raw",
            description="camera image topic",
        ),
        DeclareLaunchArgument(
            "camera_info",
            default_value="/kitti/camera_color_left/camera_info",
            description="camera info topic",
        ),
        DeclareLaunchArgument(
            "points", default_value="/kitti/velo/pointcloud", description="LiDAR PointCloud2 topic"
        ),
        DeclareLaunchArgument(
            "use_sim_time",
            default_value="false",
            description="true when replaying a bag with --clock",
        ),
        DeclareLaunchArgument(
            "rviz",
            default_value="false",
            description="start RViz (needs rviz2 installed: apt install ros-$ROS_DISTRO-rviz2)",
        ),
        DeclareLaunchArgument(
            "dds_profile",
            default_value="",
            choices=["", *profiles],
            description="'' = keep this process's DDS configuration; localhost: DDS traffic "
            "stays on this machine; robot: other machines reach the topics (UDP and multicast "
            "discovery on every interface)",
        ),
    ]
    node = Node(
        package="depth_completion_ros",
        executable="depth_completion_node",
        name="depth_completion",
        output="screen",
        parameters=[
            config,
            {
                "calibration_dir": LaunchConfiguration("calibration_dir"),
                "model": LaunchConfiguration("model"),
                "checkpoint": LaunchConfiguration("checkpoint"),
                "device": LaunchConfiguration("device"),
                "precision": LaunchConfiguration("precision"),
                "use_sim_time": ParameterValue(
                    LaunchConfiguration("use_sim_time"), value_type=bool
                ),
            },
        ],
        remappings=[
            ("image", LaunchConfiguration("image")),
            ("camera_info", LaunchConfiguration("camera_info")),
            ("points", LaunchConfiguration("points")),
        ],
    )
    rviz = Node(
        package="rviz2",
        executable="rviz2",
        arguments=["-d", rviz_config],
        condition=IfCondition(LaunchConfiguration("rviz")),
        output="screen",
    )
    return LaunchDescription(
        [
            *arguments,
            # only when asked: the team's own DDS configuration is not overridden
            SetEnvironmentVariable(
                "FASTDDS_DEFAULT_PROFILES_FILE",
                PythonExpression([repr(profiles), "['", LaunchConfiguration("dds_profile"), "']"]),
                condition=LaunchConfigurationNotEquals("dds_profile", ""),
            ),
            node,
            rviz,
        ]
    )
