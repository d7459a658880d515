"""How far the world model lets a learned concept go: each concept drawn alone at its place in the multi-concept
track's boxes (its region prompt, nothing else), learned three ways, judged by the track's recogniser.

Why: the bank draws a lone concept that the judge misses about 0.7 of the time, and the trigger token alone
misses only a little more. That floor bounds every composition. Two readings explain it differently: the K/V
side (token and experts) cannot carry what the world would draw with more freedom, or the world itself cannot
draw a new shape at that size. A whole-UNet fine-tune (DreamBooth-style: every UNet weight and the token learn,
one UNet per concept, no lifelong constraint) tells them apart. If it draws concepts the judge finds, the
headroom is in the method. If it misses as often, the limit is the world.

Rows (same judge, region prompts, sampler seeds and per-concept batches):
- `bank`: R2MoE's bank as the multi-concept track learns it (experts on every layer, the budget's steps);
- `token alone`: the same bank's trigger tokens on the base weights;
- `whole UNet, N steps, lr L`: for each concept, a copy of the world UNet and a fresh token trained together on
  the concept's photos (uniform timesteps, AdamW, the budget's batch and token rate).

    python bench/learning_ceiling.py                                # concepts 1-4 of concepts_10.json, seed 0
    python bench/learning_ceiling.py --start 4 --seeds 0,1 --name learning_ceiling_dev
    python bench/learning_ceiling.py --quick                        # 2 concepts, few steps: checks the pipeline
"""

from __future__ import annotations

import argparse
import copy
import logging
import statistics
import sys
import time
from collections.abc import Callable, Sequence
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
from world.cli import world_parser, write_result
from world.concepts import load_concepts
from world.evaluators import BENCH_EVALUATOR, QUICK_BENCH_EVALUATOR, to_tensor
from world.methods import Budget, R2MoEMethod
from world.multiconcept import (
    BOXES,
    PLACES,
    MultiScene,
    MultiSettings,
    learn_method,
    omission_alone,
    region_alignment,
    scene_sets,
    standard_error,
)
from world.protocol import ConceptData, World, WorldHost
from world.recogniser import build_recogniser
from world.sampler import euler_cfg
from world.unet import Delta, UNet

from r2moe_core.train.concept_run import fit
from r2moe_core.train.step import TrainingData

LOG = logging.getLogger("r2moe.bench")
HERE = Path(__file__).resolve().parent
Placement = tuple[MultiScene, int]  # a scene and the index of the region drawn alone
DeltaFor = Callable[[list[str], torch.Tensor], Delta | None]  # (prompts, their context) -> the K/V delta


@dataclass
class WholeUNetTask:
    """The `fit` trainable of a whole-UNet fine-tune: every weight of `unet` and the trigger token learn; no K/V
    delta, no gate, no regulariser, uniform timesteps."""

    unet: UNet
    token: torch.nn.Parameter
    settings: SimpleNamespace
    lr: float
    lr_token: float
    distill_lambda: float = 0.0
    prior_rows: int = 0

    def named_delta(self, name: str, context: torch.Tensor) -> torch.Tensor | None:
        return None

    def observe_gate_inputs(self, m: torch.Tensor) -> None:
        """No gate to follow."""

    def optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW([{"params": list(self.unet.parameters()), "lr": self.lr},
                                  {"params": [self.token], "lr": self.lr_token}], weight_decay=0.0)

    def to(self, device: torch.device | str) -> WholeUNetTask:
        return self

    def distill_loss(self) -> torch.Tensor:
        return torch.zeros(())

    def after_step(self) -> None:
        """Nothing to project or prune."""

    def timestep_bias(self) -> float:
        return 0.0


def fine_tune_unet(world: World, concept: ConceptData, steps: int, lr: float, budget: Budget, seed: int
                   ) -> tuple[World, torch.Tensor]:
    """A world whose UNet is a copy fine-tuned on `concept` with a fresh token (class-word start, as every
    method's), and that token."""
    unet = copy.deepcopy(world.unet)
    table = world.text.text_model.embeddings.token_embedding.weight
    class_ids = world.text.tokenizer(concept.class_word, add_special_tokens=False)["input_ids"]
    token = torch.nn.Parameter(table[class_ids].mean(0, keepdim=True).detach().clone())
    tuned = World(unet, world.text, world.vae)  # freezes the copy; it learns again below
    unet.requires_grad_(True)
    task = WholeUNetTask(unet, token, SimpleNamespace(batch_size=budget.batch_size, steps=steps, seed=seed),
                         lr, budget.lr_token)
    host = WorldHost(tuned, {})
    data = TrainingData(world.encode_images(concept.images), concept.captions)
    fit(task, host, host.encoder(concept.token, token), data, steps=steps, seed=seed)  # type: ignore[arg-type]
    unet.requires_grad_(False)
    return tuned, token.detach()


