"""Teacher models through ``transformers``, loaded from a hub name or a local folder: Depth
Anything V2 (monocular depth, DMD3C) here; the segmentation teachers (SelfDC's pseudo-labels) are
in ``training.segmenters`` and share the loading helpers.

Every teacher takes H x W x 3 uint8 RGB images and returns one H x W map per image at the image's
own size; the cache jobs (``training.cache_teacher``, ``training.pseudo_labels``) and the stage-1
generator call these same functions, so a cached map is what a direct call gives.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from depth_completion_ros.networks.registry import IMAGENET_MEAN_01, IMAGENET_STD_01

log = logging.getLogger(__name__)

#: Depth Anything V2's ViT patch size: network input sides are multiples of it
DEPTH_MULTIPLE = 14
DEPTH_INPUT_SIZE = 518
SMALL_LICENCE = "Apache-2.0 (Depth-Anything-V2-Small)"
NC_LICENCE = "CC-BY-NC-4.0 (Depth-Anything-V2-Base/Large/Giant: non-commercial use only)"
UNKNOWN_LICENCE = "unknown: check the licence of these weights before using the maps"


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` -> CUDA if available else CPU; a CUDA request without CUDA fails clearly."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device '{device}' asked for, but torch sees no CUDA device; use cpu")
    return dev


def load_config(model: str | Path, model_type: str, example: str) -> Any:
    """The ``transformers`` config of ``model`` (hub name or folder), checked to be ``model_type``
    so a wrong folder fails here with a message instead of deep inside the model."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(str(model))
    except (OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(
            f"cannot load a model config from '{model}' ({first}); give a folder written by "
            f"save_pretrained (config.json + weights) or a hub name such as {example}"
        ) from None
    if config.model_type != model_type:
        raise ValueError(
            f"'{model}' holds a '{config.model_type}' model, not '{model_type}'; give a "
            f"{model_type} model such as {example}"
        )
    return config


def depth_licence(model: str | Path) -> str:
    """The licence of Depth Anything V2 weights, from their name (Small is Apache-2.0,
    Base/Large/Giant are CC-BY-NC-4.0); unknown for other names."""
    name = str(model).lower()
    if re.search(r"(^|[^a-z])(small|vits)([^a-z]|$)", name):
        return SMALL_LICENCE
    if re.search(r"(^|[^a-z])(base|large|giant|vitb|vitl|vitg)([^a-z]|$)", name):
        return NC_LICENCE
    return UNKNOWN_LICENCE


def depth_input_size(
    height: int, width: int, input_size: int = DEPTH_INPUT_SIZE, multiple: int = DEPTH_MULTIPLE
) -> tuple[int, int]:
    """Network input size for an image, Depth Anything V2's own rule: scale so the shorter side
    is ``input_size`` (aspect ratio kept), round each side to the nearest multiple of 14, never
    below ``input_size``. KITTI 375 x 1242 -> 518 x 1722, NYU 480 x 640 -> 518 x 686."""
    if height < 1 or width < 1:
        raise ValueError(f"empty image ({height} x {width})")
    scale = max(input_size / height, input_size / width)

    def side(value: float) -> int:
        rounded = round(value / multiple) * multiple
        return rounded if rounded >= input_size else int(np.ceil(value / multiple)) * multiple

    return side(scale * height), side(scale * width)


def preprocess_depth(
    images: Sequence[np.ndarray],
    size: tuple[int, int],
    mean: Sequence[float] = IMAGENET_MEAN_01,
    std: Sequence[float] = IMAGENET_STD_01,
) -> torch.Tensor:
    """RGB uint8 images -> B x 3 x h x w float32 network input: [0, 1], bicubic resize to ``size``
    (as Depth Anything V2 does), then mean/std normalisation."""
    height, width = size
    mean_arr = np.asarray(mean, np.float32)
    std_arr = np.asarray(std, np.float32)
    batch = []
    for image in images:
        x = image.astype(np.float32) / 255.0
        x = cv2.resize(x, (width, height), interpolation=cv2.INTER_CUBIC)
        batch.append(((x - mean_arr) / std_arr).transpose(2, 0, 1))
    return torch.from_numpy(np.ascontiguousarray(np.stack(batch)))


def preprocessor_config(model: str | Path) -> dict[str, Any]:
    """The model's ``preprocessor_config.json`` (local folder or hub cache) as a dict, empty if
    it has none. Read as data so that no image-processor class (some need torchvision) is
    built: the teachers do their own, documented preprocessing."""
    import json

    from transformers.utils import cached_file

    try:
        path = cached_file(
            str(model), "preprocessor_config.json", _raise_exceptions_for_missing_entries=False
        )
    except (OSError, ValueError):
        return {}
    return json.loads(Path(path).read_text()) if path else {}


def image_stats(model: str | Path) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean/std (of [0, 1] pixels) from the model's preprocessor config, else ImageNet's (what
    Depth Anything V2, SAM and OneFormer were trained with)."""
    config = preprocessor_config(model)
    mean = tuple(config.get("image_mean") or IMAGENET_MEAN_01)
    std = tuple(config.get("image_std") or IMAGENET_STD_01)
    return mean, std


class DepthTeacher:
    """Depth Anything V2 (``AutoModelForDepthEstimation``) as a function of RGB images.

    ``kind`` is ``disparity`` for the relative models (their output is relative inverse depth)
    and ``depth`` for the metric ones (metres); maps come back at each image's own size.
    """

    def __init__(
        self,
        model: str | Path,
        device: str | torch.device = "auto",
        input_size: int = DEPTH_INPUT_SIZE,
        batch_size: int = 4,
    ) -> None:
        from transformers import AutoModelForDepthEstimation

        if input_size < DEPTH_MULTIPLE or input_size % DEPTH_MULTIPLE:
            raise ValueError(f"input size must be a multiple of {DEPTH_MULTIPLE}, got {input_size}")
        config = load_config(model, "depth_anything", "depth-anything/Depth-Anything-V2-Small-hf")
        self.name = str(model)
        self.device = resolve_device(device)
        self.input_size = input_size
        self.batch_size = max(1, batch_size)
        self.kind = "disparity" if config.depth_estimation_type == "relative" else "depth"
        self.licence = depth_licence(model)
        self.mean, self.std = image_stats(model)
        self.model = AutoModelForDepthEstimation.from_pretrained(str(model), config=config)
        self.model.eval().to(self.device)

    def meta(self) -> dict[str, Any]:
        """What a cache of this teacher's maps records in its meta.json."""
        return {
            "kind": self.kind,
            "model": self.name,
            "source": "depth_anything_v2",
            "input_size": self.input_size,
            "resize": f"shorter side to input_size, sides rounded to multiples of {DEPTH_MULTIPLE}"
            ", bicubic; output bilinear (align_corners) back to the image size",
            "mean": list(self.mean),
            "std": list(self.std),
            "dtype": "float16",
            "licence": self.licence,
        }

    @torch.inference_mode()
    def predict(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """One H x W float32 map (``kind``) per H x W x 3 uint8 RGB image. Images whose network
        input sizes agree run together, ``batch_size`` at a time."""
        out: list[np.ndarray | None] = [None] * len(images)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, image in enumerate(images):
            if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
                raise ValueError(f"image {i}: expected H x W x 3 uint8 RGB, got {image.shape}")
            size = depth_input_size(*image.shape[:2], self.input_size)
            groups.setdefault(size, []).append(i)
        for size, indices in groups.items():
            for start in range(0, len(indices), self.batch_size):
                chunk = indices[start : start + self.batch_size]
                x = preprocess_depth([images[i] for i in chunk], size, self.mean, self.std)
                pred = self.model(pixel_values=x.to(self.device)).predicted_depth
                for i, values in zip(chunk, pred, strict=True):
                    full = torch.nn.functional.interpolate(
                        values[None, None].float(),
                        images[i].shape[:2],
                        mode="bilinear",
                        align_corners=True,
                    )
                    out[i] = full[0, 0].cpu().numpy().astype(np.float32)
        return [values for values in out if values is not None]

    def predict_disparity(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Relative inverse depth per image; refuses a metric model (its output is depth)."""
        if self.kind != "disparity":
            raise ValueError(
                f"'{self.name}' is a metric Depth Anything model (outputs depth in metres, not "
                "disparity); use predict() and treat the maps as depth"
            )
        return self.predict(images)
