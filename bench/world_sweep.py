"""Choose the world's UNet recipe by measurement: one scene pool and one VAE, then several UNet recipes trained
for the same number of steps, each judged by eval_world's readings (its raw weights and its EMA), the best kept.

Made for a lent GPU (`make device-check WORLD=1` runs it there: minutes stand for a CPU day), runs anywhere with
`--smoke`. Every recipe gets the same steps, batch, data and seed, so the table reads change -> effect at a fixed
budget. The rule that picks the winner is fixed before any run: the sum over the targets (background, colour,
position 0.9; shape, texture, two objects 0.7) of min(reading / target, 1), ties to the mean reading. The
evaluator and the judge are trained once, in a process of their own beside the UNet training.

    python bench/world_sweep.py --out DIR --device cuda --budget-s 520
    python bench/world_sweep.py --out DIR --smoke        # CPU, about a minute
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import sys
import time
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import asdict, replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from eval_world import draw, drawn_as_asked, eval_scenes, judge_accuracy
from pretrain_world import UNetRecipe, save_checkpoint, scene_pool, train_unet, train_vae, training_data
from world.evaluators import WorldEvaluator, to_tensor, train_evaluator, two_object_scores
from world.scenes import caption, render
from world.text import random_text_encoder
from world.unet import UNet
from world.vocab import SIZE

LOG = logging.getLogger("r2moe.bench.world_sweep")
HERE = Path(__file__).resolve().parent
TEXT_INIT = 2  # the text encoder of worlds v2 and v3 (world/text.py), rebuilt from the seed on load
TARGETS = {"background": 0.9, "colour": 0.9, "position": 0.9, "shape": 0.7, "texture": 0.7, "two_objects": 0.7}
# One change at a time against world v2's loss, and both together. Every recipe keeps an EMA (decay 0.999), so
# each run is judged twice: its last weights and their average.
RECIPES: dict[str, dict] = {
    "v_loss": {},
    "offset_noise": {"offset_noise": 0.1},
    "capped_v": {"loss_weight": "capped-v", "v_cap": 5.0},
    "capped_v_offset": {"loss_weight": "capped-v", "v_cap": 5.0, "offset_noise": 0.1},
}


def score(accuracy: dict[str, float]) -> tuple[float, float]:
    """The winner's rule: targets met (partially counted), then the mean reading."""
    met = sum(min(accuracy[k] / target, 1.0) for k, target in TARGETS.items())
    return round(met, 4), round(sum(accuracy[k] for k in TARGETS) / len(TARGETS), 4)


