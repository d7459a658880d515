"""Pretrain the world model: a TAESD-layout VAE, then the SD1.x-layout UNet, on procedurally drawn scenes.

Deterministic for a seed, plain PyTorch (no ComfyUI). The text encoder is a 2-layer CLIP-L with fixed random
weights from the seed (a fixed, prompt-dependent feature map). Writes one fp16 .safetensors checkpoint with
ComfyUI's key layout, loadable by the stock CheckpointLoaderSimple (with R2MOE_TINY_MODELS=1).

    python bench/pretrain_world.py --out X              # a world from scratch at the benchmark's size
    python bench/pretrain_world.py --quick --out X      # seconds: checks the pipeline end to end

The shipped world v3 (128 px) was made in three runs: bench/world_sweep.py on a GPU (one VAE, several UNet
recipes at the same steps, each judged by eval_world's readings, the best kept), then twice continued on a CPU
with `--init-from` (VAE kept, a fresh optimizer, two-object composites in the pool); docs/benchmarks.md lists
the commands and bench/results/world_recipe_sweep.json what the sweep measured. The sweep's recipe, for a run
from scratch, is `--composites 0.3 --vae-edge 1 --loss capped-v --offset-noise 0.1 --ema 0.999` (with
`--work DIR --max-minutes N` to run it in chunks on a CPU); the continuations raised composites to 0.5 and 0.6.
The other defaults are world v2's: `--size 64` made it in 54 min on 2 CPU threads. `--size 64 --text-init 1
--loss eps --channels 32 --threads 1` is the first world, which drew backgrounds at chance.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import logging
import math
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from world.concepts import class_scene
from world.resumable import Allowance, AllowanceSpentError, RecipeMismatchError, Stage, WorkDir, run_stage
from world.sampler import LATENT_SCALE, ddpm_sigmas
from world.scenes import Composite, Scene, caption, random_composite, random_scene, render
from world.text import TEXT_INITS, TextEncoder, random_text_encoder
from world.unet import UNet
from world.vae import WorldVAE
from world.vocab import SIZE

LOG = logging.getLogger("r2moe.bench.pretrain")
# 64 channels at the first level, not 32: ComfyUI's UNet ends in GroupNorm(32 groups), and with one channel per
# group the last norm erases each channel's mean and scale over the 8x8 latent, which is exactly what a background
# colour is and what ε at t=999 needs. A 32-channel world drew backgrounds at chance (15.6 %) with final latents
# at 1.9x the data's spread; 64 channels at the same step count came out at 1.15x (see docs/benchmarks.md, world model).
WORLD_UNETS = {64: {"model_channels": 64, "channel_mult": (1, 1, 2, 2)},  # the shipped world
               32: {"model_channels": 32, "channel_mult": (1, 2, 4, 4)}}  # the first world (and the tiny model)
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "output" / "world_pretrained.safetensors"  # never the shipped file


def scene_pool(count: int, seed: int, size: int = SIZE, composites: float = 0.0, workers: int = 1,
               class_objects: float = 0.0) -> tuple[torch.Tensor, list[str]]:
    """`composites` of the scenes (two thirds of them with two objects, one third with three) show different
    objects in named places, `class_objects` one object of a concept class (`concepts.class_scene`); 0 and 0
    draw world v2's pool exactly. Scenes are drawn in order from the seed, so `workers` > 1 (processes rendering
    them) gives the same pool, faster (15 ms per 128 px scene)."""
    rng = random.Random(seed)

    def draw() -> Scene | Composite:
        if class_objects and rng.random() < class_objects:  # drawn only when asked: v2's and v3's streams stay
            return class_scene(rng)
        if composites == 0 or rng.random() >= composites:
            return random_scene(rng)
        return random_composite(rng, 2 if rng.random() < 2 / 3 else 3)

    scenes = [draw() for _ in range(count)]
    if workers > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(workers) as pool:
            pixels = list(pool.map(render, scenes, [size] * len(scenes), chunksize=64))
    else:
        pixels = [render(s, size) for s in scenes]
    images = torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2).float() / 255.0
    return images, [caption(s) for s in scenes]


def random_crops(images: torch.Tensor, batch: int, crop: int, gen: torch.Generator) -> torch.Tensor:
    """`batch` crops of crop x crop pixels at offsets on the VAE's 8-pixel grid (whole images for crop 0 or one
    not smaller than them). The VAE is convolutional, so crops teach it the same local code at a fraction of the
    cost: at 64 channels every full-resolution layer costs about 150 MMAC per 64x64 image."""
    rows = torch.randint(0, len(images), (batch,), generator=gen)
    side = images.shape[-1]
    if crop == 0 or crop >= side:
        return images[rows]
    cells = (side - crop) // 8 + 1
    ys, xs = (torch.randint(0, cells, (batch,), generator=gen) * 8 for _ in range(2))
    return torch.stack([images[r, :, y:y + crop, x:x + crop] for r, y, x in zip(rows.tolist(), ys.tolist(),
                                                                                xs.tolist(), strict=True)])


@torch.no_grad()
def init_vae_(vae: WorldVAE) -> WorldVAE:
    """Start from a blur-downsample/upsample autoencoder instead of default init.

    From default init this deep, norm-free ReLU network sits at the data-set mean colour for hundreds of steps
    (MSE 0.09), which a CPU budget cannot afford. Here every residual branch starts at zero (each block is the
    identity on its non-negative input), strided convs average 2x2 per channel, upsampling is nearest, and the first and
    last convs carry RGB through channels 0-2: the untrained VAE already reconstructs like 8x average pooling
    (MSE ~0.006) and training only has to add detail.
    """
    def diagonal(conv: torch.nn.Conv2d, channels: int) -> None:
        """Per-channel identity; with stride 2, a 2x2 average over the taps that never touch the padding."""
        conv.weight.zero_()
        for c in range(channels):
            if conv.stride[0] == 2:
                conv.weight[c, c, 1:, 1:] = 0.25
            else:
                conv.weight[c, c, 1, 1] = 1.0
        if conv.bias is not None:
            conv.bias.zero_()

    for part in (vae.taesd_encoder, vae.taesd_decoder):
        for module in part.modules():
            if hasattr(module, "conv") and isinstance(module.conv, torch.nn.Sequential):  # a residual block
                module.conv[-1].weight.zero_()
                module.conv[-1].bias.zero_()
        convs = [m for m in part if isinstance(m, torch.nn.Conv2d)]
        first, last, inner = convs[0], convs[-1], convs[1:-1]
        for conv in inner:  # the strided (encoder) and post-upsample (decoder) 64->64 convs
            diagonal(conv, 64)
        diagonal(first, 3)
        diagonal(last, 3)
    vae.taesd_encoder[-1].bias[:3] = -0.5  # latents centred on mid-grey
    vae.taesd_decoder[1].bias[:3] = 0.5
    return vae


def edge_error(decoded: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error of the horizontal and vertical pixel differences: what outlines and stripes are made of,
    and what a plain MSE spends little on (an object's edge is a few pixels of a mostly flat image)."""
    def grads(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x[..., :, 1:] - x[..., :, :-1], x[..., 1:, :] - x[..., :-1, :]

    (dx, dy), (tx, ty) = grads(decoded), grads(target)
    return 0.5 * ((dx - tx).square().mean() + (dy - ty).square().mean())


def train_vae(images: torch.Tensor, steps: int, batch: int, gen: torch.Generator, crop: int = 0,
              lr: float = 3e-4, work: WorkDir | None = None, allowance: Allowance | None = None,
              edge_weight: float = 0.0, device: str = "cpu") -> WorldVAE:
    """From `init_vae_`; `crop` > 0 trains on random crops of that many pixels (0: whole images, world v2);
    `edge_weight` adds `edge_error` to the MSE (0: world v2's loss)."""
    vae = init_vae_(WorldVAE()).to(device)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=lr)  # refining a good start, not finding one

    def step(_: int) -> float:
        x = random_crops(images, batch, crop, gen).to(device)
        with autocast(device):
            z = vae.taesd_encoder(x)
            decoded = vae.taesd_decoder(z).float()
        loss = torch.nn.functional.mse_loss(decoded, x) + 1e-4 * z.float().square().mean()
        if edge_weight:
            loss = loss + edge_weight * edge_error(decoded, x)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss.item()

    run_stage(Stage("vae", steps, vae, optimizer, step, gen, log_every=max(steps // 10, 1)),
              work or WorkDir(None, {}), allowance or Allowance())
    with torch.no_grad():  # scale latents so that, after ComfyUI's x0.18215, they have unit spread
        spread = vae.taesd_encoder(images[:256].to(device)).std()
        vae.vae_scale.fill_(float(spread) * LATENT_SCALE)
    return vae.requires_grad_(False).eval()


LOSS_WEIGHTS = ("v", "eps", "capped-v")


def loss_weight_of(sigma: torch.Tensor, kind: str, cap: float) -> torch.Tensor:
    """Per-sample weight of the ε error. "v": σ²+1 (ε error / ᾱ, the v-prediction loss: an x0 error weighs the same
    at every σ, about 81 % of the weight on σ > 5); "capped-v": min(σ²+1, cap), which keeps v's weight at low σ and
    moves the rest of it to σ < 5, where shapes and textures are decided; "eps": 1."""
    if kind == "v":
        return sigma**2 + 1
    if kind == "capped-v":
        return (sigma**2 + 1).clamp(max=cap)
    return torch.ones_like(sigma)


def autocast(device: str) -> contextlib.AbstractContextManager:
    """bf16 autocast on a GPU (the world's UNet and VAE train 3-4x faster there); exact fp32 on the CPU."""
    if device.startswith("cuda"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@dataclass
class UNetRecipe:
    """How the UNet is trained; the defaults are world v2's (`python bench/pretrain_world.py` reproduces it)."""

    steps: int = 2400
    batch: int = 48
    lr: float = 6e-4
    high_noise: float = 0.0  # extra share of each batch at t >= 750
    loss_weight: str = "v"  # LOSS_WEIGHTS
    v_cap: float = 5.0  # the cap of "capped-v"
    offset_noise: float = 0.0  # std of a per-sample, per-channel constant added to the noise
    ema: float = 0.0  # decay of an exponential moving average of the weights (0: none)
    channels: int = 64


def train_unet(latents: torch.Tensor, contexts: torch.Tensor, empty: torch.Tensor, recipe: UNetRecipe,
               gen: torch.Generator, unet: UNet | None = None, work: WorkDir | None = None,
               allowance: Allowance | None = None, device: str = "cpu") -> tuple[UNet, UNet | None]:
    """ε-prediction with uniform t, weighted per `loss_weight_of`; returns the UNet and its EMA (None without).

    Why a weighting: at σ_max = 14.6 an ε error e becomes an x0 error 14.6·e, and Euler sampling never undoes
    it, while plain ε MSE prices an x0 error d at σ as (d/σ)². The first world (32 channels, plain ε MSE, 2400
    steps) ended at ε MSE 0.022 at t = 999; world v2 (64 channels, v weighting, 2400 steps) at 0.0021.
    Offset noise: a constant per channel added to the noise makes the noisy input's global mean (a background
    colour, readable from the input at 16x16 latents even at t = 999) unreliable, so the model takes it from the
    caption, as it must at sampling time, which starts from pure noise.
    """
    unet = (unet or UNet(**WORLD_UNETS[recipe.channels])).to(device).train().requires_grad_(True)
    ema = copy.deepcopy(unet).requires_grad_(False).eval() if recipe.ema else None
    optimizer = torch.optim.AdamW(unet.parameters(), lr=recipe.lr)
    steps = recipe.steps
    # short warm-up, then cosine decay to a tenth: a CPU budget of a few thousand steps needs a high rate early
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / 100) * (0.55 + 0.45 * math.cos(math.pi * min(s / steps, 1.0))))
    sigmas = ddpm_sigmas()
    every = max(steps // 10, 1)

    def step(i: int) -> float:
        batch = recipe.batch
        rows = torch.randint(0, len(latents), (batch,), generator=gen)
        t = torch.randint(0, len(sigmas), (batch,), generator=gen)
        if recipe.high_noise > 0:  # drawn only when asked, so `--high-noise 0` replays the first world's stream
            high = torch.rand(batch, generator=gen) < recipe.high_noise
            t = torch.where(high, torch.randint(750, len(sigmas), (batch,), generator=gen), t)
        sigma = sigmas[t].view(-1, 1, 1, 1)
        x0 = latents[rows.to(latents.device)]
        noise = torch.randn(x0.shape, generator=gen)
        if recipe.offset_noise:
            noise = noise + recipe.offset_noise * torch.randn(batch, x0.shape[1], 1, 1, generator=gen)
        drop = torch.rand(batch, generator=gen) < 0.1  # caption dropout: the model also learns the empty prompt
        context = torch.where(drop[:, None, None].to(device), empty, contexts[rows.to(contexts.device)])
        sigma, noise, t = sigma.to(device), noise.to(device), t.to(device)
        x_in = (x0 + sigma * noise) / (sigma**2 + 1).sqrt()
        with autocast(device):
            predicted = unet(x_in, t.float(), context)
        error = (predicted.float() - noise).square()
        weight = loss_weight_of(sigma, recipe.loss_weight, recipe.v_cap)
        loss = (weight * error).mean() / weight.mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        if ema is not None:  # the decay ramps up (1+i)/(10+i), so the random start fades out of the average
            with torch.no_grad():
                decay = min(recipe.ema, (1 + i) / (10 + i))
                torch._foreach_lerp_(list(ema.parameters()), list(unet.parameters()), 1 - decay)
        if i % every == 0 or i == steps - 1:
            LOG.info("unet step %d/%d: loss %.4f, ε MSE at t=999 %.4f", i, steps, loss.item(),
                     eps_error_at_max_noise(unet, latents[:64], contexts[:64]))
        return loss.item()

    run_stage(Stage("unet", steps, unet, optimizer, step, gen, scheduler, extra=ema), work or WorkDir(None, {}),
              allowance or Allowance())
    return unet.eval(), ema


@torch.no_grad()
def training_data(vae: WorldVAE, text: TextEncoder, images: torch.Tensor, captions: list[str], device: str = "cpu"
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(latents x the SD latent scale, caption contexts, the empty prompt's context), on `device`: encoded once,
    since the VAE and the text encoder are frozen while the UNet trains."""
    vae, text = vae.to(device), text.to(device)  # the text encoder is 2 s per 256 captions on 2 CPU threads
    latents = torch.cat([vae.encode(images[i : i + 256].to(device)) for i in range(0, len(images), 256)])
    contexts = torch.cat([text(captions[i : i + 256]) for i in range(0, len(captions), 256)])
    empty = text([""])
    text.to("cpu")
    return latents * LATENT_SCALE, contexts, empty


@torch.no_grad()
def eps_error_at_max_noise(unet: UNet, latents: torch.Tensor, contexts: torch.Tensor) -> float:
    """ε MSE at t=999: σ_max = 14.6 multiplies it into the first x0 estimate, so samples live or die by it."""
    was_training = unet.training
    unet.eval()
    sigma = ddpm_sigmas()[-1]
    noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(1)).to(latents.device)
    x_in = (latents + sigma * noise) / (sigma**2 + 1).sqrt()
    t = torch.full((len(latents),), 999.0, device=latents.device)
    error = (unet(x_in, t, contexts) - noise).square().mean().item()
    unet.train(was_training)
    return error


def save_checkpoint(path: Path, unet: UNet, text: TextEncoder, vae: WorldVAE, seed: int, text_init: int,
                    size: int = SIZE) -> None:
    """The UNet and VAE only: the text encoder is random from the seed and rebuilt on load (its 49408-word token
    table alone would be 76 MB in fp16). `world.checkpoint.assemble` writes the full ComfyUI checkpoint."""
    from safetensors.torch import save_file

    tensors = {f"model.diffusion_model.{k}": v for k, v in unet.state_dict().items()}
    tensors |= {f"first_stage_model.{k}": v for k, v in vae.state_dict().items()}
    tensors = {k: v.detach().to("cpu", torch.float16).contiguous() for k, v in tensors.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={"r2moe_world": f"seed={seed}", "r2moe_world_text_seed": str(seed),
                                          "r2moe_world_text_init": str(text_init), "r2moe_world_size": str(size)})
    tmp.replace(path)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--vae-steps", type=int, default=150)
    parser.add_argument("--unet-steps", type=int, default=2400)
    parser.add_argument("--batch", type=int, default=48, help="UNet batch")
    parser.add_argument("--vae-batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=6e-4, help="UNet peak learning rate")
    parser.add_argument("--threads", type=int, default=2,
                        help="torch threads; the shipped weights used 2 (float sums depend on the thread count, so "
                             "another count gives slightly different weights)")
    parser.add_argument("--text-init", type=int, default=2, choices=TEXT_INITS,
                        help="text encoder init (world/text.py); 2 is the shipped world's")
    parser.add_argument("--channels", type=int, default=64, choices=sorted(WORLD_UNETS),
                        help="UNet width at the first level: 64 (shipped) or 32 (the first world)")
    parser.add_argument("--loss", default="v", choices=LOSS_WEIGHTS,
                        help="UNet loss weighting: v (ε error / ᾱ, world v2's), plain ε MSE, or v capped at --v-cap")
    parser.add_argument("--v-cap", type=float, default=5.0, help="the cap of --loss capped-v")
    parser.add_argument("--offset-noise", type=float, default=0.0,
                        help="std of a per-channel constant added to the training noise (0: none)")
    parser.add_argument("--ema", type=float, default=0.0,
                        help="decay of an EMA of the UNet weights, which is then what is saved (0: none)")
    parser.add_argument("--vae-edge", type=float, default=0.0,
                        help="weight of the pixel-difference (edge) error in the VAE loss (0: MSE only)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (bf16 autocast on cuda)")
    parser.add_argument("--workers", type=int, default=1, help="processes rendering the scene pool")
    parser.add_argument("--high-noise", type=float, default=0.0,
                        help="extra share of each UNet batch drawn from t >= 750 (0 = uniform t)")
    parser.add_argument("--init-from", type=Path, default=None,
                        help="continue from this world checkpoint: its VAE is kept (no VAE training) and its UNet "
                             "is trained further against the chosen text encoder")
    parser.add_argument("--size", type=int, default=SIZE, help="image side in pixels (latents are 1/8 of it)")
    parser.add_argument("--composites", type=float, default=0.0,
                        help="share of pretraining scenes with two or three different objects in named places "
                             "(0: the shipped world's one-kind scenes only)")
    parser.add_argument("--class-objects", type=float, default=0.0,
                        help="share of pretraining scenes with one object of a concept class, captioned with its "
                             "class word (`photo of a kite on the left, sand background`); 0: none (v2, v3)")
    parser.add_argument("--vae-crop", type=int, default=0, help="train the VAE on random crops of this side (0: "
                                                                  "whole images)")
    parser.add_argument("--vae-lr", type=float, default=3e-4)
    parser.add_argument("--work", type=Path, default=None,
                        help="keep resumable state here (every 5 min and at a stop); the same command continues it")
    parser.add_argument("--max-minutes", type=float, default=None,
                        help="stop after this many minutes, state saved in --work; exit status 75 until finished")
    parser.add_argument("--max-steps", type=int, default=None, help="stop after this many optimizer steps "
                                                                     "(VAE and UNet together), like --max-minutes")
    parser.add_argument("--quick", action="store_true", help="tiny run to check the pipeline")
    opts = parser.parse_args()
    if opts.quick:
        opts.images, opts.vae_steps, opts.unet_steps, opts.batch, opts.vae_batch = 64, 3, 3, 8, 8
    if (opts.max_minutes is not None or opts.max_steps is not None) and opts.work is None:
        parser.error("--max-minutes and --max-steps need --work DIR, where the state is kept to continue from")
    recipe = {k: str(v) if isinstance(v, Path) else v for k, v in vars(opts).items()
              if k not in ("out", "work", "max_minutes", "max_steps")}
    try:
        work = WorkDir(opts.work, recipe)
    except RecipeMismatchError as error:
        parser.error(str(error))
    allowance = Allowance(opts.max_minutes, opts.max_steps)
    if opts.threads:
        torch.set_num_threads(opts.threads)
    torch.manual_seed(opts.seed)
    gen = torch.Generator().manual_seed(opts.seed)
    started = time.perf_counter()
    images, captions = scene_pool(opts.images, opts.seed, opts.size, opts.composites, opts.workers,
                                  opts.class_objects)
    start_unet = None
    if opts.init_from:
        from world.checkpoint import load_world

        start_unet, _, vae = load_world(opts.init_from, opts.size)
        vae = vae.requires_grad_(False).eval()
        LOG.info("continuing from %s (VAE kept)", opts.init_from)
    else:
        vae = train_vae(images, opts.vae_steps, opts.vae_batch, gen, opts.vae_crop, opts.vae_lr, work, allowance,
                        opts.vae_edge, opts.device)
    text = random_text_encoder(opts.seed, opts.text_init)
    latents, contexts, empty = training_data(vae, text, images, captions, opts.device)
    recipe = UNetRecipe(opts.unet_steps, opts.batch, opts.lr, opts.high_noise, opts.loss, opts.v_cap,
                        opts.offset_noise, opts.ema, opts.channels)
    unet, ema = train_unet(latents, contexts, empty, recipe, gen, start_unet, work, allowance, opts.device)
    save_checkpoint(opts.out, ema or unet, text, vae, opts.seed, opts.text_init, opts.size)
    LOG.info("world model written to %s in %.0f s", opts.out, time.perf_counter() - started)


if __name__ == "__main__":
    try:
        main()
    except AllowanceSpentError as where:
        LOG.info("paused at %s, state kept in the --work directory: run the same command again to continue", where)
        sys.exit(75)
