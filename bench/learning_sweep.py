"""How well a concept is learned under each training setting, read on renders the training never saw.

`make demo` learns two world concepts with R2MoETrainConcept and compares the bank's image with the trigger token
learned alone; on the shipped world the token alone scored higher. This script looks for the reason on
development concepts (by default concepts 3-6 of concepts_10.json, not the demo's first two): per variant it
learns the concepts in sequence, as the demo does, and reports per concept the held-out image alignment (against
renders at other places, sizes and backgrounds), the training-photo alignment (their gap is memorisation) and the
parts of text alignment (background, position, concept where the prompt asks), with the base model beside.
The evaluator is the demo's (64 px, cached in OUT/.cache). Beside IA it reads identity alignment, the same
cosine through the concept-identity embedding (world/identity.py, also cached), which sees a concept's marking
and outline; and true renders of each concept (a third seed) give both metrics' ceiling.

    python bench/learning_sweep.py                          # every variant, seed 0: bench/results/learning_sweep.*
    python bench/learning_sweep.py --variants r2moe,token_only --seeds 0,1 --name learning_sweep_part
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # r2moe_core (plain PyTorch)

from provenance import provenance
from world.cache import world_evaluator
from world.checkpoint import load_world
from world.cli import world_parser
from world.concepts import concept_images, load_concepts
from world.demo_settings import DEMO_EVALUATOR, DEMO_STEPS
from world.evaluators import EvaluatorReport, EvaluatorSettings, to_tensor
from world.identity import IdentitySettings, cached_identity, identity_features
from world.methods import Budget, make_method
from world.protocol import (
    ConceptData,
    EvalSettings,
    References,
    World,
    evaluate_concepts,
    image_alignments,
    text_alignment,
    train_task,
)

LOG = logging.getLogger("r2moe.bench.learning_sweep")
HERE = Path(__file__).resolve().parent
# variant -> (method, Budget fields that differ from the demo's). One change at a time from the demo's R2MoE.
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "token_only": ("textual_inversion", {}),
    "r2moe": ("r2moe", {}),
    "r2moe_half_steps": ("r2moe", {"steps": DEMO_STEPS // 2}),
    "token_only_steps_x2": ("textual_inversion", {"steps": DEMO_STEPS * 2}),
    "r2moe_steps_x2": ("r2moe", {"steps": DEMO_STEPS * 2}),
    "r2moe_steps_x2_token_warmup_x2": ("r2moe", {"steps": DEMO_STEPS * 2, "token_warmup": Budget.token_warmup * 2}),
    "token_only_steps_x4": ("textual_inversion", {"steps": DEMO_STEPS * 4}),
    "r2moe_steps_x4": ("r2moe", {"steps": DEMO_STEPS * 4}),
    "r2moe_lr_experts_x4": ("r2moe", {"lr": Budget.lr * 4}),
    "r2moe_lr_experts_x0.4": ("r2moe", {"lr": Budget.lr * 0.4}),
    "r2moe_lr_token_x2": ("r2moe", {"lr_token": Budget.lr_token * 2}),
    "r2moe_no_token_warmup": ("r2moe", {"token_warmup": 0.0}),
    "r2moe_token_warmup_x2": ("r2moe", {"token_warmup": Budget.token_warmup * 2}),
    "r2moe_uniform_timesteps": ("r2moe", {"timestep_bias": 0.0}),
    "r2moe_timestep_bias_x2": ("r2moe", {"timestep_bias": Budget.timestep_bias * 2}),
    "r2moe_no_prune": ("r2moe_no_prune", {}),
    "r2moe_strength_0.5": ("r2moe", {"strength": 0.5}),
    "r2moe_strength_0.75": ("r2moe", {"strength": 0.75}),
    "lora_per_concept": ("lora_per_concept", {}),
}
QUICK_EVALUATOR = EvaluatorSettings(images=300, epochs=1, size=64)
QUICK_IDENTITY = IdentitySettings(families=6, scenes=4, epochs=1)
RENDERS_SEED = 2  # training photos use seed 0, held-out references seed 1: the ceiling's true renders a third


class ScaledEvaluator(torch.nn.Module):
    """The world evaluator trained at `side` px, reading images of any size box-filtered to it (as the demo does)."""

    def __init__(self, evaluator: torch.nn.Module, side: int) -> None:
        super().__init__()
        self.evaluator, self.side = evaluator, side

    def _scaled(self, x: torch.Tensor) -> torch.Tensor:
        return x if x.shape[-1] == self.side else torch.nn.functional.interpolate(x, size=self.side, mode="area")

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.evaluator(self._scaled(x))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.evaluator.embed(self._scaled(x))


def evaluator_features(cache: Path, settings: EvaluatorSettings
                       ) -> tuple[ScaledEvaluator, Callable[[list[np.ndarray]], torch.Tensor], EvaluatorReport]:
    """The demo's world evaluator (the shipped file; else trained once, cached in `cache`), its unit-norm features
    of images of any size, and its held-out report."""
    evaluator, report = world_evaluator(cache, settings)
    scaled = ScaledEvaluator(evaluator, settings.size).eval()

    def features(images: list[np.ndarray]) -> torch.Tensor:
        with torch.no_grad():
            return scaled.embed(to_tensor(images))

    return scaled, features, report


def write_result(out: Path, stem: str, results: dict[str, Any], text: str) -> None:
    """`out/stem.json` and its Markdown table `out/stem.md`, written side by side and logged."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / f"{stem}.md").write_text(text + "\n")
    LOG.info("%s\nwritten %s in %.0f s", text, out / f"{stem}.json", results.get("seconds", 0.0))


