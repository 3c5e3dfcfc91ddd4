"""What differs between DMD3C and SelfDC training: the network call and the loss.

A task turns a batch (training.sample.collate) into the network's inputs with the weights' own
conventions (the registry's InputSpec: normalisation, depth units, K), runs the network and scores
its outputs with training.losses. The trainer only ever calls :class:`Task`, so both methods share
one loop.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from depth_completion_ros.networks.registry import InputSpec, get_model_spec
from training.config import TrainConfig

log = logging.getLogger(__name__)


@dataclass
class Task:
    """One method's model construction, forward pass and loss."""

    cfg: TrainConfig
    spec: InputSpec = field(init=False)

    def __post_init__(self) -> None:
        self.model_spec = get_model_spec(self.cfg.model.name)
        self.spec = self.model_spec.input_spec(self.cfg.model.dataset)

    # -- model ----------------------------------------------------------------------------------

    def build_model(self) -> nn.Module:
        kwargs = dict(self.cfg.model.kwargs)
        if self.cfg.model.seg_classes > 0:
            kwargs["seg_classes"] = self.cfg.model.seg_classes
        return self.model_spec.build(self.cfg.model.dataset, **kwargs)

    def train_module(self, net: nn.Module) -> TrainForward:
        return TrainForward(net, self.model_spec.needs_intrinsics)

    # -- inputs ---------------------------------------------------------------------------------

    def inputs(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Normalised image, sparse depth in network units, K (all on the batch's device)."""
        image = self.spec.normalize(batch["rgb"])
        sparse = batch["sparse"] * self.spec.depth_scale
        return image, sparse, batch["K"]

    def forward(self, net: nn.Module, batch: dict[str, Any]) -> Any:
        raise NotImplementedError

    def loss(self, outputs: Any, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError


class DMD3CTask(Task):
    """BP-Net, six outputs coarse to fine, each scored (stage 1: dense target; stage 2: sparse
    ground truth + SSI + gradient matching against the teacher)."""

    def forward(self, net: nn.Module, batch: dict[str, Any]) -> list[torch.Tensor]:
        image, sparse, K = self.inputs(batch)
        height, width = image.shape[-2:]
        if height % 32 or width % 32:
            raise ValueError(
                f"BP-Net needs crops whose height and width are multiples of 32, got "
                f"{height}x{width}: set data.options.crop accordingly (e.g. [256, 1216])"
            )
        outputs = net(image, sparse, K)
        return [o.float() / self.spec.depth_scale for o in outputs]

    def loss(self, outputs, batch):
        from training.losses import DMD3C_STAGE2_WEIGHTS, dmd3c_loss

        weights = self.cfg.loss.weights or DMD3C_STAGE2_WEIGHTS
        return dmd3c_loss(outputs, batch, weights, **self.cfg.loss.options)


class SelfDCTask(Task):
    """The SelfDC/NLSPN network (+ the training-only segmentation decoder)."""

    def forward(self, net: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        image, sparse, K = self.inputs(batch)
        out = net(image, sparse, K)
        scale = self.spec.depth_scale
        return {k: v.float() if k == "seg_logits" else v.float() / scale for k, v in out.items()}

    def loss(self, outputs, batch):
        from training.losses import SELFDC_WEIGHTS, selfdc_loss

        weights = self.cfg.loss.weights or SELFDC_WEIGHTS
        return selfdc_loss(outputs, batch, weights, **self.cfg.loss.options)


class TrainForward(nn.Module):
    """The network as training calls it, behind one ``forward`` (what DDP wraps and hooks).

    BP-Net: ``net(I, S, K)`` (six maps). SelfDC: ``net.forward_train(I, S)`` (depth, initial
    depth, segmentation logits) when the network has it, else ``{'depth': net(I, S)}``.
    """

    def __init__(self, net: nn.Module, needs_intrinsics: bool) -> None:
        super().__init__()
        self.net = net
        self.needs_intrinsics = needs_intrinsics

    def forward(self, image: torch.Tensor, sparse: torch.Tensor, K: torch.Tensor) -> Any:
        if hasattr(self.net, "forward_train"):
            return self.net.forward_train(image, sparse)
        if self.needs_intrinsics:
            return self.net(image, sparse, K)
        return {"depth": self.net(image, sparse)}


def make_task(cfg: TrainConfig) -> Task:
    return {"dmd3c": DMD3CTask, "selfdc": SelfDCTask}[cfg.loss.method](cfg)
