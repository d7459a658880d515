"""What the demo's image alignment can see: the score of renders of a concept with one attribute changed.

`make demo` and the learning sweep read a learned concept by image alignment (IA): the cosine of the world
evaluator's features between drawn images and held-out renders of the concept. An attribute IA cannot see is one a
method can gain or lose unnoticed. Per concept this script scores true renders of the concept itself (the metric's
ceiling) and true renders of the concept with one attribute changed (its marking, its outline, its texture, its
colour), each against the same held-out references, and reports the drop per attribute beside the spread of the
unchanged concept over render seeds (the metric's noise). No model draws anything here: renders only, seconds.

    python bench/metric_sensitivity.py      # concepts_30.json: bench/results/metric_sensitivity.{json,md}
    python bench/metric_sensitivity.py --features identity   # the identity embedding: ..._identity.{json,md}
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from learning_sweep import evaluator_features, write_result
from provenance import provenance
from world.cli import world_parser
from world.concepts import ConceptSpec, concept_images, load_concepts
from world.demo_settings import DEMO_EVALUATOR
from world.identity import IdentitySettings, cached_identity, identity_features

LOG = logging.getLogger("r2moe.bench.metric_sensitivity")
HERE = Path(__file__).resolve().parent
REFERENCE_SEED, RENDER_SEEDS = 1, (2, 3, 4)  # held-out references as the protocol draws them; three render draws
FEATURES = {"evaluator": "the demo's evaluator", "identity": "the concept-identity embedding"}
NEXT_MARKING = {"none": "eye", "eye": "band", "band": "none"}
NEXT_TEXTURE = {"plain": "dotted", "dotted": "striped", "striped": "checkered", "checkered": "plain"}


def changed(spec: ConceptSpec, other: ConceptSpec) -> dict[str, ConceptSpec]:
    """The concept with one attribute replaced: the next marking or texture in a fixed cycle, or `other`'s outline
    or colour (another concept of the set, so every value is one the world draws)."""
    return {"marking": replace(spec, marking=NEXT_MARKING[spec.marking]),
            "outline": replace(spec, polygon=other.polygon),
            "texture": replace(spec, texture=NEXT_TEXTURE[spec.texture]),
            "colour": replace(spec, colour=other.colour)}


def alignment(features: Callable[[list[np.ndarray]], torch.Tensor], spec: ConceptSpec, reference: torch.Tensor,
              images: int, seed: int) -> float:
    return float((features([p[0] for p in concept_images(spec, images, seed=seed)]) @ reference.T).mean()) * 100


def measure(specs: list[ConceptSpec], features: Callable[[list[np.ndarray]], torch.Tensor], images: int
            ) -> dict[str, Any]:
    """Per attribute, IA(changed) - IA(unchanged) per concept (first render seed); per concept the spread (max -
    min) of the unchanged concept's IA over the render seeds."""
    drops: dict[str, list[float]] = {}
    spreads, ceilings = [], []
    for i, spec in enumerate(specs):
        reference = features([p[0] for p in concept_images(spec, images, seed=REFERENCE_SEED)])
        same = [alignment(features, spec, reference, images, s) for s in RENDER_SEEDS]
        ceilings.append(same[0])
        spreads.append(max(same) - min(same))
        other = specs[(i + len(specs) // 2) % len(specs)]
        for name, variant in changed(spec, other).items():
            drops.setdefault(name, []).append(alignment(features, variant, reference, images, RENDER_SEEDS[0])
                                              - same[0])
    return {"ceiling": round(float(np.mean(ceilings)), 2),
            "seed_spread": {"mean": round(float(np.mean(spreads)), 2), "max": round(float(np.max(spreads)), 2)},
            "drop": {name: {"mean": round(float(np.mean(v)), 2), "min": round(float(np.min(v)), 2),
                            "max": round(float(np.max(v)), 2),
                            "share_beyond_spread": round(float(np.mean(-np.array(v) > np.array(spreads))), 3)}
                     for name, v in drops.items()}}


def markdown(results: dict[str, Any]) -> str:
    s, r = results["settings"], results["readings"]
    lines = [f"### What image alignment sees ({s['concepts']} concepts of {s['concept_file']}, {s['images']} renders "
             f"each; {FEATURES[s['features']]})", "",
             f"True renders of the unchanged concept: IA {r['ceiling']:.1f}; the same concept over {len(RENDER_SEEDS)} "
             f"render draws spreads by {r['seed_spread']['mean']:.1f} on average (at most "
             f"{r['seed_spread']['max']:.1f}).", "",
             "| attribute changed | IA drop, mean | largest drop | concepts whose drop exceeds their spread |",
             "|---|---|---|---|"]
    for name, d in r["drop"].items():
        lines.append(f"| {name} | {-d['mean']:.1f} | {-d['min']:.1f} | {d['share_beyond_spread'] * 100:.0f} % |")
    return "\n".join(lines)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = world_parser(__doc__)
    parser.set_defaults(concepts=HERE / "world" / "concepts_30.json")
    parser.add_argument("--images", type=int, default=6, help="renders per concept and draw (as the sweep's)")
    parser.add_argument("--features", choices=tuple(FEATURES), default="evaluator",
                        help="the demo's evaluator features or the concept-identity embedding (world/identity.py)")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    opts = parser.parse_args()
    try:
        specs = load_concepts(opts.concepts)
        if not 1 <= opts.images <= 16:
            raise ValueError("--images takes 1 to 16")
    except (OSError, ValueError) as err:
        parser.error(str(err))
    started = time.perf_counter()
    if opts.features == "identity":
        settings: Any = IdentitySettings()
        model, identity_report = cached_identity(opts.out / ".cache", settings)
        features = identity_features(model)
        accuracy = {k: round(v, 3) for k, v in asdict(identity_report).items()}
    else:
        settings = DEMO_EVALUATOR
        _, features, report = evaluator_features(opts.out / ".cache", settings)
        accuracy = {k: round(v, 3) for k, v in report.accuracy.items()}

    results: dict[str, Any] = {
        "settings": {"concept_file": opts.concepts.name, "concepts": len(specs), "images": opts.images,
                     "reference_seed": REFERENCE_SEED, "render_seeds": list(RENDER_SEEDS),
                     "features": opts.features, "evaluator": asdict(settings)},
        "evaluator_accuracy": accuracy,
        "readings": measure(specs, features, opts.images)}
    results["seconds"] = round(time.perf_counter() - started, 1)
    results["provenance"] = provenance(Path(__file__))
    stem = "metric_sensitivity" + ("" if opts.features == "evaluator" else f"_{opts.features}")
    write_result(opts.out, stem, results, markdown(results))


if __name__ == "__main__":
    main()