@dataclass(frozen=True)
class IdentityReading:
    """Image alignment through the concept-identity embedding (world/identity.py), which sees markings and
    outlines that the evaluator's features barely do: its features and each concept's held-out references."""

    features: Callable[[list[np.ndarray]], torch.Tensor]
    references: dict[str, torch.Tensor]

    def of(self, images: dict[str, list[np.ndarray]]) -> dict[str, float]:
        return image_alignments(self.features, images, self.references)


def run_variant(world: World, method_name: str, budget: Budget, concepts: list[ConceptData], features,
                references: References, identity: IdentityReading, evaluator: torch.nn.Module,
                settings: EvalSettings, seed: int) -> dict[str, Any]:
    """Learn `concepts` in order with one method, then score each concept alone and in context."""
    torch.manual_seed(seed)
    method = make_method(method_name, world.unet, budget, seed)
    seconds = [train_task(world, method, c, budget.steps, seed * 1000 + t)[0] for t, c in enumerate(concepts)]
    heldout, generated, _ = evaluate_concepts(world, method, concepts, features, references.heldout, settings, seed)
    train = image_alignments(features, generated, references.train)
    parts = text_alignment(world, method, concepts, evaluator, features, references.heldout, settings, seed)
    return {"image_alignment_heldout": heldout, "image_alignment_train": train, "text_alignment_parts": parts,
            "identity_alignment_heldout": identity.of(generated), "train_s_per_task": float(np.mean(seconds))}


def summary(alignment: dict[str, float], identity: dict[str, float]) -> dict[str, Any]:
    """Mean and per-concept image alignment and identity alignment of one set of images per concept."""
    return {"image_alignment_heldout": round(float(np.mean(list(alignment.values()))), 2),
            "per_concept": {k: round(v, 2) for k, v in alignment.items()},
            "identity_alignment_heldout": round(float(np.mean(list(identity.values()))), 2),
            "per_concept_identity": {k: round(v, 2) for k, v in identity.items()}}


def mean_over(rows: list[dict[str, Any]], key: str) -> float:
    return float(np.mean([v for row in rows for v in row[key].values()]))