def placements_of(concepts: Sequence[ConceptData]) -> dict[str, list[Placement]]:
    """Every region of the multi-concept track's pairs and triples, grouped by the concept asked there."""
    out: dict[str, list[Placement]] = {c.token: [] for c in concepts}
    for scenes in scene_sets(concepts).values():
        for scene in scenes:
            for r, concept in enumerate(scene.concepts):
                out[concept.token].append((scene, r))
    return out


def draw_alone(world: World, tokens: dict[str, torch.Tensor], delta_for: DeltaFor, placements: Sequence[Placement],
               seed: int, settings: MultiSettings) -> list[tuple[MultiScene, np.ndarray]]:
    """Each placement's region prompt drawn alone in one batch (sampler seed `seed`)."""
    prompts = [scene.region_prompts[r] for scene, r in placements]
    with torch.no_grad():
        context = world.text(prompts, tokens)
        delta = delta_for(prompts, context)
        empty = world.empty.expand(len(prompts), -1, -1)
        latents = euler_cfg(lambda x, t: world.unet(x, t, context, delta), lambda x, t: world.unet(x, t, empty),
                            len(prompts), settings.steps, settings.cfg, seed)
    return [(scene, image) for (scene, _), image in zip(placements, world.decode(latents), strict=True)]


def no_delta(prompts: list[str], context: torch.Tensor) -> None:
    """Base K/V weights: the trigger token alone, or a model whose weights already learned the concept."""
    return None


def draw_row(drawer: Callable[[str], tuple[World, dict[str, torch.Tensor], DeltaFor]],
             placements: dict[str, list[Placement]], settings: MultiSettings
             ) -> tuple[list[tuple[MultiScene, np.ndarray]], list[int]]:
    """Every placement, `settings.images` sampler seeds each, by what `drawer(token)` gives for its concept: the
    world, the tokens and the K/V delta to draw it with."""
    rows, owners = [], []
    for token, own in placements.items():
        world, tokens, delta_for = drawer(token)
        for j in range(settings.images):
            rows += draw_alone(world, tokens, delta_for, own, settings.seed + j, settings)
            owners += [r for _, r in own]
    return rows, owners


def scored(name: str, rows: list, owners: list[int], recogniser: Any, features: Any,
           references: dict[str, torch.Tensor], extra: dict[str, Any]) -> dict[str, Any]:
    by_concept = {}
    for token in references:
        mine = [i for i, (scene, _) in enumerate(rows) if scene.concepts[owners[i]].token == token]
        by_concept[token] = omission_alone(recogniser, [rows[i] for i in mine], [owners[i] for i in mine])
    result = {"row": name, **extra, "omission": omission_alone(recogniser, rows, owners),
              "image_alignment": region_alignment(features, rows, references, owners),
              "omission_by_concept": by_concept, "placements": len(rows)}
    LOG.info("%s", result)
    return result


def draw_seed(world: World, features: Any, concepts: list[ConceptData], specs: list, budget: Budget,
              settings: MultiSettings, whole: list[tuple[int, float]]) -> tuple[float, list[dict[str, Any]]]:
    """One training seed: the bank, its tokens alone, then each whole-UNet setting, all judged alike."""
    method, _ = learn_method("r2moe", world, concepts, budget, settings.seed)  # the multi-concept track's bank
    assert isinstance(method, R2MoEMethod)
    boxes = [(box, p) for n in (2, 3) for box, p in zip(BOXES[n], PLACES[n], strict=True)]
    recogniser, accuracy = build_recogniser(
        specs, boxes, lambda images: world.decode(world.encode_images(images)), settings.crops_per_box, settings.seed)
    references = {c.token: features(c.heldout or c.images) for c in concepts}
    placements = placements_of(concepts)
    table = []
    rows, owners = draw_row(lambda token: (world, method.tokens, method.sampling_delta), placements, settings)
    table.append(scored("bank", rows, owners, recogniser, features, references, {"steps": budget.steps}))
    rows, owners = draw_row(lambda token: (world, method.tokens, no_delta), placements, settings)
    table.append(scored("token alone", rows, owners, recogniser, features, references, {"steps": budget.steps}))
    for steps, lr in whole:
        tuned, seconds = {}, []
        for t, concept in enumerate(concepts):
            started = time.perf_counter()
            tuned[concept.token] = fine_tune_unet(world, concept, steps, lr, budget, settings.seed * 1000 + t)
            seconds.append(time.perf_counter() - started)
        rows, owners = draw_row(lambda token, tuned=tuned: (tuned[token][0], {token: tuned[token][1]}, no_delta),
                                placements, settings)
        table.append(scored(f"whole UNet, {steps} steps, lr {lr:g}", rows, owners, recogniser, features, references,
                            {"steps": steps, "lr": lr, "train_s_per_concept": round(statistics.fmean(seconds), 1)}))
    return accuracy["balanced"], table


