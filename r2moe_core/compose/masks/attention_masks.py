"""Region masks from the model's own cross-attention: where each region's concept tokens look during the early
steps (the idea behind FreeFuse and Concept Conductor), so refinement needs no segmentation model.

While the box-mask stage samples, `ConceptAttention` adds up, per region, the attention probability that every
image token gives the region prompt's concept tokens (heads averaged, every blending layer, every step of the
stage; each layer's map resized to the finest grid seen). `masks_from_attention` then turns each region's map
into a mask:

1. attention sinks go: cells above the map's 99th percentile are clipped to it, so a few cells that draw
   attention to every token cannot set the scale;
2. the search area is the region's box grown by `margin` (the concept may overhang its box a little);
3. the map is normalised to [0, 1] inside the search area and cut at Otsu's threshold (the cut that best
   separates two groups of values, so no fixed level has to suit every model);
4. of the cells above it, the connected group with the most attention is kept (stray cells elsewhere in the box
   are noise), grown by `grow` cells, since attention maps are coarser than the objects;
5. a cell claimed by two regions goes to the one whose normalised attention there is higher;
6. a mask covering less than `min_coverage` of its box falls back to the box (as a failed SAM mask does).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch.nn import functional

from ...errors import InvalidInputError
from ...log import LOGGER
from ..layout import Layout, box_masks
from .mask_refinement import RefineResult

SINK_QUANTILE = 0.99  # cells above this quantile of a map are attention sinks (clipped)
OTSU_BINS = 64


@dataclass(frozen=True)
class AttentionMaskOptions:
    """margin: how far past its box a mask may reach, as a fraction of the image's longer side (rounded to whole
    cells of the map's grid).
    grow: cells the kept group grows by on the map's grid (attention is coarser than the object).
    min_coverage: below this fraction of its box covered, a region keeps its box."""

    margin: float = 0.05
    grow: int = 1
    min_coverage: float = 0.1

    def __post_init__(self) -> None:
        if not (math.isfinite(self.margin) and 0.0 <= self.margin <= 0.5):
            raise InvalidInputError(f"margin is a fraction of the image side in [0, 0.5], got {self.margin}.")
        if not 0 <= self.grow <= 16:
            raise InvalidInputError(f"grow must be 0 to 16 cells, got {self.grow}.")
        if not 0.0 <= self.min_coverage <= 1.0:
            raise InvalidInputError(f"min_coverage must be in [0, 1], got {self.min_coverage}.")


class ConceptAttention:
    """Running sums of each region's concept-token attention maps, for one image (the first conditional row, as
    SAM refinement reads the first image of a batch).

    `positions[i]` are the token indices of region i's concept in its prompt (the trigger token's vectors, or
    every word of the prompt when it has none)."""

    def __init__(self, positions: Sequence[Sequence[int]]) -> None:
        self.positions = [torch.tensor(sorted(set(p)), dtype=torch.long) for p in positions]
        for index, found in enumerate(self.positions):
            if found.numel() == 0:
                raise InvalidInputError(f"Region {index} has no prompt tokens to read attention from.")
        self.recording = False
        self._sums: dict[tuple[int, int], torch.Tensor] = {}  # grid -> [R, h*w]
        self._counts: dict[tuple[int, int], int] = {}
        self.records = 0  # observable: layer calls recorded

    def record(self, q: torch.Tensor, keys: Sequence[torch.Tensor], heads: int, grid: tuple[int, int]) -> None:
        """q [rows, tokens, inner] (row 0 is read), keys: each region's K [1 or rows, prompt tokens, inner]."""
        if not self.recording:
            return
        if len(keys) != len(self.positions):
            raise InvalidInputError(f"{len(keys)} region keys for {len(self.positions)} recorded regions")
        tokens, inner = q.shape[1], q.shape[2]
        if heads < 1 or inner % heads:
            raise InvalidInputError(f"cannot split {inner} attention channels into {heads} heads")
        per_head = inner // heads
        query = q[:1].float().reshape(1, tokens, heads, per_head).transpose(1, 2)  # [1, heads, tokens, d]
        maps = []
        for k, where in zip(keys, self.positions, strict=True):
            key = k[:1].float().reshape(1, k.shape[1], heads, per_head).transpose(1, 2)
            probabilities = (query @ key.transpose(-1, -2) / math.sqrt(per_head)).softmax(-1)
            usable = where[where < k.shape[1]].to(probabilities.device)
            maps.append(probabilities[..., usable].sum(-1).mean(1)[0].cpu())  # [tokens]
        stacked = torch.stack(maps)
        self._sums[grid] = self._sums.get(grid, 0) + stacked
        self._counts[grid] = self._counts.get(grid, 0) + 1
        self.records += 1

    def maps(self) -> torch.Tensor | None:
        """[R, h, w] on the finest grid recorded, every grid's mean map weighted equally; None if nothing was."""
        if not self._sums:
            return None
        finest = max(self._sums, key=lambda g: g[0] * g[1])
        total = torch.zeros(len(self.positions), *finest)
        for (h, w), summed in self._sums.items():
            mean = (summed / self._counts[(h, w)]).reshape(-1, 1, h, w)
            if (h, w) != finest:
                mean = functional.interpolate(mean, size=finest, mode="bilinear", align_corners=False)
            total += mean[:, 0] / len(self._sums)
        return total


