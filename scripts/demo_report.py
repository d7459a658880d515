"""The demo's picture a person reads at a glance: per concept its reference photo, the base model's image of the
same prompt and the image after learning, with image alignment before and after; then the two-concept image
beside its layout."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

CELL = 192  # px per picture cell: the world's 64 px images are scaled up 3x, pixel for pixel
LABEL = 22


@dataclass(frozen=True)
class ConceptRow:
    title: str  # "<token> class: prompt"
    reference: Path
    base: Path
    after: Path
    alignment: tuple[float, float] | None = None  # image alignment (x100) before and after learning


def _cell(path: Path) -> Image.Image:
    image = Image.open(path).convert("RGB")
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    square = image.crop((left, top, left + side, top + side))
    resample = Image.Resampling.NEAREST if side < CELL else Image.Resampling.LANCZOS
    return square.resize((CELL, CELL), resample)


def before_after_picture(rows: list[ConceptRow], composite: tuple[Path, Path, str] | None, path: Path) -> Path:
    """Write the picture (rows of reference | base model | after learning; then image | layout) to `path`."""
    heads = ("reference photo", "base model, same prompt", "after learning")
    height = LABEL + sum(2 * LABEL + CELL for _ in rows) + (2 * LABEL + CELL if composite else 0)
    canvas = Image.new("RGB", (3 * CELL, height), "white")
    draw = ImageDraw.Draw(canvas)
    for j, head in enumerate(heads):
        draw.text((j * CELL + 4, 4), head, fill="black")
    y = LABEL
    for row in rows:
        scores = "" if row.alignment is None else \
            f"  (image alignment {row.alignment[0]:.1f} -> {row.alignment[1]:.1f})"
        draw.text((4, y + 4), row.title + scores, fill="black")
        for j, image in enumerate((row.reference, row.base, row.after)):
            canvas.paste(_cell(image), (j * CELL, y + LABEL))
        y += 2 * LABEL + CELL
    if composite is not None:
        image, layout, prompt = composite
        draw.text((4, y + 4), f"two concepts in one image: {prompt}", fill="black")
        canvas.paste(_cell(image), (0, y + LABEL))
        canvas.paste(_cell(layout), (CELL, y + LABEL))
        draw.text((2 * CELL + 4, y + LABEL + 4), "left: the image\nmiddle: its layout", fill="black")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.png")
    canvas.save(tmp)
    tmp.replace(path)
    return path