def run(opts: argparse.Namespace) -> dict[str, Any]:
    budget = Budget(steps=opts.steps)
    seeds = [int(s) for s in opts.seeds.split(",")]
    whole = [(int(s), float(lr)) for s, lr in (pair.split("@") for pair in opts.whole.split(",") if pair)]
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
        judge, table = draw_seed(world, features, concepts, specs, budget, settings, whole)
        runs.append({"seed": seed, "judge_accuracy": judge, "rows": table})
    keep = ("row", "steps", "lr", "train_s_per_concept")
    table = [{**{k: first[k] for k in keep if k in first},
              **{key: round(statistics.fmean(run["rows"][i][key] for run in runs), 4)
                 for key in ("omission", "image_alignment")},
              "omission_by_concept": {t: round(statistics.fmean(run["rows"][i]["omission_by_concept"][t]
                                                                for run in runs), 4)
                                      for t in first["omission_by_concept"]},
              "placements": sum(run["rows"][i]["placements"] for run in runs)}
             for i, first in enumerate(runs[0]["rows"])]
    return {"provenance": provenance(Path(__file__)), "world": opts.checkpoint.name,
            "judge_accuracy": round(statistics.fmean(r["judge_accuracy"] for r in runs), 4),
            "evaluator_accuracy": report.accuracy,
            "standard_error": round(standard_error(table[0]["omission"], table[0]["placements"]), 4),
            "settings": {"budget": budget.__dict__, "images": opts.images, "steps": opts.sample_steps,
                         "seeds": seeds, "concept_file": opts.concepts.name,
                         "concepts": [spec.token for spec in specs], "whole_unet": whole,
                         "prompts": "each region prompt of the multi-concept track's pairs and triples, drawn alone"},
            "rows": table, "runs": runs}


def markdown(results: dict[str, Any]) -> str:
    s = results["settings"]
    tokens = s["concepts"]
    lines = [f"### How far the world lets a concept go, each drawn alone in its box ({results['world']}, "
             f"{s['concept_file']}: {', '.join(tokens)}; training seeds {', '.join(map(str, s['seeds']))}; "
             f"judge balanced accuracy {results['judge_accuracy']:.2f}, binomial s.e. "
             f"{results['standard_error']:.3f})", "",
             f"| learned by | omission ↓ | IA in its box ↑ | {' | '.join(tokens)} | train s/concept |",
             f"|---|---|---|{'---|' * len(tokens)}---|"]
    for row in results["rows"]:
        by_concept = " | ".join(f"{row['omission_by_concept'][t]:.2f}" for t in tokens)
        seconds = row.get("train_s_per_concept", "–")
        lines.append(f"| {row['row']} | {row['omission']:.3f} | {row['image_alignment']:.1f} | {by_concept} | "
                     f"{seconds} |")
    return "\n".join(lines)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = world_parser(__doc__)
    parser.add_argument("--start", type=int, default=0, help="index of the first concept in the concept file")
    parser.add_argument("--count", type=int, default=4)
    parser.add_argument("--steps", type=int, default=Budget.steps, help="the bank's training steps per concept")
    parser.add_argument("--whole", default="50@1e-5,400@1e-5,400@1e-4",
                        help="whole-UNet settings, comma-separated STEPS@LR")
    parser.add_argument("--images", type=int, default=MultiSettings.images, help="seeds per prompt")
    parser.add_argument("--sample-steps", type=int, default=MultiSettings.steps)
    parser.add_argument("--seeds", default="0", help="training seeds, comma-separated; rows read as their mean")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--name", default="", help="output name (default learning_ceiling, or learning_ceiling_quick)")
    parser.add_argument("--quick", action="store_true", help="2 concepts, 10 steps, 1 seed")
    opts = parser.parse_args()
    opts.evaluator = BENCH_EVALUATOR
    if opts.quick:
        opts.count, opts.steps, opts.images, opts.sample_steps, opts.seeds = 2, 10, 1, 6, "0"
        opts.whole, opts.evaluator = "10@1e-4", QUICK_BENCH_EVALUATOR
    if opts.start < 0 or opts.count < 2:
        parser.error("--start must be 0 or more and --count at least 2")
    if not opts.checkpoint.is_file() or not opts.concepts.is_file():
        parser.error(f"{opts.checkpoint} or {opts.concepts} does not exist")
    started = time.perf_counter()
    results = run(opts)
    results["seconds"] = round(time.perf_counter() - started, 1)
    write_result(opts.out, opts.name or ("learning_ceiling_quick" if opts.quick else "learning_ceiling"), results,
                 markdown)


if __name__ == "__main__":
    main()
