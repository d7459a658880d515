"""Budget check for the lifelong benchmark: has every method's loss stopped falling at the shipped step count?

The per-step training loss cannot tell: each step draws its own σ, and the loss at a random σ varies tenfold from
step to step. This script trains each method's first task (and R2MoE's second, where the gate and the routing
distillation act) and, every few steps, reads the ε-loss at a fixed grid of σ with fixed noise, on the concept's
training renders and on renders it never trains on (other backgrounds, positions and sizes). A budget is at its
plateau when doubling it lowers the held-out loss by less than 5 % of its value at the budget; the paired
standard error of that drop (over the held-out renders) is printed beside it.

    python bench/budget.py                     # seed 0, steps 0-200, writes bench/results/budget.json and .md
    python bench/budget.py --max-steps 40      # a quick look
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from provenance import provenance
from world.checkpoint import SHIPPED, load_world
from world.concepts import concept_images, load_concepts
from world.methods import Budget, make_method
from world.protocol import SIGMAS, ConceptData, World, noise_predictor, train_task

LOG = logging.getLogger("r2moe.bench.budget")
HERE = Path(__file__).resolve().parent
METHODS = ("textual_inversion", "r2moe", "lora_per_concept", "c_lora", "custom_diffusion")
PLATEAU = 0.05  # doubling the budget lowers the held-out loss by less than this share: the loss has stopped falling
TIMESTEPS = (50, 150, 300, 500, 700, 900)  # the fixed σ grid (DDPM indices)


class HeldOutLoss:
    """ε-MSE at fixed σ and fixed noise on a fixed set of latents and captions."""

    def __init__(self, world: World, images: list[np.ndarray], captions: list[str], seed: int) -> None:
        self.world, self.captions = world, captions
        latents = world.encode_images(images)
        gen = torch.Generator().manual_seed(seed)
        self.sigma = SIGMAS[list(TIMESTEPS)]
        self.x0 = latents.repeat_interleave(len(TIMESTEPS), 0)
        self.noise = torch.randn(self.x0.shape, generator=gen)
        self.sigmas = self.sigma.repeat(latents.shape[0])
        self.texts = [c for c in captions for _ in TIMESTEPS]

    @torch.no_grad()
    def __call__(self, delta, encode) -> np.ndarray:
        """Per-latent loss (mean over the σ grid)."""
        x_t = self.x0 + self.noise * self.sigmas.view(-1, 1, 1, 1)
        predicted = noise_predictor(self.world.unet, delta)(x_t, self.sigmas, encode(self.texts)).float()
        per_row = ((predicted - self.noise) ** 2).flatten(1).mean(1)
        return per_row.view(len(self.captions), len(TIMESTEPS)).mean(1).numpy()


def curve_for(world: World, name: str, concepts: list[ConceptData], held_out: list[ConceptData], tasks: int,
              budget: int, steps: int, every: int, seed: int) -> list[dict]:
    """Train `tasks` tasks of one method (the earlier ones for `budget` steps); the fixed-σ losses of the last one,
    every `every` steps up to `steps`."""
    method = make_method(name, world.unet, Budget(steps=steps), seed)
    for t in range(tasks - 1):
        train_task(world, method, concepts[t], budget, seed * 1000 + t)
    concept, other = concepts[tasks - 1], held_out[tasks - 1]
    train_loss = HeldOutLoss(world, concept.images, concept.captions, seed)
    test_loss = HeldOutLoss(world, other.images, other.captions, seed + 1)
    points: list[dict] = []

    def record(step: int, delta, encode) -> None:
        if step % every and step != steps:
            return
        test = test_loss(delta, encode)
        points.append({"step": step, "train": round(float(train_loss(delta, encode).mean()), 5),
                       "held_out": round(float(test.mean()), 5), "per_image": [round(float(v), 5) for v in test]})

    train_task(world, method, concept, steps, seed * 1000 + tasks - 1, on_step=record)
    return points


def verdict(points: list[dict], budget: int) -> dict:
    """Held-out loss at the budget, at twice the budget, and whether the drop is below the reading's noise."""
    at = {p["step"]: p for p in points}
    if budget not in at or 2 * budget not in at:
        return {}
    start, here, later = at[0]["held_out"], at[budget]["held_out"], at[2 * budget]["held_out"]
    last = max(at)
    drops = np.asarray(at[budget]["per_image"]) - np.asarray(at[2 * budget]["per_image"])
    return {"held_out_start": start, "held_out_at_budget": here, "held_out_at_2x": later,
            "share_of_drop_done": round((start - here) / (start - later), 3) if start != later else 1.0,
            "drop_after_budget": round(here - later, 5),
            "drop_stderr": round(float(drops.std(ddof=1) / np.sqrt(len(drops))), 5),
            "plateau": bool(here - later < PLATEAU * here), "last_step": last, "held_out_at_last": at[last]["held_out"]}


def markdown(results: dict) -> str:
    lines = [f"Fixed-σ ε-loss (σ at t = {', '.join(map(str, TIMESTEPS))}, fixed noise), seed {results['seed']}, "
             f"budget {results['budget']} steps; held out = renders the task never trains on.", "",
             "| method | task | held-out at 0 | at budget | at 2x budget | share of the drop done by the budget "
             "| drop after the budget (± paired s.e.) | plateau (< 5 %) | at the last step |", "|" + "---|" * 9]
    for name, row in results["methods"].items():
        v = row["verdict"]
        lines.append(f"| {name} | {row['task']} | {v['held_out_start']:.4f} | {v['held_out_at_budget']:.4f} | "
                     f"{v['held_out_at_2x']:.4f} | {v['share_of_drop_done']:.0%} | {v['drop_after_budget']:.4f} ± "
                     f"{v['drop_stderr']:.4f} | {'yes' if v['plateau'] else 'no'} | "
                     f"{v['held_out_at_last']:.4f} (step {v['last_step']}) |")
    return "\n".join(lines) + "\n"


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=SHIPPED)
    parser.add_argument("--concepts", type=Path, default=HERE / "world" / "concepts_10.json")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--budget", type=int, default=Budget.steps)
    parser.add_argument("--max-steps", type=int, default=None, help="default: 4x the budget")
    parser.add_argument("--every", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()
    torch.set_num_threads(2)
    steps = args.max_steps or 4 * args.budget
    world = World(*load_world(args.checkpoint))
    specs = load_concepts(args.concepts)[:2]
    concepts = [ConceptData.from_spec(s, 5) for s in specs]
    held_out = [ConceptData(s.token, s.class_word, *map(list, zip(*concept_images(s, 6, seed=1), strict=True)))
                for s in specs]
    results = {"seed": args.seed, "budget": args.budget, "timesteps": list(TIMESTEPS), "methods": {}}
    for name in args.methods.split(","):
        tasks = 2 if name.startswith("r2moe") else 1
        started = time.perf_counter()
        points = curve_for(world, name, concepts, held_out, tasks, args.budget, steps, args.every, args.seed)
        results["methods"][name] = {"task": tasks, "curve": points, "verdict": verdict(points, args.budget),
                                    "seconds": round(time.perf_counter() - started, 1)}
        LOG.info("%s: %s (%.0f s)", name, results["methods"][name]["verdict"], time.perf_counter() - started)
    args.out.mkdir(parents=True, exist_ok=True)
    results["provenance"] = provenance(Path(__file__))
    (args.out / "budget.json").write_text(json.dumps(results, indent=1) + "\n")
    if all(r["verdict"] for r in results["methods"].values()):
        (args.out / "budget.md").write_text(markdown(results))


if __name__ == "__main__":
    main()
