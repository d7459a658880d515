"""Sampling overhead of an applied R2MoE bank: stock KSampler vs the same with 1 and 20 concepts, side by side.

Runs ComfyUI in process, on the tiny SD1.5-layout model and on a full-size SD1.5-shaped UNet with random weights
(32x32 latent, cfg 7). Variants are interleaved round by round (each timed run preceded by an untimed one, so the
model switch is not counted) and the minimum (least disturbed run) and the median are reported.
Prints the ratios and writes bench/results/sampling.json. Goal: <= 1.03x.
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
sys.path.insert(0, str(REPO / "tests"))

from comfy_inprocess import boot, call_node  # noqa: E402
from comfy_server import has_gpu  # noqa: E402

from r2moe_testkit.banks import add_random_concept  # noqa: E402

LOG = logging.getLogger("r2moe.bench")


def full_size_model(host, gpu: bool):
    import comfy.model_management
    import comfy.model_patcher
    import comfy.supported_models
    import torch

    unet = dict(host.tiny_models.UNET_CONFIG, model_channels=320)
    config = comfy.supported_models.SD15(unet)
    config.set_inference_dtype(torch.float16 if gpu else torch.float32, None)
    base = config.get_model({}, "", device=torch.device("cpu"))
    host.tiny_models._init_random(base.diffusion_model, torch.Generator().manual_seed(0))
    return comfy.model_patcher.ModelPatcher(
        base,
        load_device=comfy.model_management.get_torch_device(),
        offload_device=comfy.model_management.unet_offload_device(),
    )


def timed_sample(model, positive, negative, latent, steps: int) -> float:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    call_node(
        "KSampler", model=model, seed=0, steps=steps, cfg=7.0, sampler_name="euler", scheduler="normal",
        positive=positive, negative=negative, latent_image=latent, denoise=1.0,
    )
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def bench_model(host, name: str, model, clip, steps: int, rounds: int) -> dict:
    empty = call_node("R2MoENewBank", model=model, rank=4, top_k=3, prune_threshold=0.4, distill_lambda=1e-5)[0]
    banks = {"1 concept": add_random_concept(host.core, empty, "c1", "<c1>", seed=1)}
    bank = empty
    for i in range(20):
        bank = add_random_concept(host.core, bank, f"c{i}", f"<c{i}>", seed=100 + i)
    banks["20 concepts"] = bank
    variants = {"stock": (model, clip)}
    for label, b in banks.items():
        variants[label] = call_node("R2MoEApplyBank", model=model, clip=clip, bank=b, strength=1.0)
    prompt, negative = "a photo of <c1> on the beach", "blurry"
    conds = {
        label: tuple(call_node("CLIPTextEncode", clip=c, text=t)[0] for t in (prompt, negative))
        for label, (_, c) in variants.items()
    }
    latent = call_node("EmptyLatentImage", width=256, height=256, batch_size=1)[0]
    times: dict[str, list[float]] = {label: [] for label in variants}
    for _ in range(rounds):
        for label, (m, _) in variants.items():
            # Untimed first: switching MODEL makes ComfyUI re-load the patcher, which is not sampling cost.
            timed_sample(m, *conds[label], latent, steps)
            times[label].append(timed_sample(m, *conds[label], latent, steps))
    medians = {label: statistics.median(t) for label, t in times.items()}
    minima = {label: min(t) for label, t in times.items()}
    result = {
        "model": name,
        "steps": steps,
        "rounds": rounds,
        "median_s": medians,
        "min_s": minima,
        # The minimum is the run least disturbed by other load on a shared machine; the median shows the spread.
        "ratio_vs_stock": {label: minima[label] / minima["stock"] for label in banks},
        "ratio_vs_stock_median": {label: medians[label] / medians["stock"] for label in banks},
    }
    ratios, med = result["ratio_vs_stock"], result["ratio_vs_stock_median"]
    LOG.info(
        "%-30s stock %.3f s | 1 concept %.3f s  %.3fx (median %.3fx) | 20 concepts %.3f s  %.3fx (median %.3fx)",
        name, minima["stock"], minima["1 concept"], ratios["1 concept"], med["1 concept"],
        minima["20 concepts"], ratios["20 concepts"], med["20 concepts"],
    )
    return result


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=0, help="sampling steps (default: 20 on GPU, 10/3 on CPU)")
    parser.add_argument("--skip-full", action="store_true", help="only the tiny model")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "sampling.json")
    parser.add_argument("--host", type=Path, default=None, help=argparse.SUPPRESS)
    opts = parser.parse_args()
    gpu = has_gpu()
    host = boot(Path(tempfile.mkdtemp(prefix="r2moe_bench_")), gpu=gpu)
    import torch

    device = torch.cuda.get_device_name(0) if gpu else f"CPU ({torch.get_num_threads()} threads)"
    LOG.info("R2MoE sampling benchmark on %s, 256x256 (32x32 latent), cfg 7, euler", device)
    model, clip, _ = call_node("CheckpointLoaderSimple", ckpt_name=host.checkpoint.name)
    tiny_steps = opts.steps or (20 if gpu else 10)
    results = [bench_model(host, "tiny SD1.5-layout", model, clip, steps=tiny_steps, rounds=opts.rounds)]
    if not opts.skip_full:
        full = full_size_model(host, gpu)
        full_steps = opts.steps or (20 if gpu else 3)
        full_rounds = opts.rounds if gpu else 3
        results.append(bench_model(host, "full-size SD1.5 UNet (random)", full, clip, full_steps, full_rounds))
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    opts.out.write_text(json.dumps({"device": device, "results": results}, indent=2))
    LOG.info("written %s", opts.out)


if __name__ == "__main__":
    main()
