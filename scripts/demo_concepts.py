"""Small concept photo sets the demo draws itself when no IMAGES folders are given (no downloads, no copies of
../shared data): a distinctive object in a few poses on varied backgrounds, with a caption.txt like real sets."""

from __future__ import annotations

import random
from pathlib import Path

from PIL import Image, ImageDraw

CONCEPTS = {
    "striped_mug": {"class": "mug", "colour": (200, 40, 40), "stripe": (250, 240, 230), "shape": "mug"},
    "spotted_ball": {"class": "ball", "colour": (40, 90, 210), "stripe": (250, 210, 40), "shape": "ball"},
}
BACKGROUNDS = [((70, 120, 70), "on the grass"), ((150, 150, 160), "on a table"), ((60, 90, 150), "by the sea"),
               ((170, 130, 90), "on a wooden floor"), ((220, 220, 215), "in a white room")]


def _draw(spec: dict, background: tuple[int, int, int], rng: random.Random, size: int) -> Image.Image:
    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)
    s = rng.uniform(0.35, 0.55) * size
    x, y = rng.uniform(0.1, 0.9 - s / size) * size, rng.uniform(0.15, 0.85 - s / size) * size
    if spec["shape"] == "mug":
        draw.rectangle([x, y, x + s * 0.75, y + s], fill=spec["colour"])
        draw.arc([x + s * 0.6, y + s * 0.2, x + s * 1.0, y + s * 0.7], -90, 90, fill=spec["colour"], width=int(s / 10))
        for k in range(1, 4):
            yy = y + k * s / 4
            draw.rectangle([x, yy - s / 20, x + s * 0.75, yy + s / 20], fill=spec["stripe"])
    else:
        draw.ellipse([x, y, x + s, y + s], fill=spec["colour"])
        for _ in range(6):
            cx, cy, r = x + rng.uniform(0.2, 0.8) * s, y + rng.uniform(0.2, 0.8) * s, s / 12
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=spec["stripe"])
    return image


def draw_concept_sets(root: Path, count: int = 5, size: int = 256, seed: int = 0) -> dict[str, tuple[Path, str]]:
    """Write each concept's images and caption.txt under root/<name>; returns name -> (folder, class word)."""
    out = {}
    for index, (name, spec) in enumerate(CONCEPTS.items()):
        rng = random.Random(seed * 100 + index)
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        captions = []
        for i in range(count):
            background, where = BACKGROUNDS[(i + index) % len(BACKGROUNDS)]
            _draw(spec, background, rng, size).save(folder / f"{i:02d}.png")
            captions.append(f"<new1> {spec['class']} {where}")
        (folder / "caption.txt").write_text("\n".join(captions) + "\n")
        out[name] = (folder, spec["class"])
    return out
