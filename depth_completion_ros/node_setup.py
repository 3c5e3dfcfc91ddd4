"""The node's parameters -> its pipeline, extrinsics and output messages.

Shared by the node and the offline bag tool (``process_bag``), so both compute and publish
exactly the same thing for the same parameters.
"""

from __future__ import annotations

import numpy as np

from depth_completion_ros.backends import BackendError, make_backend
from depth_completion_ros.calibration import (
    CalibrationError,
    extrinsics_from_values,
    load_kitti_calibration,
)
from depth_completion_ros.messages import (
    camera_to_camera_info,
    numpy_to_image,
    organised_xyzrgb_cloud,
)
from depth_completion_ros.pipeline import DepthPipeline, FrameResult
from depth_completion_ros.projection import ProjectionConfig
from depth_completion_ros.support import SupportConfig
from depth_completion_ros.visualization import colorize_depth


class ConfigurationError(ValueError):
    """A parameter value is unusable; the message names the parameter."""


def pipeline_from_parameters(config: dict) -> DepthPipeline:
    """The DepthPipeline for a node parameter dict."""
    support = support_from_parameters(config)
    try:
        backend = make_backend(
            model=config["model"],
            checkpoint=config["checkpoint"],
            device=config["device"],
            precision=config["precision"],
            dataset=config["dataset"],
            compile=config["compile"],
            max_depth=config["max_depth"],
        )
    except BackendError as exc:
        raise ConfigurationError(f"parameter 'model'/'checkpoint': {exc}") from exc
    return DepthPipeline(
        backend,
        ProjectionConfig(
            min_depth=max(config["min_depth"], 0.05),
            max_depth=config["max_depth"],
            occlusion_window=config["occlusion_window"],
        ),
        min_depth=config["min_depth"],
        max_depth=config["max_depth"],
        support=support,
    )


def support_from_parameters(config: dict) -> SupportConfig | None:
    """limit_to_lidar_support, support_band, support_margin -> SupportConfig (None = off)."""
    for name, low in (("support_band", 1), ("support_margin", 0)):
        value = config[name]
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigurationError(
                f"parameter '{name}' is {value!r}; it must be an integer >= {low} (pixels)"
            )
    if not isinstance(config["limit_to_lidar_support"], bool):
        raise ConfigurationError(
            f"parameter 'limit_to_lidar_support' is {config['limit_to_lidar_support']!r}; "
            "it must be true or false"
        )
    if not config["limit_to_lidar_support"]:
        return None
    return SupportConfig(band=config["support_band"], margin=config["support_margin"])


def extrinsics_from_parameters(config: dict) -> tuple[np.ndarray | None, str]:
    """LiDAR -> camera optical transform from calibration_dir or extrinsics, and its source."""
    if config["calibration_dir"]:
        try:
            calibration = load_kitti_calibration(config["calibration_dir"], config["camera_index"])
        except CalibrationError as exc:
            raise ConfigurationError(f"parameter 'calibration_dir': {exc}") from exc
        return calibration.T_cam_lidar, f"KITTI files in {config['calibration_dir']}"
    values = [float(v) for v in config["extrinsics"]]
    if values and values != [0.0]:
        try:
            return extrinsics_from_values(values), "the 'extrinsics' parameter"
        except CalibrationError as exc:
            raise ConfigurationError(f"parameter 'extrinsics': {exc}") from exc
    return None, "none (the cloud must be in the camera's frame)"


def output_messages(
    header, camera, rgb: np.ndarray, result: FrameResult, pipeline: DepthPipeline, config: dict
) -> dict[str, object]:
    """The node's outputs for one frame, keyed by their relative topic names."""
    out: dict[str, object] = {
        "depth/image": numpy_to_image(result.dense, "32FC1", header),
        "depth/camera_info": camera_to_camera_info(camera, header),
    }
    if config["publish_points"]:
        xyz = pipeline.points_xyz(result.dense, camera)
        out["depth/points"] = organised_xyzrgb_cloud(xyz, rgb, header)
    if config["publish_sparse"]:
        sparse = np.where(result.sparse > 0, result.sparse, np.nan).astype(np.float32)
        out["sparse_depth/image"] = numpy_to_image(sparse, "32FC1", header)
    if config["publish_colored"]:
        out["depth/colored"] = numpy_to_image(
            colorize_depth(result.dense, config["max_depth"]), "rgb8", header
        )
    return out
