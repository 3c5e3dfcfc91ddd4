"""ament_python package: installs the runtime package, console scripts, launch/config/models files.

Works both with colcon on a ROS 2 distro and with pip in a venv holding the PyPI ROS 2 wheels.

Requirements: ``install_requires`` holds every plain-PyPI library the runtime and its tools import.
Three groups are extras because a machine often has its own build that pip must not replace:
  ros      the ROS 2 Kilted wheels from PyPI (rclpy, messages), for a venv without a ROS distro;
           on a distro (colcon, rosdep: package.xml) rclpy comes from the distro
  torch    the network models (bpnet, selfdc); a Jetson or CUDA machine keeps its own torch
  open3d   the demo's synthetic street and fuse_rgbd (open3d-cpu; CUDA machines may have open3d)
    pip install ".[ros,torch,open3d]"      # a venv on a laptop or CI machine: everything
    pip install ".[ros,open3d]"            # a robot whose own torch stays
colcon never installs Python requirements; console scripts do not check them at run time.
"""

from glob import glob

from setuptools import find_packages, setup

PACKAGE = "depth_completion_ros"

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(include=[PACKAGE, f"{PACKAGE}.*"]),
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.py")),
        (
            f"share/{PACKAGE}/config",
            glob("config/*.yaml") + glob("config/*.xml") + glob("config/*.rviz"),
        ),
        (f"share/{PACKAGE}/models", glob("models/*.md") + glob("models/*.yaml")),
    ],
    install_requires=[
        "numpy>=1.24",
        "opencv-python-headless>=4.8",
        "pyyaml>=6.0",
        "scipy>=1.10",
        "tqdm>=4.60",
        "rosbags>=0.10",
        "safetensors>=0.4",
    ],
    extras_require={
        "ros": [
            "ros-kilted-rclpy[fastrtps]",
            "ros-kilted-sensor-msgs",
            "ros-kilted-std-msgs",
            "ros-kilted-geometry-msgs",
            "ros-kilted-nav-msgs",
            "ros-kilted-rosgraph-msgs",
        ],
        "torch": ["torch>=2.5"],
        "open3d": ["open3d-cpu>=0.18"],
        # export_model and runtime:=onnxruntime (onnxruntime-gpu instead for CUDA/TensorRT)
        "onnx": ["onnx>=1.17", "onnxruntime>=1.20", "onnxscript>=0.5"],
        "test": ["pytest>=8", "pytest-timeout>=2"],
    },
    zip_safe=True,
    maintainer="depth_completion_ros developers",
    maintainer_email="depth-completion-ros@users.noreply.github.com",
    description="Dense metric depth from a camera and a LiDAR: ROS 2 node, tools, training.",
    license="Apache-2.0",
    python_requires=">=3.10",
    entry_points={
        "console_scripts": [
            f"depth_completion_node = {PACKAGE}.node:main",
            f"depth_completion_demo = {PACKAGE}.tools.demo:main",
            f"kitti_to_bag = {PACKAGE}.tools.kitti_to_bag:main",
            f"play_bag = {PACKAGE}.tools.play_bag:main",
            f"process_bag = {PACKAGE}.tools.process_bag:main",
            f"export_rgbd = {PACKAGE}.tools.export_rgbd:main",
            f"fuse_rgbd = {PACKAGE}.tools.fuse_rgbd:main",
            f"convert_checkpoint = {PACKAGE}.tools.convert_checkpoint:main",
            f"export_model = {PACKAGE}.tools.export_model:main",
        ],
    },
)