def otsu_threshold(values: torch.Tensor) -> float:
    """The cut in [0, 1] that maximises the between-group variance of `values` (already in [0, 1])."""
    histogram = torch.histc(values.float(), bins=OTSU_BINS, min=0.0, max=1.0)
    weights = histogram / histogram.sum().clamp_min(1)
    centres = (torch.arange(OTSU_BINS, dtype=torch.float32) + 0.5) / OTSU_BINS
    below = weights.cumsum(0)
    mean_below = (weights * centres).cumsum(0)
    mean_all = mean_below[-1]
    between = (mean_all * below - mean_below) ** 2 / (below * (1 - below)).clamp_min(1e-12)
    return float((torch.argmax(between[:-1]) + 1) / OTSU_BINS)


def strongest_component(cells: torch.Tensor, score: torch.Tensor) -> torch.Tensor:
    """Of the 8-connected groups of True `cells` [h, w], the one with the largest summed `score`."""
    height, width = cells.shape
    labels = torch.where(cells, torch.arange(1, height * width + 1, dtype=torch.float32).view(height, width),
                         torch.zeros(()))
    while True:  # each group takes its largest index, spreading one cell per pass
        spread = functional.max_pool2d(labels[None, None], 3, stride=1, padding=1)[0, 0] * cells
        if torch.equal(spread, labels):
            break
        labels = spread
    groups = labels[cells].unique()
    if groups.numel() == 0:
        return cells
    totals = torch.stack([score[labels == g].sum() for g in groups])
    return labels == groups[int(totals.argmax())]


def masks_from_attention(maps: torch.Tensor, layout: Layout, height: int, width: int,
                         options: AttentionMaskOptions) -> RefineResult:
    """One mask per region at height x width from recorded maps [R, h, w] (any grid size)."""
    regions = len(layout.regions)
    if maps.ndim != 3 or maps.shape[0] != regions:
        raise InvalidInputError(f"{tuple(maps.shape)} attention maps for {regions} layout regions")
    grid_h, grid_w = maps.shape[-2:]
    boxes = box_masks(layout, grid_h, grid_w)
    reach = round(options.margin * max(grid_h, grid_w))
    areas = functional.max_pool2d(boxes[:, None], 2 * reach + 1, stride=1, padding=reach)[:, 0] > 0 if reach else \
        boxes > 0
    normalised = torch.zeros_like(maps, dtype=torch.float32)
    chosen = torch.zeros_like(areas)
    for index in range(regions):
        area = areas[index]
        if not area.any():
            continue
        values = maps[index].float()
        values = values.clamp(max=float(torch.quantile(values[area], SINK_QUANTILE)))
        low, high = float(values[area].min()), float(values[area].max())
        scaled = ((values - low) / max(high - low, 1e-12)).clamp(0, 1) * area
        normalised[index] = scaled
        cut = otsu_threshold(scaled[area])
        kept = strongest_component((scaled >= cut) & area, scaled)
        if options.grow:
            kept = functional.max_pool2d(kept[None, None].float(), 2 * options.grow + 1, stride=1,
                                         padding=options.grow)[0, 0].bool() & area
        chosen[index] = kept
    owner = torch.where(chosen, normalised, torch.full_like(normalised, -1.0)).argmax(0)
    chosen &= owner[None] == torch.arange(regions).view(-1, 1, 1)
    full = functional.interpolate(chosen[:, None].float(), size=(height, width), mode="nearest")[:, 0]
    box_full = box_masks(layout, height, width)
    refined, fallbacks, coverage = [], [], []
    for index in range(regions):
        covered = float((full[index] * box_full[index]).sum() / box_full[index].sum().clamp(min=1.0))
        coverage.append(covered)
        if covered < options.min_coverage:
            fallbacks.append(index)
            refined.append(box_full[index])
        else:
            refined.append(full[index])
    if fallbacks:
        LOGGER.warning(
            "R2MoE: the concept attention of region(s) %s covers too little of its box (%s < min_coverage %.2f); "
            "those regions keep their box mask.", ", ".join(str(i) for i in fallbacks),
            ", ".join(f"{coverage[i]:.2f}" for i in fallbacks), options.min_coverage)
    masks = torch.stack(refined) if refined else torch.zeros((0, height, width))
    return RefineResult(masks=masks.float(), fallbacks=tuple(fallbacks), coverage=tuple(coverage))


PALETTE = ((1.0, 0.25, 0.25), (0.25, 0.6, 1.0), (0.3, 0.9, 0.3), (1.0, 0.8, 0.2), (0.8, 0.35, 1.0),
           (0.2, 0.9, 0.9))


def attention_picture(maps: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """[height, width, 3] in [0, 1]: each region's map (scaled to its own maximum, sinks clipped) in its own
    colour, so a user sees where every concept was read from."""
    picture = torch.zeros(3, height, width)
    for index, values in enumerate(maps.float()):
        top = float(torch.quantile(values.flatten(), SINK_QUANTILE))
        scaled = (values.clamp(max=top) / max(top, 1e-12))[None, None]
        scaled = functional.interpolate(scaled, size=(height, width), mode="bilinear", align_corners=False)[0, 0]
        picture += torch.tensor(PALETTE[index % len(PALETTE)]).view(3, 1, 1) * scaled
    return picture.clamp(0, 1).permute(1, 2, 0)
