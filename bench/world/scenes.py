"""Scenes of the base world: sampling, captions and rendering, all deterministic for a seed."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

from .vocab import BACKGROUNDS, COLOURS, COUNTS, POSITIONS, SHAPES, SIZE, TEXTURES

SUPERSAMPLE = 4


@dataclass(frozen=True)
class WorldObject:
    shape: str  # a base shape name, or a concept's polygon (then `polygon` is set)
    colour: tuple[int, int, int]
    texture: str = "plain"
    texture_colour: tuple[int, int, int] = (245, 245, 245)
    polygon: tuple[tuple[float, float], ...] = ()
    marking: str = "none"


@dataclass(frozen=True)
class Scene:
    objects: tuple[WorldObject, ...]
    count: int
    position: str
    background: str
    size: float = 0.34  # object size as a fraction of the canvas
    words: dict = field(default_factory=dict, compare=False)  # caption words: colour/texture/shape names


def random_scene(rng: random.Random) -> Scene:
    shape, colour, texture = rng.choice(SHAPES), rng.choice(list(COLOURS)), rng.choice(TEXTURES)
    count = rng.choice([1, 1, 2, 3])
    obj = WorldObject(shape=shape, colour=COLOURS[colour], texture=texture)
    return Scene(
        objects=(obj,) * count,
        count=count,
        position=rng.choice(list(POSITIONS)),
        background=rng.choice(list(BACKGROUNDS)),
        size=rng.uniform(0.28, 0.4) if count == 1 else rng.uniform(0.18, 0.24),
        words={"colour": colour, "texture": texture, "shape": shape},
    )


def caption(scene: Scene) -> str:
    w = scene.words
    texture = "" if w["texture"] == "plain" else f" {w['texture']}"
    noun = w["shape"] + (("es" if w["shape"].endswith("s") else "s") if scene.count > 1 else "")
    return f"{COUNTS[scene.count]} {w['colour']}{texture} {noun} {place(scene.position)}, {scene.background} background"


def place(position: str) -> str:
    return "in the center" if position == "center" else f"on the {position}"


def _base_polygon(shape: str) -> list[tuple[float, float]]:
    if shape == "square":
        return [(-1, -1), (1, -1), (1, 1), (-1, 1)]
    if shape == "triangle":
        return [(0, -1), (1, 0.85), (-1, 0.85)]
    if shape == "diamond":
        return [(0, -1), (1, 0), (0, 1), (-1, 0)]
    if shape == "star":
        return [
            (math.cos(a) * r, math.sin(a) * r)
            for i in range(10)
            for a, r in [(-math.pi / 2 + i * math.pi / 5, 1.0 if i % 2 == 0 else 0.45)]
        ]
    if shape == "cross":
        t = 0.35
        return [(-t, -1), (t, -1), (t, -t), (1, -t), (1, t), (t, t), (t, 1), (-t, 1), (-t, t), (-1, t), (-1, -t),
                (-t, -t)]
    if shape == "circle":
        return [(math.cos(2 * math.pi * i / 48), math.sin(2 * math.pi * i / 48)) for i in range(48)]
    raise ValueError(f"unknown shape {shape!r}")


def _texture_mask(texture: str, size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size]
    period = max(size // 6, 2)
    if texture == "striped":
        return (xx + yy) // (period // 2 or 1) % 2 == 0
    if texture == "dotted":
        return ((xx % period - period / 2) ** 2 + (yy % period - period / 2) ** 2) < (period / 4) ** 2
    if texture == "checkered":
        return (xx // period + yy // period) % 2 == 0
    return np.zeros((size, size), dtype=bool)


def _centres(count: int, position: str, size: float) -> list[tuple[float, float]]:
    cx, cy = POSITIONS[position]
    if count == 1:
        return [(cx, cy)]
    spread = size * 1.15
    horizontal = position in ("center", "top", "bottom")
    offsets = [(i - (count - 1) / 2) * spread for i in range(count)]
    return [(cx + o, cy) if horizontal else (cx, cy + o) for o in offsets]


def draw_object(canvas: Image.Image, obj: WorldObject, centre: tuple[float, float], size: float) -> None:
    """Draw one object (base shape or concept polygon) with its texture and marking, supersampled canvas."""
    big = canvas.size[0]
    radius = size * big / 2
    points = (obj.polygon and [(2 * x - 1, 2 * y - 1) for x, y in obj.polygon]) or _base_polygon(obj.shape)
    poly = [(centre[0] * big + x * radius, centre[1] * big + y * radius) for x, y in points]
    mask = Image.new("L", canvas.size, 0)
    ImageDraw.Draw(mask).polygon(poly, fill=255)
    fill = Image.new("RGB", canvas.size, obj.colour)
    if obj.texture != "plain":
        tex = _texture_mask(obj.texture, big)
        pattern = np.where(tex[..., None], np.array(obj.texture_colour), np.array(obj.colour)).astype(np.uint8)
        fill = Image.fromarray(pattern)
    canvas.paste(fill, (0, 0), mask)
    draw = ImageDraw.Draw(canvas)
    if obj.marking == "eye":
        r = radius * 0.22
        x, y = centre[0] * big, centre[1] * big - radius * 0.2
        draw.ellipse([x - r, y - r, x + r, y + r], fill=(250, 250, 250))
        draw.ellipse([x - r / 2, y - r / 2, x + r / 2, y + r / 2], fill=(10, 10, 10))
    elif obj.marking == "band":
        y = centre[1] * big
        draw.rectangle([centre[0] * big - radius, y - radius * 0.12, centre[0] * big + radius, y + radius * 0.12],
                       fill=obj.texture_colour)


def render(scene: Scene, size: int = SIZE) -> np.ndarray:
    """RGB uint8 [size, size, 3]; drawn at 4x and downsampled, so edges are antialiased."""
    big = size * SUPERSAMPLE
    canvas = Image.new("RGB", (big, big), BACKGROUNDS[scene.background])
    for obj, centre in zip(scene.objects, _centres(scene.count, scene.position, scene.size), strict=True):
        draw_object(canvas, obj, centre, scene.size)
    return np.asarray(canvas.resize((size, size), Image.Resampling.BOX))