def markdown(results: dict[str, Any]) -> str:
    s = results["settings"]
    lines = [f"### Learning sweep ({', '.join(s['concepts'])}; seeds {s['seeds']}; {s['images_per_concept']} images "
             f"per concept; the demo's evaluator)", "",
             "| variant | IA held-out | identity held-out | IA training photos | gap | TA background | TA position | "
             "TA concept | s/task |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, v in results["variants"].items():
        ta = v["text_alignment_parts"]
        lines.append(f"| {name} | {v['image_alignment_heldout']:.1f} | {v['identity_alignment_heldout']:.1f} | "
                     f"{v['image_alignment_train']:.1f} | "
                     f"{v['image_alignment_train'] - v['image_alignment_heldout']:+.1f} | "
                     f"{ta['background']:.0f} % | {ta['position']:.0f} % | {ta['concept']:.0f} % | "
                     f"{v['train_s_per_task']:.0f} |")
    base, ceiling = results["base"], results["ceiling"]
    lines += ["", f"Base model (no learning): IA held-out {base['image_alignment_heldout']:.1f}, identity "
              f"{base['identity_alignment_heldout']:.1f}; true renders (the metrics' ceiling) IA "
              f"{ceiling['image_alignment_heldout']:.1f}, identity {ceiling['identity_alignment_heldout']:.1f}."]
    for title, key, per in (("IA held-out", "per_concept", "per_concept_heldout"),
                            ("identity held-out", "per_concept_identity", "per_concept_identity")):
        lines += ["", f"| concept ({title}) | base | true renders | " + " | ".join(results["variants"]) + " |",
                  "|---|---|---|" + "---|" * len(results["variants"])]
        for token in ceiling[key]:
            cells = [f"{np.mean([seed[token] for seed in v[per]]):.1f}" for v in results["variants"].values()]
            lines.append(f"| {token} | {base[key][token]:.1f} | {ceiling[key][token]:.1f} | " + " | ".join(cells)
                         + " |")
    return "\n".join(lines)


def parse_variants(text: str) -> list[str]:
    names = [v.strip() for v in text.split(",") if v.strip()]
    unknown = [v for v in names if v not in VARIANTS]
    if not names or unknown:
        raise ValueError(f"unknown variants {unknown or text!r}; choose from {', '.join(VARIANTS)}")
    return names


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = world_parser(__doc__)
    parser.add_argument("--pick", default="2,3,4,5", help="indices of the concepts to learn, in order (0-based; the "
                        "demo learns 0 and 1)")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--images-per-concept", type=int, default=6)
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--name", default="learning_sweep", help="result file stem under --out (a partial re-run "
                        "keeps the committed table)")
    parser.add_argument("--quick", action="store_true", help="a fiftieth of the steps, 2 images: checks the pipeline")
    opts = parser.parse_args()
    try:
        variants = parse_variants(opts.variants)
        seeds = [int(s) for s in opts.seeds.split(",")]
        specs = load_concepts(opts.concepts)
        picked = [specs[int(i)] for i in opts.pick.split(",")]
    except (ValueError, IndexError) as err:
        parser.error(f"{err} (--pick takes indices of {opts.concepts.name}, 0-{len(specs) - 1})"
                     if isinstance(err, IndexError) else str(err))
    settings = EvalSettings(images_per_concept=opts.images_per_concept)
    evaluator_settings, identity_settings = DEMO_EVALUATOR, IdentitySettings()
    if opts.quick:
        settings, evaluator_settings = EvalSettings(images_per_concept=2, steps=4, contexts=1), QUICK_EVALUATOR
        identity_settings = QUICK_IDENTITY
    started = time.perf_counter()
    world = World(*load_world(opts.checkpoint))
    evaluator, features, report = evaluator_features(opts.out / ".cache", evaluator_settings)
    concepts = [ConceptData.from_spec(spec, 5) for spec in picked]
    references = References.of(concepts, features)
    identity_model, identity_report = cached_identity(opts.out / ".cache", identity_settings)
    id_features = identity_features(identity_model)
    identity = IdentityReading(id_features, {c.token: id_features(c.heldout) for c in concepts})
    base, base_images, _ = evaluate_concepts(world, None, concepts, features, references.heldout, settings, seeds[0])
    renders = {c.token: [p[0] for p in concept_images(spec, settings.images_per_concept, seed=RENDERS_SEED)]
               for c, spec in zip(concepts, picked, strict=True)}
    ceiling = image_alignments(features, renders, references.heldout)
    base_identity, ceiling_identity = identity.of(base_images), identity.of(renders)
    results: dict[str, Any] = {
        "settings": {"concepts": [s.name for s in picked], "concept_file": opts.concepts.name, "seeds": seeds,
                     "images_per_concept": settings.images_per_concept, "evaluator": asdict(evaluator_settings),
                     "demo_steps": DEMO_STEPS, "checkpoint": opts.checkpoint.name, "quick": opts.quick,
                     "variants": {v: VARIANTS[v] for v in variants}, "identity": asdict(identity_settings)},
        "evaluator_accuracy": {k: round(v, 3) for k, v in report.accuracy.items()},
        "identity_report": {k: round(v, 3) for k, v in asdict(identity_report).items()},
        "base": summary(base, base_identity),
        "ceiling": summary(ceiling, ceiling_identity),
        "variants": {},
    }
    for name in variants:
        method_name, changes = VARIANTS[name]
        budget = replace(Budget(), **({"steps": DEMO_STEPS} | changes))
        if opts.quick:
            budget = replace(budget, steps=max(1, budget.steps // 50))
        rows = [run_variant(world, method_name, budget, concepts, features, references, identity, evaluator,
                            settings, s) for s in seeds]
        parts = {k: round(float(np.mean([r["text_alignment_parts"][k] for r in rows])), 3)
                 for k in rows[0]["text_alignment_parts"]}
        results["variants"][name] = {
            "image_alignment_heldout": round(mean_over(rows, "image_alignment_heldout"), 2),
            "image_alignment_train": round(mean_over(rows, "image_alignment_train"), 2),
            "per_concept_heldout": [{k: round(v, 2) for k, v in r["image_alignment_heldout"].items()} for r in rows],
            "identity_alignment_heldout": round(mean_over(rows, "identity_alignment_heldout"), 2),
            "per_concept_identity": [{k: round(v, 2) for k, v in r["identity_alignment_heldout"].items()}
                                     for r in rows],
            "text_alignment_parts": parts,
            "train_s_per_task": round(float(np.mean([r["train_s_per_task"] for r in rows])), 1)}
        LOG.info("%s: IA held-out %.1f, identity %.1f, training photos %.1f, TA %s", name,
                 results["variants"][name]["image_alignment_heldout"],
                 results["variants"][name]["identity_alignment_heldout"],
                 results["variants"][name]["image_alignment_train"], parts)
    results["seconds"] = round(time.perf_counter() - started, 1)
    results["provenance"] = provenance(Path(__file__))
    write_result(opts.out, f"{opts.name}_quick" if opts.quick else opts.name, results, markdown(results))


if __name__ == "__main__":
    main()
