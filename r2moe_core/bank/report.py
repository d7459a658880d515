"""Human-readable views of a bank: a text report and a per-layer expert map image."""

from __future__ import annotations

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
        lines.append(
            f"  task {concept.task}: {concept.name}  token {concept.token}  class '{concept.class_word}'  "
            f"expert kept in {len(concept.kept)}/{total} projections"
        )
    if not bank.concepts:
        lines.append("  (no concepts yet: train one with R2MoE Train Concept)")
    return "\n".join(lines)


def expert_map(bank: ExpertBank, cell: int = 18) -> np.ndarray:
    """RGB float image [H, W, 3]: one row per concept, one column per layer, K and V halves lit where alive."""
    font = ImageFont.load_default()
    label_w, header_h = 150, 40
    concepts = sorted(bank.concepts, key=lambda c: c.task)
    rows = max(len(concepts), 1)
    width = label_w + cell * len(bank.layers) + 10
    height = header_h + cell * rows + 10
    image = Image.new("RGB", (width, height), (24, 24, 28))
    draw = ImageDraw.Draw(image)
    for col, layer in enumerate(bank.layers):
        x = label_w + col * cell
        draw.text((x + 1, 4 + (col % 2) * 14), short_layer_name(layer.name), fill=(200, 200, 200), font=font)
    if not concepts:
        draw.text((8, header_h + 2), "no concepts", fill=(160, 160, 160), font=font)
    for row, concept in enumerate(concepts):
        y = header_h + row * cell
        draw.text((6, y + 3), f"{concept.task}: {concept.token}"[:24], fill=(230, 230, 230), font=font)
        for col, layer in enumerate(bank.layers):
            x = label_w + col * cell
            for half, proj in enumerate(PROJECTIONS):
                alive = concept.task in bank.projections[f"{layer.name}.{proj}"].experts
                colour = ((90, 200, 120) if half == 0 else (80, 150, 230)) if alive else (55, 55, 62)
                x0 = x + 1 + half * (cell // 2)
                draw.rectangle([x0, y + 1, x0 + cell // 2 - 2, y + cell - 2], fill=colour)
    return np.asarray(image, dtype=np.float32) / 255.0
