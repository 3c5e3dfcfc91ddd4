"""Segmentation teachers for SelfDC's pseudo-labels: Segment Anything (automatic masks),
OneFormer (semantic classes) and a weights-free over-segmentation (Felzenszwalb or SLIC).

Each returns, per H x W x 3 uint8 RGB image, an H x W int64 label map in -1..num_classes-1
(-1 = ignore), so the segmentation head's cross-entropy has a fixed number of classes.

SAM's masks and over-segments carry no class: they become labels by **area rank** (the largest
segment of an image is 0, the next 1, ...; segments past rank ``num_classes`` and uncovered pixels
are -1). Why: (1) the cross-entropy needs a fixed K; area rank is deterministic and gives ids a
loose meaning shared across images (low ids = large regions: road, sky, walls, floor), so the
head can learn them, whereas arbitrary instance ids would be noise; (2) SelfDC's mask-aware
losses only ask "same segment or not", which area rank keeps exactly for every labelled segment;
(3) folding the surplus small segments into -1 instead of ``id % K`` never merges two unrelated
segments into one label (which would erase a boundary the losses rely on), it only drops them from
the losses. Where SAM's masks overlap, the smallest wins (painted last), so an object keeps its own
label on top of the background mask it also falls in.

SAM runs through ``transformers.SamModel`` with this module's own automatic mask generation (a
point grid, IoU-score and stability filters, box NMS, as in SAM's reference generator without
crop layers), since the ``mask-generation`` pipeline needs torchvision.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from training.teachers import image_stats, load_config, preprocessor_config, resolve_device

SEGMENT_METHODS = ("sam", "oneformer", "felzenszwalb", "slic")


def area_rank_labels(areas: Sequence[int], num_classes: int) -> np.ndarray:
    """Label of each segment by area rank: the largest is 0, ..., the ``num_classes``-th largest
    is ``num_classes - 1``, smaller ones -1 (ignore). Ties keep input order (deterministic)."""
    order = np.argsort(-np.asarray(areas, np.int64), kind="stable")
    labels = np.full(len(order), -1, np.int64)
    keep = order[:num_classes]
    labels[keep] = np.arange(len(keep))
    return labels


def masks_to_labels(
    masks: Sequence[np.ndarray], num_classes: int, shape: tuple[int, int]
) -> np.ndarray:
    """Class-less, possibly overlapping masks -> H x W int64 labels in -1..num_classes-1 by area
    rank, painted largest first so the smallest mask wins an overlap; masks past rank
    ``num_classes`` paint -1, pixels no mask covers stay -1."""
    labels = np.full(shape, -1, np.int64)
    if not len(masks):
        return labels
    areas = [int(np.count_nonzero(m)) for m in masks]
    ranks = area_rank_labels(areas, num_classes)
    for index in np.argsort(-np.asarray(areas), kind="stable"):
        mask = np.asarray(masks[index], bool)
        if mask.shape != tuple(shape):
            raise ValueError(f"mask {index} is {mask.shape}, the image {tuple(shape)}")
        labels[mask] = ranks[index]
    return labels


def segments_to_labels(segments: np.ndarray, num_classes: int) -> np.ndarray:
    """A partition (one segment id per pixel) -> labels by area rank, the rule of
    :func:`masks_to_labels` for segments that do not overlap."""
    _, inverse, counts = np.unique(segments, return_inverse=True, return_counts=True)
    return area_rank_labels(counts, num_classes)[inverse].reshape(segments.shape)


def _check_classes(num_classes: int) -> None:
    if not 1 <= num_classes <= 65535:
        raise ValueError(f"num_classes must be in 1..65535, got {num_classes}")


class OverSegmenter:
    """Weights-free segments from scikit-image, labelled by area rank. Felzenszwalb's graph
    segmentation follows image edges (sizes vary; ``scale`` and ``min_size`` control them); SLIC
    makes compact superpixels (``n_segments`` of them, default ``num_classes``)."""

    METHODS = ("felzenszwalb", "slic")

    def __init__(
        self,
        method: str,
        num_classes: int = 64,
        scale: float = 200.0,
        sigma: float = 0.8,
        min_size: int = 200,
        n_segments: int | None = None,
        compactness: float = 10.0,
    ) -> None:
        if method not in self.METHODS:
            raise ValueError(f"over-segmentation method '{method}' is not one of {self.METHODS}")
        _check_classes(num_classes)
        self.method = method
        self.num_classes = num_classes
        if method == "felzenszwalb":
            self.params: dict[str, Any] = {"scale": scale, "sigma": sigma, "min_size": min_size}
        else:
            self.params = {
                "n_segments": n_segments or num_classes,
                "compactness": compactness,
                "sigma": sigma,
            }

    def meta(self) -> dict[str, Any]:
        return {
            "source": self.method,
            "weights_free": True,
            "model": None,
            "labels": "area_rank",
            "num_classes": self.num_classes,
            "params": self.params,
        }

    def segments(self, image: np.ndarray) -> np.ndarray:
        """The raw over-segmentation (ids 0..n-1, before area ranking)."""
        from skimage.segmentation import felzenszwalb, slic

        if self.method == "felzenszwalb":
            return felzenszwalb(image, **self.params)
        return slic(image, start_label=0, **self.params)

    def segment(self, image: np.ndarray) -> np.ndarray:
        return segments_to_labels(self.segments(image), self.num_classes)

    def predict(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        return [self.segment(image) for image in images]


def _box_nms(boxes: torch.Tensor, scores: torch.Tensor, threshold: float) -> list[int]:
    """Greedy non-maximum suppression of x0, y0, x1, y1 boxes (highest score first)."""
    order = torch.argsort(scores, descending=True)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    keep: list[int] = []
    while order.numel():
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        lo = torch.maximum(boxes[i, :2], boxes[rest, :2])
        hi = torch.minimum(boxes[i, 2:], boxes[rest, 2:])
        inter = (hi - lo).clamp(min=0).prod(dim=1)
        iou = inter / (area[i] + area[rest] - inter).clamp(min=1e-9)
        order = rest[iou <= threshold]
    return keep


def _mask_boxes(masks: torch.Tensor) -> torch.Tensor:
    """N x H x W bool -> N x 4 (x0, y0, x1, y1) float boxes (x1, y1 exclusive)."""
    rows, cols = masks.any(dim=2), masks.any(dim=1)
    height, width = masks.shape[1:]
    ys, xs = torch.arange(height), torch.arange(width)
    y0 = torch.where(rows, ys, height).min(dim=1).values
    y1 = torch.where(rows, ys, -1).max(dim=1).values + 1
    x0 = torch.where(cols, xs, width).min(dim=1).values
    x1 = torch.where(cols, xs, -1).max(dim=1).values + 1
    return torch.stack([x0, y0, x1, y1], dim=1).float()


class SamSegmenter:
    """Segment Anything's automatic masks (``points_per_side``² point prompts over the image,
    3 masks each, kept if IoU score > ``pred_iou_thresh`` and stability >
    ``stability_score_thresh``, then box NMS at ``nms_thresh``), labelled by area rank."""

    def __init__(
        self,
        model: str | Path,
        device: str | torch.device = "auto",
        num_classes: int = 64,
        points_per_side: int = 32,
        points_per_batch: int = 64,
        pred_iou_thresh: float = 0.88,
        stability_score_thresh: float = 0.95,
        nms_thresh: float = 0.7,
    ) -> None:
        from transformers import SamModel

        config = load_config(model, "sam", "facebook/sam-vit-base")
        _check_classes(num_classes)
        self.name = str(model)
        self.device = resolve_device(device)
        self.num_classes = num_classes
        self.long_side = int(config.vision_config.image_size)
        self.mean, self.std = image_stats(model)
        self.options = {
            "points_per_side": points_per_side,
            "points_per_batch": points_per_batch,
            "pred_iou_thresh": pred_iou_thresh,
            "stability_score_thresh": stability_score_thresh,
            "nms_thresh": nms_thresh,
        }
        self.model = SamModel.from_pretrained(self.name, config=config).eval().to(self.device)

    def meta(self) -> dict[str, Any]:
        return {
            "source": "sam",
            "weights_free": False,
            "model": self.name,
            "labels": "area_rank",
            "num_classes": self.num_classes,
            "params": self.options,
        }

    def _input(self, image: np.ndarray) -> tuple[torch.Tensor, float, tuple[int, int]]:
        """SAM's input: longest side resized to the model's size, normalised, padded
        bottom/right to a square; the scale and the resized size."""
        height, width = image.shape[:2]
        scale = self.long_side / max(height, width)
        size = (int(height * scale + 0.5), int(width * scale + 0.5))
        x = cv2.resize(image, size[::-1], interpolation=cv2.INTER_LINEAR).astype(np.float32)
        x = (x / 255.0 - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        padded = np.zeros((self.long_side, self.long_side, 3), np.float32)
        padded[: size[0], : size[1]] = x
        return torch.from_numpy(padded.transpose(2, 0, 1))[None], scale, size

    @torch.inference_mode()
    def masks(self, image: np.ndarray) -> list[np.ndarray]:
        """SAM's automatic masks of one RGB image (H x W bool each)."""
        height, width = image.shape[:2]
        x, scale, size = self._input(image)
        embeddings = self.model.get_image_embeddings(x.to(self.device))
        n = self.options["points_per_side"]
        steps = (np.arange(n) + 0.5) / n
        grid = np.stack(np.meshgrid(steps * width, steps * height), axis=-1).reshape(-1, 2)
        points = torch.from_numpy(grid * scale).float()
        kept_masks, kept_scores = [], []
        for start in range(0, len(points), self.options["points_per_batch"]):
            batch = points[start : start + self.options["points_per_batch"]]
            out = self.model(
                image_embeddings=embeddings,
                input_points=batch[None, :, None].to(self.device),
                input_labels=torch.ones(1, len(batch), 1, dtype=torch.long, device=self.device),
                multimask_output=True,
            )
            logits = out.pred_masks[0].flatten(0, 1)  # P*3 x h x w (low resolution)
            scores = out.iou_scores[0].flatten()
            good = scores > self.options["pred_iou_thresh"]
            if not good.any():
                continue
            logits = F.interpolate(
                logits[good][None], (self.long_side, self.long_side), mode="bilinear"
            )[0, :, : size[0], : size[1]]
            logits = F.interpolate(logits[None], (height, width), mode="bilinear")[0]
            # stability: IoU of the mask thresholded at +1 and at -1 (SAM's definition)
            inner = (logits > 1.0).flatten(1).sum(1)
            outer = (logits > -1.0).flatten(1).sum(1).clamp(min=1)
            stable = (inner / outer) > self.options["stability_score_thresh"]
            masks = (logits > 0.0)[stable]
            nonempty = masks.flatten(1).any(1)
            kept_masks.append(masks[nonempty].cpu())
            kept_scores.append(scores[good][stable][nonempty].cpu())
        if not kept_masks:
            return []
        masks = torch.cat(kept_masks)
        if not len(masks):
            return []
        keep = _box_nms(_mask_boxes(masks), torch.cat(kept_scores), self.options["nms_thresh"])
        return [masks[i].numpy() for i in keep]

    def segment(self, image: np.ndarray) -> np.ndarray:
        return masks_to_labels(self.masks(image), self.num_classes, image.shape[:2])

    def predict(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        return [self.segment(image) for image in images]


class OneFormerSegmenter:
    """OneFormer semantic segmentation (task "semantic"): class ids 0..num_labels-1 of the model's
    own label set (e.g. ADE20K's 150, Cityscapes' 19), the same meaning in every image.

    Preprocessing as OneFormer's image processor: shorter side to ``size.shortest_edge`` (longer
    side at most ``longest_edge``), bilinear, mean/std from the model's preprocessor config;
    the task prompt "the task is semantic" through the model's tokenizer."""

    def __init__(self, model: str | Path, device: str | torch.device = "auto") -> None:
        from transformers import AutoTokenizer, OneFormerForUniversalSegmentation

        config = load_config(model, "oneformer", "shi-labs/oneformer_ade20k_swin_tiny")
        self.name = str(model)
        self.device = resolve_device(device)
        self.num_classes = int(config.num_labels)
        self.class_names = [str(config.id2label[i]) for i in range(self.num_classes)]
        size = preprocessor_config(model).get("size") or {}
        self.shortest = int(size.get("shortest_edge", 512))
        self.longest = int(size.get("longest_edge", 2048))
        self.mean, self.std = image_stats(model)
        try:
            tokenizer = AutoTokenizer.from_pretrained(self.name)
        except (OSError, ValueError, TypeError) as err:
            raise ValueError(
                f"cannot load OneFormer's tokenizer from '{model}' ({err}); the folder needs the "
                "tokenizer files saved beside the model (save_pretrained)"
            ) from None
        tokens = tokenizer(
            ["the task is semantic"],
            padding="max_length",
            max_length=config.task_seq_len,
            truncation=True,
        )
        ids = torch.tensor(tokens["input_ids"]) * torch.tensor(tokens["attention_mask"])
        self.task_inputs = ids.to(self.device)
        self.model = OneFormerForUniversalSegmentation.from_pretrained(self.name, config=config)
        self.model.eval().to(self.device)

    def meta(self) -> dict[str, Any]:
        return {
            "source": "oneformer",
            "weights_free": False,
            "model": self.name,
            "labels": "semantic",
            "num_classes": self.num_classes,
            "class_names": self.class_names,
            "input_size": {"shortest_edge": self.shortest, "longest_edge": self.longest},
        }

    def _input(self, image: np.ndarray) -> torch.Tensor:
        height, width = image.shape[:2]
        scale = min(self.shortest / min(height, width), self.longest / max(height, width))
        size = (int(round(width * scale)), int(round(height * scale)))
        x = cv2.resize(image, size, interpolation=cv2.INTER_LINEAR).astype(np.float32) / 255.0
        x = (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))[None]

    @torch.inference_mode()
    def segment(self, image: np.ndarray) -> np.ndarray:
        out = self.model(
            pixel_values=self._input(image).to(self.device), task_inputs=self.task_inputs
        )
        classes = out.class_queries_logits.softmax(-1)[..., :-1]  # drop "no object"
        masks = out.masks_queries_logits.sigmoid()
        scores = torch.einsum("bqc,bqhw->bchw", classes, masks)
        scores = F.interpolate(scores, image.shape[:2], mode="bilinear", align_corners=False)
        return scores[0].argmax(0).cpu().numpy().astype(np.int64)

    def predict(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        return [self.segment(image) for image in images]


def build_segmenter(
    method: str,
    model: str | Path | None = None,
    device: str = "auto",
    num_classes: int = 64,
    **options: Any,
) -> OverSegmenter | SamSegmenter | OneFormerSegmenter:
    """The segmenter for ``--method`` (a model is needed for sam and oneformer, none for the
    over-segmentations)."""
    if method not in SEGMENT_METHODS:
        raise ValueError(f"method '{method}' is not one of {SEGMENT_METHODS}")
    if method in OverSegmenter.METHODS:
        if model:
            raise ValueError(f"--method {method} is weights-free: it takes no --model")
        return OverSegmenter(method, num_classes, **options)
    if not model:
        raise ValueError(
            f"--method {method} needs --model (a hub name or a save_pretrained folder)"
        )
    if method == "sam":
        return SamSegmenter(model, device, num_classes, **options)
    return OneFormerSegmenter(model, device)
