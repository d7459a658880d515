"""Segment Anything for HLAG: read a SAM checkpoint, rebuild the network it belongs to, segment layout boxes.

The architecture is read from the weights (ViT-B/L/H or a custom small SAM), so any file works without a
download or a name convention. `segment_anything` is imported lazily: the rest of the core never needs it.
Only weights are read (`torch.load(weights_only=True)` or safetensors): a checkpoint cannot run code.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ...errors import InvalidInputError
from ...log import LOGGER
from .mask_refinement import PixelBox, Segment

SAM_FILES = {"vit_b": "sam_vit_b_01ec64.pth", "vit_l": "sam_vit_l_0b3195.pth", "vit_h": "sam_vit_h_4b8939.pth"}
SAM_EXTENSIONS = (".pth", ".pt", ".safetensors")
CONFIG_METADATA_KEY = "r2moe_sam_config"  # safetensors metadata: JSON of SamConfig fields (for custom SAMs)
_BLOCK = re.compile(r"^image_encoder\.blocks\.(\d+)\.")
_DECODER_LAYER = re.compile(r"^mask_decoder\.transformer\.layers\.(\d+)\.")
_IOU_LAYER = re.compile(r"^mask_decoder\.iou_prediction_head\.layers\.(\d+)\.weight$")


@dataclass(frozen=True)
class SamConfig:
    """Everything `segment_anything`'s builders take; defaults are the published models' values."""

    embed_dim: int
    depth: int
    num_heads: int
    global_attn_indexes: tuple[int, ...]
    window_size: int = 14
    img_size: int = 1024
    patch_size: int = 16
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    use_rel_pos: bool = True
    use_abs_pos: bool = True
    prompt_embed_dim: int = 256
    mask_in_chans: int = 16
    decoder_depth: int = 2
    decoder_mlp_dim: int = 2048
    decoder_heads: int = 8  # not visible in the weights: published value unless the file's metadata says otherwise
    attention_downsample_rate: int = 2
    num_multimask_outputs: int = 3
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256


OFFICIAL = {
    "vit_b": SamConfig(embed_dim=768, depth=12, num_heads=12, global_attn_indexes=(2, 5, 8, 11)),
    "vit_l": SamConfig(embed_dim=1024, depth=24, num_heads=16, global_attn_indexes=(5, 11, 17, 23)),
    "vit_h": SamConfig(embed_dim=1280, depth=32, num_heads=16, global_attn_indexes=(7, 15, 23, 31)),
}


@dataclass
class LoadedSam:
    """What R2MOE_SAM carries: the network (eval mode, float32, CPU until used) and where it came from."""

    model: torch.nn.Module
    variant: str  # vit_b, vit_l, vit_h or custom
    config: SamConfig
    name: str


def segment_anything() -> Any:
    """The `segment_anything` package, or an error that says how to install it."""
    try:
        import segment_anything
        import segment_anything.modeling
    except ImportError as err:
        raise InvalidInputError(
            "The SAM nodes need the 'segment-anything' package: run `pip install segment-anything` in ComfyUI's "
            f"Python environment and restart ComfyUI ({err})."
        ) from err
    return segment_anything


def expected_files_hint() -> str:
    return ", ".join(f"{name} ({variant[4:].upper()})" for variant, name in SAM_FILES.items())


def _get(state: dict[str, torch.Tensor], key: str) -> torch.Tensor:
    found = state.get(key)
    if found is None:
        raise InvalidInputError(
            f"This file is not a Segment Anything checkpoint (it has no '{key}'). Use one of the original SAM "
            f"files: {expected_files_hint()}."
        )
    return found


def _count(state: dict[str, torch.Tensor], pattern: re.Pattern[str]) -> int:
    indexes = {int(m.group(1)) for key in state if (m := pattern.match(key))}
    return max(indexes) + 1 if indexes else 0


def _encoder_layout(state: dict[str, torch.Tensor], embed_dim: int, depth: int, grid: int, given: dict[str, Any]):
    """(num_heads, window_size, global blocks, use_rel_pos) from the relative position tables' shapes."""
    if "image_encoder.blocks.0.attn.rel_pos_h" not in state:
        missing = [k for k in ("num_heads", "window_size", "global_attn_indexes") if k not in given]
        if missing:
            raise InvalidInputError(
                f"This SAM has no relative position tables, so {', '.join(missing)} cannot be read from its weights; "
                f"save it as .safetensors with a '{CONFIG_METADATA_KEY}' metadata entry giving them."
            )
        return given["num_heads"], given["window_size"], tuple(given["global_attn_indexes"]), False
    sizes = [int(_get(state, f"image_encoder.blocks.{i}.attn.rel_pos_h").shape[0]) for i in range(depth)]
    head_dim = int(state["image_encoder.blocks.0.attn.rel_pos_h"].shape[1])
    global_blocks = tuple(i for i, size in enumerate(sizes) if size == 2 * grid - 1)
    windowed = {size for size in sizes if size != 2 * grid - 1}
    if len(windowed) > 1:
        raise InvalidInputError(f"SAM image encoder blocks use several window sizes {sorted(windowed)}; unsupported.")
    window = (windowed.pop() + 1) // 2 if windowed else 0
    return embed_dim // head_dim, window, global_blocks, True


