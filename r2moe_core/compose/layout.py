"""Regional layouts for multi-concept images (HLAG): a background prompt plus boxed region prompts.

A layout is data that may come from a user, a file or an LLM, so every path into a `Layout` goes through one
validator that names the region and field at fault and says how to fix it. Unknown fields are rejected rather
than ignored, so nothing (instructions, negative prompts, weights) can ride along unseen.

JSON form (version 1)::

    {"version": 1, "width": 768, "height": 512, "background": "a beach at sunset",
     "regions": [{"prompt": "a <dog1> dog", "box": [0.04, 0.1, 0.48, 0.95], "tokens": ["<dog1>"],
                  "strength": null}]}

Boxes are `(x0, y0, x1, y1)` fractions of the canvas, origin top-left, x0 < x1 and y0 < y1.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from ..bank.trigger_tokens import trigger_pattern
from ..errors import InvalidInputError

LAYOUT_VERSION = 1
MAX_REGIONS = 8
MAX_CANVAS = 8192
MAX_TEXT = 4000  # characters of a prompt or background: far beyond what the text encoder reads
MAX_LAYOUT_JSON = 1_000_000  # characters of a layout's JSON text (a planner's answer included)
_QUOTED = 200  # characters of a bad value an error message repeats
CANVAS_MULTIPLE = 8  # the VAE downsamples by 8: other sizes cannot map onto the latent grid exactly
STRENGTH_RANGE = (0.0, 2.0)
BOX_TOLERANCE = 1e-6  # float rounding of a box edge computed as e.g. 1/3 + 2/3; clamped instead of rejected

_LAYOUT_FIELDS = ("version", "width", "height", "background", "regions")
_REGION_FIELDS = ("prompt", "box", "tokens", "strength")
_ANGLE_TOKEN = re.compile(r"<[^<>\s]+>")
_MAX_LISTED_PROBLEMS = 12

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class Region:
    """One boxed prompt; `tokens` are the concept triggers it carries, so its gate routes to their experts."""

    prompt: str
    box: Box
    tokens: tuple[str, ...] = ()
    strength: float | None = None  # None: the sampler's global regional strength


@dataclass(frozen=True, kw_only=True)
class Layout:
    """A canvas, a background prompt (may be empty) and up to `MAX_REGIONS` regions. Build via `validate_layout`."""

    width: int
    height: int
    background: str
    regions: tuple[Region, ...] = ()
    version: int = LAYOUT_VERSION


def find_tokens(text: str, known_tokens: Iterable[str] | None = None) -> tuple[str, ...]:
    """Trigger tokens in `text`, in order of first appearance.

    Known tokens are matched as whole words (the same rule the text encoder uses, so `sks` works too); any
    other `<name>` is reported as well so that a typo like `<dgo1>` is caught instead of silently drawn as text.
    """
    hits: list[tuple[int, str]] = []
    taken: list[tuple[int, int]] = []
    for token in sorted(set(known_tokens or ()), key=len, reverse=True):
        for match in trigger_pattern(token).finditer(text):
            if not any(s < match.end() and match.start() < e for s, e in taken):
                taken.append(match.span())
                hits.append((match.start(), token))
    for match in _ANGLE_TOKEN.finditer(text):
        if not any(s < match.end() and match.start() < e for s, e in taken):
            hits.append((match.start(), match.group()))
    ordered: dict[str, None] = {}
    for _, token in sorted(hits):
        ordered.setdefault(token, None)
    return tuple(ordered)


class _Problems:
    """Collects every problem so a user (or an LLM repair request) can fix them all in one go."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, where: str, message: str) -> None:
        self.items.append(f"{where}: {message}")

    def raise_if_any(self) -> None:
        if not self.items:
            return
        shown = self.items[:_MAX_LISTED_PROBLEMS]
        more = len(self.items) - len(shown)
        tail = f"\n- ... and {more} more" if more > 0 else ""
        raise InvalidInputError("Invalid layout:\n- " + "\n- ".join(shown) + tail)


def quoted(value: Any) -> str:
    """`repr(value)`, cut to a couple of hundred characters: an error message must not repeat a huge value."""
    text = repr(value)
    return text if len(text) <= _QUOTED else f"{text[:_QUOTED]}... ({len(text)} characters)"


