"""Human-readable views of a bank: a text report and a per-layer expert map image."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .attention_targets import PROJECTIONS
from .expert_bank import ExpertBank


def short_layer_name(name: str) -> str:
    """`input_blocks.4.1...attn2` -> `in4`, `middle_block...` -> `mid`, `output_blocks.9...` -> `out9`."""
    head = name.split(".")
    if head[0] == "middle_block":
        return "mid"
    return ("in" if head[0] == "input_blocks" else "out") + head[1]


def _fmt_bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def bank_report(bank: ExpertBank) -> str:
    total = 2 * len(bank.layers)
    lines = [
        f"R2MoE bank: {len(bank.concepts)} concept(s), {bank.num_tasks} task(s), {bank.expert_count()} expert slot(s) "
        f"alive, {bank.expert_params():,} expert parameters ({_fmt_bytes(bank.expert_bytes())})",
        f"model: {len(bank.layers)} cross-attention layers, fingerprint {bank.fingerprint.digest}",
        f"settings: rank {bank.config.rank}, top-k {bank.config.top_k}, prune threshold "
        f"{bank.config.prune_threshold}, distillation λ {bank.config.distill_lambda:g}",
    ]
    for concept in sorted(bank.concepts, key=lambda c: c.task):
        picture = "" if concept.thumbnail is None else "  has a picture"
        lines.append(
            f"  task {concept.task}: {concept.name}  token {concept.token}  class '{concept.class_word}'  "
            f"expert kept in {len(concept.kept)}/{total} projections  {_fmt_bytes(bank.concept_bytes(concept))}"
            f"{picture}"
        )
    if not bank.concepts:
        lines.append("  (no concepts yet: train one with R2MoE Train Concept)")
    return "\n".join(lines)


Colour = tuple[int, int, int]
BACKGROUND: Colour = (24, 24, 28)
TEXT: Colour = (220, 220, 220)
K_COLOUR: Colour = (90, 200, 120)
V_COLOUR: Colour = (80, 150, 230)
OFF_COLOUR: Colour = (55, 55, 62)


def draw_layer_grid(
    title: str,
    row_labels: list[str],
    column_labels: list[str],
    cell_colour: Callable[[int, int, int], Colour],
    legend: list[tuple[Colour, str]],
    cell: int = 26,
) -> np.ndarray:
    """RGB float image [H, W, 3]: a title, one row per label, one column per layer split into K (left) and V
    (right) halves coloured by `cell_colour(row, column, half)`, and a legend underneath."""
    font = ImageFont.load_default()
    label_w = 12 + 7 * max([len(label) for label in row_labels] + [8])
    top, header = 22, 30
    width = max(label_w + cell * len(column_labels) + 12, 12 + sum(40 + 7 * len(text) for _, text in legend))
    height = top + header + cell * max(len(row_labels), 1) + 44
    image = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(image)
    draw.text((8, 6), title, fill=TEXT, font=font)
    for col, label in enumerate(column_labels):
        x = label_w + col * cell
        draw.text((x + 2, top + 2 + (col % 2) * 13), label, fill=(190, 190, 190), font=font)
    for row, label in enumerate(row_labels):
        y = top + header + row * cell
        draw.text((6, y + cell // 2 - 6), label, fill=TEXT, font=font)
        for col in range(len(column_labels)):
            x = label_w + col * cell
            for half in (0, 1):
                x0 = x + 1 + half * (cell // 2)
                draw.rectangle([x0, y + 1, x0 + cell // 2 - 2, y + cell - 2], fill=cell_colour(row, col, half))
    if not row_labels:
        draw.text((8, top + header + 4), "no concepts yet", fill=(160, 160, 160), font=font)
    x, y = 8, height - 30
    for colour, text in legend:
        draw.rectangle([x, y, x + 14, y + 14], fill=colour)
        draw.text((x + 20, y + 2), text, fill=TEXT, font=font)
        x += 40 + 7 * len(text)
    return np.asarray(image, dtype=np.float32) / 255.0


def expert_map(bank: ExpertBank) -> np.ndarray:
    """Which layers keep each concept's expert: one row per concept, one column per layer, K and V halves."""
    concepts = sorted(bank.concepts, key=lambda c: c.task)

    def colour(row: int, col: int, half: int) -> Colour:
        name = f"{bank.layers[col].name}.{PROJECTIONS[half]}"
        return (K_COLOUR, V_COLOUR)[half] if concepts[row].task in bank.projections[name].experts else OFF_COLOUR

    return draw_layer_grid(
        "expert kept per layer (left half K, right half V)",
        [f"{c.task}: {c.token}"[:28] for c in concepts],
        [short_layer_name(layer.name) for layer in bank.layers],
        colour,
        [(K_COLOUR, "K expert kept"), (V_COLOUR, "V expert kept"), (OFF_COLOUR, "pruned (base weights)")],
    )


def concept_gallery(bank: ExpertBank, tile: int = 128) -> np.ndarray:
    """RGB float image [H, W, 3]: per concept its picture (or an empty frame), name, trigger token, bytes and the
    share of projections that kept its expert; four to a row."""
    concepts = sorted(bank.concepts, key=lambda c: c.task)
    font = ImageFont.load_default()
    columns = max(1, min(4, len(concepts)))
    rows = max(1, -(-len(concepts) // columns))
    label = 52
    image = Image.new("RGB", (columns * (tile + 12) + 12, rows * (tile + label) + 12), BACKGROUND)
    draw = ImageDraw.Draw(image)
    total = 2 * len(bank.layers)
    for index, concept in enumerate(concepts):
        x, y = 12 + (index % columns) * (tile + 12), 12 + (index // columns) * (tile + label)
        if concept.thumbnail is None:
            draw.rectangle([x, y, x + tile - 1, y + tile - 1], outline=OFF_COLOUR)
            draw.text((x + 8, y + tile // 2 - 6), "no picture", fill=(160, 160, 160), font=font)
        else:
            picture = Image.fromarray(concept.thumbnail.numpy())
            picture.thumbnail((tile, tile), Image.Resampling.NEAREST if max(picture.size) < tile else
                              Image.Resampling.BILINEAR)
            if max(picture.size) < tile:
                scale = tile / max(picture.size)
                picture = picture.resize((round(picture.width * scale), round(picture.height * scale)),
                                         Image.Resampling.NEAREST)
            image.paste(picture, (x + (tile - picture.width) // 2, y + (tile - picture.height) // 2))
        kept = f"{len(concept.kept)}/{total} kept" if total else ""
        for line, text in enumerate((concept.name[:20], concept.token[:20],
                                     f"{_fmt_bytes(bank.concept_bytes(concept))}  {kept}")):
            draw.text((x, y + tile + 4 + 14 * line), text, fill=TEXT, font=font)
    if not concepts:
        draw.text((16, 16 + tile // 2), "no concepts yet", fill=(160, 160, 160), font=font)
    return np.asarray(image, dtype=np.float32) / 255.0
