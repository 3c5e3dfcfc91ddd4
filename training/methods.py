"""What differs between DMD3C and SelfDC training: the network call and the loss.

A task turns a batch (training.sample.collate) into the network's inputs with the weights' own
conventions (the registry's InputSpec: normalisation, depth units, K), runs the network and scores
its outputs with training.losses. The trainer only ever calls :class:`Task`, so both methods share
one loop.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from depth_completion_ros.networks.registry import InputSpec, get_model_spec
from training.config import TrainConfig

log = logging.getLogger(__name__)

#: Constructor settings a network trains with where they differ from the inference settings of
#: released weights (the registry's). NLSPN trains with ``preserve_input`` off (its config.py:
#: the flag appears only in its test commands): with it on, the output equals the input at every
#: sparse pixel, so SelfDC's L_dc (eq. 5, its only depth signal) is ~0 and no gradient reaches
#: the encoder. ``legacy`` reproduces a confidence-lookup quirk of the code the released weights
#: were trained with (nlspn.py); a new training uses the corrected lookup. ``model.kwargs``
#: overrides either (e.g. ``legacy: true`` to fine-tune released weights as they were trained).
TRAINING_KWARGS: dict[str, dict[str, Any]] = {
    "selfdc": {"preserve_input": False, "legacy": False},
    "selfdc_r18": {"preserve_input": False, "legacy": False},
}
#: settings that change how weights must run but not their shapes: recorded with the exported
#: weights (metadata 'model_kwargs', JSON) so the node builds the network as it was trained.
#: Not preserve_input: writing the measured points back is an inference choice (NLSPN trains
#: without it and tests with it, as the node does).
RECORDED_KWARGS = ("legacy",)

#: torchvision's ImageNet ResNet weight files (torch hub cache names, newest first)
TORCHVISION_RESNET_FILES = {
    34: ("resnet34-b627a593.pth", "resnet34-333f7ec4.pth"),
    18: ("resnet18-f37072fd.pth", "resnet18-5c106cde.pth"),
}
#: torchvision ResNet stage -> our encoder module (NLSPN: conv2..conv5 = layer1..layer4;
#: torchvision's 7x7 stem, max-pool and fc are not used)
RESNET_STAGE_MAP = {
    "layer1.": "conv2.",
    "layer2.": "conv3.",
    "layer3.": "conv4.",
    "layer4.": "conv5.",
}


class EncoderInitError(RuntimeError):
    """ImageNet weights for the encoder cannot be had; the message says how to get them."""


def resnet_depth(net: nn.Module) -> int:
    """18 or 34 from the encoder's block counts (conv2..conv5 = ResNet layer1..layer4)."""
    blocks = tuple(len(getattr(net, f"conv{i}")) for i in range(2, 6))
    depths = {(2, 2, 2, 2): 18, (3, 4, 6, 3): 34}
    if blocks not in depths:
        raise EncoderInitError(f"encoder with blocks {blocks} is neither ResNet-18 nor ResNet-34")
    return depths[blocks]


def find_imagenet_weights(depth: int, source: str = "imagenet") -> Path:
    """The torchvision ResNet-``depth`` ImageNet file: ``source`` 'imagenet' looks in the torch
    hub cache (``$TORCH_HOME/hub/checkpoints``, where torchvision downloads it); any other value
    is a file path. Raises :class:`EncoderInitError` saying how to get it."""
    if source != "imagenet":
        path = Path(source).expanduser()
        if not path.is_file():
            raise EncoderInitError(
                f"model.encoder_init: {path} not found; give torchvision's ResNet-{depth} "
                "ImageNet weights file, 'imagenet' for the torch hub cache, or '' for random "
                "initialisation"
            )
        return path
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    for name in TORCHVISION_RESNET_FILES[depth]:
        if (cache / name).is_file():
            return cache / name
    first = TORCHVISION_RESNET_FILES[depth][0]
    raise EncoderInitError(
        f"model.encoder_init=imagenet: torchvision's ResNet-{depth} ImageNet weights are not in "
        f"the torch hub cache {cache} (looked for {', '.join(TORCHVISION_RESNET_FILES[depth])}). "
        f"Download https://download.pytorch.org/models/{first} into that folder (or run "
        f"torchvision.models.resnet{depth}(weights='IMAGENET1K_V1') once where torchvision "
        "works), or give the file: model.encoder_init=/path/to/resnet.pth; "
        "model.encoder_init='' trains from random weights (not NLSPN's recipe)"
    )


