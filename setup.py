"""ament_python package: installs the runtime package, console scripts, launch/config/models files.

Works both with colcon on a ROS 2 distro and with pip in a venv holding the PyPI ROS 2 wheels.
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
    install_requires=["setuptools", "numpy", "opencv-python-headless", "pyyaml"],
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
        ],
    },
)
