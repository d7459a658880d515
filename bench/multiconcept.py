"""Multi-concept benchmark on the offline world model: omission and leakage with and without regional attention.

    python bench/multiconcept.py                      # 4 concepts of concepts_10.json, lifelong budget, 3 seeds
    python bench/multiconcept.py --quick              # 2 concepts, few steps: checks the pipeline in minutes
    python bench/multiconcept.py --checkpoint /tmp/world/quick.safetensors --out /tmp/mc

Variants, metrics and the SAM stand-in are described in bench/world/multiconcept.py. Writes under --out
(default bench/results): multiconcept.json, multiconcept.md and multiconcept_grid.png (the first seed's images);
quick mode writes multiconcept_quick.* so it never overwrites a full run.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # r2moe_core (plain PyTorch)

from provenance import provenance
from world.cache import world_evaluator
from world.checkpoint import load_world
from world.cli import world_parser
from world.concepts import load_concepts
from world.evaluators import BENCH_EVALUATOR, QUICK_BENCH_EVALUATOR, to_tensor
from world.methods import Budget
from world.multiconcept import MultiSettings, run_multiconcept
from world.protocol import ConceptData, World

LOG = logging.getLogger("r2moe.bench.multiconcept")
HERE = Path(__file__).resolve().parent


def grid(images: dict[str, list[np.ndarray]], path: Path, columns: int = 8) -> None:
    """One row per variant: its first images (pairs, then triples), same seeds and prompts in every row; a cell is
    an image at its own size."""
    shown = {name: row[:columns] for name, row in images.items()}
    size, label = next(iter(shown.values()))[0].shape[0], 130
    width = label + size * max(len(row) for row in shown.values())
    canvas = Image.new("RGB", (width, size * len(shown)), "white")
    draw = ImageDraw.Draw(canvas)
    for i, (name, row) in enumerate(shown.items()):
        draw.text((4, i * size + size // 2 - 6), name, fill="black")
        for j, image in enumerate(row):
            canvas.paste(Image.fromarray(image), (label + j * size, i * size))
    canvas.save(path)


def markdown(results: dict) -> str:
    s, acc, timing = results["settings"], results["recogniser_accuracy"], results["timing"]
    exact, swapped = acc["drawn_compositions"]["exact"], acc["drawn_compositions"]["swapped"]
    lines = [f"### Multi-concept track ({len(s['concepts'])} concepts, {s['images']} seeds per prompt, "
             f"{s['steps']} steps, η = {s['strength']})", "",
             "| variant | omission ↓ | leakage ↓ | omission 2 / 3 concepts | leakage 2 / 3 concepts | IA in its region "
             "(x alone) | images |",
             "|---|---|---|---|---|---|---|"]
    for name, m in results["variants"].items():
        lines.append(f"| {name} | {m['omission']:.2f} | {m['leakage']:.2f} | {m['pairs']['omission']:.2f} / "
                     f"{m['triples']['omission']:.2f} | {m['pairs']['leakage']:.2f} / {m['triples']['leakage']:.2f} | "
                     f"{m['image_alignment']:.1f} ({m['image_alignment_vs_alone']:.2f}x) | {m['images']} |")
    lines += ["", f"What the nodes do by default: `{results['default']}`. Each concept drawn alone at its place (its "
              f"region prompt, the bank): IA in its box {results['alone_image_alignment']:.1f}, omission "
              f"{results['alone_omission']:.2f} (the floor for any composition). Judge: balanced "
              f"accuracy {results['judge_accuracy']:.2f}."]
    lines += ["", f"Recogniser held-out accuracy (balanced over concepts and 'none'): {acc['balanced']:.2f}; per class "
              + ", ".join(f"{k} {v:.2f}" for k, v in acc["per_class"].items())
              + f"; concept vs concept {acc['concept_vs_concept']:.2f}. On drawn compositions (each concept in its "
              f"box / rotated one box on): omission {exact['omission']:.2f} / {swapped['omission']:.2f}, leakage "
              f"{exact['leakage']:.2f} / {swapped['leakage']:.2f}.", "",
              f"Sampling time per image ({timing['device']}, {timing['steps']} steps, median of {timing['rounds']}):",
              "", "| regions | bank_only s | boxes s | ratio |", "|---|---|---|---|"]
    for key in ("2_regions", "3_regions"):
        t = timing[key]
        lines.append(f"| {key[0]} | {t['bank_only_s_per_image']:.3f} | {t['boxes_s_per_image']:.3f} | "
                     f"{t['ratio']:.2f}x |")
    lines += ["", f"boxes_sam: {s['sam_substitution']}", "",
              f"boxes_attention: until the same switch, each region's concept-token attention is recorded; masks "
              f"from it (r2moe_core.compose.masks.attention_masks, margin {s['attention_margin']}) take over after."]
    return "\n".join(lines)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = world_parser(__doc__)
    parser.add_argument("--count", type=int, default=4, help="learn the first N concepts of the file (2 or more)")
    parser.add_argument("--steps", type=int, default=Budget.steps, help="training steps per concept")
    parser.add_argument("--references", type=int, default=5, help="reference images per concept (3-7)")
    parser.add_argument("--images", type=int, default=MultiSettings.images, help="seeds (images) per prompt")
    parser.add_argument("--sample-steps", type=int, default=MultiSettings.steps)
    parser.add_argument("--strength", type=float, default=MultiSettings.strength, help="regional strength η")
    parser.add_argument("--sam-at", type=float, default=MultiSettings.sam_at,
                        help="fraction of the steps after which boxes_sam switches to refined masks")
    parser.add_argument("--strength-after-switch", type=float, default=None,
                        help="η with the refined masks (default: --strength)")
    parser.add_argument("--min-tokens", type=int, default=MultiSettings.min_tokens,
                        help="blend only in layers with at least this many image tokens")
    parser.add_argument("--finest-grids", type=int, default=MultiSettings.finest_grids,
                        help="blend only in the N finest attention grids (0: every grid)")
    parser.add_argument("--mask-grow", type=float, default=MultiSettings.mask_grow)
    parser.add_argument("--mask-feather", type=float, default=MultiSettings.mask_feather)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--quick", action="store_true", help="2 concepts, 10 training steps, 2 seeds, 6 steps")
    opts = parser.parse_args()
    if opts.threads:
        torch.set_num_threads(opts.threads)
    budget = replace(Budget(), steps=opts.steps)
    settings = MultiSettings(images=opts.images, steps=opts.sample_steps, strength=opts.strength, sam_at=opts.sam_at,
                             seed=opts.seed, strength_after_switch=opts.strength_after_switch,
                             min_tokens=opts.min_tokens, mask_grow=opts.mask_grow, mask_feather=opts.mask_feather,
                             finest_grids=opts.finest_grids)
    evaluator_settings = BENCH_EVALUATOR
    if opts.quick:
        opts.count, budget = 2, replace(budget, steps=10)
        settings = replace(settings, images=2, steps=6, crops_per_box=10, timing_rounds=3)
        evaluator_settings = QUICK_BENCH_EVALUATOR
    if opts.count < 2:
        parser.error("--count must be at least 2")
    try:
        settings.blend  # noqa: B018 (BlendSettings checks itself)
    except ValueError as err:
        parser.error(str(err))
    started = time.perf_counter()
    world = World(*load_world(opts.checkpoint))
    # The lifelong benchmark's evaluator: the shipped file, so every run and machine judges alike.
    evaluator, report = world_evaluator(opts.out / ".cache", evaluator_settings)
    LOG.info("world evaluator held-out accuracy: %s", {k: round(v, 3) for k, v in report.accuracy.items()})

    def features(images: list[np.ndarray]) -> torch.Tensor:
        with torch.no_grad():
            return evaluator.embed(to_tensor(images))

    specs = load_concepts(opts.concepts)[:opts.count]
    concepts = [ConceptData.from_spec(spec, opts.references) for spec in specs]
    results, images = run_multiconcept(world, specs, concepts, features, budget, settings)
    results["settings"] |= {"checkpoint": opts.checkpoint.name, "concept_file": opts.concepts.name,
                            "quick": opts.quick}
    results["evaluator_accuracy"] = {k: round(v, 3) for k, v in report.accuracy.items()}
    results["seconds"] = round(time.perf_counter() - started, 1)
    results["provenance"] = provenance(Path(__file__))
    name = "multiconcept_quick" if opts.quick else "multiconcept"
    opts.out.mkdir(parents=True, exist_ok=True)
    (opts.out / f"{name}.json").write_text(json.dumps(results, indent=1) + "\n")
    (opts.out / f"{name}.md").write_text(markdown(results) + "\n")
    grid(images, opts.out / f"{name}_grid.png")
    LOG.info("%s", markdown(results))
    LOG.info("written %s in %.0f s", opts.out / f"{name}.json", results["seconds"])


if __name__ == "__main__":
    main()
