"""Training step time: R2MoETrainConcept vs ComfyUI's own TrainLoraNode, side by side in one run.

Same model, resolution (256 px = 32x32 latent), rank 4, batch 2, AdamW, no gradient checkpointing, on the tiny
SD1.5-layout model and on a full-size SD1.5-shaped UNet with random weights. Per-step time is the difference
between a long and a short run divided by the step difference, so set-up costs cancel. Prints the ratios and
writes bench/results/training.json. Goal: <= 1.0x (R2MoE trains far fewer parameters).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))
sys.path.insert(0, str(REPO / "bench"))

from comfy_inprocess import boot, call_node  # noqa: E402
from comfy_server import has_gpu  # noqa: E402
from sampling import full_size_model  # noqa: E402

LOG = logging.getLogger("r2moe.bench")
RES = 256


def _timed(fn) -> float:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def r2moe_run(model, clip, vae, bank, images, steps: int) -> float:
    return _timed(lambda: call_node(
        "R2MoETrainConcept", model=model, clip=clip, vae=vae, bank=bank, concept_name="bench", trigger_token="<b1>",
        class_word="dog", images=images, steps=steps, batch_size=2, resolution=RES, lr_experts=1e-4, lr_router=1e-4,
        lr_token=1e-3, distill_lambda=1e-5, distill_mode="exact", prune_threshold=0.4, seed=0, optimizer="AdamW",
        preview_every=0, gradient_checkpointing=False,
    ))


def lora_run(model, latents, positive, steps: int, dtype: str) -> float:
    return _timed(lambda: call_node(
        "TrainLoraNode", model=[model], latents=latents, positive=[positive], batch_size=[2],
        grad_accumulation_steps=[1], steps=[steps], learning_rate=[1e-4], rank=[4], optimizer=["AdamW"],
        loss_function=["MSE"], seed=[0], training_dtype=[dtype], lora_dtype=["fp32"], algorithm=["LoRA"],
        gradient_checkpointing=[False], existing_lora=["[None]"],
    ))


def per_step(run, short: int, long: int) -> float:
    run(short)  # warm-up: model load, kernels
    return (run(long) - run(short)) / (long - short)


def bench(name: str, model, clip, vae, short: int, long: int, gpu: bool) -> dict:
    import torch

    gen = torch.Generator().manual_seed(0)
    images = torch.rand(4, RES, RES, 3, generator=gen)
    bank = call_node("R2MoENewBank", model=model, rank=4, top_k=3, prune_threshold=0.4, distill_lambda=1e-5)[0]
    with torch.inference_mode():  # as inside the executor (the VAE was built in inference mode)
        encoded = vae.encode(images).float()
    # One LATENT per image: 0.3.75's TrainLoraNode fails on a single batched LATENT (`multi_res` unset).
    latents = [{"samples": encoded[i : i + 1]} for i in range(len(encoded))]
    positive = call_node("CLIPTextEncode", clip=clip, text="photo of a dog")[0]
    ours = per_step(lambda n: r2moe_run(model, clip, vae, bank, images, n), short, long)
    theirs = per_step(lambda n: lora_run(model, latents, positive, n, "bf16" if gpu else "fp32"), short, long)
    LOG.info("%-30s R2MoETrainConcept %.3f s/step | TrainLoraNode %.3f s/step | ratio %.2fx",
             name, ours, theirs, ours / theirs)
    return {"model": name, "r2moe_s_per_step": ours, "trainlora_s_per_step": theirs, "ratio": ours / theirs}


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--skip-full", action="store_true")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "training.json")
    opts = parser.parse_args()
    gpu = has_gpu()
    host = boot(Path(tempfile.mkdtemp(prefix="r2moe_bench_")), gpu=gpu)
    import torch

    device = torch.cuda.get_device_name(0) if gpu else f"CPU ({torch.get_num_threads()} threads)"
    LOG.info("R2MoE training benchmark on %s, %d px, rank 4, batch 2", device, RES)
    model, clip, vae = call_node("CheckpointLoaderSimple", ckpt_name=host.checkpoint.name)
    results = [bench("tiny SD1.5-layout", model, clip, vae, 3, 13, gpu)]
    if not opts.skip_full:
        full = full_size_model(host, gpu)
        results.append(bench("full-size SD1.5 UNet (random)", full, clip, vae, 1, 4 if not gpu else 21, gpu))
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    opts.out.write_text(json.dumps({"device": device, "results": results}, indent=2))
    LOG.info("written %s", opts.out)


if __name__ == "__main__":
    main()
