"""The node's parameters for datasets that project raw scans (KITTI ``input: raw_scan``, bags):
training then sees exactly the sparse input the node computes for the same parameters (same
defaults, same ``--params-file`` YAML, the table in :mod:`depth_completion_ros.parameters`)."""

from __future__ import annotations

from depth_completion_ros.frame import pipeline_from_parameters
from depth_completion_ros.parameters import load_parameters
from depth_completion_ros.pipeline import DepthPipeline
from training.datasets.base import DatasetOptions

#: dataset options that set the node parameter of the same name when given
NODE_PARAMETER_OPTIONS = ("calibration_dir", "camera_index", "extrinsics", "max_time_offset")


def node_parameters(options: DatasetOptions) -> dict:
    """Node defaults <- ``node_params`` YAML <- the dataset options named like node parameters.

    The completion model is always the classical one here: only the projection is used, and
    building a network backend would load weights for nothing.
    """
    overrides: dict[str, object] = {"model": "classical", "checkpoint": ""}
    for name in NODE_PARAMETER_OPTIONS:
        value = getattr(options, name)
        if value is not None:
            overrides[name] = list(value) if name == "extrinsics" else value
    return load_parameters(options.node_params, overrides, "dataset options")


def node_pipeline(options: DatasetOptions) -> DepthPipeline:
    """The node's DepthPipeline for these options (its ``sparse_depth`` is the projection)."""
    return pipeline_from_parameters(node_parameters(options))
