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
  the concept's photos (uniform timesteps, AdamW, the budget's batch and token rate);
- `<part>, N steps, lr L`: the same with only one part of the copy learning (`--whole 400@1e-4:kv`): the dense
  K/V of the text cross-attention (the bank's place, without its rank, gate or lifelong constraint), the
  transformer blocks, or everything outside them. Where the whole-UNet gain lives says whether experts on more
  projections than K/V could reach it.

    python bench/learning_ceiling.py                                # concepts 1-4 of concepts_10.json, seed 0
    python bench/learning_ceiling.py --start 4 --seeds 0,1 --name learning_ceiling_dev
    python bench/learning_ceiling.py --whole 400@1e-4:kv,400@1e-4:transformer --name learning_ceiling_parts
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
    region_alignment,
    scene_sets,
    standard_error,
)
from world.protocol import ConceptData, World, WorldHost
from world.recogniser import build_recogniser, crop
from world.sampler import euler_cfg
from world.unet import Delta, SpatialTransformer, UNet

from r2moe_core.train.concept_run import fit
from r2moe_core.train.step import TrainingData

LOG = logging.getLogger("r2moe.bench")
HERE = Path(__file__).resolve().parent
Placement = tuple[MultiScene, int]  # a scene and the index of the region drawn alone


# What each fine-tune part trains, and the row's label.
PARTS = {
    "all": "whole UNet",
    "kv": "cross-attention K/V (dense)",
    "transformer": "transformer blocks",
    "outside": "UNet outside the transformer blocks",
}


def part_weights(unet: UNet, part: str) -> list[torch.nn.Parameter]:
    """The parameters of `unet` that the PARTS entry `part` trains."""
    named = dict(unet.named_parameters())
    inside = {f"{prefix}.{name}" for prefix, module in unet.named_modules() if isinstance(module, SpatialTransformer)
              for name, _ in module.named_parameters()}
    keep = {"all": lambda name: True,
            "kv": lambda name: ".attn2.to_k." in name or ".attn2.to_v." in name,
            "transformer": lambda name: name in inside,
            "outside": lambda name: name not in inside}[part]
    return [p for name, p in named.items() if keep(name)]
DeltaFor = Callable[[list[str], torch.Tensor], Delta | None]  # (prompts, their context) -> the K/V delta
FineTune = tuple[int, float, str]  # steps, learning rate, the PARTS key that learns


@dataclass
class WholeUNetTask:
    """The `fit` trainable of a UNet fine-tune: `weights` (all of `unet`'s, or one part's) and the trigger token
    learn; no K/V delta, no gate, no regulariser, uniform timesteps."""

    unet: UNet
    token: torch.nn.Parameter
    weights: list[torch.nn.Parameter]
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
        return torch.optim.AdamW([{"params": self.weights, "lr": self.lr},
                                  {"params": [self.token], "lr": self.lr_token}], weight_decay=0.0)

    def to(self, device: torch.device | str) -> WholeUNetTask:
        return self

    def distill_loss(self) -> torch.Tensor:
        return torch.zeros(())

    def after_step(self) -> None:
        """Nothing to project or prune."""

    def timestep_bias(self) -> float:
        return 0.0


