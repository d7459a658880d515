"""A picture of a layout: box outlines and labels over a blank canvas or an image, to check a plan at a glance."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..errors import InvalidInputError
from .layout import Layout, box_masks

_COLORS = [
    (230, 57, 70),
    (29, 161, 242),
    (46, 196, 102),
    (255, 183, 3),
    (155, 89, 182),
    (0, 188, 212),
    (255, 112, 67),
    (141, 110, 99),
]
_CANVAS = (46, 46, 52)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: a fixed-size bitmap font
        return ImageFont.load_default()


def _fit(draw: ImageDraw.ImageDraw, text: str, font, width: float, max_lines: int = 3) -> str:
    """Word-wrap `text` into at most `max_lines` lines no wider than `width`; the cut is marked with '…'."""
    lines: list[str] = []
    words = text.split()
    while words and len(lines) < max_lines:
        line = words.pop(0)
        while words and draw.textlength(f"{line} {words[0]}", font=font) <= width:
            line = f"{line} {words.pop(0)}"
        lines.append(line)
    if words:
        lines[-1] += " …"
    for index, line in enumerate(lines):  # a single word longer than the box: cut it
        while len(line) > 2 and draw.textlength(line, font=font) > width:
            line = line[:-2] + "…"
        lines[index] = line
    return "\n".join(lines)


def _label(draw: ImageDraw.ImageDraw, xy: tuple[int, int], text: str, color: tuple[int, int, int], font) -> None:
    left, top, right, bottom = draw.multiline_textbbox(xy, text, font=font)
    draw.rectangle((left - 2, top - 2, right + 2, bottom + 2), fill=color)
    draw.multiline_text(xy, text, fill=(255, 255, 255), font=font)


def draw_layout(layout: Layout, image: np.ndarray | None = None) -> np.ndarray:
    """uint8 [height, width, 3] at the layout's canvas size; `image` (float [H, W, C] in 0..1) is resized to it."""
    size = (layout.width, layout.height)
    if image is None:
        canvas = Image.new("RGB", size, _CANVAS)
    else:
        if image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
            raise InvalidInputError(f"the preview image must be [height, width, channels], got {image.shape}")
        pixels = (np.clip(np.nan_to_num(image[..., :3]), 0.0, 1.0) * 255).round().astype(np.uint8)
        canvas = Image.fromarray(np.repeat(pixels, 3, axis=-1) if pixels.shape[-1] == 1 else pixels)
        canvas = canvas.convert("RGB")
        if canvas.size != size:
            canvas = canvas.resize(size, Image.Resampling.BILINEAR)
    draw = ImageDraw.Draw(canvas)
    line = max(2, min(size) // 128)
    font = _font(max(10, min(size) // 32))
    for index, region in enumerate(layout.regions):
        color = _COLORS[index % len(_COLORS)]
        x0, y0, x1, y1 = region.box
        box = (x0 * size[0], y0 * size[1], x1 * size[0] - 1, y1 * size[1] - 1)
        draw.rectangle(box, outline=color, width=line)
        text = _fit(draw, f"{index}: {region.prompt}", font, box[2] - box[0] - 2 * line - 6)
        _label(draw, (int(box[0]) + line + 2, int(box[1]) + line + 2), text, color, font)
    if layout.background:
        text = _fit(draw, f"background: {layout.background}", font, size[0] - 2 * line - 6, max_lines=1)
        height = draw.multiline_textbbox((0, 0), text, font=font)[3]
        _label(draw, (line + 2, max(0, size[1] - height - line - 4)), text, _CANVAS, font)
    return np.asarray(canvas, dtype=np.uint8)


def layout_masks(layout: Layout) -> np.ndarray:
    """float32 [regions, height, width] at the canvas size: 1 inside each box."""
    return box_masks(layout, layout.height, layout.width).numpy()
