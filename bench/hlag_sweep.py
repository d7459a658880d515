"""HLAG settings by measurement: the multi-concept track's regional variant under one change at a time.

The concepts are learned once and judged by one recogniser (as `bench/multiconcept.py` does); then every setting
draws the same prompts with the same seeds, so settings differ in nothing but the setting. Each row changes one
thing from the nodes' defaults: η, which layers blend (by their token count or grid level), mask growth and
feathering, and, for the box-then-refined-mask variants (segmenter and attention masks), the switch step, η after
it and the attention masks' margin. Read per row: omission and leakage (recogniser) and each concept's image
alignment inside its box.

Results name the world they were measured on: on a world whose judge is weak, a setting is only taken as a new
default when it beats the default on omission and leakage by more than the metric's binomial standard error.
`--seeds 0,1,2` repeats the whole sweep per training seed (rows read as the means, each row's difference to the
default per seed beside them); `--rows` draws only the named rows, e.g. to confirm a candidate on another concept
file (`--concepts`) than the one it was picked on.

    python bench/hlag_sweep.py            # bench/results/hlag_sweep.{json,md}, ~15 min per training seed on 2 cores
    python bench/hlag_sweep.py --quick    # 2 concepts, a few settings: checks the pipeline
"""

from __future__ import annotations

import argparse
import logging
import statistics
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
from world.cache import world_evaluator
from world.checkpoint import load_world
from world.cli import rows_named, world_parser, write_result
from world.concepts import load_concepts
from world.evaluators import BENCH_EVALUATOR, QUICK_BENCH_EVALUATOR, to_tensor
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
    standard_error,
)
from world.protocol import ConceptData, World
from world.recogniser import build_recogniser

LOG = logging.getLogger("r2moe.bench")
HERE = Path(__file__).resolve().parent

# (row name, variant, changes from MultiSettings' defaults): one change at a time around the nodes' defaults.
# On world v3 (128 px, 16x16 latents) the attention grids hold 256, 64, 16 and 4 (the middle block) tokens.
SETTINGS: list[tuple[str, str, dict[str, Any]]] = [
    ("default (η 1, every layer, hard boxes)", "boxes", {}),
    ("η 0.5", "boxes", {"strength": 0.5}),
    ("η 1.5", "boxes", {"strength": 1.5}),
    ("layers with >= 16 tokens (skip the 2x2)", "boxes", {"min_tokens": 16}),
    ("layers with >= 64 tokens (the 16x16 and 8x8 grids)", "boxes", {"min_tokens": 64}),
    ("masks grown 0.05", "boxes", {"mask_grow": 0.05}),
    ("masks feathered 0.05", "boxes", {"mask_feather": 0.05}),
    ("refined masks after 25 % of the steps", "boxes_sam", {"sam_at": 0.25}),
    ("refined masks after 50 %", "boxes_sam", {"sam_at": 0.5}),
    ("refined after 50 %, η 0.5 after the switch", "boxes_sam", {"sam_at": 0.5, "strength_after_switch": 0.5}),
    ("attention masks after 25 %", "boxes_attention", {"sam_at": 0.25}),
    ("attention masks after 50 %", "boxes_attention", {"sam_at": 0.5}),
    ("attention masks after 50 %, margin 0.15", "boxes_attention", {"sam_at": 0.5, "attention_margin": 0.15}),
]
# Rows outside the one-change sweep, run when named with --rows: levels instead of token counts, and references.
EXTRA: list[tuple[str, str, dict[str, Any]]] = [
    ("the 2 finest grids", "boxes", {"finest_grids": 2}),
    ("the finest grid only", "boxes", {"finest_grids": 1}),
    ("bank alone (no regions)", "bank_only", {}),
    ("regional-LoRA stack (every layer)", "lora_stack_regional", {}),
]
QUICK = {"default (η 1, every layer, hard boxes)", "layers with >= 16 tokens (skip the 2x2)", "masks feathered 0.05",
         "the 2 finest grids"}


def pick_rows(names: str, quick: bool) -> list[tuple[str, str, dict[str, Any]]]:
    """The rows to draw: every one-change row by default (the default row always first), or those named."""
    if not names and quick:
        return [r for r in SETTINGS + EXTRA if r[0] in QUICK]
    return rows_named(SETTINGS + EXTRA, names) if names else list(SETTINGS)


def sweep_seed(world: World, features: Any, specs: list, rows: list, budget: Budget, base: MultiSettings
               ) -> tuple[float, list[dict[str, Any]]]:
    """One training seed: learn the concepts, train the judge, draw and score every row (same prompts, seeds)."""
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
        LOG.info("seed %d, %s: %s", base.seed, name, table[-1])
    return accuracy["balanced"], table


