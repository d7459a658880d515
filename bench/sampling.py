"""Sampling overhead of R2MoE patches against the stock KSampler on the same model, side by side.

Variants: an applied bank with 1 and with 20 concepts (`R2MoEApplyBank`, goal <= 1.03x), and the regional patch
(`R2MoERegionalApply`) with 2 and 3 regions, boxes side by side, each region one concept of a 3-concept bank,
and the same layouts through `R2MoEHierarchicalSampler` with masks from the concepts' attention (switch at half
the steps; its image output is the attention picture, so no decode is timed) (goal for both: at most 1 + 0.12
per region, i.e. <= 1.24x and <= 1.36x). Same seed, steps, cfg and sampler for all of them.

Runs ComfyUI in process, on the tiny SD1.5-layout model, on a full-size SD1.5-shaped UNet and on a full-size
SDXL-shaped UNet (70 cross-attention layers, 2048-wide context), both with random weights, cfg 7. Variants are
interleaved round by round (each timed run preceded by an untimed one, so the model switch is not counted). Each
round pairs every variant with the stock run of that round: the reported ratio is the median of those paired
ratios, with their spread (half the interquartile range, relative), so slow drifts of a shared machine cancel;
the minimum and median times are kept too. Prints the ratios and writes bench/results/sampling.json.
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
from types import ModuleType
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))
sys.path.insert(0, str(REPO / "tests"))

from comfy_inprocess import boot, call_node, family_checkpoint  # noqa: E402
from comfy_server import has_gpu  # noqa: E402
from provenance import HOST_PARTS, provenance  # noqa: E402

from r2moe_testkit.banks import add_random_concept  # noqa: E402

LOG = logging.getLogger("r2moe.bench")
BANK_GOAL = 1.03  # an applied bank: within noise of the stock sampler
REGION_GOAL = 0.12  # regional patch: at most 1 + 0.12 per region
REGION_COUNTS = (2, 3)
SIZE = 256


def side_by_side_layout(core: ModuleType, tokens: list[str]) -> Any:
    """A validated layout with one box per token, side by side across the canvas (the planner's column layout)."""
    count, margin = len(tokens), 0.02
    regions = [
        {
            "prompt": f"a photo of {token} thing",
            "box": [i / count + margin, 0.1, (i + 1) / count - margin, 0.95],
            "tokens": [token],
        }
        for i, token in enumerate(tokens)
    ]
    data = {"version": 1, "width": SIZE, "height": SIZE, "background": "on the beach", "regions": regions}
    return core.layout_from_json(data, tokens)


def full_size_model(host, gpu: bool, family: str = "sd1"):
    """A full-size UNet of the family's shape (SD1.5: 860M parameters; SDXL: 2.6B) with seeded random weights."""
    import comfy.model_management
    import comfy.model_patcher
    import comfy.supported_models
    import torch

    if family == "sdxl":
        config = comfy.supported_models.SDXL(dict(host.tiny_models.SDXL_UNET_CONFIG, model_channels=320))
    else:
        config = comfy.supported_models.SD15(dict(host.tiny_models.UNET_CONFIG, model_channels=320))
    config.set_inference_dtype(torch.float16 if gpu else torch.float32, None)
    base = config.get_model({}, "", device=torch.device("cpu"))
    host.tiny_models.init_random(base.diffusion_model, torch.Generator().manual_seed(0))
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


def timed_hierarchical(model, clip, vae, bank, layout, positive, negative, latent, steps: int) -> float:
    """The hierarchical sampler with attention masks (switch at half the steps), timed like `timed_sample`."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    call_node(
        "R2MoEHierarchicalSampler", model=model, clip=clip, vae=vae, bank=bank, layout=layout, positive=positive,
        negative=negative, latent_image=latent, seed=0, steps=steps, cfg=7.0, sampler_name="euler",
        scheduler="normal", denoise=1.0, switch_at=max(0.5, 1.0 / steps), strength=1.0, mask_source="attention",
    )
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def paired(times: dict[str, list[float]], label: str) -> tuple[float, float]:
    """Median of the round-by-round ratios variant/stock, and their relative spread (half the IQR / median)."""
    ratios = [t / s for t, s in zip(times[label], times["stock"], strict=True)]
    median = statistics.median(ratios)
    if len(ratios) < 2:
        return median, 0.0
    q1, _, q3 = statistics.quantiles(ratios, n=4, method="inclusive")
    return median, (q3 - q1) / 2 / median


def bench_model(
    host, name: str, model, clip, steps: int, rounds: int, regional: bool = True, size: int = SIZE,
    warmup_steps: int = 0, max_rounds: int = 0, target_spread: float = 0.0, deadline: float = float("inf"),
    repeats: int = 1, vae: Any = None,
) -> dict:
    """`rounds` paired rounds, or, with `max_rounds`, more until every paired spread is under `target_spread`
    (or `deadline`, a perf_counter time, passes). Each timed run follows an untimed one of `warmup_steps` steps
    (default: the same run), which absorbs the model switch; with `repeats` > 1 a variant's time in a round is the
    least of that many back-to-back runs, which drops one-off stalls of a shared host. With a `vae` (the
    hierarchical sampler's required input; the attention path does not decode), the attention-mask variants run
    too."""
    empty = call_node("R2MoENewBank", model=model, rank=4, top_k=3, prune_threshold=0.4, distill_lambda=1e-5)[0]
    banks = {"1 concept": add_random_concept(host.core, empty, "c1", "<c1>", seed=1)}
    bank = empty
    for i in range(20):
        bank = add_random_concept(host.core, bank, f"c{i}", f"<c{i}>", seed=100 + i)
    banks["20 concepts"] = bank
    prompt, negative = "a photo of <c1> on the beach", "blurry"
    # label -> (MODEL to sample, CLIP that encodes the prompts)
    variants = {"stock": (model, clip)}
    hierarchical: dict[str, tuple[Any, Any]] = {}  # label -> (bank, layout) for the hierarchical sampler
    goals: dict[str, float] = {}  # label -> the ratio to stock it must stay under
    for label, b in banks.items():
        variants[label] = call_node("R2MoEApplyBank", model=model, clip=clip, bank=b, strength=1.0)
        goals[label] = BANK_GOAL
    if regional:
        # Three concepts, one per region; the regional MODEL replaces the positive prompt by the layout's, so its
        # KSampler gets the same conditioning as the stock run (the negative stays the stock one).
        three = empty
        for i in range(3):
            three = add_random_concept(host.core, three, f"r{i}", f"<r{i}>", seed=200 + i)
        tokens = [c.token for c in three.concepts]
        for count in REGION_COUNTS:
            layout = side_by_side_layout(host.core, tokens[:count])
            patched = call_node(
                "R2MoERegionalApply", model=model, clip=clip, bank=three, layout=layout, strength=1.0
            )[0]
            variants[f"regional {count} regions"] = (patched, clip)
            goals[f"regional {count} regions"] = round(1.0 + REGION_GOAL * count, 6)
            if vae is not None:
                label = f"attention masks {count} regions"
                variants[label] = (model, clip)
                hierarchical[label] = (three, layout)
                goals[label] = round(1.0 + REGION_GOAL * count, 6)
    conds = {
        label: tuple(call_node("CLIPTextEncode", clip=c, text=t)[0] for t in (prompt, negative))
        for label, (_, c) in variants.items()
    }
    latent = call_node("EmptyLatentImage", width=size, height=size, batch_size=1)[0]
    times: dict[str, list[float]] = {label: [] for label in variants}
    def run(label: str, m: Any, c: Any, count: int) -> float:
        if label in hierarchical:
            return timed_hierarchical(m, c, vae, *hierarchical[label], *conds[label], latent, count)
        return timed_sample(m, *conds[label], latent, count)

    for done in range(1, max(rounds, max_rounds) + 1):
        for label, (m, c) in variants.items():
            # Untimed first: switching MODEL makes ComfyUI re-load the patcher, which is not sampling cost.
            run(label, m, c, warmup_steps or steps)
            times[label].append(min(run(label, m, c, steps) for _ in range(repeats)))
        settled = all(paired(times, label)[1] < target_spread for label in goals)
        if done >= rounds and (settled or time.perf_counter() > deadline):
            break
    rounds = done
    medians = {label: statistics.median(t) for label, t in times.items()}
    minima = {label: min(t) for label, t in times.items()}
    patched_labels = list(goals)
    ratios = {label: minima[label] / minima["stock"] for label in patched_labels}
    med = {label: medians[label] / medians["stock"] for label in patched_labels}
    pairs = {label: paired(times, label) for label in patched_labels}
    result = {
        "model": name,
        "steps": steps,
        "rounds": rounds,
        "repeats": repeats,
        "pixels": size,
        # The headline: per round, variant / stock of the same round; median over rounds and its spread.
        "paired_ratio": {label: pairs[label][0] for label in patched_labels},
        "paired_spread": {label: pairs[label][1] for label in patched_labels},
        "median_s": medians,
        "min_s": minima,
        # The minimum is the run least disturbed by other load on a shared machine; the median shows the spread.
        "ratio_vs_stock": ratios,
        "ratio_vs_stock_median": med,
        "goal_ratio": goals,
        "goal_met": {label: pairs[label][0] <= goals[label] for label in patched_labels},
        "times_s": times,
    }
    LOG.info("%s: stock %.3f s (median %.3f s)", name, minima["stock"], medians["stock"])
    for label in patched_labels:
        LOG.info(
            "  %-20s paired %.3fx ± %.1f%% (min %.3fx, median %.3fx)  goal <= %.2fx: %s",
            label, pairs[label][0], 100 * pairs[label][1], ratios[label], med[label], goals[label],
            "met" if pairs[label][0] <= goals[label] else "MISSED",
        )
    return result


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=0, help="sampling steps (default: 20 on GPU, 10/3 on CPU)")
    parser.add_argument(
        "--skip-full", action="store_true", help="no full-size SD1.5 UNet (it takes minutes on a CPU)"
    )
    parser.add_argument("--skip-tiny", action="store_true", help="no tiny SD1.5-layout model")
    parser.add_argument(
        "--merge", action="store_true",
        help="keep the results of models not run this time from the existing --out file (each result names its device)",
    )
    parser.add_argument("--skip-regional", action="store_true", help="only the applied-bank variants")
    parser.add_argument("--skip-sdxl", action="store_true", help="no full-size SDXL UNet (2.6B parameters, ~11 GB)")
    parser.add_argument("--sdxl-rounds", type=int, default=0, help="rounds on the SDXL UNet (default: --rounds)")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads for torch (default: all cores)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "sampling.json")
    parser.add_argument("--host", type=Path, default=None, help=argparse.SUPPRESS)
    opts = parser.parse_args()
    gpu = has_gpu()
    host = boot(Path(tempfile.mkdtemp(prefix="r2moe_bench_")), gpu=gpu)
    import torch

    if opts.threads > 0:
        torch.set_num_threads(opts.threads)
    device = torch.cuda.get_device_name(0) if gpu else f"CPU ({torch.get_num_threads()} threads)"
    side = SIZE // 8  # latent side
    LOG.info("R2MoE sampling benchmark on %s, %dx%d px (%dx%d latent), cfg 7, euler", device, SIZE, SIZE, side, side)
    model, clip, vae = call_node("CheckpointLoaderSimple", ckpt_name=host.checkpoint.name)
    tiny_steps = opts.steps or (20 if gpu else 10)
    regional = not opts.skip_regional
    results = []
    if not opts.skip_tiny:
        results.append(bench_model(host, "tiny SD1.5-layout", model, clip, tiny_steps, opts.rounds, regional,
                                   vae=vae))
    if not opts.skip_full:
        full = full_size_model(host, gpu)
        full_steps = opts.steps or (20 if gpu else 3)
        full_rounds = opts.rounds if gpu else 3
        results.append(
            bench_model(host, "full-size SD1.5 UNet (random)", full, clip, full_steps, full_rounds, regional, vae=vae)
        )
        del full
    sdxl = None
    if not opts.skip_sdxl:
        # The tiny SDXL checkpoint's text encoders (real 768 + 1280 widths, 2048 context and pooled vector) feed
        # a full-size SDXL UNet; 128 px on a CPU (16x16 latent: SDXL's attention grids 8x8 and 4x4).
        _, sdxl_clip, sdxl_vae = call_node("CheckpointLoaderSimple", ckpt_name=family_checkpoint("sdxl"))
        full = full_size_model(host, gpu, "sdxl")
        sdxl = bench_model(host, "full-size SDXL UNet (random)", full, sdxl_clip, opts.steps or (20 if gpu else 2),
                           opts.sdxl_rounds or opts.rounds, regional, size=1024 if gpu else 128, vae=sdxl_vae)
        results.append(sdxl)
    for result in results:
        result["device"] = device
    if opts.merge and opts.out.is_file():
        earlier = json.loads(opts.out.read_text())
        ran = {r["model"] for r in results}
        kept = [dict(r, device=r.get("device", earlier.get("device"))) for r in earlier.get("results", [])
                if r["model"] not in ran]
        results = kept + results
        if sdxl is None and "sdxl" in earlier:
            sdxl = next((r for r in results if r["model"].startswith("full-size SDXL")), None)
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    summary = {
        f"{r['model']}: {label}": {"paired": r.get("paired_ratio", {}).get(label),
                                  "spread": r.get("paired_spread", {}).get(label),
                                  "min": r["ratio_vs_stock"][label], "median": r["ratio_vs_stock_median"][label],
                                  "goal": r["goal_ratio"][label], "met": r["goal_met"][label]}
        for r in results for label in r["ratio_vs_stock"]
    }
    out = {"provenance": provenance(Path(__file__), HOST_PARTS), "device": device, "results": results,
           "summary": summary}
    if sdxl is not None:
        out["sdxl"] = {label: {"ratio": sdxl["paired_ratio"][label], "spread": sdxl["paired_spread"][label],
                               "goal": sdxl["goal_ratio"][label], "met": sdxl["goal_met"][label]}
                       for label in sdxl["paired_ratio"]}
    opts.out.write_text(json.dumps(out, indent=2))
    LOG.info("written %s", opts.out)


if __name__ == "__main__":
    main()
