"""HLAG settings by measurement: the multi-concept track's regional variant under one change at a time.

The concepts are learned once and judged by one recogniser (as `bench/multiconcept.py` does); then every setting
draws the same prompts with the same seeds, so settings differ in nothing but the setting. Each row changes one
thing from the nodes' defaults: η, which layers blend (by their token count), mask growth and feathering, and,
for the box-then-refined-mask variants (segmenter and attention masks), the switch step, η after it and the
attention masks' margin. Read per row: omission and leakage
(recogniser) and each concept's image alignment inside its box.

Results name the world they were measured on: on a world whose judge is weak, a setting is only taken as a new
default when it beats the default on omission and leakage by more than the metric's binomial standard error.

    python bench/hlag_sweep.py            # bench/results/hlag_sweep.{json,md}, ~15 min on 2 cores
    python bench/hlag_sweep.py --quick    # 2 concepts, a few settings: checks the pipeline
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # r2moe_core (plain PyTorch)

from provenance import provenance
from world.cache import cached_evaluator
from world.checkpoint import load_world
from world.cli import world_parser
from world.concepts import load_concepts
from world.evaluators import to_tensor
from world.methods import Budget
from world.multiconcept import (
    BOXES,
    PLACES,
    MultiSettings,
    generate,
    learn,
    region_alignment,
    scene_sets,
    score,
)
from world.protocol import ConceptData, World
from world.recogniser import build_recogniser

from r2moe_core.compose.regional_attention import BlendSettings

LOG = logging.getLogger("r2moe.bench")
HERE = Path(__file__).resolve().parent

# (row name, variant, changes from MultiSettings' defaults): one change at a time around the nodes' defaults.
SETTINGS: list[tuple[str, str, dict[str, Any]]] = [
    ("default (η 1, every layer, hard boxes)", "boxes", {}),
    ("η 0.5", "boxes", {"strength": 0.5}),
    ("η 1.5", "boxes", {"strength": 1.5}),
    ("layers with >= 16 tokens (skip the 2x2)", "boxes", {"min_tokens": 16}),
    ("layers with >= 64 tokens (the 8x8 only)", "boxes", {"min_tokens": 64}),
    ("masks grown 0.05", "boxes", {"mask_grow": 0.05}),
    ("masks feathered 0.05", "boxes", {"mask_feather": 0.05}),
    ("refined masks after 25 % of the steps", "boxes_sam", {"sam_at": 0.25}),
    ("refined masks after 50 %", "boxes_sam", {"sam_at": 0.5}),
    ("refined after 50 %, η 0.5 after the switch", "boxes_sam", {"sam_at": 0.5, "strength_after_switch": 0.5}),
    ("attention masks after 25 %", "boxes_attention", {"sam_at": 0.25}),
    ("attention masks after 50 %", "boxes_attention", {"sam_at": 0.5}),
    ("attention masks after 50 %, margin 0.15", "boxes_attention", {"sam_at": 0.5, "attention_margin": 0.15}),
]
QUICK = {"default (η 1, every layer, hard boxes)", "layers with >= 16 tokens (skip the 2x2)", "masks feathered 0.05"}


def standard_error(share: float, count: int) -> float:
    return math.sqrt(max(share * (1 - share), 1e-9) / max(count, 1))


def run(opts: argparse.Namespace) -> dict[str, Any]:
    budget = replace(Budget(), steps=opts.steps)
    base = MultiSettings(images=opts.images, steps=opts.sample_steps)
    rows = [r for r in SETTINGS if not opts.quick or r[0] in QUICK]
    for _name, _, changes in rows:  # every setting is checked before anything is learned
        settings = replace(base, **changes)
        BlendSettings(settings.min_tokens, settings.mask_grow, settings.mask_feather)
    world = World(*load_world(opts.checkpoint))
    evaluator, report = cached_evaluator(opts.out / ".cache", opts.eval_images, opts.eval_epochs)

    def features(images: list[np.ndarray]) -> torch.Tensor:
        with torch.no_grad():
            return evaluator.embed(to_tensor(images))

    specs = load_concepts(opts.concepts)[:opts.count]
    concepts = [ConceptData.from_spec(spec, 5) for spec in specs]
    learned = learn(world, concepts, budget, base.seed)
    boxes = [(box, p) for n in (2, 3) for box, p in zip(BOXES[n], PLACES[n], strict=True)]
    recogniser, accuracy = build_recogniser(
        specs, boxes, lambda images: world.decode(world.encode_images(images)), base.crops_per_box, base.seed)
    references = {c.token: features(c.heldout or c.images) for c in concepts}
    sets = scene_sets(concepts)
    table = []
    for name, variant, changes in rows:
        settings = replace(base, **changes)
        drawn = [row for scenes in sets.values() for j in range(settings.images)
                 for row in zip(scenes, generate(world, variant, learned, scenes, settings.seed + j, settings)[0],
                                strict=True)]
        scores = score(recogniser, drawn)
        table.append({"setting": name, "variant": variant, "changes": changes, **scores,
                      "image_alignment": region_alignment(features, drawn, references)})
        LOG.info("%s: %s", name, table[-1])
    default = table[0]
    error = max(standard_error(default["omission"], default["placements"]),
                standard_error(default["leakage"], default["placements"]))
    for row in table[1:]:
        row["beats_default"] = (row["omission"] < default["omission"] - error
                                and row["leakage"] < default["leakage"] - error)
    return {"provenance": provenance(Path(__file__)), "world": opts.checkpoint.name,
            "judge_accuracy": accuracy["balanced"], "evaluator_accuracy": report.accuracy,
            "standard_error": round(error, 4),
            "settings": {"budget": budget.__dict__, "images": base.images, "steps": base.steps,
                         "concepts": [c.token for c in concepts]},
            "rows": table}


def markdown(results: dict[str, Any]) -> str:
    lines = [f"### HLAG settings on {results['world']} (judge balanced accuracy {results['judge_accuracy']:.2f}, "
             f"binomial s.e. {results['standard_error']:.2f})", "",
             "| setting | variant | omission ↓ | leakage ↓ | IA in its box ↑ | beats the default |",
             "|---|---|---|---|---|---|"]
    for row in results["rows"]:
        beats = "–" if "beats_default" not in row else "yes" if row["beats_default"] else "no"
        lines.append(f"| {row['setting']} | {row['variant']} | {row['omission']:.2f} | {row['leakage']:.2f} | "
                     f"{row['image_alignment']:.1f} | {beats} |")
    return "\n".join(lines)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = world_parser(__doc__)
    parser.add_argument("--count", type=int, default=4)
    parser.add_argument("--steps", type=int, default=Budget.steps, help="training steps per concept")
    parser.add_argument("--images", type=int, default=MultiSettings.images, help="seeds per prompt")
    parser.add_argument("--sample-steps", type=int, default=MultiSettings.steps)
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--quick", action="store_true", help="2 concepts, 10 training steps, 3 settings")
    opts = parser.parse_args()
    opts.eval_images, opts.eval_epochs = 4000, 6
    if opts.quick:
        opts.count, opts.steps, opts.images, opts.sample_steps = 2, 10, 1, 6
        opts.eval_images, opts.eval_epochs = 600, 2
    if not opts.checkpoint.is_file() or not opts.concepts.is_file():
        parser.error(f"{opts.checkpoint} or {opts.concepts} does not exist")
    started = time.perf_counter()
    results = run(opts)
    results["seconds"] = round(time.perf_counter() - started, 1)
    name = "hlag_sweep_quick" if opts.quick else "hlag_sweep"
    opts.out.mkdir(parents=True, exist_ok=True)
    (opts.out / f"{name}.json").write_text(json.dumps(results, indent=1) + "\n")
    (opts.out / f"{name}.md").write_text(markdown(results) + "\n")
    LOG.info("%s", markdown(results))


if __name__ == "__main__":
    main()
