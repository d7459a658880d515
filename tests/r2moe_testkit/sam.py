"""A tiny randomly initialised Segment Anything, built with segment_anything's own classes (never downloaded)."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import torch

TINY_SAM_NAME = "r2moe_tiny_sam.safetensors"  # the name the example workflows use
TINY = {"img_size": 64, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2, "window_size": 4,
        "global_attn_indexes": [1], "prompt_embed_dim": 32, "decoder_heads": 2}  # fmt: skip


def build_tiny_sam(seed: int = 0) -> torch.nn.Module:
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    grid, dim = TINY["img_size"] // TINY["patch_size"], TINY["prompt_embed_dim"]
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        sam = Sam(
            image_encoder=ImageEncoderViT(
                img_size=TINY["img_size"], patch_size=TINY["patch_size"], embed_dim=TINY["embed_dim"],
                depth=TINY["depth"], num_heads=TINY["num_heads"], mlp_ratio=2.0, out_chans=dim, qkv_bias=True,
                norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), use_rel_pos=True,
                window_size=TINY["window_size"], global_attn_indexes=tuple(TINY["global_attn_indexes"]),
            ),
            prompt_encoder=PromptEncoder(
                embed_dim=dim, image_embedding_size=(grid, grid),
                input_image_size=(TINY["img_size"], TINY["img_size"]), mask_in_chans=4,
            ),
            mask_decoder=MaskDecoder(
                num_multimask_outputs=3,
                transformer=TwoWayTransformer(depth=1, embedding_dim=dim, mlp_dim=64, num_heads=TINY["decoder_heads"]),
                transformer_dim=dim, iou_head_depth=2, iou_head_hidden_dim=32,
            ),
        )  # fmt: skip
    return sam.eval()


def write_tiny_sam(path: Path, seed: int = 0) -> Path:
    """Save as safetensors; the decoder's head count (invisible in the weights) goes into the metadata."""
    from safetensors.torch import save_file

    state = {k: v.contiguous() for k, v in build_tiny_sam(seed).state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata={"r2moe_sam_config": json.dumps({"decoder_heads": TINY["decoder_heads"]})})
    return path