def run(opts: argparse.Namespace) -> dict[str, Any]:
    budget = replace(Budget(), steps=opts.steps)
    rows = pick_rows(opts.rows, opts.quick)
    for _name, _, changes in rows:  # every setting is checked before anything is learned
        replace(MultiSettings(), **changes).blend  # noqa: B018 (BlendSettings checks itself)
    seeds = [int(s) for s in opts.seeds.split(",")]
    world = World(*load_world(opts.checkpoint))
    evaluator, report = world_evaluator(opts.out / ".cache", opts.evaluator)

    def features(images: list[np.ndarray]) -> torch.Tensor:
        with torch.no_grad():
            return evaluator.embed(to_tensor(images))

    specs = load_concepts(opts.concepts)[:opts.count]
    judges, runs = [], []
    for seed in seeds:
        base = MultiSettings(images=opts.images, steps=opts.sample_steps, seed=seed)
        judge, table = sweep_seed(world, features, specs, rows, budget, base)
        judges.append(judge)
        runs.append({"seed": seed, "judge_accuracy": judge, "rows": table})
    table = [{**first, **{key: round(statistics.fmean(run["rows"][i][key] for run in runs), 4)
                          for key in ("omission", "leakage", "image_alignment")},
              "placements": sum(run["rows"][i]["placements"] for run in runs)}
             for i, first in enumerate(runs[0]["rows"])]
    default = table[0]
    error = max(standard_error(default["omission"], default["placements"]),
                standard_error(default["leakage"], default["placements"]))
    for i, row in enumerate(table[1:], start=1):
        row["beats_default"] = (row["omission"] < default["omission"] - error
                                and row["leakage"] < default["leakage"] - error)
        row["minus_default_by_seed"] = {key: [round(run["rows"][i][key] - run["rows"][0][key], 4) for run in runs]
                                        for key in ("omission", "leakage")}
    return {"provenance": provenance(Path(__file__)), "world": opts.checkpoint.name,
            "judge_accuracy": round(statistics.fmean(judges), 4), "evaluator_accuracy": report.accuracy,
            "standard_error": round(error, 4),
            "settings": {"budget": budget.__dict__, "images": opts.images, "steps": opts.sample_steps,
                         "seeds": seeds, "concept_file": opts.concepts.name,
                         "concepts": [spec.token for spec in specs]},
            "rows": table, "runs": runs}


def markdown(results: dict[str, Any]) -> str:
    s = results["settings"]
    seeds = s.get("seeds", [0])
    lines = [f"### HLAG settings on {results['world']}, {s.get('concept_file', 'concepts')} "
             f"({', '.join(s['concepts'])}), training seed(s) {', '.join(map(str, seeds))} (judge balanced accuracy "
             f"{results['judge_accuracy']:.2f}, binomial s.e. {results['standard_error']:.2f})", "",
             "| setting | variant | omission ↓ | leakage ↓ | IA in its box ↑ | beats the default | omission - default "
             "by seed |", "|---|---|---|---|---|---|---|"]
    for row in results["rows"]:
        beats = "–" if "beats_default" not in row else "yes" if row["beats_default"] else "no"
        by_seed = " / ".join(f"{d:+.2f}" for d in row.get("minus_default_by_seed", {}).get("omission", [])) or "–"
        lines.append(f"| {row['setting']} | {row['variant']} | {row['omission']:.2f} | {row['leakage']:.2f} | "
                     f"{row['image_alignment']:.1f} | {beats} | {by_seed} |")
    return "\n".join(lines)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = world_parser(__doc__)
    parser.add_argument("--count", type=int, default=4)
    parser.add_argument("--steps", type=int, default=Budget.steps, help="training steps per concept")
    parser.add_argument("--images", type=int, default=MultiSettings.images, help="seeds per prompt")
    parser.add_argument("--sample-steps", type=int, default=MultiSettings.steps)
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--seeds", default="0", help="training seeds, comma-separated; rows read as their mean")
    parser.add_argument("--rows", default="", help="only these rows, ';'-separated names (the default row is "
                        "always drawn); default: every one-change row")
    parser.add_argument("--name", default="", help="output name (default hlag_sweep, or hlag_sweep_quick)")
    parser.add_argument("--quick", action="store_true", help="2 concepts, 10 training steps, 4 settings")
    opts = parser.parse_args()
    opts.evaluator = BENCH_EVALUATOR
    if opts.quick:
        opts.count, opts.steps, opts.images, opts.sample_steps = 2, 10, 1, 6
        opts.evaluator = QUICK_BENCH_EVALUATOR
    if not opts.checkpoint.is_file() or not opts.concepts.is_file():
        parser.error(f"{opts.checkpoint} or {opts.concepts} does not exist")
    started = time.perf_counter()
    results = run(opts)
    results["seconds"] = round(time.perf_counter() - started, 1)
    write_result(opts.out, opts.name or ("hlag_sweep_quick" if opts.quick else "hlag_sweep"), results, markdown)


if __name__ == "__main__":
    main()