def _text_too_long(text: str, where: str, problems: _Problems) -> bool:
    if len(text) <= MAX_TEXT:
        return False
    problems.add(where, f"is {len(text)} characters; keep it under {MAX_TEXT} (the text encoder reads far less)")
    return True


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _canvas_side(value: Any, name: str, problems: _Problems) -> int:
    if value is None:
        problems.add(name, "is missing; give the image size in pixels")
        return 0
    if not _is_number(value) or not math.isfinite(value) or value != int(value):
        problems.add(name, f"must be a whole number of pixels, got {quoted(value)}")
        return 0
    side = int(value)
    if side <= 0 or side % CANVAS_MULTIPLE or side > MAX_CANVAS:
        problems.add(name, f"is {side}; use a positive multiple of {CANVAS_MULTIPLE} up to {MAX_CANVAS}")
    return side


def _edge(value: Any, where: str, name: str, problems: _Problems) -> float | None:
    if not _is_number(value):
        problems.add(where, f"{name} must be a number, got {quoted(value)}")
        return None
    value = float(value)
    if not math.isfinite(value):
        problems.add(where, f"{name} is {value}; use a finite fraction in [0, 1]")
        return None
    if -BOX_TOLERANCE <= value < 0.0 or 1.0 < value <= 1.0 + BOX_TOLERANCE:
        return min(max(value, 0.0), 1.0)
    if not 0.0 <= value <= 1.0:
        problems.add(
            where,
            f"{name}={value:g} lies outside the canvas; boxes are fractions of the image size in [0, 1] (not pixels)",
        )
        return None
    return value


def _box(value: Any, where: str, width: int, height: int, problems: _Problems) -> Box | None:
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)) or len(value) != 4:
        problems.add(where, f"must be 4 numbers [x0, y0, x1, y1] (left, top, right, bottom), got {quoted(value)}")
        return None
    edges = [_edge(v, where, n, problems) for v, n in zip(value, ("x0", "y0", "x1", "y1"), strict=True)]
    if any(e is None for e in edges):
        return None
    x0, y0, x1, y1 = (float(e) for e in edges)  # type: ignore[arg-type]
    ok = True
    for lo, hi, lo_name, hi_name, side, axis in (
        (x0, x1, "x0", "x1", width, "wide"),
        (y0, y1, "y0", "y1", height, "tall"),
    ):
        if lo >= hi:
            problems.add(
                where,
                f"{lo_name}={lo:g} must be less than {hi_name}={hi:g} (empty box); give [left, top, right, bottom]",
            )
            ok = False
        elif side > 0 and (hi - lo) * side < 1.0:
            problems.add(
                where, f"is {(hi - lo) * side:.2g} px {axis} on a {side} px canvas; make it at least one pixel"
            )
            ok = False
    return (x0, y0, x1, y1) if ok else None


def _tokens(value: Any, prompt: str, where: str, known: set[str] | None, problems: _Problems) -> tuple[str, ...]:
    if value is None or (isinstance(value, (list, tuple)) and not value):
        tokens = find_tokens(prompt, known)
    elif isinstance(value, str):
        tokens = (value,)
    elif isinstance(value, (list, tuple)) and all(isinstance(t, str) for t in value):
        tokens = tuple(dict.fromkeys(value))
    else:
        problems.add(where, f'must be a list of trigger tokens such as ["<dog1>"], got {quoted(value)}')
        return ()
    for token in tokens:
        if known is not None and token not in known:
            listed = ", ".join(sorted(known)) if known else "none: the bank has no concepts yet"
            problems.add(where, f"{quoted(token)} is not a known concept token (known: {listed}); use one of those")
        elif not trigger_pattern(token).search(prompt):
            problems.add(where,
                         f"{quoted(token)} does not appear in the region prompt; add it to the prompt or drop it")
    return tokens


def _strength(value: Any, where: str, problems: _Problems) -> float | None:
    if value is None:
        return None
    low, high = STRENGTH_RANGE
    if not _is_number(value) or not math.isfinite(value) or not low <= value <= high:
        problems.add(where, f"must be a number in [{low:g}, {high:g}] or null, got {quoted(value)}")
        return None
    return float(value)


def _unknown_fields(data: Mapping[str, Any], allowed: tuple[str, ...], where: str, problems: _Problems) -> None:
    extra = sorted(str(k) for k in data if k not in allowed)
    if extra:
        problems.add(where, f"unknown field(s) {', '.join(map(repr, extra))}; allowed: {', '.join(allowed)}")


