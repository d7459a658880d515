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


@dataclass(frozen=True)
class Composite:
    """Two or three *different* objects (no shape or colour shared), each alone in its own named place: the
    pretraining scenes that teach the base model a multi-object prompt before any concept exists."""

    parts: tuple[Scene, ...]  # one-object scenes, each at its place, all on `background`
    background: str


# Places of a composite's objects, in caption order; their centres never let two objects of the size range touch.
COMPOSITE_PLACES = {2: (("left", "right"), ("right", "left"), ("top", "bottom"), ("bottom", "top")),
                    3: (("left", "center", "right"), ("right", "center", "left"))}
COMPOSITE_SIZES = {2: (0.26, 0.34), 3: (0.17, 0.21)}


def random_composite(rng: random.Random, parts: int) -> Composite:
    shapes, colours = rng.sample(SHAPES, parts), rng.sample(list(COLOURS), parts)
    background = rng.choice(list(BACKGROUNDS))
    places, (low, high) = rng.choice(COMPOSITE_PLACES[parts]), COMPOSITE_SIZES[parts]
    members = []
    for shape, colour, where in zip(shapes, colours, places, strict=True):
        texture = rng.choice(TEXTURES)
        members.append(Scene(objects=(WorldObject(shape=shape, colour=COLOURS[colour], texture=texture),), count=1,
                             position=where, background=background, size=rng.uniform(low, high),
                             words={"colour": colour, "texture": texture, "shape": shape}))
    return Composite(tuple(members), background)


def caption(scene: Scene | Composite) -> str:
    if isinstance(scene, Composite):
        return " and ".join(_phrase(p.words, 0) + f" {place(p.position)}" for p in scene.parts) + \
            f", {scene.background} background"
    if "class" in scene.words:  # one object of a concept class (concepts.class_scene), named as its photos are
        return f"photo of a {scene.words['class']} {place(scene.position)}, {scene.background} background"
    return f"{_phrase(scene.words, scene.count)} {place(scene.position)}, {scene.background} background"


def _phrase(w: dict, count: int) -> str:
    """`one red striped star`, `two blue circles`; count 0 is a composite's object: `a red striped star`."""
    texture = "" if w["texture"] == "plain" else f" {w['texture']}"
    noun = w["shape"] + (("es" if w["shape"].endswith("s") else "s") if count > 1 else "")
    return f"{COUNTS[count] if count else 'a'} {w['colour']}{texture} {noun}"


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


def render(scene: Scene | Composite, size: int = SIZE) -> np.ndarray:
    """RGB uint8 [size, size, 3]; drawn at 4x and downsampled, so edges are antialiased."""
    big = size * SUPERSAMPLE
    canvas = Image.new("RGB", (big, big), BACKGROUNDS[scene.background])
    for part in scene.parts if isinstance(scene, Composite) else (scene,):
        for obj, centre in zip(part.objects, _centres(part.count, part.position, part.size), strict=True):
            draw_object(canvas, obj, centre, part.size)
    return np.asarray(canvas.resize((size, size), Image.Resampling.BOX))