def imagenet_encoder_state(net: nn.Module, path: Path) -> dict[str, torch.Tensor]:
    """torchvision ResNet weights mapped onto the encoder's keys (layerN. -> conv{N+1}.), every
    encoder tensor present and of the right shape, or :class:`EncoderInitError`."""
    from depth_completion_ros.networks.checkpoints import CheckpointError, read_checkpoint

    try:
        source = read_checkpoint(path).state_dict
    except CheckpointError as e:
        raise EncoderInitError(f"model.encoder_init: {e}") from e
    mapped = {}
    for key, value in source.items():
        for theirs, ours in RESNET_STAGE_MAP.items():
            if key.startswith(theirs):
                mapped[ours + key[len(theirs) :]] = value
    own = {
        k: v for k, v in net.state_dict().items() if k.startswith(tuple(RESNET_STAGE_MAP.values()))
    }
    missing = sorted(set(own) - set(mapped))
    wrong = sorted(k for k in own if k in mapped and mapped[k].shape != own[k].shape)
    if missing or wrong:
        raise EncoderInitError(
            f"model.encoder_init: {path} does not fit the ResNet-{resnet_depth(net)} encoder "
            f"(missing {missing[:4]}, wrong shape {wrong[:4]}): give torchvision's "
            f"resnet{resnet_depth(net)} ImageNet weights"
        )
    return {k: mapped[k] for k in own}


def init_encoder_from_imagenet(net: nn.Module, source: str = "imagenet") -> Path:
    """Load ImageNet weights into the ResNet stages of a SelfDC/NLSPN network (NLSPN's default
    start, src/model/nlspnmodel.py: get_resnet34(not from_scratch); SelfDC uses that network)."""
    path = find_imagenet_weights(resnet_depth(net), source)
    state = imagenet_encoder_state(net, path)
    net.load_state_dict(state, strict=False)
    log.info("encoder initialised from ImageNet weights %s (%d tensors)", path, len(state))
    return path


@dataclass
class Task:
    """One method's model construction, forward pass and loss."""

    cfg: TrainConfig
    spec: InputSpec = field(init=False)

    def __post_init__(self) -> None:
        self.model_spec = get_model_spec(self.cfg.model.name)
        self.spec = self.model_spec.input_spec(self.cfg.model.dataset)

    # -- model ----------------------------------------------------------------------------------

    def model_kwargs(self) -> dict[str, Any]:
        """Constructor arguments: the training settings (:data:`TRAINING_KWARGS`) under the
        config's ``model.kwargs``, plus the segmentation head."""
        kwargs = {**TRAINING_KWARGS.get(self.cfg.model.name, {}), **self.cfg.model.kwargs}
        if self.cfg.model.seg_classes > 0:
            kwargs["seg_classes"] = self.cfg.model.seg_classes
        return kwargs

    def build_model(self) -> nn.Module:
        net = self.model_spec.build(self.cfg.model.dataset, **self.model_kwargs())
        if self.cfg.model.encoder_init:
            if not hasattr(net, "conv5"):
                raise EncoderInitError(
                    f"model.encoder_init is for the ResNet encoders of selfdc / selfdc_r18, not "
                    f"'{self.cfg.model.name}': set it to ''"
                )
            init_encoder_from_imagenet(net, self.cfg.model.encoder_init)
        return net

    def export_metadata(self) -> dict[str, str]:
        """What the exported weights must run with besides the registry's settings for the
        model (safetensors metadata, strings): 'model_kwargs', JSON of the built settings
        named in :data:`RECORDED_KWARGS`."""
        kwargs = {**self.model_spec.input_spec(self.cfg.model.dataset).model_kwargs}
        kwargs.update(self.model_kwargs())
        recorded = {k: kwargs[k] for k in RECORDED_KWARGS if k in kwargs}
        return {"model_kwargs": json.dumps(recorded, sort_keys=True)} if recorded else {}

    def node_settings(self) -> dict[str, Any]:
        """The behaviour settings the node will run the exported weights with: the registry's
        inference settings for the dataset, then those the file records (what evaluation during
        training must use, so the best checkpoint is chosen by what the node runs)."""
        with torch.device("meta"):  # the node's build, without allocating its weights
            built = self.model_spec.build(self.cfg.model.dataset)
        current = getattr(built, "behaviour_settings", None)
        settings = current() if current is not None else {}
        recorded = self.export_metadata().get("model_kwargs")
        if recorded:
            settings.update(json.loads(recorded))
        return settings

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
