"""Where a pair's LiDAR -> camera transform comes from: one rule for the node, bags and training.

A fixed transform (``calibration_dir`` or ``extrinsics``) wins; else the identity when the cloud
is already in the image's frame; else a transform source (a bag's /tf_static, or TF in a node
with tf2_ros). A source answers ``lookup(target, source, stamp)`` with the 4x4 taking points from
``source`` into ``target``, None when it does not know, or a CalibrationError saying why.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from depth_completion_ros.calibration import CalibrationError, extrinsics_from_values


def transform_to_matrix(transform) -> np.ndarray:
    """geometry_msgs/Transform -> 4x4 matrix (maps points from the child into the parent frame)."""
    t, q = transform.translation, transform.rotation
    return extrinsics_from_values([t.x, t.y, t.z, q.x, q.y, q.z, q.w])


class TransformSource(Protocol):
    #: what the source is, for messages ("/tf_static", "TF (tf2_ros)", ...)
    name: str

    def lookup(self, target: str, source: str, stamp: object = None) -> np.ndarray | None:
        """4x4 from ``source`` into ``target`` at ``stamp`` (None = latest), or None."""


class NoTransforms:
    """A source that knows nothing (no /tf_static in the bag, no tf2_ros in the node)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def lookup(self, target: str, source: str, stamp: object = None) -> np.ndarray | None:
        return None


class StaticTransforms:
    """A tree of fixed transforms, child -> (parent, T_parent_child), e.g. a bag's /tf_static."""

    name = "/tf_static"

    def __init__(self) -> None:
        self.edges: dict[str, tuple[str, np.ndarray]] = {}

    def add(self, parent: str, child: str, T_parent_child: np.ndarray) -> None:
        self.edges[child] = (parent, np.asarray(T_parent_child, np.float64))

    def __len__(self) -> int:
        return len(self.edges)

    def _to_root(self, frame: str) -> dict[str, np.ndarray]:
        """Every ancestor of ``frame`` (itself included) -> T_ancestor_frame."""
        path, T = {frame: np.eye(4)}, np.eye(4)
        while frame in self.edges and len(path) < 64:  # 64: a cycle cannot loop for ever
            frame, T_parent_child = self.edges[frame]
            T = T_parent_child @ T
            path[frame] = T
        return path

    def lookup(self, target: str, source: str, stamp: object = None) -> np.ndarray | None:
        source_path, target_path = self._to_root(source), self._to_root(target)
        common = next((f for f in source_path if f in target_path), None)
        if common is None:
            return None
        return np.linalg.inv(target_path[common]) @ source_path[common]


def pair_extrinsics(
    fixed: np.ndarray | None,
    transforms: TransformSource,
    source: str,
    target: str,
    fix: str,
    stamp: object = None,
) -> np.ndarray:
    """LiDAR -> camera transform of one pair: ``fixed`` when set, else the identity when the
    cloud is in the image's frame, else ``transforms``'; a CalibrationError ending in ``fix``
    when none connects them."""
    if fixed is not None:
        return fixed
    if source == target or not source:
        return np.eye(4)
    T = transforms.lookup(target, source, stamp)
    if T is None:
        raise CalibrationError(
            f"the cloud is in frame '{source}', the image in '{target}', and {transforms.name} "
            f"does not connect them: {fix}"
        )
    return T
