"""nav_msgs/Odometry -> the LiDAR's motion during one sweep, for deskewing.

Shared by the node and ``process_bag``. An Odometry's twist is expressed in its child_frame_id
(REP 105: usually base_link); the LiDAR's motion is that twist rotated into the cloud's frame.
The lever arm (the LiDAR sits away from base_link, adding omega x r) is ignored: at 0.2 rad/s and
1 m it is 0.2 m/s, 2 cm over a 0.1 s sweep, against the 1.3 m a car covers at 13 m/s.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from depth_completion_ros.deskew import NoMotion
from depth_completion_ros.messages import stamp_to_seconds
from depth_completion_ros.projection import SensorMotion

#: largest |scan stamp - odometry stamp| (s) for which the odometry still describes the sweep
ODOMETRY_MAX_AGE = 0.5


def scan_motion(
    odometry,
    scan_header,
    rotation: Callable[[str, str], np.ndarray | None],
    topic: str,
    max_age: float = ODOMETRY_MAX_AGE,
) -> SensorMotion:
    """The motion of the LiDAR that took the scan with ``scan_header``, from the latest Odometry.

    ``rotation(child, lidar)`` returns the 3x3 rotation taking vectors from the odometry's child
    frame into the cloud's frame, or None when it is unknown; it is not called when the frames
    are equal. Raises :class:`NoMotion` when the odometry is missing, stale, in an unknown frame
    or not finite.
    """
    if odometry is None:
        raise NoMotion("none", f"no odometry received on {topic} yet (parameter odometry_topic)")
    offset = stamp_to_seconds(scan_header.stamp) - stamp_to_seconds(odometry.header.stamp)
    if not abs(offset) <= max_age:
        raise NoMotion(
            "stale",
            f"the latest odometry on {topic} is {offset:+.3f} s from the scan's stamp (more "
            f"than {max_age:g} s): is the odometry publishing, and are the clocks in sync?",
        )
    child, lidar = odometry.child_frame_id, scan_header.frame_id
    R = np.eye(3) if not child or not lidar or child == lidar else rotation(child, lidar)
    if R is None:
        raise NoMotion(
            "frame",
            f"the odometry on {topic} is in frame '{child}', the cloud in '{lidar}', and no "
            f"transform between them is known: publish it on /tf_static or /tf (the node "
            "reads both) or publish the odometry with child_frame_id the cloud's frame",
        )
    twist = odometry.twist.twist
    linear = np.array([twist.linear.x, twist.linear.y, twist.linear.z], np.float64)
    angular = np.array([twist.angular.x, twist.angular.y, twist.angular.z], np.float64)
    if not (np.isfinite(linear).all() and np.isfinite(angular).all()):
        raise NoMotion("nan", f"the odometry on {topic} has a non-finite twist")
    velocity = R @ linear
    return SensorMotion(
        velocity=tuple(float(v) for v in velocity), yaw_rate=float((R @ angular)[2])
    )
