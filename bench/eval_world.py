"""How well does a world checkpoint draw what captions say?

Samples fixed captions (one kind of object, and two different objects in named halves), then asks the world's
evaluator (trained here; its held-out accuracy, and its score on clean renders of the same two-object captions,
are written beside) whether each generated image shows what was asked. Also reports the multi-concept judge's
balanced accuracy on clean renders of four learned concepts, so a reader knows how far either can be trusted.

    python bench/eval_world.py                      # the shipped world; writes bench/results/eval_world.json
    python bench/eval_world.py CKPT --out X.json --grid X.png
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # r2moe_core (plain PyTorch)

from provenance import provenance
from world.checkpoint import SHIPPED, load_world
from world.concepts import load_concepts
from world.evaluators import ATTRIBUTES, WorldEvaluator, labels, to_tensor, train_evaluator, two_object_scores
from world.multiconcept import BOXES, PLACES
from world.recogniser import build_recogniser, draw_many
from world.sampler import LATENT_SCALE, sample
from world.scenes import Composite, Scene, caption, random_composite, random_scene, render
from world.text import TextEncoder
from world.unet import UNet
from world.vae import WorldVAE
from world.vocab import BACKGROUNDS, COLOURS, SIZE

LOG = logging.getLogger("r2moe.bench.eval_world")
HERE = Path(__file__).resolve().parent


def round_trip(vae: WorldVAE, images: list[np.ndarray]) -> list[np.ndarray]:
    """Clean renders encoded and decoded by the world's VAE: what a UNet that drew every latent perfectly would
    show, so the readings of these bound the generated ones."""
    out: list[np.ndarray] = []
    with torch.no_grad():
        x = (to_tensor(images) + 1) / 2
        for start in range(0, len(x), 32):
            decoded = vae.decode(vae.encode(x[start:start + 32])).permute(0, 2, 3, 1).float()
            out += list((decoded * 255).round().byte().numpy())
    return out


def colour_confusions(evaluator: WorldEvaluator, images: list[np.ndarray], singles: list[Scene]) -> dict[str, int]:
    """How often each wrong colour reading happens ("asked -> read": count), most frequent first."""
    with torch.no_grad():
        read = evaluator(to_tensor(images[:len(singles)]))["colour"].argmax(-1).tolist()
    names = list(COLOURS)
    wrong = Counter(f"{names[labels(s)['colour']]} -> {names[r]}" for s, r in zip(singles, read, strict=True)
                    if r != labels(s)["colour"])
    return dict(wrong.most_common())


def draw(unet: UNet, text: TextEncoder, vae: WorldVAE, captions: list[str], steps: int, cfg: float,
         device: str = "cpu") -> list[np.ndarray]:
    """Images (H, W, 3 uint8) for `captions`, 32 at a time, fixed seed: the same pictures on any device."""
    images: list[np.ndarray] = []
    with torch.no_grad():
        empty = text([""]).to(device)
        for start in range(0, len(captions), 32):
            context = text(captions[start:start + 32]).to(device)
            with unet.fixed_contexts():
                latents = sample(lambda x, t, c: unet(x, t, c), context, empty, steps=steps, cfg=cfg,
                                 latent_size=SIZE // 8)
            decoded = vae.decode(latents / LATENT_SCALE).permute(0, 2, 3, 1).float().cpu()
            images += list((decoded * 255).round().byte().numpy())
    return images


def eval_scenes(prompts: int, two_object_prompts: int) -> tuple[list[Scene], list[Composite]]:
    """The fixed captions every world is judged on: one-kind scenes and two different objects in named halves."""
    singles = [random_scene(rng) for rng in [random.Random(12345)] for _ in range(prompts)]
    pairs = [random_composite(rng, 2) for rng in [random.Random(54321)] for _ in range(two_object_prompts)]
    return singles, pairs


def drawn_as_asked(evaluator: WorldEvaluator, images: list[np.ndarray], singles: list[Scene],
                   pairs: list[Composite]) -> dict[str, float]:
    """Per attribute, the share of one-kind images the evaluator reads as captioned, and the two-object scores
    (`images` holds the singles' pictures, then the pairs')."""
    with torch.no_grad():
        predicted = evaluator(to_tensor(images[:len(singles)]))
    truth = [labels(s) for s in singles]
    accuracy = {k: float(np.mean([int(predicted[k][i].argmax()) == truth[i][k] for i in range(len(singles))]))
                for k in ATTRIBUTES} | two_object_scores(evaluator, images[len(singles):], pairs)
    return {k: round(v, 3) for k, v in accuracy.items()}


def judge_accuracy(concepts: Path, per_box: int = 40) -> dict:
    """The multi-concept judge trained and scored on clean renders (no VAE) of four concepts, in the halves and
    thirds it reads; plus how often it finds both concepts of a clean two-concept render in their own halves."""
    specs = load_concepts(concepts)[:4]
    boxes = [(box, p) for n in (2, 3) for box, p in zip(BOXES[n], PLACES[n], strict=True)]
    recogniser, report = build_recogniser(specs, boxes, lambda images: images, per_box)
    rng, hits, trials = random.Random(99), 0, 0
    for left in specs:
        for right in specs:
            if left is right:
                continue
            for background in rng.sample(list(BACKGROUNDS), 2):
                image = draw_many(background, [(left.object(), (0.27, 0.5), rng.uniform(0.26, 0.34)),
                                               (right.object(), (0.73, 0.5), rng.uniform(0.26, 0.34))])
                found = recogniser.locate(image, list(BOXES[2]))
                hits += found.get(left.token) == BOXES[2][0] and found.get(right.token) == BOXES[2][1]
                trials += 1
    return report | {"two_concepts_located": round(hits / trials, 3), "two_concept_renders": trials}


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path, nargs="?", default=SHIPPED)
    parser.add_argument("--prompts", type=int, default=64, help="captions with one kind of object")
    parser.add_argument("--two-object-prompts", type=int, default=32, help="captions with two different objects")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--cfg", type=float, default=5.0)
    parser.add_argument("--grid", type=Path, default=None, help="write a PNG grid of the samples")
    parser.add_argument("--eval-images", type=int, default=4000, help="training images of the evaluator")
    parser.add_argument("--half-crops", type=float, default=0.25,
                        help="share of the evaluator's training images that are one object cropped from its half of "
                             "a two-object scene, as the two-object score reads them")
    parser.add_argument("--concepts", type=Path, default=HERE / "world" / "concepts_10.json",
                        help="concepts whose first four the judge is built on")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "eval_world.json")
    opts = parser.parse_args()
    torch.set_num_threads(2)
    evaluator, report = train_evaluator(train_images=opts.eval_images, half_crops=opts.half_crops)
    singles, pairs = eval_scenes(opts.prompts, opts.two_object_prompts)
    unet, text, vae = load_world(opts.checkpoint)
    images = draw(unet, text, vae, [caption(s) for s in singles + pairs], opts.steps, opts.cfg)
    accuracy = drawn_as_asked(evaluator, images, singles, pairs)
    clean = two_object_scores(evaluator, [render(p, SIZE) for p in pairs], pairs)
    trips = drawn_as_asked(evaluator, round_trip(vae, [render(s, SIZE) for s in singles + pairs]), singles, pairs)
    judge = judge_accuracy(opts.concepts)
    results = {
        "provenance": provenance(Path(__file__)),
        "accuracy": accuracy,
        "evaluator_accuracy": {k: round(v, 3) for k, v in (report.accuracy | clean).items()},
        "vae_round_trip": trips,
        "colour_confusions": colour_confusions(evaluator, images, singles),
        "judge_accuracy": judge["balanced"],
        "judge": {k: judge[k] for k in ("per_class", "concept_vs_concept", "two_concepts_located",
                                         "two_concept_renders", "method")},
        "settings": {"checkpoint": opts.checkpoint.name, "prompts": opts.prompts,
                     "two_object_prompts": opts.two_object_prompts, "steps": opts.steps, "cfg": opts.cfg,
                     "evaluator_images": opts.eval_images, "evaluator_half_crops": opts.half_crops, "size": SIZE},
    }
    LOG.info("drawn as asked: %s; clean renders through the VAE: %s", json.dumps(results["accuracy"]),
             json.dumps(trips))
    LOG.info("evaluator held out: %s; judge balanced accuracy on clean renders: %.3f, both concepts of a clean "
             "two-concept render found in their halves: %.3f", json.dumps(results["evaluator_accuracy"]),
             results["judge_accuracy"], judge["two_concepts_located"])
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    opts.out.write_text(json.dumps(results, indent=1) + "\n")
    if opts.grid:
        from PIL import Image

        rows = [np.concatenate(list(images[i : i + 8]), 1) for i in range(0, len(images) - len(images) % 8, 8)]
        Image.fromarray(np.concatenate(rows, 0)).save(opts.grid)


if __name__ == "__main__":
    main()
