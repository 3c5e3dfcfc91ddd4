"""Tiny random-weight teacher models for tests and smoke runs, built from small configs and
written with ``save_pretrained`` (no download): Depth Anything V2, SAM, OneFormer (+ a word-level
tokenizer for its task prompt). Their outputs are meaningless but exercise the real code paths
(``python -m training.smoke`` uses them where no real teacher weights are at hand)."""

from __future__ import annotations

from pathlib import Path

import torch

#: Dinov2 backbone + DPT head sizes: the tests' tiny one, and Depth-Anything-V2-Small-hf's
#: (its config.json values: same architecture and cost as the released Small, random weights)
DEPTH_ANYTHING_SIZES = {
    "tiny": dict(hidden=32, layers=4, heads=2, mlp=2, image=70, out=[1, 2, 3, 4],
                 neck=[8, 16, 32, 32], fusion=16, head=8),
    "small": dict(hidden=384, layers=12, heads=6, mlp=4, image=518, out=[3, 6, 9, 12],
                  neck=[48, 96, 192, 384], fusion=64, head=32),
}  # fmt: skip


def build_depth_anything(path: Path, metric: bool = False, size: str = "tiny") -> Path:
    """A random-weight Depth Anything V2 (``size`` from DEPTH_ANYTHING_SIZES). The tiny model's
    last conv is scaled so that its maps are O(0.1-1) and vary over the image (random init gives
    ~1e-7, below float16's resolution); the Small-sized one is for timing only."""
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config

    a = DEPTH_ANYTHING_SIZES[size]
    torch.manual_seed(0)
    backbone = Dinov2Config(
        hidden_size=a["hidden"],
        num_hidden_layers=a["layers"],
        num_attention_heads=a["heads"],
        mlp_ratio=a["mlp"],
        image_size=a["image"],
        patch_size=14,
        out_indices=a["out"],
        reshape_hidden_states=False,
    )
    config = DepthAnythingConfig(
        backbone_config=backbone,
        reassemble_hidden_size=a["hidden"],
        neck_hidden_sizes=a["neck"],
        fusion_hidden_size=a["fusion"],
        head_hidden_size=a["head"],
        patch_size=14,
        depth_estimation_type="metric" if metric else "relative",
        max_depth=80 if metric else 1,
    )
    model = DepthAnythingForDepthEstimation(config)
    if size == "tiny":
        with torch.no_grad():
            model.head.conv3.weight.mul_(1e6)
            model.head.conv3.bias.fill_(0.5)
    model.save_pretrained(path)
    return path


def build_sam(path: Path) -> Path:
    """SAM with a 2-layer, 32-wide ViT on 256-pixel inputs. The mask hypernetworks' last layers
    are scaled so mask logits are O(1-10) (random init gives ~1e-5: every mask unstable)."""
    from transformers import (
        SamConfig,
        SamMaskDecoderConfig,
        SamModel,
        SamPromptEncoderConfig,
        SamVisionConfig,
    )

    torch.manual_seed(0)
    vision = SamVisionConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        mlp_dim=64,
        output_channels=32,
        global_attn_indexes=[1],
        window_size=4,
        image_size=256,
        patch_size=16,
        num_pos_feats=16,
    )
    prompt = SamPromptEncoderConfig(
        hidden_size=32, image_size=256, patch_size=16, mask_input_channels=4
    )
    decoder = SamMaskDecoderConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        mlp_dim=64,
        iou_head_hidden_dim=32,
    )
    config = SamConfig(
        vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=decoder
    )
    model = SamModel(config)
    with torch.no_grad():
        for mlp in model.mask_decoder.output_hypernetworks_mlps:
            mlp.proj_out.weight.mul_(1e5)
    model.save_pretrained(path)
    return path


def build_oneformer(path: Path, num_labels: int = 5) -> Path:
    """OneFormer with a one-block-per-stage Swin, 8 queries, 32 wide, and a word-level tokenizer
    that knows the task prompt's words."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import (
        OneFormerConfig,
        OneFormerForUniversalSegmentation,
        PreTrainedTokenizerFast,
        SwinConfig,
    )

    torch.manual_seed(0)
    backbone = SwinConfig(
        embed_dim=16,
        depths=[1, 1, 1, 1],
        num_heads=[1, 1, 2, 2],
        window_size=7,
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )
    config = OneFormerConfig(
        backbone_config=backbone,
        num_queries=8,
        conv_dim=32,
        mask_dim=32,
        hidden_dim=32,
        encoder_feedforward_dim=64,
        encoder_layers=1,
        decoder_layers=2,
        num_attention_heads=2,
        dim_feedforward=64,
        query_dec_layers=1,
        text_encoder_width=32,
        text_encoder_num_layers=1,
        text_encoder_context_length=16,
        text_encoder_n_ctx=4,
        text_encoder_vocab_size=64,
        task_seq_len=16,
        id2label={i: f"class{i}" for i in range(num_labels)},
        label2id={f"class{i}": i for i in range(num_labels)},
    )
    OneFormerForUniversalSegmentation(config).save_pretrained(path)
    vocab = {"<pad>": 0, "<unk>": 1, "the": 2, "task": 3, "is": 4, "semantic": 5}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", unk_token="<unk>"
    ).save_pretrained(path)
    return path
