"""Reading a training run's footprint and the memory it may use off the host (the estimate lives in the core)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import comfy.model_management
import torch

from ...r2moe_core.train.memory_estimate import TrainingFootprint, check_memory

if TYPE_CHECKING:  # ComfyUI's own classes, for the annotations only
    from comfy.model_patcher import ModelPatcher


def _unet_bytes(unet: torch.nn.Module) -> float:
    return float(sum(p.numel() * p.element_size() for p in unet.parameters()))


def available_bytes(model: ModelPatcher, others: list[Any]) -> float:
    """Free memory on the model's device plus what the run may take back: on a GPU every model ComfyUI holds there
    (it unloads them to load the one being trained); on the CPU the run's own models, already in RAM and counted
    in the estimate."""
    device = model.load_device
    free = float(comfy.model_management.get_free_memory(device))
    if getattr(device, "type", "cpu") == "cpu":
        patchers = [model, *(getattr(o, "patcher", None) for o in others)]
        return free + sum(float(p.model_size()) for p in patchers if hasattr(p, "model_size"))
    held = 0.0
    for entry in list(getattr(comfy.model_management, "current_loaded_models", [])):
        if getattr(entry, "device", None) != device or getattr(entry, "model", None) is None:
            continue  # another device's, or a model already freed (its weak reference is dead)
        held += float(entry.model_loaded_memory())
    return free + held


def check_training_memory(model: ModelPatcher, others: list[Any], family: str, resolution: int, batch: int,
                          checkpointing: bool) -> float:
    """The run's estimated peak bytes; refuses (InvalidInputError) when it exceeds what the device has."""
    base = model.model
    unet = base.diffusion_model
    compute = getattr(base, "manual_cast_dtype", None) or base.get_dtype()
    footprint = TrainingFootprint(
        family=family, unet_bytes=_unet_bytes(unet), channels=int(getattr(unet, "model_channels", 320)),
        element_bytes=torch.empty((), dtype=compute).element_size(), resolution=resolution, batch=batch,
        checkpointing=checkpointing)
    return check_memory(footprint, available_bytes(model, others), str(model.load_device))
