"""Training step time: R2MoETrainConcept vs ComfyUI's own TrainLoraNode, side by side in one run.

Same model, resolution (256 px = 32x32 latent; SDXL 128 px on a CPU), rank 4, batch 2, AdamW, no gradient
checkpointing, no token warm-up (its token-only steps are cheaper and would flatter the ratio), on the tiny
SD1.5-layout model and on full-size SD1.5- and SDXL-shaped UNets with random weights.
Per-step time is the difference between a long and a short run divided by the step difference, so set-up costs
cancel; each round times both trainers back to back, and the ratio reported is the median of the rounds' ratios
with their spread (half the interquartile range, relative). Prints the ratios and writes
bench/results/training.json. Goal: <= 1.0x (R2MoE trains far fewer parameters).
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))
sys.path.insert(0, str(REPO / "bench"))

from comfy_inprocess import boot, call_node, family_checkpoint  # noqa: E402
from comfy_server import has_gpu  # noqa: E402
from provenance import HOST_PARTS, provenance  # noqa: E402
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


def r2moe_run(
    model, clip, vae, bank, images, steps: int, res: int = RES, checkpointing: bool = False, batch: int = 2
) -> float:
    return _timed(lambda: call_node(
        "R2MoETrainConcept", model=model, clip=clip, vae=vae, bank=bank, concept_name="bench", trigger_token="<b1>",
        class_word="dog", images=images, steps=steps, batch_size=batch, resolution=res, lr_experts=1e-4, lr_router=1e-4,
        lr_token=1e-3, distill_lambda=1e-5, distill_mode="exact", prune_threshold=0.4, seed=0, optimizer="AdamW",
        preview_every=0, gradient_checkpointing=checkpointing, augment_views=0,
        token_warmup=0.0,  # every step trains the expert, as every TrainLoraNode step trains its LoRA
    ))


def lora_run(
    model, latents, positive, steps: int, dtype: str, checkpointing: bool = False, batch: int = 2
) -> float:
    return _timed(lambda: call_node(
        "TrainLoraNode", model=[model], latents=latents, positive=[positive], batch_size=[batch],
        grad_accumulation_steps=[1], steps=[steps], learning_rate=[1e-4], rank=[4], optimizer=["AdamW"],
        loss_function=["MSE"], seed=[0], training_dtype=[dtype], lora_dtype=["fp32"], algorithm=["LoRA"],
        gradient_checkpointing=[checkpointing], existing_lora=["[None]"],
    ))


def per_step(run, short: int, long: int) -> float:
    return (run(long) - run(short)) / (long - short)


def bench(
    name: str, model, clip, vae, short: int, long: int, gpu: bool, rounds: int = 1, res: int = RES,
    checkpointing: bool = False, stock: bool = True,
) -> dict:
    import torch

    gen = torch.Generator().manual_seed(0)
    images = torch.rand(4, res, res, 3, generator=gen)
    bank = call_node("R2MoENewBank", model=model, rank=4, top_k=3, prune_threshold=0.4, distill_lambda=1e-5)[0]
    with torch.inference_mode():  # as inside the executor (the VAE was built in inference mode)
        encoded = vae.encode(images).float()
    # One LATENT per image: 0.3.75's TrainLoraNode fails on a single batched LATENT (`multi_res` unset).
    latents = [{"samples": encoded[i : i + 1]} for i in range(len(encoded))]
    positive = call_node("CLIPTextEncode", clip=clip, text="photo of a dog")[0]

    def ours_run(n: int) -> float:
        return r2moe_run(model, clip, vae, bank, images, n, res, checkpointing)

    def theirs_run(n: int) -> float:
        return lora_run(model, latents, positive, n, "bf16" if gpu else "fp32", checkpointing)

    ours_run(short)  # warm-up: model load, kernels
    if not stock:
        ours = [per_step(ours_run, short, long) for _ in range(rounds)]
        LOG.info("%-30s R2MoETrainConcept %.3f s/step (%d rounds); TrainLoraNode not run", name,
                 statistics.median(ours), rounds)
        return {"model": name, "pixels": res, "rounds": rounds, "gradient_checkpointing": checkpointing,
                "r2moe_s_per_step": statistics.median(ours), "trainlora_s_per_step": None, "ratio": None,
                "spread": None, "round_s_per_step": ours}
    theirs_run(short)
    ours, theirs = [], []
    for _ in range(rounds):
        ours.append(per_step(ours_run, short, long))
        theirs.append(per_step(theirs_run, short, long))
    ratios = [a / b for a, b in zip(ours, theirs, strict=True)]
    ratio = statistics.median(ratios)
    spread = 0.0
    if len(ratios) > 1:
        q1, _, q3 = statistics.quantiles(ratios, n=4, method="inclusive")
        spread = (q3 - q1) / 2 / ratio
    LOG.info("%-30s R2MoETrainConcept %.3f s/step | TrainLoraNode %.3f s/step | paired ratio %.3fx ± %.1f%% "
             "(%d rounds)", name, statistics.median(ours), statistics.median(theirs), ratio, 100 * spread, rounds)
    return {"model": name, "pixels": res, "rounds": rounds, "gradient_checkpointing": checkpointing,
            "r2moe_s_per_step": statistics.median(ours),
            "trainlora_s_per_step": statistics.median(theirs), "ratio": ratio, "spread": spread,
            "round_ratios": ratios}


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--skip-full", action="store_true")
    parser.add_argument("--skip-sdxl", action="store_true", help="no full-size SDXL UNet (2.6B parameters)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--skip-sd15", action="store_true", help="only the SDXL UNet")
    parser.add_argument("--merge", action="store_true", help="keep other models' results from the --out file")
    parser.add_argument(
        "--sdxl-ours-only", action="store_true",
        help="on the SDXL UNet time R2MoE only: ComfyUI's TrainLoraNode was killed for memory there on a 24 GB "
             "machine (fp32, LoRA on every linear layer)",
    )
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "training.json")
    opts = parser.parse_args()
    gpu = has_gpu()
    host = boot(Path(tempfile.mkdtemp(prefix="r2moe_bench_")), gpu=gpu)
    import torch

    device = torch.cuda.get_device_name(0) if gpu else f"CPU ({torch.get_num_threads()} threads)"
    LOG.info("R2MoE training benchmark on %s, %d px, rank 4, batch 2", device, RES)
    model, clip, vae = call_node("CheckpointLoaderSimple", ckpt_name=host.checkpoint.name)
    results = [] if opts.skip_sd15 else [bench("tiny SD1.5-layout", model, clip, vae, 3, 13, gpu, opts.rounds)]
    if not opts.skip_full and not opts.skip_sd15:
        full = full_size_model(host, gpu)
        results.append(bench("full-size SD1.5 UNet (random)", full, clip, vae, 1, 4 if not gpu else 21, gpu,
                             opts.rounds))
        del full
    out = {"device": device, "results": results}
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    if not opts.merge:  # what is measured so far survives a later model that runs out of memory
        opts.out.write_text(json.dumps(out, indent=2))
    if not opts.skip_sdxl:
        _, sdxl_clip, sdxl_vae = call_node("CheckpointLoaderSimple", ckpt_name=family_checkpoint("sdxl"))
        full = full_size_model(host, gpu, "sdxl")
        # 2.6B frozen parameters: both trainers recompute activations (gradient checkpointing) to fit in memory.
        sdxl = bench("full-size SDXL UNet (random)", full, sdxl_clip, sdxl_vae, 1, 3 if not gpu else 11, gpu,
                     opts.rounds, res=1024 if gpu else 128, checkpointing=True, stock=not opts.sdxl_ours_only)
        results.append(sdxl)
        out["sdxl"] = {"ratio": sdxl["ratio"], "spread": sdxl["spread"], "goal": 1.0,
                       "met": None if sdxl["ratio"] is None else sdxl["ratio"] <= 1.0,
                       "r2moe_s_per_step": sdxl["r2moe_s_per_step"],
                       "trainlora_s_per_step": sdxl["trainlora_s_per_step"]}
    for result in results:
        result.setdefault("device", device)
    if opts.merge and opts.out.is_file():
        earlier = json.loads(opts.out.read_text())
        ran = {r["model"] for r in results}
        results[:0] = [dict(r, device=r.get("device", earlier.get("device"))) for r in earlier.get("results", [])
                       if r["model"] not in ran]
        out = {**earlier, **out, "results": results}
    out["provenance"] = provenance(Path(__file__), HOST_PARTS, also=("sampling.py",))
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    opts.out.write_text(json.dumps(out, indent=2))
    LOG.info("written %s", opts.out)


if __name__ == "__main__":
    main()
