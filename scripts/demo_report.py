"""The demo's picture a person reads at a glance: per concept its reference photo, then the same prompt and seed
drawn by the base model, with the trigger token learned alone, and with R2MoE, each with its image alignment;
then the two-concept image beside its layout."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

CELL = 192  # px per picture cell: 64 px images are scaled up 3x pixel for pixel, 128 px ones 1.5x
LABEL = 22
COLUMNS = {"base": "base model, same prompt", "token_only": "trigger token learned alone", "r2moe": "R2MoE"}


@dataclass(frozen=True)
class ConceptRow:
    title: str  # "<token> class: prompt"
    reference: Path
    images: dict[str, Path]  # per column of COLUMNS that was drawn: the image
    alignment: dict[str, float] | None = None  # per column, and "renders" (true renders): image alignment x100


def _cell(path: Path) -> Image.Image:
    image = Image.open(path).convert("RGB")
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    square = image.crop((left, top, left + side, top + side))
    resample = Image.Resampling.NEAREST if side < CELL else Image.Resampling.LANCZOS
    return square.resize((CELL, CELL), resample)


def before_after_picture(rows: list[ConceptRow], composite: tuple[Path, Path, str] | None, path: Path) -> Path:
    """Write the picture (rows of reference | base model | token alone | R2MoE, each with its image alignment
    under it, under the reference what true renders of the concept score; then image | layout) to `path`.
    Columns no row drew are left out."""
    columns = [c for c in COLUMNS if any(c in row.images for row in rows)]
    width = (1 + max(len(columns), 2)) * CELL
    height = LABEL + sum(3 * LABEL + CELL for _ in rows) + (2 * LABEL + CELL if composite else 0)
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    for j, head in enumerate(["reference photo", *(COLUMNS[c] for c in columns)]):
        draw.text((j * CELL + 4, 4), head, fill="black")
    y = LABEL
    for row in rows:
        draw.text((4, y + 4), row.title, fill="black")
        canvas.paste(_cell(row.reference), (0, y + LABEL))
        if row.alignment is not None and "renders" in row.alignment:
            draw.text((4, y + LABEL + CELL + 4), f"true renders score {row.alignment['renders']:.1f}", fill="black")
        for j, column in enumerate(columns, start=1):
            if column in row.images:
                canvas.paste(_cell(row.images[column]), (j * CELL, y + LABEL))
            if row.alignment is not None and column in row.alignment:
                draw.text((j * CELL + 4, y + LABEL + CELL + 4), f"image alignment {row.alignment[column]:.1f}",
                          fill="black")
        y += 3 * LABEL + CELL
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
