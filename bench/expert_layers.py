"""Which attention grids a learned concept needs the bank's experts on, read where composition needs it: each
concept drawn alone at its place in the multi-concept track's boxes, judged by the track's recogniser.

Why: on the development concepts, blending regions only in the two finest grids (the coarser grids follow the
plain prompt there, with no expert) made compositions miss fewer concepts than the bank misses when it draws each
concept alone with experts on every layer. If the experts on the coarse grids are what makes a concept
unrecognisable, a single concept drawn with experts on the fine grids only shows it, with no composition involved.

Rows: the same banks, judge, prompts and sampler seeds; only the layers whose K/V get the bank's delta differ.
`every layer` is the bank as it samples (the multi-concept track's "alone" floor, the same images); `no experts`
is the learned trigger token on base weights. A grid's level comes from the UNet's structure
(`r2moe_core.compose.grid_levels`), as the regional nodes' `finest_grids` reads it.

    python bench/expert_layers.py --start 0 --name expert_layers_dev   # concepts 1-4, 3 seeds, ~50 min on 2 cores
    python bench/expert_layers.py --quick                               # 2 concepts, 1 seed: checks the pipeline
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
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
from world.methods import Budget, R2MoEMethod
from world.multiconcept import (
    BOXES,
    PLACES,
    MultiSettings,
    alone_rows,
    learn_method,
    omission_alone,
    region_alignment,
    scene_sets,
    standard_error,
)
from world.protocol import ConceptData, World
from world.recogniser import build_recogniser
from world.unet import Delta

from r2moe_core.compose.grid_levels import grid_levels

LOG = logging.getLogger("r2moe.bench")
HERE = Path(__file__).resolve().parent

# (row name, which grid levels keep the experts: None every layer, else a test on the level, 0 being the finest)
ROWS: list[tuple[str, Any]] = [
    ("every layer", None),
    ("the 2 finest grids", lambda level: level < 2),
    ("the finest grid only", lambda level: level < 1),
    ("every grid but the 2 finest", lambda level: level >= 2),
    ("no experts (the trigger token alone)", lambda level: False),
]


@dataclass
class BankOnLayers:
    """The bank as `alone_rows` reads it (`tokens`, `sampling_delta`), its experts kept to `layers` (None: all)."""

    method: R2MoEMethod
    layers: frozenset[str] | None

    @property
    def tokens(self) -> dict[str, torch.Tensor]:
        return self.method.tokens

    def sampling_delta(self, prompts: list[str], context: torch.Tensor) -> Delta | None:
        delta = self.method.sampling_delta(prompts, context)
        if delta is None or self.layers is None:
            return delta
        keep = self.layers
        return lambda name, ctx: delta(name, ctx) if name.rsplit(".", 1)[0] in keep else None


def layers_for(levels: dict[str, int], keep: Any) -> frozenset[str] | None:
    return None if keep is None else frozenset(name for name, level in levels.items() if keep(level))


def draw_seed(world: World, features: Any, concepts: list[ConceptData], specs: list, rows: list[tuple[str, Any]],
              budget: Budget, settings: MultiSettings) -> tuple[float, list[dict[str, Any]]]:
    """One training seed: learn, train the judge, draw every region prompt alone under each row, score."""
    method, _ = learn_method("r2moe", world, concepts, budget, settings.seed)  # the multi-concept track's bank
    assert isinstance(method, R2MoEMethod)
    boxes = [(box, p) for n in (2, 3) for box, p in zip(BOXES[n], PLACES[n], strict=True)]
    recogniser, accuracy = build_recogniser(
        specs, boxes, lambda images: world.decode(world.encode_images(images)), settings.crops_per_box, settings.seed)
    references = {c.token: features(c.heldout or c.images) for c in concepts}
    levels = grid_levels(world.unet, [layer.name for layer in method.bank.layers])
    table, scenes_by_size = [], scene_sets(concepts).values()
    for name, keep in rows:
        layers = layers_for(levels, keep)
        learned = SimpleNamespace(r2moe=BankOnLayers(method, layers))  # what alone_rows reads of `Learned`
        drawn, owners = [], []
        for scenes in scenes_by_size:
            for j in range(settings.images):
                images, boxes_of = alone_rows(world, learned, scenes, settings.seed + j, settings)  # type: ignore[arg-type]
                drawn += images
                owners += boxes_of
        table.append({"row": name, "layers": len(levels) if layers is None else len(layers),
                      "omission": omission_alone(recogniser, drawn, owners),
                      "image_alignment": region_alignment(features, drawn, references, owners),
                      "placements": len(drawn)})
        LOG.info("seed %d, %s: %s", settings.seed, name, table[-1])
    return accuracy["balanced"], table


def run(opts: argparse.Namespace) -> dict[str, Any]:
    budget = Budget(steps=opts.steps)
    rows = rows_named(ROWS, opts.rows)
    seeds = [int(s) for s in opts.seeds.split(",")]
    specs = load_concepts(opts.concepts)[opts.start:opts.start + opts.count]
    if len(specs) < 2:
        raise SystemExit(f"{opts.concepts} holds fewer than 2 concepts from index {opts.start}; lower --start")
    world = World(*load_world(opts.checkpoint))
    evaluator, report = world_evaluator(opts.out / ".cache", opts.evaluator)

    def features(images: list[np.ndarray]) -> torch.Tensor:
        with torch.no_grad():
            return evaluator.embed(to_tensor(images))

    concepts = [ConceptData.from_spec(spec, 5) for spec in specs]
    runs = []
    for seed in seeds:
        settings = MultiSettings(images=opts.images, steps=opts.sample_steps, seed=seed)
        judge, table = draw_seed(world, features, concepts, specs, rows, budget, settings)
        runs.append({"seed": seed, "judge_accuracy": judge, "rows": table})
    table = [{"row": first["row"], "layers": first["layers"],
              **{key: round(statistics.fmean(run["rows"][i][key] for run in runs), 4)
                 for key in ("omission", "image_alignment")},
              "placements": sum(run["rows"][i]["placements"] for run in runs),
              "omission_minus_every_layer_by_seed": [round(run["rows"][i]["omission"] - run["rows"][0]["omission"], 4)
                                                     for run in runs]}
             for i, first in enumerate(runs[0]["rows"])]
    every = table[0]
    error = standard_error(every["omission"], every["placements"])
    return {"provenance": provenance(Path(__file__)), "world": opts.checkpoint.name,
            "judge_accuracy": round(statistics.fmean(r["judge_accuracy"] for r in runs), 4),
            "evaluator_accuracy": report.accuracy, "standard_error": round(error, 4),
            "settings": {"budget": budget.__dict__, "images": opts.images, "steps": opts.sample_steps,
                         "seeds": seeds, "concept_file": opts.concepts.name,
                         "concepts": [spec.token for spec in specs],
                         "prompts": "each region prompt of the multi-concept track's pairs and triples, drawn alone"},
            "rows": table, "runs": runs}


def markdown(results: dict[str, Any]) -> str:
    s = results["settings"]
    lines = [f"### Where the experts act, each concept drawn alone in its box ({results['world']}, "
             f"{s['concept_file']}: {', '.join(s['concepts'])}; training seeds {', '.join(map(str, s['seeds']))}; "
             f"judge balanced accuracy {results['judge_accuracy']:.2f}, binomial s.e. "
             f"{results['standard_error']:.3f})", "",
             "| experts on | layers | omission ↓ | IA in its box ↑ | omission - every layer by seed |",
             "|---|---|---|---|---|"]
    for row in results["rows"]:
        by_seed = " / ".join(f"{d:+.2f}" for d in row["omission_minus_every_layer_by_seed"])
        lines.append(f"| {row['row']} | {row['layers']} | {row['omission']:.3f} | {row['image_alignment']:.1f} | "
                     f"{by_seed} |")
    return "\n".join(lines)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = world_parser(__doc__)
    parser.add_argument("--start", type=int, default=0, help="index of the first concept in the concept file")
    parser.add_argument("--count", type=int, default=4)
    parser.add_argument("--steps", type=int, default=Budget.steps, help="training steps per concept")
    parser.add_argument("--images", type=int, default=MultiSettings.images, help="seeds per prompt")
    parser.add_argument("--sample-steps", type=int, default=MultiSettings.steps)
    parser.add_argument("--seeds", default="0,1,2", help="training seeds, comma-separated; rows read as their mean")
    parser.add_argument("--rows", default="", help="only these rows, ';'-separated names (every layer is always "
                        "drawn); default: every row")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--name", default="", help="output name (default expert_layers, or expert_layers_quick)")
    parser.add_argument("--quick", action="store_true", help="2 concepts, 10 training steps, 1 seed")
    opts = parser.parse_args()
    opts.evaluator = BENCH_EVALUATOR
    if opts.quick:
        opts.count, opts.steps, opts.images, opts.sample_steps, opts.seeds = 2, 10, 1, 6, "0"
        opts.evaluator = QUICK_BENCH_EVALUATOR
    if opts.start < 0 or opts.count < 2:
        parser.error("--start must be 0 or more and --count at least 2")
    if not opts.checkpoint.is_file() or not opts.concepts.is_file():
        parser.error(f"{opts.checkpoint} or {opts.concepts} does not exist")
    started = time.perf_counter()
    results = run(opts)
    results["seconds"] = round(time.perf_counter() - started, 1)
    write_result(opts.out, opts.name or ("expert_layers_quick" if opts.quick else "expert_layers"), results,
                 markdown)


if __name__ == "__main__":
    main()
