"""The world's vocabulary: every word a caption can use, and how it is drawn."""

from __future__ import annotations

import os

# Pixels per side the world renders and the benchmark samples at (latents are 1/8 of it): 128 for the shipped world
# v3. R2MOE_WORLD_SIZE=64 draws at world v2's size, for a v2 checkpoint restored from the history.
SIZE = int(os.environ.get("R2MOE_WORLD_SIZE", "128"))

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 210, 40),
    "purple": (150, 60, 190),
    "orange": (245, 140, 30),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "sky": (150, 200, 245),
    "grass": (90, 150, 70),
    "sand": (225, 205, 150),
    "night": (25, 30, 70),
    "snow": (225, 230, 235),
    "brick": (150, 70, 55),
}
SHAPES = ("circle", "square", "triangle", "diamond", "star", "cross")
TEXTURES = ("plain", "striped", "dotted", "checkered")
# Where an object's centre lies, in normalised canvas coordinates.
POSITIONS: dict[str, tuple[float, float]] = {
    "center": (0.5, 0.5),
    "left": (0.27, 0.5),
    "right": (0.73, 0.5),
    "top": (0.5, 0.27),
    "bottom": (0.5, 0.73),
}
COUNTS = {1: "one", 2: "two", 3: "three"}
