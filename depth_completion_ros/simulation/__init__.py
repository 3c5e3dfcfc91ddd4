"""Synthetic sensor data: a LiDAR ray-casting simulator and a procedural street scene.

Why: the demo runs on a fresh machine with no data, and DMD3C stage 1 needs simulated LiDAR scans
of meshes reconstructed from monocular depth. Both use the same ``lidar.cast``.
"""

from depth_completion_ros.simulation.lidar import (
    LidarModel,
    LidarScan,
    cast,
    lidar_pose_in_optical_frame,
    make_raycasting_scene,
    range_image,
    ray_directions,
)

__all__ = [
    "LidarModel",
    "LidarScan",
    "cast",
    "lidar_pose_in_optical_frame",
    "make_raycasting_scene",
    "range_image",
    "ray_directions",
]