def fine_tune_unet(world: World, concept: ConceptData, steps: int, lr: float, budget: Budget, seed: int,
                   part: str = "all") -> tuple[World, torch.Tensor]:
    """A world whose UNet is a copy fine-tuned on `concept` (only the `part` named in PARTS learning) with a
    fresh token (class-word start, as every method's), and that token."""
    unet = copy.deepcopy(world.unet)
    table = world.text.text_model.embeddings.token_embedding.weight
    class_ids = world.text.tokenizer(concept.class_word, add_special_tokens=False)["input_ids"]
    token = torch.nn.Parameter(table[class_ids].mean(0, keepdim=True).detach().clone())
    tuned = World(unet, world.text, world.vae)  # freezes the copy; it learns again below
    weights = part_weights(unet, part)
    for p in weights:
        p.requires_grad_(True)
    task = WholeUNetTask(unet, token, weights, SimpleNamespace(batch_size=budget.batch_size, steps=steps, seed=seed),
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


def omissions_alone(recogniser: Any, rows: Sequence[tuple[MultiScene, np.ndarray]], owners: Sequence[int]
                    ) -> list[bool]:
    """Per drawn region, whether the judge missed its concept in its box (one labelling of all the crops)."""
    labels = recogniser.labels([crop(image, scene.boxes[r]) for (scene, image), r in zip(rows, owners, strict=True)])
    return [label != scene.concepts[r].token for label, (scene, _), r in zip(labels, rows, owners, strict=True)]


def scored(name: str, rows: list, owners: list[int], recogniser: Any, features: Any,
           references: dict[str, torch.Tensor], extra: dict[str, Any]) -> dict[str, Any]:
    """The row's omission (overall and per concept, from one labelling of the crops) and image alignment."""
    missed = omissions_alone(recogniser, rows, owners)
    by_concept = {}
    for token in references:
        mine = [miss for miss, (scene, _), r in zip(missed, rows, owners, strict=True)
                if scene.concepts[r].token == token]
        by_concept[token] = round(statistics.fmean(mine), 4) if mine else 0.0
    result = {"row": name, **extra, "omission": round(statistics.fmean(missed), 4),
              "image_alignment": region_alignment(features, rows, references, owners),
              "omission_by_concept": by_concept, "placements": len(rows)}
    LOG.info("%s", result)
    return result


def draw_seed(world: World, features: Any, concepts: list[ConceptData], specs: list, budget: Budget,
              settings: MultiSettings, whole: list[FineTune]) -> tuple[float, list[dict[str, Any]]]:
    """One training seed: the bank, its tokens alone, then each UNet fine-tune, all judged alike."""
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
    for steps, lr, part in whole:
        tuned, seconds = {}, []
        for t, concept in enumerate(concepts):
            started = time.perf_counter()
            tuned[concept.token] = fine_tune_unet(world, concept, steps, lr, budget, settings.seed * 1000 + t, part)
            seconds.append(time.perf_counter() - started)
        rows, owners = draw_row(lambda token, tuned=tuned: (tuned[token][0], {token: tuned[token][1]}, no_delta),
                                placements, settings)
        table.append(scored(f"{PARTS[part]}, {steps} steps, lr {lr:g}", rows, owners, recogniser, features,
                            references, {"steps": steps, "lr": lr, "part": part,
                                         "train_s_per_concept": round(statistics.fmean(seconds), 1)}))
    return accuracy["balanced"], table


def fine_tunes(text: str) -> list[FineTune]:
    """`--whole`'s comma-separated STEPS@LR[:PART] (PART one of PARTS, `all` when left out)."""
    out = []
    for item in filter(None, (piece.strip() for piece in text.split(","))):
        setting, _, part = item.partition(":")
        steps, at, lr = setting.partition("@")
        try:
            parsed = (int(steps), float(lr), part or "all")
        except ValueError:
            parsed = (0, 0.0, "")
        if not at or parsed[0] < 1 or parsed[1] <= 0 or parsed[2] not in PARTS:
            raise ValueError(f"--whole {item!r}: write STEPS@LR or STEPS@LR:PART, STEPS at least 1, LR above 0, "
                             f"PART one of {', '.join(PARTS)}")
        out.append(parsed)
    return out


def run(opts: argparse.Namespace) -> dict[str, Any]:
    budget = Budget(steps=opts.steps)
    seeds = [int(s) for s in opts.seeds.split(",")]
    whole = fine_tunes(opts.whole)
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
    keep = ("row", "steps", "lr", "part", "train_s_per_concept")
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
                        help="UNet fine-tunes, comma-separated STEPS@LR[:PART], PART one of "
                             f"{', '.join(PARTS)} (default all)")
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
    try:
        fine_tunes(opts.whole)
    except ValueError as error:
        parser.error(str(error))
    if not opts.checkpoint.is_file() or not opts.concepts.is_file():
        parser.error(f"{opts.checkpoint} or {opts.concepts} does not exist")
    started = time.perf_counter()
    results = run(opts)
    results["seconds"] = round(time.perf_counter() - started, 1)
    write_result(opts.out, opts.name or ("learning_ceiling_quick" if opts.quick else "learning_ceiling"), results,
                 markdown)


if __name__ == "__main__":
    main()