def infer_config(state: dict[str, torch.Tensor], given: dict[str, Any] | None = None) -> SamConfig:
    """The architecture of a SAM state dict; `given` (from file metadata) fills what shapes cannot tell."""
    given = dict(given or {})
    unknown = sorted(set(given) - {f.name for f in dataclasses.fields(SamConfig)})
    if unknown:
        raise InvalidInputError(f"Unknown SAM config field(s) in the file's metadata: {', '.join(unknown)}.")
    patch = _get(state, "image_encoder.patch_embed.proj.weight")
    embed_dim, patch_size = int(patch.shape[0]), int(patch.shape[-1])
    depth = _count(state, _BLOCK)
    pos = state.get("image_encoder.pos_embed")
    img_size = int(pos.shape[1]) * patch_size if pos is not None else int(given.get("img_size", 1024))
    heads, window, global_blocks, rel_pos = _encoder_layout(state, embed_dim, depth, img_size // patch_size, given)
    token_dim = int(_get(state, "mask_decoder.iou_token.weight").shape[1])
    cross_q = _get(state, "mask_decoder.transformer.layers.0.cross_attn_token_to_image.q_proj.weight")
    found = {
        "embed_dim": embed_dim,
        "depth": depth,
        "num_heads": heads,
        "global_attn_indexes": global_blocks,
        "window_size": window,
        "img_size": img_size,
        "patch_size": patch_size,
        "mlp_ratio": int(_get(state, "image_encoder.blocks.0.mlp.lin1.weight").shape[0]) / embed_dim,
        "qkv_bias": "image_encoder.blocks.0.attn.qkv.bias" in state,
        "use_rel_pos": rel_pos,
        "use_abs_pos": pos is not None,
        "prompt_embed_dim": int(_get(state, "image_encoder.neck.0.weight").shape[0]),
        "mask_in_chans": int(_get(state, "prompt_encoder.mask_downscaling.3.weight").shape[0]),
        "decoder_depth": _count(state, _DECODER_LAYER),
        "decoder_mlp_dim": int(_get(state, "mask_decoder.transformer.layers.0.mlp.lin1.weight").shape[0]),
        "attention_downsample_rate": token_dim // int(cross_q.shape[0]),
        "num_multimask_outputs": int(_get(state, "mask_decoder.mask_tokens.weight").shape[0]) - 1,
        "iou_head_depth": _count(state, _IOU_LAYER),
        "iou_head_hidden_dim": int(_get(state, "mask_decoder.iou_prediction_head.layers.0.weight").shape[0]),
    }
    if "global_attn_indexes" in given:
        given["global_attn_indexes"] = tuple(given["global_attn_indexes"])
    return SamConfig(**(found | given))


def variant_of(config: SamConfig) -> str:
    return next((name for name, official in OFFICIAL.items() if official == config), "custom")


def _build(config: SamConfig, variant: str) -> torch.nn.Module:
    from functools import partial

    package = segment_anything()
    if variant in OFFICIAL:
        return package.sam_model_registry[variant]()
    modeling = package.modeling
    grid = config.img_size // config.patch_size
    return modeling.Sam(
        image_encoder=modeling.ImageEncoderViT(
            img_size=config.img_size,
            patch_size=config.patch_size,
            embed_dim=config.embed_dim,
            depth=config.depth,
            num_heads=config.num_heads,
            mlp_ratio=config.mlp_ratio,
            out_chans=config.prompt_embed_dim,
            qkv_bias=config.qkv_bias,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            use_abs_pos=config.use_abs_pos,
            use_rel_pos=config.use_rel_pos,
            window_size=config.window_size,
            global_attn_indexes=config.global_attn_indexes,
        ),
        prompt_encoder=modeling.PromptEncoder(
            embed_dim=config.prompt_embed_dim,
            image_embedding_size=(grid, grid),
            input_image_size=(config.img_size, config.img_size),
            mask_in_chans=config.mask_in_chans,
        ),
        mask_decoder=modeling.MaskDecoder(
            num_multimask_outputs=config.num_multimask_outputs,
            transformer=modeling.TwoWayTransformer(
                depth=config.decoder_depth,
                embedding_dim=config.prompt_embed_dim,
                mlp_dim=config.decoder_mlp_dim,
                num_heads=config.decoder_heads,
                attention_downsample_rate=config.attention_downsample_rate,
            ),
            transformer_dim=config.prompt_embed_dim,
            iou_head_depth=config.iou_head_depth,
            iou_head_hidden_dim=config.iou_head_hidden_dim,
        ),
    ).eval()


def build_sam(state: dict[str, torch.Tensor], given: dict[str, Any] | None = None, name: str = "") -> LoadedSam:
    """The SAM network for `state` with its weights; built on the meta device, so nothing is initialised twice."""
    config = infer_config(state, given)
    variant = variant_of(config)
    hinted = next((v for v in OFFICIAL if v in os.path.basename(name).lower()), None)
    if hinted is not None and hinted != variant:
        LOGGER.warning("R2MoE: '%s' is named like SAM %s but its weights are %s; using the weights.", name, hinted,
                       variant)
    with torch.device("meta"):
        model = _build(config, variant)
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as err:
        raise InvalidInputError(
            f"'{name}' looks like SAM {variant} but its weights do not fit that network ({str(err)[:300]}). Use an "
            f"unmodified Segment Anything checkpoint: {expected_files_hint()}."
        ) from err
    left = [n for n, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta]
    if left:
        raise InvalidInputError(f"'{name}' lacks SAM weights for {', '.join(left[:3])}; the file is incomplete.")
    model = model.float().eval().requires_grad_(False)
    return LoadedSam(model=model, variant=variant, config=config, name=name)


def read_sam_file(path: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """State dict and config hints of a .pth/.pt (weights only) or .safetensors SAM file."""
    if path.endswith(".safetensors"):
        from safetensors import safe_open
        from safetensors.torch import load_file

        with safe_open(path, "pt") as handle:
            metadata = handle.metadata() or {}
        try:
            given = json.loads(metadata.get(CONFIG_METADATA_KEY, "{}"))
        except json.JSONDecodeError as err:
            raise InvalidInputError(f"The '{CONFIG_METADATA_KEY}' metadata of {path} is not valid JSON.") from err
        return load_file(path, device="cpu"), given
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle errors come in many types; all mean the same to the user
        raise InvalidInputError(
            f"Could not read {path} as plain weights ({type(err).__name__}: {str(err)[:200]}). Use an original SAM "
            "checkpoint, or re-save the model's state_dict() with torch.save."
        ) from err
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict):
        raise InvalidInputError(f"{path} holds a {type(state).__name__}, not a SAM state dict.")
    return state, {}


def load_sam(path: str) -> LoadedSam:
    state, given = read_sam_file(path)
    loaded = build_sam(state, given, os.path.basename(path))
    LOGGER.info("R2MoE: loaded SAM %s from %s", loaded.variant, path)
    return loaded


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """One ComfyUI image [H, W, C] in [0, 1] -> [H, W, 3] uint8 RGB, what SAM's predictor takes."""
    if image.ndim != 3 or image.shape[-1] < 3:
        raise InvalidInputError(f"Expected an RGB image [height, width, 3], got shape {tuple(image.shape)}.")
    rgb = image[..., :3].detach().float().cpu().clamp(0.0, 1.0)
    return (rgb * 255.0).round().to(torch.uint8).numpy()


def box_segmenter(sam: LoadedSam, image: torch.Tensor) -> Segment:
    """`segment(box)` for one image: the image is encoded once, each box prompt then costs one decoder pass."""
    predictor = segment_anything().SamPredictor(sam.model)
    predictor.set_image(to_uint8(image))

    def segment(box: PixelBox) -> torch.Tensor:
        masks, _, _ = predictor.predict(box=np.asarray(box, dtype=np.float32), multimask_output=False)
        return torch.from_numpy(np.asarray(masks[0]))

    return segment
