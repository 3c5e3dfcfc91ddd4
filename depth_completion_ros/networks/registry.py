"""The one place that knows each network: how to build it, what its weights expect, how to call it.

What a set of weights expects (normalisation, input range, depth unit, crop and size rule)
travels with the model name as a small config, like timm's ``pretrained_cfg``, so no caller
guesses. Networks are imported lazily: asking for 'selfdc' never imports BP-Net.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported on use: the parameter table reads this module without it
    import torch
    import torch.nn as nn

#: ImageNet RGB statistics on 0-1 values (input_range 1.0)
IMAGENET_MEAN_01 = (0.485, 0.456, 0.406)
IMAGENET_STD_01 = (0.229, 0.224, 0.225)
#: BP-Net's KITTI RGB statistics on 0-255 values (input_range 255.0; its release's data config)
BPNET_KITTI_MEAN_255 = (90.9950, 96.2278, 94.3213)
BPNET_KITTI_STD_255 = (79.2382, 80.5267, 82.1483)

#: input conventions the weights may expect (the node's ``dataset`` parameter)
DATASETS = ("kitti", "nyu")


@dataclass(frozen=True)
class InputSpec:
    """What one set of weights expects from its input (one per model and dataset).

    ``input_range`` is the range the mean/std are expressed in: 255.0 for 0-255 values, 1.0
    for 0-1 values (uint8 RGB is scaled by input_range / 255 before normalising).
    ``depth_scale`` is network units per metre (sparse input is multiplied, output divided).
    Geometry (the backend's rule, ``backends/network.py``): ``focal`` is the focal length in
    pixels of the images the weights were trained on (the target of ``network_input: resize``),
    ``default_input`` the rule the releases ran with ('native': the camera's own pixels;
    'resize': scaled to ``focal``); the network sees the LiDAR-supported rows, padded to
    multiples of ``size_multiple``. ``crop`` (h, w) is the window the released weights were
    evaluated at (KITTI: the bottom 352 rows, centred 1216 columns): on frames of that size
    class (height >= h, width rounded down to the multiple == w, support within its rows) the
    window is exactly that crop and the columns it leaves out are completed by edge tiles, so
    results on KITTI's own frames are those of the release protocol.
    """

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    input_range: float
    depth_scale: float
    crop: tuple[int, int] | None
    focal: float
    default_input: str
    size_multiple: int
    max_depth: float
    #: constructor settings these weights were trained with
    model_kwargs: dict[str, Any] = field(default_factory=dict)

    def normalize(self, rgb: torch.Tensor) -> torch.Tensor:
        """B x 3 x H x W RGB with 0-255 values (uint8 or float) -> the network's image input.

        For training and evaluation code; the backend folds the same arithmetic into one pass.
        """
        import torch

        x = rgb.float() * (self.input_range / 255.0)
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std


@dataclass(frozen=True)
class ModelSpec:
    """One network: constructor (``module:function``, imported on use), inputs, call."""

    name: str
    constructor: str
    inputs: dict[str, InputSpec]
    needs_intrinsics: bool
    description: str
    #: released weight files known to fit, for messages
    released: tuple[str, ...] = ()

    def factory(self) -> Callable[..., nn.Module]:
        module, _, attr = self.constructor.partition(":")
        return getattr(importlib.import_module(module), attr)

    def input_spec(self, dataset: str) -> InputSpec:
        if dataset not in self.inputs:
            raise KeyError(
                f"model '{self.name}' has no settings for dataset '{dataset}'; "
                f"use one of {sorted(self.inputs)}"
            )
        return self.inputs[dataset]

    def build(self, dataset: str | None = "kitti", **overrides: Any) -> nn.Module:
        """A fresh model with the constructor settings the dataset's weights need."""
        kwargs = dict(self.input_spec(dataset).model_kwargs) if dataset else {}
        kwargs.update(overrides)
        return self.factory()(**kwargs)

    def predict(
        self, net: nn.Module, image: torch.Tensor, sparse: torch.Tensor, K: torch.Tensor
    ) -> torch.Tensor:
        """Final depth, B x 1 x H x W in network units, from prepared inputs (a network that
        returns several maps, coarse to fine, answers with the last)."""
        out = net(image, sparse, K) if self.needs_intrinsics else net(image, sparse)
        return out[-1] if isinstance(out, list | tuple) else out


#: values of the node's ``network_input`` parameter: 'auto' = the weights' ``default_input``
NETWORK_INPUTS = ("auto", "native", "resize")
#: KITTI's image_02 focal length (P_rect_02 of 2011_09_26; the other dates are within 2 %)
KITTI_FOCAL = 721.5377
#: NYU Depth v2's Kinect focal length at 640x480; its releases ran on 240-row (half-size) images
NYU_FOCAL = 518.857901

# KITTI weights run on the camera's own pixels (resizing a KITTI frame by the 2 % between
# recording dates would only blur it); NYU's releases were trained and run at half size.
_KITTI_CROP = dict(crop=(352, 1216), focal=KITTI_FOCAL, default_input="native", max_depth=90.0)
_NYU_CROP = dict(crop=None, focal=NYU_FOCAL * 0.5, default_input="resize", max_depth=10.0)
_NLSPN_RELEASE = dict(legacy=True, preserve_input=True)

MODELS: dict[str, ModelSpec] = {
    "bpnet": ModelSpec(
        name="bpnet",
        constructor="depth_completion_ros.networks.bpnet:BPNet",
        inputs={
            "kitti": InputSpec(
                BPNET_KITTI_MEAN_255,
                BPNET_KITTI_STD_255,
                255.0,
                1.0,
                size_multiple=32,
                **_KITTI_CROP,
            ),
            # NYU: ImageNet statistics on 0-1 values; sparse depth in metres x 10.
            "nyu": InputSpec(
                IMAGENET_MEAN_01, IMAGENET_STD_01, 1.0, 10.0, size_multiple=32, **_NYU_CROP
            ),
        },
        needs_intrinsics=True,
        description="BP-Net (DMD3C): bilateral propagation, 89.9 M parameters",
        released=("dmd3c_distillation_depth_anything_v2.pth", "BP_KITTI"),
    ),
    "selfdc": ModelSpec(
        name="selfdc",
        constructor="depth_completion_ros.networks.nlspn:selfdc",
        inputs={
            "kitti": InputSpec(
                IMAGENET_MEAN_01,
                IMAGENET_STD_01,
                1.0,
                1.0,
                size_multiple=32,
                model_kwargs=_NLSPN_RELEASE,
                **_KITTI_CROP,
            ),
            # The NYU release ran at 228 x 304 unpadded; the network accepts any size.
            "nyu": InputSpec(
                IMAGENET_MEAN_01,
                IMAGENET_STD_01,
                1.0,
                1.0,
                size_multiple=1,
                model_kwargs=_NLSPN_RELEASE,
                **_NYU_CROP,
            ),
        },
        needs_intrinsics=False,
        description="SelfDC / NLSPN, ResNet-34, 26.2 M parameters",
        released=("NLSPN_KITTI_DC.pt", "NLSPN_NYU.pt"),
    ),
    "selfdc_r18": ModelSpec(
        name="selfdc_r18",
        constructor="depth_completion_ros.networks.nlspn:selfdc_r18",
        inputs={
            "kitti": InputSpec(
                IMAGENET_MEAN_01, IMAGENET_STD_01, 1.0, 1.0, size_multiple=32, **_KITTI_CROP
            ),
            "nyu": InputSpec(
                IMAGENET_MEAN_01, IMAGENET_STD_01, 1.0, 1.0, size_multiple=32, **_NYU_CROP
            ),
        },
        needs_intrinsics=False,
        description="SelfDC light: ResNet-18 encoder from 1/4 resolution, full-size NLSPN",
    ),
}


def get_model_spec(name: str) -> ModelSpec:
    """The spec for ``name``, or a KeyError that lists the known names."""
    try:
        return MODELS[name]
    except KeyError:
        raise KeyError(f"unknown model '{name}'; known models: {', '.join(MODELS)}") from None


def list_models() -> list[str]:
    return list(MODELS)


def build_model(name: str, dataset: str | None = "kitti", **overrides: Any) -> nn.Module:
    """Shortcut for ``get_model_spec(name).build(dataset, **overrides)``."""
    return get_model_spec(name).build(dataset, **overrides)