def evaluator_job(path: str, images: int, half_crops: float, threads: int) -> dict:
    """Runs in its own process: the evaluator (saved to `path`) and the judge, neither of which depends on the
    UNet, so they are trained once while the UNets train."""
    torch.set_num_threads(threads)
    evaluator, report = train_evaluator(train_images=images, half_crops=half_crops)
    torch.save(evaluator.state_dict(), path)
    judge = judge_accuracy(HERE / "world" / "concepts_10.json", per_box=40 if images >= 1000 else 8)  # smoke: small
    return {"evaluator_accuracy": report.accuracy, "judge_accuracy": judge["balanced"],
            "judge_two_concepts_located": judge["two_concepts_located"]}


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--budget-s", type=float, default=520.0, help="wall clock of the whole sweep")
    parser.add_argument("--images", type=int, default=20000, help="scenes in the pretraining pool")
    parser.add_argument("--composites", type=float, default=0.3)
    parser.add_argument("--class-objects", type=float, default=0.0,
                        help="share of scenes with one object of a concept class (pretrain_world.py's option)")
    parser.add_argument("--vae-steps", type=int, default=3000)
    parser.add_argument("--vae-batch", type=int, default=32)
    parser.add_argument("--vae-edge", type=float, default=1.0)
    parser.add_argument("--batch", type=int, default=256, help="UNet batch")
    parser.add_argument("--lr", type=float, default=6e-4)
    parser.add_argument("--ema", type=float, default=0.999)
    parser.add_argument("--recipes", default=",".join(RECIPES), help="comma-separated names of RECIPES")
    parser.add_argument("--init-from", type=Path, default=None,
                        help="a world checkpoint whose VAE is kept and whose UNet every recipe continues")
    parser.add_argument("--workers", type=int, default=max((multiprocessing.cpu_count() or 2) - 2, 1))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help="tiny everything: checks the path in about a minute")
    opts = parser.parse_args()
    names = [n for n in opts.recipes.split(",") if n]
    unknown = [n for n in names if n not in RECIPES]
    if unknown:
        parser.error(f"unknown recipes {unknown}; choose from {sorted(RECIPES)}")
    if opts.smoke:
        opts.images, opts.vae_steps, opts.batch, opts.vae_batch = 96, 3, 8, 4
    started = time.monotonic()
    opts.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(opts.seed)
    if opts.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    threads = max((multiprocessing.cpu_count() or 2) // 2, 1)
    evaluator_path = opts.out / "evaluator.pt"
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as side:
        judged: Future = side.submit(evaluator_job, str(evaluator_path), 200 if opts.smoke else 4000,
                                     0.25, threads)
        results = sweep(opts, names, started, judged, evaluator_path)
    LOG.info("sweep done in %.0f s; winner %s", time.monotonic() - started, results["winner"])


def sweep(opts: argparse.Namespace, names: list[str], started: float, judged: Future, evaluator_path: Path) -> dict:
    gen = torch.Generator().manual_seed(opts.seed)
    images, captions = scene_pool(opts.images, opts.seed, SIZE, opts.composites, opts.workers, opts.class_objects)
    LOG.info("pool: %d scenes at %d px in %.0f s", len(images), SIZE, time.monotonic() - started)
    text = random_text_encoder(opts.seed, TEXT_INIT)
    if opts.init_from:
        from world.checkpoint import load_world

        start_unet, _, vae = load_world(opts.init_from)
    else:
        start_unet = None
        opts.vae_steps = vae_steps_within(images, opts, gen, 0.15 * opts.budget_s)
        vae = train_vae(images, opts.vae_steps, opts.vae_batch, gen, 0, 3e-4, edge_weight=opts.vae_edge,
                        device=opts.device)
    vae = vae.to(opts.device).requires_grad_(False).eval()
    LOG.info("VAE ready at %.0f s", time.monotonic() - started)
    latents, contexts, empty = training_data(vae, text, images, captions, opts.device)
    del images
    step_s = probe_step_seconds(latents, contexts, empty, opts, gen)
    evals = 2 * len(names)
    eval_s = 10.0  # sampling 96 captions x 20 steps and reading them, per checkpoint (a few seconds on a GPU)
    left = opts.budget_s - (time.monotonic() - started) - evals * eval_s - 30
    steps = 2 if opts.smoke else max(int(left / len(names) / step_s), 50)
    LOG.info("UNet step %.3f s at batch %d: %d steps per recipe", step_s, opts.batch, steps)
    results: dict = {"size": SIZE, "device": opts.device, "pool": opts.images, "composites": opts.composites,
                     "class_objects": opts.class_objects,
                     "vae": {"steps": 0 if opts.init_from else opts.vae_steps, "batch": opts.vae_batch,
                             "edge_weight": opts.vae_edge, "from": opts.init_from and opts.init_from.name},
                     "unet": {"steps": steps, "batch": opts.batch, "lr": opts.lr, "ema": opts.ema,
                              "from": opts.init_from and opts.init_from.name},
                     "targets": TARGETS, "rule": "sum of min(reading/target, 1), then mean reading",
                     "recipes": {}}
    best: tuple | None = None
    for name in names:
        recipe = replace(UNetRecipe(steps=steps, batch=opts.batch, lr=opts.lr, ema=opts.ema), **RECIPES[name])
        begun = time.monotonic()
        initial = None
        if start_unet is not None:
            initial = UNet.from_state_dict(start_unet.state_dict())
        unet, ema = train_unet(latents, contexts, empty, recipe, torch.Generator().manual_seed(opts.seed), initial,
                               device=opts.device)
        trained_s = time.monotonic() - begun
        evaluator = ready_evaluator(judged, evaluator_path)
        for label, model in ((name, unet), (f"{name}+ema", ema)):
            readings = judge_world(model, text, vae, evaluator, opts.device, opts.smoke)
            scored = score(readings)
            results["recipes"][label] = {"recipe": {k: v for k, v in asdict(recipe).items() if k != "steps"},
                                         "train_s": round(trained_s, 1), "accuracy": readings, "score": scored}
            LOG.info("%s: %s score %s", label, json.dumps(readings), scored)
            if best is None or scored > best[0]:
                best = (scored, label, model)
        if "side" not in results:
            results.update(side_results(judged, vae, evaluator, opts.smoke))
        write_json(opts.out / "sweep.json", results | {"elapsed_s": round(time.monotonic() - started, 1)})
    assert best is not None
    results["winner"] = best[1]
    save_checkpoint(opts.out / "world.safetensors", best[2], text, vae, opts.seed, TEXT_INIT)
    write_json(opts.out / "sweep.json", results | {"elapsed_s": round(time.monotonic() - started, 1)})
    return results


def vae_steps_within(images: torch.Tensor, opts: argparse.Namespace, gen: torch.Generator, seconds: float) -> int:
    """--vae-steps, or fewer if they would take more than `seconds` (timed on a throwaway VAE)."""
    if opts.smoke:
        return opts.vae_steps
    train_vae(images, 3, opts.vae_batch, gen, device=opts.device)
    begun = time.monotonic()
    train_vae(images, 20, opts.vae_batch, gen, edge_weight=opts.vae_edge, device=opts.device)
    step_s = (time.monotonic() - begun) / 20
    steps = min(opts.vae_steps, int(seconds / step_s))
    LOG.info("VAE step %.3f s at batch %d: %d steps", step_s, opts.vae_batch, steps)
    return steps


def probe_step_seconds(latents: torch.Tensor, contexts: torch.Tensor, empty: torch.Tensor,
                       opts: argparse.Namespace, gen: torch.Generator) -> float:
    """Seconds per UNet step at the sweep's batch, timed on a throwaway model (its first steps are warm-up)."""
    recipe = UNetRecipe(steps=4 if opts.smoke else 25, batch=opts.batch, lr=opts.lr)
    begun = time.monotonic()
    train_unet(latents, contexts, empty, replace(recipe, steps=max(recipe.steps // 5, 1)), gen, device=opts.device)
    warm = time.monotonic()
    train_unet(latents, contexts, empty, recipe, gen, device=opts.device)
    if opts.device.startswith("cuda"):
        torch.cuda.synchronize()
    LOG.info("probe: warm-up %.1f s", warm - begun)
    return (time.monotonic() - warm) / recipe.steps


def ready_evaluator(judged: Future, path: Path) -> WorldEvaluator:
    judged.result()  # waits for the side process the first time
    evaluator = WorldEvaluator()
    evaluator.load_state_dict(torch.load(path, weights_only=True))
    return evaluator.eval()


def judge_world(unet: UNet, text, vae, evaluator: WorldEvaluator, device: str, smoke: bool) -> dict[str, float]:
    singles, pairs = eval_scenes(8 if smoke else 64, 4 if smoke else 32)
    images = draw(unet.to(device).eval(), text, vae, [caption(s) for s in singles + pairs], 20, 5.0, device)
    return drawn_as_asked(evaluator, images, singles, pairs)


def side_results(judged: Future, vae, evaluator: WorldEvaluator, smoke: bool) -> dict:
    """The evaluator's own accuracy, the judge's, and what the evaluator still reads after a VAE round trip of
    clean renders (the ceiling the VAE puts on every UNet)."""
    singles, pairs = eval_scenes(8 if smoke else 64, 4 if smoke else 32)
    device = next(vae.parameters()).device
    clean = [render(s, SIZE) for s in singles + pairs]
    with torch.no_grad():
        x = (to_tensor(clean) + 1) / 2
        trips = [vae.decode(vae.encode(x[i:i + 32].to(device))).permute(0, 2, 3, 1).float().cpu()
                 for i in range(0, len(x), 32)]
    round_trip = [(t * 255).round().byte().numpy() for batch in trips for t in batch]
    return {"side": judged.result(), "vae_round_trip": drawn_as_asked(evaluator, round_trip, singles, pairs),
            "clean_two_objects": two_object_scores(evaluator, clean[len(singles):], pairs)}


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=1, default=str) + "\n")


if __name__ == "__main__":
    main()
