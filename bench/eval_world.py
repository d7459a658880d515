"""How well does a world checkpoint draw what captions say? Samples random captions, then asks the world's
evaluator (trained here, its held-out accuracy printed) whether each generated image shows the asked attributes."""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # r2moe_core (plain PyTorch)

from world.checkpoint import load_world
from world.evaluators import ATTRIBUTES, labels, to_tensor, train_evaluator
from world.sampler import LATENT_SCALE, sample
from world.scenes import caption, random_scene

LOG = logging.getLogger("r2moe.bench.eval_world")


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--cfg", type=float, default=5.0)
    parser.add_argument("--grid", type=Path, default=None, help="write a PNG grid of the samples")
    parser.add_argument("--eval-images", type=int, default=4000, help="training images of the evaluator")
    opts = parser.parse_args()
    evaluator, report = train_evaluator(train_images=opts.eval_images)
    LOG.info("evaluator held-out accuracy: %s", {k: round(v, 3) for k, v in report.accuracy.items()})
    unet, text, vae = load_world(opts.checkpoint)
    rng = random.Random(12345)
    scenes = [random_scene(rng) for _ in range(opts.prompts)]
    with torch.no_grad():
        context, empty = text([caption(s) for s in scenes]), text([""])
        with unet.fixed_contexts():
            latents = sample(lambda x, t, c: unet(x, t, c), context, empty, steps=opts.steps, cfg=opts.cfg)
        images = (vae.decode(latents / LATENT_SCALE).permute(0, 2, 3, 1) * 255).round().byte().numpy()
        predicted = evaluator(to_tensor(list(images)))
    truth = [labels(s) for s in scenes]
    alignment = {k: float(np.mean([int(predicted[k][i].argmax()) == truth[i][k] for i in range(len(scenes))]))
                 for k in ATTRIBUTES}
    LOG.info("text alignment of generated images: %s", json.dumps({k: round(v, 3) for k, v in alignment.items()}))
    if opts.grid:
        from PIL import Image

        rows = [np.concatenate(list(images[i : i + 8]), 1) for i in range(0, len(images) - len(images) % 8, 8)]
        Image.fromarray(np.concatenate(rows, 0)).save(opts.grid)


if __name__ == "__main__":
    main()
