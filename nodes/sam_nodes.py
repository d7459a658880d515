"""SAM nodes: load a Segment Anything checkpoint from models/sams, refine layout boxes into region masks."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import comfy.model_management
import torch
from comfy_api.latest import io

from ..r2moe_core.compose.layout import validate_layout
from ..r2moe_core.compose.masks.mask_refinement import MAX_DILATE, RefineOptions, RefineResult, refine_masks
from ..r2moe_core.compose.masks.sam_loader import LoadedSam, box_segmenter, expected_files_hint, load_sam
from ..r2moe_core.errors import InvalidInputError
from ..r2moe_core.log import LOGGER
from .host.model_folders import sam_files, sam_path
from .types import LAYOUT_TIP, SAM_TIP, Layout, Sam

CATEGORY = "R2MoE/regional"


@contextmanager
def sam_on_compute_device(sam: LoadedSam) -> Iterator[None]:
    """SAM sits on the offload device between uses; ComfyUI's models are asked to make room on a GPU first."""
    device = comfy.model_management.get_torch_device()
    if device.type != "cpu":
        weights = sum(p.numel() * p.element_size() for p in sam.model.parameters())
        comfy.model_management.free_memory(3 * weights + 1024**3, device)
    sam.model.to(device)
    try:
        yield
    finally:
        sam.model.to(comfy.model_management.unet_offload_device())


def check_image(image: Any) -> torch.Tensor:
    if not isinstance(image, torch.Tensor) or image.ndim != 4 or image.shape[-1] < 3 or image.shape[0] == 0:
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise InvalidInputError(f"The image input must be an IMAGE batch [batch, height, width, 3], got {shape}.")
    if image.shape[0] > 1:
        LOGGER.warning("R2MoE: SAM refine got %d images; masks are made from the first one.", image.shape[0])
    return image[0]


def refine_with_sam(sam: LoadedSam, image: torch.Tensor, layout: Any, options: RefineOptions) -> RefineResult:
    """Masks [R, H, W] at the image's size: SAM prompted with each region's box (scaled to the image)."""
    if not isinstance(sam, LoadedSam):
        raise InvalidInputError(f"The sam input must come from R2MoE SAM Loader, got {type(sam).__name__}.")
    layout = validate_layout(layout)
    frame = check_image(image)
    height, width = int(frame.shape[0]), int(frame.shape[1])
    if not layout.regions:
        return RefineResult(masks=torch.zeros((0, height, width)), fallbacks=(), coverage=())
    with torch.inference_mode(), sam_on_compute_device(sam):
        segment = box_segmenter(sam, frame)
        return refine_masks(segment, layout, height, width, options)


def refine_inputs() -> list[io.Input]:
    """The refine options, shared by R2MoESAMRefine and R2MoEHierarchicalSampler."""
    return [
        io.Float.Input(
            "min_coverage",
            default=0.1,
            min=0.0,
            max=1.0,
            step=0.01,
            optional=True,
            tooltip="If SAM's mask covers less than this fraction of a region's box, the region keeps its box.",
        ),
        io.Boolean.Input(
            "clip_to_box",
            default=True,
            optional=True,
            tooltip="Cut each SAM mask to its region's box, so a concept cannot bleed into its neighbours.",
        ),
        io.Int.Input(
            "dilate",
            default=0,
            min=0,
            max=MAX_DILATE,
            optional=True,
            tooltip="Grow SAM masks by this many pixels (before cutting them to the box).",
        ),
    ]


class R2MoESAMLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="R2MoESAMLoader",
            display_name="R2MoE SAM Loader",
            category=CATEGORY,
            description=(
                "Load a Segment Anything checkpoint from models/sams (ViT-B, L or H, recognised from the weights). "
                f"Expected files: {expected_files_hint()}."
            ),
            inputs=[io.Combo.Input("sam_name", options=sam_files(), tooltip="A SAM checkpoint in models/sams.")],
            outputs=[Sam.Output(display_name="sam", tooltip="The loaded Segment Anything model.")],
        )

    @classmethod
    def validate_inputs(cls, sam_name) -> bool | str:
        # Replaces the stock "value not in list" check with a message that says where to put which file.
        try:
            sam_path(sam_name)
        except InvalidInputError as err:
            return str(err)
        return True

    @classmethod
    def execute(cls, sam_name) -> io.NodeOutput:
        return io.NodeOutput(load_sam(sam_path(sam_name)))


class R2MoESAMRefine(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="R2MoESAMRefine",
            display_name="R2MoE SAM Refine",
            category=CATEGORY,
            description=(
                "HLAG mask refinement: segment an image with SAM, prompting it with each layout region's box, and "
                "output one mask per region (layout order, image size) for R2MoE Regional Apply's mask input."
            ),
            inputs=[
                io.Image.Input("image", tooltip="Usually the decoded x0 estimate at the switch step."),
                Layout.Input("layout", tooltip=LAYOUT_TIP),
                Sam.Input("sam", tooltip=SAM_TIP),
                *refine_inputs(),
            ],
            outputs=[
                io.Mask.Output(
                    display_name="masks",
                    tooltip="One mask per region, in the layout's order (a region's box where SAM found nothing).",
                ),
            ],
        )

    @classmethod
    def execute(cls, image, layout, sam, min_coverage=0.1, clip_to_box=True, dilate=0) -> io.NodeOutput:
        options = RefineOptions(min_coverage=min_coverage, clip_to_box=clip_to_box, dilate_px=dilate)
        return io.NodeOutput(refine_with_sam(sam, image, layout, options).masks)


SAM_NODES: list[type[io.ComfyNode]] = [R2MoESAMLoader, R2MoESAMRefine]
