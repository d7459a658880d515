"""Concepts: distinctive objects the base world never shows, defined by JSON generator parameters.

File format (`--concepts FILE`):
{"version": 1, "concepts": [{"name": "new1", "class": "toy", "polygon": [[x, y], ...] (3-16 points in [0, 1]),
  "colour": [r, g, b], "texture": "plain|striped|dotted|checkered", "texture_colour": [r, g, b],
  "marking": "none|eye|band"}, ...]}
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .scenes import Scene, WorldObject, place, render
from .vocab import BACKGROUNDS, POSITIONS, SIZE, TEXTURES

MARKINGS = ("none", "eye", "band")
CLASS_WORDS = ("toy", "badge", "kite", "charm", "token", "gem", "tile", "mascot", "sticker", "medal")


class ConceptFileError(ValueError):
    """A concept file that cannot be drawn; the message names the concept and the field."""


@dataclass(frozen=True)
class ConceptSpec:
    name: str
    class_word: str
    polygon: tuple[tuple[float, float], ...]
    colour: tuple[int, int, int]
    texture: str = "plain"
    texture_colour: tuple[int, int, int] = (245, 245, 245)
    marking: str = "none"

    @property
    def token(self) -> str:
        return f"<{self.name}>"

    def object(self) -> WorldObject:
        return WorldObject(shape=self.name, colour=self.colour, texture=self.texture,
                           texture_colour=self.texture_colour, polygon=self.polygon, marking=self.marking)

    def to_dict(self) -> dict:
        return {"name": self.name, "class": self.class_word, "polygon": [list(p) for p in self.polygon],
                "colour": list(self.colour), "texture": self.texture, "texture_colour": list(self.texture_colour),
                "marking": self.marking}


def _rgb(value: object, where: str) -> tuple[int, int, int]:
    if not (isinstance(value, list) and len(value) == 3 and all(isinstance(c, int) and 0 <= c <= 255 for c in value)):
        raise ConceptFileError(f"{where} must be [r, g, b] with integers 0-255, got {value!r}")
    return (value[0], value[1], value[2])


def parse_concept(row: dict, index: int) -> ConceptSpec:
    where = f"concept #{index + 1} ({row.get('name', '?')!r})"
    name = row.get("name")
    if not isinstance(name, str) or not name.isidentifier():
        raise ConceptFileError(f"{where}: 'name' must be a word of letters, digits or '_', got {name!r}")
    polygon = row.get("polygon")
    if not isinstance(polygon, list) or not 3 <= len(polygon) <= 16:
        raise ConceptFileError(f"{where}: 'polygon' needs 3 to 16 [x, y] points")
    points = []
    for p in polygon:
        if not (isinstance(p, list) and len(p) == 2 and all(isinstance(v, (int, float)) and math.isfinite(v)
                                                            and 0.0 <= v <= 1.0 for v in p)):
            raise ConceptFileError(f"{where}: polygon point {p!r} must be [x, y] within [0, 1]")
        points.append((float(p[0]), float(p[1])))
    texture = row.get("texture", "plain")
    if texture not in TEXTURES:
        raise ConceptFileError(f"{where}: texture {texture!r} is not one of {TEXTURES}")
    marking = row.get("marking", "none")
    if marking not in MARKINGS:
        raise ConceptFileError(f"{where}: marking {marking!r} is not one of {MARKINGS}")
    class_word = row.get("class", "object")
    if not isinstance(class_word, str) or not class_word.isalpha():
        raise ConceptFileError(f"{where}: 'class' must be one word, got {class_word!r}")
    return ConceptSpec(name, class_word, tuple(points), _rgb(row.get("colour"), f"{where}: 'colour'"), texture,
                       _rgb(row.get("texture_colour", [245, 245, 245]), f"{where}: 'texture_colour'"), marking)


def load_concepts(path: str | Path) -> list[ConceptSpec]:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ConceptFileError(f"{path}: cannot read a JSON concept file ({exc})") from exc
    if not isinstance(data, dict) or data.get("version") != 1 or not isinstance(data.get("concepts"), list):
        raise ConceptFileError(f"{path}: expected {{'version': 1, 'concepts': [...]}}")
    specs = [parse_concept(row, i) for i, row in enumerate(data["concepts"])]
    names = [s.name for s in specs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConceptFileError(f"{path}: duplicate concept names {duplicates}")
    return specs


def concept_images(spec: ConceptSpec, count: int = 5, seed: int = 0, size: int = SIZE
                   ) -> list[tuple[np.ndarray, str]]:
    """3 to 7 photos of the concept in varied backgrounds and positions, with captions, `size` px square."""
    if not 1 <= count <= 16:
        raise ValueError("count must be between 1 and 16")
    rng = random.Random(f"{spec.name}:{seed}")
    backgrounds, positions = list(BACKGROUNDS), list(POSITIONS)
    rng.shuffle(backgrounds)
    rng.shuffle(positions)
    out = []
    for i in range(count):
        background, position = backgrounds[i % len(backgrounds)], positions[i % len(positions)]
        scene = Scene(objects=(spec.object(),), count=1, position=position, background=background,
                      size=rng.uniform(0.34, 0.44))
        words = f"photo of a {spec.token} {spec.class_word} {place(position)}, {background} background"
        out.append((render(scene, size), words))
    return out


def random_concept(name: str, rng: random.Random) -> ConceptSpec:
    """A new irregular shape with its own colour, texture and marking."""
    vertices = rng.randint(5, 9)
    start = rng.uniform(0, 2 * math.pi)  # evenly spread, jittered angles: irregular but never a sliver
    angles = [start + (i + rng.uniform(-0.3, 0.3)) * 2 * math.pi / vertices for i in range(vertices)]
    polygon = tuple(
        (round(0.5 + 0.5 * r * math.cos(a), 3), round(0.5 + 0.5 * r * math.sin(a), 3))
        for a in angles
        for r in [rng.uniform(0.45, 1.0)]
    )
    return ConceptSpec(
        name=name,
        class_word=rng.choice(CLASS_WORDS),
        polygon=polygon,
        colour=tuple(rng.randint(30, 230) for _ in range(3)),  # type: ignore[arg-type]
        texture=rng.choice(TEXTURES),
        texture_colour=tuple(rng.randint(0, 255) for _ in range(3)),  # type: ignore[arg-type]
        marking=rng.choice(MARKINGS),
    )


def class_scene(rng: random.Random) -> Scene:
    """One object of a concept class, drawn fresh: a `random_concept` shape, colour, texture and marking, captioned
    with its class word alone (`photo of a kite on the left, sand background`). Pretraining on these teaches the
    world what a kite or a badge can look like, as a photo model has seen many dogs before it learns yours; a
    learned concept is then one instance of a known class, not a shape the model has never drawn."""
    spec = random_concept("class", rng)
    position, background = rng.choice(list(POSITIONS)), rng.choice(list(BACKGROUNDS))
    return Scene(objects=(spec.object(),), count=1, position=position, background=background,
                 size=rng.uniform(0.34, 0.44), words={"class": spec.class_word})


def lookalike(spec: ConceptSpec, name: str, rng: random.Random, change: str) -> ConceptSpec:
    """A concept that differs from `spec` in one respect only (`colour`, `marking` or `shape`): the pairs a
    personal-concept model must keep apart (two mugs of one design in other colours, two similar dogs)."""
    if change == "colour":
        return replace(spec, name=name, colour=tuple(rng.randint(30, 230) for _ in range(3)))  # type: ignore[arg-type]
    if change == "marking":
        return replace(spec, name=name, marking=rng.choice([m for m in MARKINGS if m != spec.marking]))
    return replace(spec, name=name, polygon=random_concept(name, rng).polygon)


def heldout_set(count: int = 8) -> list[ConceptSpec]:
    """The held-out concept set: half new concepts, half lookalikes of them (another colour, marking or shape).
    No default of the pack or the benchmark was chosen on it; results on it are reported, never tuned on."""
    rng = random.Random(f"r2moe-world-heldout-{count}")
    originals = [random_concept(f"held{2 * i + 1}", rng) for i in range(count // 2)]
    changes = ("colour", "marking", "shape")
    return [spec for i, original in enumerate(originals)
            for spec in (original, lookalike(original, f"held{2 * i + 2}", rng, changes[i % len(changes)]))]


def write_default_sets(folder: Path) -> list[Path]:
    """The shipped sets: 10 concepts (default), 30 (long sequence) and the 8-concept held-out set, deterministic."""
    sets = {}
    for count in (10, 30):
        rng = random.Random(f"r2moe-world-concepts-{count}")
        sets[f"concepts_{count}.json"] = [random_concept(f"new{i + 1}", rng) for i in range(count)]
    sets["concepts_heldout_8.json"] = heldout_set(8)
    paths = []
    for name, specs in sets.items():
        path = folder / name
        path.write_text(json.dumps({"version": 1, "concepts": [s.to_dict() for s in specs]}, indent=1) + "\n")
        paths.append(path)
    return paths