def _region(
    data: Any, index: int, width: int, height: int, known: set[str] | None, problems: _Problems
) -> Region | None:
    where = f"region {index}"
    if not isinstance(data, Mapping):
        problems.add(where, f"must be an object with prompt and box, got {type(data).__name__}")
        return None
    _unknown_fields(data, _REGION_FIELDS, where, problems)
    prompt = data.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        problems.add(f"{where} prompt", "is missing or empty; describe what goes in this box")
        prompt = None
    elif _text_too_long(prompt, f"{where} prompt", problems):
        prompt = None
    box = _box(data.get("box"), f"{where} box", width, height, problems) if "box" in data else None
    if "box" not in data:
        problems.add(f"{where} box", "is missing; give [x0, y0, x1, y1] as fractions of the image")
    tokens = _tokens(data.get("tokens"), prompt, f"{where} tokens", known, problems) if prompt else ()
    strength = _strength(data.get("strength"), f"{where} strength", problems)
    if prompt is None or box is None:
        return None
    return Region(prompt=prompt.strip(), box=box, tokens=tokens, strength=strength)


def _parse(data: Any, known_tokens: Iterable[str] | None, max_regions: int) -> Layout:
    if not isinstance(data, Mapping):
        raise InvalidInputError(f"Invalid layout: expected a JSON object, got {type(data).__name__}")
    known = None if known_tokens is None else set(known_tokens)
    problems = _Problems()
    _unknown_fields(data, _LAYOUT_FIELDS, "layout", problems)
    version = data.get("version", LAYOUT_VERSION)
    if version != LAYOUT_VERSION or isinstance(version, bool):
        problems.add(
            "version",
            f"{quoted(version)} is not supported (this pack reads version {LAYOUT_VERSION}); "
            "update the pack or write version 1",
        )
    width = _canvas_side(data.get("width"), "width", problems)
    height = _canvas_side(data.get("height"), "height", problems)
    background = data.get("background")
    if not isinstance(background, str):
        problems.add("background", 'is missing or not text; give the scene prompt ("" for none)')
        background = ""
    _text_too_long(background, "background", problems)
    raw_regions = data.get("regions", ())
    regions: list[Region] = []
    if isinstance(raw_regions, (str, bytes)) or not isinstance(raw_regions, (list, tuple)):
        problems.add("regions", f"must be a list of region objects, got {type(raw_regions).__name__}")
    elif len(raw_regions) > max_regions:
        problems.add(
            "regions", f"there are {len(raw_regions)}; at most {max_regions} are supported, merge or drop some"
        )
    else:
        for index, raw in enumerate(raw_regions):
            region = _region(raw, index, width, height, known, problems)
            if region is not None:
                regions.append(region)
    problems.raise_if_any()
    return Layout(width=width, height=height, background=background.strip(), regions=tuple(regions))


def layout_to_dict(layout: Layout) -> dict[str, Any]:
    """Plain JSON-ready form; every field is written so the file documents itself."""
    return {
        "version": layout.version,
        "width": layout.width,
        "height": layout.height,
        "background": layout.background,
        "regions": [_region_dict(r) for r in layout.regions],
    }


def _region_dict(region: Region) -> dict[str, Any]:
    return {
        "prompt": region.prompt,
        "box": list(region.box),
        "tokens": list(region.tokens),
        "strength": region.strength,
    }


def validate_layout(
    layout: Layout, known_tokens: Iterable[str] | None = None, max_regions: int = MAX_REGIONS
) -> Layout:
    """Check a layout built in code the same way as one read from JSON; returns it normalised.

    Normalising clamps edges within `BOX_TOLERANCE` of the canvas and fills empty `tokens` from the prompt.
    `known_tokens=None` skips the bank check (e.g. while editing a layout without a bank at hand).
    """
    if not isinstance(layout, Layout):
        raise InvalidInputError(f"Invalid layout: expected a Layout, got {type(layout).__name__}")
    data = layout_to_dict(dataclasses.replace(layout, regions=()))
    data["regions"] = [_region_dict(r) if isinstance(r, Region) else r for r in layout.regions]
    return _parse(data, known_tokens, max_regions)


