"""Small PIL charts for the benchmark reports (no plotting library needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


def line_plot(series: dict[str, list[float]], title: str, xlabel: str, path: Path,
              size: tuple[int, int] = (760, 420)) -> None:
    """One line per series over x = 0..n-1, with a legend; y range from the data."""
    width, height = size
    left, right, top, bottom = 70, 190, 30, 40
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    values = [v for s in series.values() for v in s]
    lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
    if hi - lo < 1e-9:
        lo, hi = lo - 1, hi + 1
    n = max((len(s) for s in series.values()), default=1)

    def xy(i: int, v: float) -> tuple[float, float]:
        x = left + (width - left - right) * (i / max(n - 1, 1))
        return x, top + (height - top - bottom) * (1 - (v - lo) / (hi - lo))

    draw.rectangle([left, top, width - right, height - bottom], outline="black")
    for frac in np.linspace(0, 1, 5):
        v = lo + frac * (hi - lo)
        y = xy(0, v)[1]
        draw.line([left - 4, y, left, y], fill="black")
        draw.text((4, y - 6), f"{v:.3g}", fill="black")
    for i in range(n):
        x = xy(i, lo)[0]
        draw.text((x - 3, height - bottom + 4), str(i), fill="black")
    draw.text((left, 8), title, fill="black")
    draw.text(((width - right + left) // 2, height - 16), xlabel, fill="black")
    for k, (name, s) in enumerate(series.items()):
        colour = PALETTE[k % len(PALETTE)]
        points = [xy(i, v) for i, v in enumerate(s)]
        if len(points) > 1:
            draw.line(points, fill=colour, width=2)
        for x, y in points:
            draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=colour)
        ly = top + 16 * k
        draw.line([width - right + 10, ly + 6, width - right + 30, ly + 6], fill=colour, width=3)
        draw.text((width - right + 35, ly), name, fill="black")
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def grid_image(rows: dict[str, dict[str, list[np.ndarray]]], references: list[np.ndarray], columns: list[str],
               path: Path) -> None:
    """One row per method (its first image of every concept after the last task), a reference row on top."""
    size = references[0].shape[0]
    label_w = 130
    image = Image.new("RGB", (label_w + size * len(columns), size * (len(rows) + 1)), "white")
    draw = ImageDraw.Draw(image)
    draw.text((4, size // 2 - 6), "reference", fill="black")
    for j, ref in enumerate(references):
        image.paste(Image.fromarray(ref), (label_w + j * size, 0))
    for i, (name, images) in enumerate(rows.items(), start=1):
        draw.text((4, i * size + size // 2 - 6), name, fill="black")
        for j, token in enumerate(columns):
            if images.get(token):
                image.paste(Image.fromarray(images[token][0]), (label_w + j * size, i * size))
    path.parent.mkdir(parents=True, exist_ok=True)
    # 256 colours: sampled noise compresses badly as RGB (a 128 px grid is megabytes), and the repo keeps these.
    image.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)


def heatmap(matrix: np.ndarray, rows: list[str], columns: list[str], title: str, path: Path, cell: int = 34) -> None:
    """Values in [0, 1] as grey levels (white 0, black 1) with the value printed in each cell."""
    left, top = 90, 50
    height, width = matrix.shape
    image = Image.new("RGB", (left + cell * width + 10, top + cell * height + 10), "white")
    draw = ImageDraw.Draw(image)
    draw.text((4, 6), title, fill="black")
    for j, label in enumerate(columns):
        draw.text((left + j * cell + 4, top - 14), label[:5], fill="black")
    for i, label in enumerate(rows):
        draw.text((4, top + i * cell + cell // 2 - 6), label[:14], fill="black")
        for j in range(width):
            v = float(np.clip(matrix[i, j], 0.0, 1.0))
            grey = round(255 * (1 - v))
            box = [left + j * cell, top + i * cell, left + (j + 1) * cell - 1, top + (i + 1) * cell - 1]
            draw.rectangle(box, fill=(grey, grey, grey), outline=(200, 200, 200))
            draw.text((box[0] + 3, box[1] + cell // 2 - 6), f"{v:.2f}"[1:] if v < 1 else "1.0",
                      fill="white" if v > 0.5 else "black")
    image.save(path)
