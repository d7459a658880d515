"""Which learned concept, if any, a region of a generated image shows (the multi-concept track's judge).

A region is its box cropped from the 64 px image, padded to a square with its border colour and resized to
64 px, embedded with the world evaluator's `embed`. It shows concept c when c's reference centroid is the nearest
(cosine) of all concepts' centroids and the cosine clears c's threshold τ_c; otherwise it shows none of them.

References are made the way the metric sees generated regions: the concept drawn inside such a box (centre between
the box centre and the world position its place word names, jittered size), on every background, passed through
the world VAE, cropped and resized. τ_c is calibrated on a fit half of them against "no concept" crops made the
same way (an empty background, or a base-world shape: the model may draw a plain object instead of the concept),
as the cut that best separates the two (balanced accuracy). The other half, with its own jitters, is held out and
the recogniser's accuracy on it is reported next to every result, so its verdicts can be weighed.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from r2moe_core.compose.layout import Layout, Region, box_masks

from .concepts import ConceptSpec
from .scenes import SUPERSAMPLE, WorldObject, draw_object
from .vocab import BACKGROUNDS, COLOURS, POSITIONS, SHAPES, SIZE, TEXTURES

NONE = "none"
Features = Callable[[list[np.ndarray]], torch.Tensor]  # images -> unit-norm features [N, F]
Box = tuple[float, float, float, float]
Decode = Callable[[list[np.ndarray]], list[np.ndarray]]  # images -> the same through the world VAE


def crop(image: np.ndarray, box: Box, size: int = SIZE) -> np.ndarray:
    """The box's pixels (half-open, as `box_masks` places them), padded to a square with the median colour of
    their 2-px border and resized to size x size: the aspect ratio is kept, so an object in a half or a third of
    the canvas looks to the evaluator as it does in the whole-canvas scenes it was trained on."""
    height, width = image.shape[:2]
    mask = box_masks(Layout(width=width, height=height, background="", regions=(Region("x", box),)), height, width)[0]
    rows, cols = mask.any(1).nonzero()[:, 0], mask.any(0).nonzero()[:, 0]
    part = image[int(rows[0]):int(rows[-1]) + 1, int(cols[0]):int(cols[-1]) + 1]
    border = np.concatenate([part[:2].reshape(-1, 3), part[-2:].reshape(-1, 3), part[:, :2].reshape(-1, 3),
                             part[:, -2:].reshape(-1, 3)])
    side = max(part.shape[:2])
    square = np.empty((side, side, 3), np.uint8)
    square[:] = np.median(border, 0).round().astype(np.uint8)
    top, left = (side - part.shape[0]) // 2, (side - part.shape[1]) // 2
    square[top:top + part.shape[0], left:left + part.shape[1]] = part
    return np.asarray(Image.fromarray(square).resize((size, size), Image.Resampling.BILINEAR))


Placed = tuple[WorldObject, tuple[float, float], float]  # object, centre (fractions), size


def draw_many(background: str, objects: Sequence[Placed]) -> np.ndarray:
    """A 64 px canvas with objects at arbitrary centres (the scene renderer's drawing)."""
    big = SIZE * SUPERSAMPLE
    canvas = Image.new("RGB", (big, big), BACKGROUNDS[background])
    for obj, centre, size in objects:
        draw_object(canvas, obj, centre, size)
    return np.asarray(canvas.resize((SIZE, SIZE), Image.Resampling.BOX))


def draw(background: str, obj: WorldObject | None, centre: tuple[float, float], size: float) -> np.ndarray:
    """A 64 px canvas with at most one object."""
    return draw_many(background, [] if obj is None else [(obj, centre, size)])


def _base_object(rng: random.Random) -> WorldObject:
    return WorldObject(shape=rng.choice(SHAPES), colour=COLOURS[rng.choice(list(COLOURS))],
                       texture=rng.choice(TEXTURES))


def reference_images(spec: ConceptSpec | None, box: Box, place: str, count: int, rng: random.Random
                     ) -> list[np.ndarray]:
    """`count` canvases with the concept (None: nothing or a base-world shape) placed for this box."""
    low, high = sorted(((box[0] + box[2]) / 2, POSITIONS[place][0]))
    backgrounds = list(BACKGROUNDS)
    rng.shuffle(backgrounds)
    out = []
    for i in range(count):
        centre = (rng.uniform(low - 0.04, high + 0.04), 0.5 + rng.uniform(-0.05, 0.05))
        if spec is not None:
            obj: WorldObject | None = spec.object()
        else:
            obj = _base_object(rng) if i // 2 % 2 else None  # both kinds in the fit and held-out halves
        out.append(draw(backgrounds[i % len(backgrounds)], obj, centre, rng.uniform(0.26, 0.42)))
    return out


def _threshold(positive: torch.Tensor, negative: torch.Tensor) -> float:
    """The cut between the two score sets with the best balanced accuracy (a midpoint, first best)."""
    values = torch.cat([positive, negative]).sort().values
    cuts = torch.cat([values[:1] - 1e-6, (values[1:] + values[:-1]) / 2, values[-1:] + 1e-6])
    hits = (positive[None] >= cuts[:, None]).float().mean(1) + (negative[None] < cuts[:, None]).float().mean(1)
    return float(cuts[int(hits.argmax())])


@dataclass
class Recogniser:
    tokens: list[str]
    centroids: torch.Tensor  # [K, F] unit-norm
    thresholds: torch.Tensor  # [K]
    features: Features

    def labels(self, crops: list[np.ndarray]) -> list[str]:
        """A concept token or NONE per crop."""
        if not crops:
            return []
        scores = self.features(crops) @ self.centroids.T
        best, index = scores.max(-1)
        return [self.tokens[int(i)] if float(b) >= float(self.thresholds[int(i)]) else NONE
                for b, i in zip(best, index, strict=True)]

    def locate(self, image: np.ndarray, boxes: Sequence[Box]) -> dict[str, Box]:
        """Where each concept is: of the boxes whose crop is labelled with it, the one it scores highest."""
        crops = [crop(image, box) for box in boxes]
        scores = self.features(crops) @ self.centroids.T
        best: dict[str, tuple[float, Box]] = {}
        for box, row, label in zip(boxes, scores, self.labels(crops), strict=True):
            if label != NONE:
                score = float(row[self.tokens.index(label)])
                if label not in best or score > best[label][0]:
                    best[label] = (score, box)
        return {label: box for label, (_, box) in best.items()}


def build_recogniser(specs: Sequence[ConceptSpec], boxes: Sequence[tuple[Box, str]], features: Features,
                     decode: Decode, per_box: int, seed: int = 0) -> tuple[Recogniser, dict]:
    """Fit on even-numbered reference crops, report accuracy on the odd (held-out) ones."""
    rng = random.Random(f"multiconcept-recogniser:{seed}")
    crops: dict[str, tuple[list[np.ndarray], list[np.ndarray]]] = {}
    for name, spec in [*((s.token, s) for s in specs), (NONE, None)]:
        images, where = [], []
        for box, place in boxes:
            made = reference_images(spec, box, place, 2 * per_box, rng)
            images += made
            where += [box] * len(made)
        parts = [crop(image, box) for image, box in zip(decode(images), where, strict=True)]
        crops[name] = (parts[0::2], parts[1::2])
    tokens = [s.token for s in specs]
    fit = {name: features(pair[0]) for name, pair in crops.items()}
    centroids = torch.nn.functional.normalize(torch.stack([fit[t].mean(0) for t in tokens]), dim=-1)
    thresholds = torch.tensor([_threshold(fit[t] @ centroids[k], fit[NONE] @ centroids[k])
                               for k, t in enumerate(tokens)])
    recogniser = Recogniser(tokens, centroids, thresholds, features)
    per_class = {name: float(np.mean([label == name for label in recogniser.labels(pair[1])]))
                 for name, pair in crops.items()}
    nearest = [float(np.mean([tokens[int(i)] == t for i in (features(crops[t][1]) @ centroids.T).argmax(-1)]))
               for t in tokens]
    report = {
        "balanced": round(float(np.mean(list(per_class.values()))), 3),
        "per_class": {k: round(v, 3) for k, v in per_class.items()},
        "concept_vs_concept": round(float(np.mean(nearest)), 3),
        "thresholds": {t: round(float(v), 3) for t, v in zip(tokens, thresholds, strict=True)},
        "held_out_crops_per_class": len(crops[NONE][1]),
        "method": "box crop padded to a square with its border colour -> 64 px -> evaluator embed; nearest "
                  "concept centroid (cosine) if above its threshold, else none; thresholds calibrated on reference "
                  "crops vs no-concept crops (empty background or a base-world shape), all drawn in the same boxes "
                  "and passed through the world VAE; accuracy on held-out crops of the same kind",
    }
    return recogniser, report
