"""What the pack needs to know about a ComfyUI MODEL/CLIP: its cross-attention layers, weights, folders."""

from __future__ import annotations

import os
from typing import Any

import folder_paths
import torch

from ..r2moe_core.bank import ExpertBank
from ..r2moe_core.errors import BankMismatchError, InvalidInputError
from ..r2moe_core.fingerprint import ModelFingerprint, compute_fingerprint, fingerprint_differences
from ..r2moe_core.layers import LayerSpec, block_key, describe_layers
from ..r2moe_core.sam import SAM_EXTENSIONS, expected_files_hint

BANK_FOLDER = "r2moe"
SAM_FOLDER = "sams"


def register_model_folder() -> None:
    """`models/r2moe` (plus any `r2moe:` entry of extra_model_paths.yaml) for bank files."""
    path = os.path.join(folder_paths.models_dir, BANK_FOLDER)
    if BANK_FOLDER not in folder_paths.folder_names_and_paths:
        folder_paths.folder_names_and_paths[BANK_FOLDER] = ([path], {".safetensors"})
    else:
        folder_paths.add_model_folder_path(BANK_FOLDER, path)


def register_sam_folder() -> None:
    """`models/sams` (shared with other packs that use SAM) for Segment Anything checkpoints."""
    path = os.path.join(folder_paths.models_dir, SAM_FOLDER)
    if SAM_FOLDER not in folder_paths.folder_names_and_paths:
        folder_paths.folder_names_and_paths[SAM_FOLDER] = ([path], set(SAM_EXTENSIONS))
        return
    folder_paths.add_model_folder_path(SAM_FOLDER, path)
    extensions = folder_paths.folder_names_and_paths[SAM_FOLDER][1]
    if isinstance(extensions, set):  # another pack registered it: make sure our formats are listed too
        extensions.update(SAM_EXTENSIONS)


def sam_files() -> list[str]:
    return [f for f in folder_paths.get_filename_list(SAM_FOLDER) if f.endswith(SAM_EXTENSIONS)]


def sam_path(name: str) -> str:
    path = folder_paths.get_full_path(SAM_FOLDER, name) if name else None
    if path is None or not os.path.isfile(path):
        folders = folder_paths.get_folder_paths(SAM_FOLDER)
        listed = ", ".join(sam_files()) or "none"
        raise InvalidInputError(
            f"SAM checkpoint '{name}' is not in models/sams (folders: {folders}; files there: {listed}). Copy one of "
            f"the Segment Anything checkpoints there: {expected_files_hint()}, then refresh the page."
        )
    return path


def bank_files() -> list[str]:
    return [f for f in folder_paths.get_filename_list(BANK_FOLDER) if f.endswith(".safetensors")]


def bank_path(name: str) -> str:
    path = folder_paths.get_full_path(BANK_FOLDER, name)
    if path is None:
        raise InvalidInputError(
            f"Bank '{name}' is not in models/r2moe (folders: {folder_paths.get_folder_paths(BANK_FOLDER)}). "
            "Save one with R2MoE Save Bank, or refresh the page after copying a file there."
        )
    return path


def bank_dir() -> str:
    return folder_paths.get_folder_paths(BANK_FOLDER)[0]


def planner_cache_dir() -> str:
    """Where LLM layout answers are cached: a system-user folder (never served over HTTP), else temp."""
    getter = getattr(folder_paths, "get_system_user_directory", None)
    if getter is not None:
        return os.path.join(getter("r2moe"), "planner_cache")
    return os.path.join(folder_paths.get_temp_directory(), "r2moe_planner_cache")


def _unpatched_weight(model: Any, key: str, param: torch.Tensor) -> torch.Tensor:
    # A loaded ModelPatcher keeps LoRA-merged weights in place and the originals in `backup`.
    backup = getattr(model, "backup", {}).get(key)
    return getattr(backup, "weight", param) if backup is not None else param


def cross_attention_layers(model: Any) -> tuple[list[LayerSpec], dict[str, torch.Tensor]]:
    """Every text cross-attention layer of the UNet and its base K/V weights (keys `<layer>.to_k|to_v`)."""
    unet = getattr(getattr(model, "model", None), "diffusion_model", None)
    if unet is None:
        raise InvalidInputError("The MODEL input is not a diffusion model patcher; connect a checkpoint's MODEL.")
    layers, weights = [], {}
    for name, module in unet.named_modules():
        if not name.endswith("attn2") or not hasattr(module, "to_k") or not hasattr(module, "to_v"):
            continue
        try:
            block_key(name)
        except InvalidInputError:
            continue  # not the SD1.x block layout (e.g. video or DiT models): not adaptable here
        wk, wv = module.to_k.weight, module.to_v.weight
        layers.append(LayerSpec(name=name, in_dim=int(wk.shape[1]), out_dim=int(wk.shape[0])))
        for proj, param in (("to_k", wk), ("to_v", wv)):
            weights[f"{name}.{proj}"] = _unpatched_weight(model, f"diffusion_model.{name}.{proj}.weight", param)
    if not layers:
        raise InvalidInputError(
            "No SD1.x cross-attention layers found in this MODEL. R2MoE supports SD1.x-layout UNets "
            "(SD 1.4/1.5 and their fine-tunes)."
        )
    return layers, weights


def model_fingerprint(model: Any) -> tuple[list[LayerSpec], ModelFingerprint]:
    layers, weights = cross_attention_layers(model)
    return layers, compute_fingerprint(layers, weights)


def token_dim(clip: Any) -> int:
    """Width of the text encoder's input token embedding (768 for SD1.x CLIP-L)."""
    for value in vars(clip.tokenizer).values():
        size = getattr(value, "embedding_size", None)
        if size:
            return int(size)
    return 768


def check_bank_fits(bank: ExpertBank, model: Any, allow_other_weights: bool = False) -> list[str]:
    """Raise if the bank cannot serve this model; return warnings for a tolerated weight mismatch."""
    layers, fingerprint = model_fingerprint(model)
    if tuple(layers) != bank.layers:
        names_bank = [layer.name for layer in bank.layers]
        missing = [layer.name for layer in layers if layer.name not in names_bank][:3]
        raise BankMismatchError(
            f"This bank was made for a model with {describe_layers(list(bank.layers))}; the connected MODEL has "
            f"{describe_layers(layers)}"
            + (f" (e.g. {', '.join(missing)} not in the bank)" if missing else "")
            + ". Connect the checkpoint the bank was made for, or create a new bank with R2MoE New Bank."
        )
    differing = fingerprint_differences(bank.fingerprint, fingerprint, layers)
    if not differing:
        return []
    message = (
        f"The connected MODEL has the right shape but other K/V weights than the model this bank was made for "
        f"(bank {bank.fingerprint.digest}, model {fingerprint.digest}; {len(differing)} of "
        f"{2 * len(layers)} projections differ, e.g. {differing[0]})."
    )
    if not allow_other_weights:
        raise BankMismatchError(
            message + " Connect the original checkpoint, or enable 'allow_other_weights' to use the experts on "
            "this fine-tune anyway (like a LoRA on another checkpoint)."
        )
    return [message + " Applied anyway because allow_other_weights is on."]
