"""Turning segmentation masks prompted by layout boxes into region masks (the HLAG switch from boxes to masks).

Host- and model-neutral: SAM (or anything else) only has to answer "mask for this pixel box". What happens when
it answers badly (an empty or tiny mask, a mask spilling into a neighbour's box) is decided here, so the rule is
the same in every node and testable without a segmentation model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.nn import functional

from ...errors import InvalidInputError
from ...log import LOGGER
from ..layout import Layout, box_masks

PixelBox = tuple[float, float, float, float]
Segment = Callable[[PixelBox], torch.Tensor]  # pixel box (x0, y0, x1, y1) -> mask [H, W]
MAX_DILATE = 256


@dataclass(frozen=True)
class RefineOptions:
    """min_coverage: below this fraction of its box covered, a SAM mask is replaced by the box.
    clip_to_box: keep each (dilated) mask inside its box, so regions cannot bleed into each other.
    dilate_px: grow SAM masks by this many pixels (before clipping) to soften tight silhouettes."""

    min_coverage: float = 0.1
    clip_to_box: bool = True
    dilate_px: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_coverage <= 1.0:
            raise InvalidInputError(f"min_coverage must be in [0, 1], got {self.min_coverage}.")
        if not 0 <= self.dilate_px <= MAX_DILATE:
            raise InvalidInputError(f"dilate must be 0 to {MAX_DILATE} pixels, got {self.dilate_px}.")


@dataclass(frozen=True)
class RefineResult:
    masks: torch.Tensor  # [R, H, W] float32 in {0, 1}
    fallbacks: tuple[int, ...]  # regions that kept their box
    coverage: tuple[float, ...]  # SAM mask area inside the box / box area, per region


def pixel_boxes(layout: Layout, height: int, width: int) -> list[PixelBox]:
    """Each region's box in pixels of an image of this size (boxes are fractions, so any size works)."""
    return [(x0 * width, y0 * height, x1 * width, y1 * height) for x0, y0, x1, y1 in (r.box for r in layout.regions)]


def dilate(masks: torch.Tensor, pixels: int) -> torch.Tensor:
    """Binary dilation of [R, H, W] masks with a square of side 2 * pixels + 1."""
    if pixels <= 0:
        return masks
    size = 2 * pixels + 1
    return functional.max_pool2d(masks[:, None].float(), size, stride=1, padding=pixels)[:, 0]


def refine_masks(segment: Segment, layout: Layout, height: int, width: int, options: RefineOptions) -> RefineResult:
    """One mask per region at height x width: SAM's answer for the region's box, or the box where SAM failed."""
    boxes = box_masks(layout, height, width)
    refined, fallbacks, coverage = [], [], []
    for index, (box, pixel_box) in enumerate(zip(boxes, pixel_boxes(layout, height, width), strict=True)):
        found = segment(pixel_box)
        if tuple(found.shape) != (height, width):
            raise InvalidInputError(
                f"The segmentation model returned a {tuple(found.shape)} mask for a {height}x{width} image."
            )
        found = found.detach().float().cpu().clamp(0.0, 1.0).round()
        covered = float((found * box).sum() / box.sum().clamp(min=1.0))
        coverage.append(covered)
        if covered < options.min_coverage or not found.any():
            fallbacks.append(index)
            refined.append(box)
            continue
        mask = dilate(found[None], options.dilate_px)[0]
        refined.append(mask * box if options.clip_to_box else mask)
    if fallbacks:
        LOGGER.warning(
            "R2MoE: SAM found (almost) nothing in the box of region(s) %s (coverage %s < min_coverage %.2f); "
            "those regions keep their box mask.",
            ", ".join(str(i) for i in fallbacks),
            ", ".join(f"{coverage[i]:.2f}" for i in fallbacks),
            options.min_coverage,
        )
    masks = torch.stack(refined) if refined else torch.zeros((0, height, width))
    return RefineResult(masks=masks.float(), fallbacks=tuple(fallbacks), coverage=tuple(coverage))
