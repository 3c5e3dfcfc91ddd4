"""Depth-completion networks in pure PyTorch, and the registry that builds and calls them.

Use :func:`build_model` / :func:`get_model_spec` rather than importing a network module: the
registry carries what each set of weights expects (normalisation, depth unit, crop).
"""

from depth_completion_ros.networks.registry import (
    MODELS,
    InputSpec,
    ModelSpec,
    build_model,
    get_model_spec,
    list_models,
)

__all__ = ["MODELS", "InputSpec", "ModelSpec", "build_model", "get_model_spec", "list_models"]
