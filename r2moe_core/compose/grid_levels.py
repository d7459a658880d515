"""How coarse each cross-attention layer's token grid is, counted from the UNet's finest attention grid.

A token count names different layers at different image sizes and in different families (SD1.x's finest grid
at 512 px holds 4096 tokens, a 128 px model's 256), while "the two finest grids" means the same everywhere: on
SD1.x and SD 2.x the 64² and 32² grids at 512 px, on SDXL (no attention at full latent size) the two grids it has.
Levels come from the UNet's structure (how many down- and upsampling steps lie before a block), not from the
sampler's latent, so they hold for any image size and under patches that resize the latent inside the UNet.
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

from ..bank.attention_targets import block_key
from ..errors import InvalidInputError


def _holds(block: nn.Module, kind: str) -> bool:
    """Whether `block` contains a module of class `kind` (the SD UNet's `Downsample` / `Upsample`, by name, so
    any UNet written in that layout answers without importing its host)."""
    return any(type(module).__name__ == kind for module in block.modules())


def block_depths(unet: nn.Module) -> dict[tuple[str, int], int]:
    """(block kind, number) -> how many times the latent has been halved where that block runs."""
    inputs, outputs = getattr(unet, "input_blocks", None), getattr(unet, "output_blocks", None)
    if not isinstance(inputs, nn.ModuleList) or not isinstance(outputs, nn.ModuleList):
        raise InvalidInputError(
            "Cannot tell this UNet's attention grids apart (it has no SD-layout input_blocks / output_blocks); "
            "set finest_grids to 0 and choose layers with min_tokens instead."
        )
    depths: dict[tuple[str, int], int] = {}
    depth = 0
    for number, block in enumerate(inputs):
        depths[("input", number)] = depth
        depth += _holds(block, "Downsample")
    depths[("middle", 0)] = depth
    for number, block in enumerate(outputs):
        depths[("output", number)] = depth
        depth -= _holds(block, "Upsample")
    return depths


def grid_levels(unet: nn.Module, names: Iterable[str]) -> dict[str, int]:
    """Layer path -> its grid's level: 0 for the finest grid among `names`, 1 for the next coarser, and so on."""
    depths = block_depths(unet)
    found = {}
    for name in names:
        kind, number, _ = block_key(name)
        if (kind, number) not in depths:
            raise InvalidInputError(f"The layer {name} is not in this UNet; connect the model the bank was made for.")
        found[name] = depths[(kind, number)]
    finest = min(found.values(), default=0)
    return {name: depth - finest for name, depth in found.items()}