def layout_from_json(
    text_or_dict: str | bytes | Mapping[str, Any],
    known_tokens: Iterable[str] | None = None,
    max_regions: int = MAX_REGIONS,
) -> Layout:
    """Parse and validate a layout; missing `tokens` are read from each region prompt, `strength` defaults to None."""
    data: Any = text_or_dict
    if isinstance(text_or_dict, (str, bytes)):
        if len(text_or_dict) > MAX_LAYOUT_JSON:
            raise InvalidInputError(f"Invalid layout: the JSON is {len(text_or_dict)} characters; at most "
                                    f"{MAX_LAYOUT_JSON} are read (a layout is a few hundred)")
        try:
            data = json.loads(text_or_dict)
        except json.JSONDecodeError as err:
            raise InvalidInputError(
                f"Invalid layout: not valid JSON ({err.msg} at line {err.lineno} column {err.colno})"
            ) from err
    return _parse(data, known_tokens, max_regions)


def layout_to_json(layout: Layout, indent: int | None = None) -> str:
    """Serialise; non-finite numbers are refused so the file stays standard JSON."""
    return json.dumps(layout_to_dict(layout), indent=indent, ensure_ascii=False, allow_nan=False)


def _pixel_span(low: float, high: float, size: int) -> tuple[int, int]:
    # Pixel c is inside when its centre c + 0.5 lies in [low * size, high * size): boxes that share an edge
    # neither overlap nor leave a gap. Rounding to 9 decimals keeps products like 0.35 * 10 on the exact side.
    start = math.ceil(round(low * size - 0.5, 9))
    end = math.ceil(round(high * size - 0.5, 9))
    start = min(max(start, 0), size - 1)
    end = min(max(end, start + 1), size)  # never empty: a small box still owns one cell of a coarse grid
    return start, end


def box_masks(
    layout: Layout,
    height: int,
    width: int,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Masks [R, height, width]: 1 on pixels whose centre lies in the box (half-open), else 0.

    Any resolution works (image, latent, or an attention layer's token grid), so each layer can ask for its own
    size instead of resampling a fine mask; every region covers at least one pixel at every resolution.
    """
    if not (isinstance(height, int) and isinstance(width, int)) or height <= 0 or width <= 0:
        raise InvalidInputError(f"box_masks needs positive integer height and width, got {height!r} x {width!r}")
    masks = torch.zeros((len(layout.regions), height, width), dtype=dtype, device=device)
    for index, region in enumerate(layout.regions):
        x0, y0, x1, y1 = region.box
        left, right = _pixel_span(x0, x1, width)
        top, bottom = _pixel_span(y0, y1, height)
        masks[index, top:bottom, left:right] = 1
    return masks


def boxes_from_pixels(boxes: Any, width: int, height: int) -> list[Box]:
    """Pixel boxes as newer ComfyUI passes them (`{"x", "y", "width", "height"}`: one dict, a list of them, or one
    list per image, of which the first is used) -> [x0, y0, x1, y1] fractions of a width x height canvas."""
    if isinstance(boxes, Mapping):
        boxes = [boxes]
    boxes = list(boxes or [])
    if boxes and not isinstance(boxes[0], Mapping):
        boxes = list(boxes[0] or [])  # one list per image: the layout is one canvas
    out = []
    for i, box in enumerate(boxes):
        try:
            x, y, w, h = (float(box[k]) for k in ("x", "y", "width", "height"))
        except (KeyError, TypeError, ValueError) as err:
            raise InvalidInputError(
                f"bounding box {i + 1} needs numeric x, y, width and height, got {quoted(box)}.") from err
        out.append((x / width, y / height, (x + w) / width, (y + h) / height))
    return out


def with_boxes(layout: Layout, boxes: list[Box]) -> Layout:
    """The layout with its first regions' boxes replaced, in order, and validated again."""
    if len(boxes) > len(layout.regions):
        raise InvalidInputError(
            f"{len(boxes)} bounding boxes but the layout has {len(layout.regions)} region(s): add a region (with its "
            "prompt) for every box, or connect fewer boxes."
        )
    regions = [dataclasses.replace(r, box=boxes[i]) if i < len(boxes) else r for i, r in enumerate(layout.regions)]
    return validate_layout(dataclasses.replace(layout, regions=tuple(regions)))
