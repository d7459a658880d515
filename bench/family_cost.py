"""Bytes per concept on each model family, after pruning: SD1.x, SD 2.x and SDXL side by side in one run.

Each family's tiny checkpoint (the real layer layout and text-context width, fewer channels) learns the same two
photo concepts through `R2MoETrainConcept` with the default pruning (threshold 0.4). The tiny UNets' K/V widths
are a fixed fraction of the full-size ones, so the bytes a concept adds are reported twice: as measured on the
tiny model, and for the same kept projections at full-size widths (rank r: in·r + r·out + in for the gate
column, fp32). Layers are grouped by where they sit, so the share of SDXL's cost in its deep 10-block stacks (input
blocks 7-8, the middle block, output blocks 0-2) is visible, and what leaving those layers out would cost is
measured: the ε-prediction error on the concept's own photos (fixed noise levels) with the bank before the
concept, with the concept, and with the concept's experts removed from the deep stacks. Writes
bench/results/family_cost.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))
sys.path.insert(0, str(REPO / "tests"))

from comfy_inprocess import boot, call_node, family_checkpoint  # noqa: E402
from provenance import HOST_PARTS, provenance  # noqa: E402

from r2moe_testkit.denoising import denoise_error  # noqa: E402

LOG = logging.getLogger("r2moe.bench")
CONCEPTS = REPO.parent / "shared" / "data" / "concepts"
FULL_CHANNELS = 320  # model_channels of every full-size family
DEEP = {("input", 7), ("input", 8), ("middle", 0), ("output", 0), ("output", 1), ("output", 2)}


def group(core, projection: str, family: str) -> str:
    block, number, _ = core.block_key(projection.rsplit(".", 1)[0])
    return "deep 10-block stacks" if family == "sdxl" and (block, number) in DEEP else "other layers"


def full_size_bytes(bank, projections: list[str], scale: int) -> int:
    """Bytes of the given projections' experts (down, up, gate; fp32) at full-size widths."""
    rank, total = bank.config.rank, 0
    for name in projections:
        layer = bank.layer(name.rsplit(".", 1)[0])
        width_in, width_out = layer.in_dim, layer.out_dim * scale
        total += 4 * (width_in * rank + rank * width_out + width_in)
    return total


def photos(core, name: str, resolution: int):
    import torch

    images, _ = core.load_concept_folder(CONCEPTS / name)
    return torch.stack([core.square_resize(image, resolution) for image in images[:4]])


def measure(host, family: str, steps: int, resolution: int, lr: float) -> dict:
    core = host.core
    models = call_node("CheckpointLoaderSimple", ckpt_name=family_checkpoint(family))
    model, clip, vae = models
    scale = FULL_CHANNELS // host.tiny_models.FAMILY_MODELS[family][1]["model_channels"]
    bank = call_node("R2MoENewBank", model=model, rank=4, top_k=3, prune_threshold=0.4, distill_lambda=1e-5)[0]
    every = bank.projection_names()
    concepts = []
    for name, word in (("dog", "dog"), ("cat", "cat")):
        before = bank
        bank = call_node(
            "R2MoETrainConcept", model=model, clip=clip, vae=vae, bank=bank, concept_name=name,
            trigger_token=f"<{name}1>", class_word=word, folder=str(CONCEPTS / name), steps=steps, batch_size=2,
            resolution=resolution, seed=0, preview_every=0, augment_views=0, gradient_checkpointing=False,
            lr_experts=lr, lr_router=lr, lr_token=lr,
        )[0]
        concept = bank.concept_by_name(name)
        kept = list(concept.kept)
        pixels, prompt = photos(core, name, resolution), f"photo of a <{name}1> {word}"
        errors = {"before the concept": denoise_error(host, models, before, pixels, prompt),
                  "with the concept": denoise_error(host, models, bank, pixels, prompt)}
        deep = [p for p in every if group(core, p, family) == "deep 10-block stacks"]
        if deep:
            without = bank.without_experts(concept.task, deep)
            errors["without its deep-stack experts"] = denoise_error(host, models, without, pixels, prompt)
        gain = errors["before the concept"] - errors["with the concept"]
        groups: dict[str, dict[str, float]] = {}
        for label in sorted({group(core, p, family) for p in every}):
            members = [p for p in every if group(core, p, family) == label]
            groups[label] = {
                "projections": len(members),
                "kept": sum(p in kept for p in members),
                "full_size_bytes_if_all_kept": full_size_bytes(bank, members, scale),
                "full_size_bytes_kept": full_size_bytes(bank, [p for p in members if p in kept], scale),
            }
        record = {
            "concept": name,
            "kept": len(kept),
            "of": len(every),
            "tiny_bytes_added": bank.expert_bytes() - before.expert_bytes(),
            "full_size_bytes_before_pruning": full_size_bytes(bank, every, scale),
            "full_size_bytes_after_pruning": full_size_bytes(bank, kept, scale),
            "token_bytes": 4 * concept.embedding.numel(),
            "groups": groups,
            "denoise_error": errors,
        }
        if deep and gain > 0:
            record["gain_kept_without_deep_stacks"] = (
                errors["before the concept"] - errors["without its deep-stack experts"]
            ) / gain
        concepts.append(record)
        LOG.info("%s %s: kept %d of %d projections; full-size %.2f MB before pruning, %.2f MB after; denoising "
                 "error %s", family, name, len(kept), len(every), record["full_size_bytes_before_pruning"] / 1e6,
                 record["full_size_bytes_after_pruning"] / 1e6,
                 ", ".join(f"{k} {v:.4f}" for k, v in errors.items()))
    return {
        "family": family,
        "layers": len(bank.layers),
        "context": bank.layers[0].in_dim,
        "concepts": concepts,
        "median_full_size_bytes_after_pruning": statistics.median(c["full_size_bytes_after_pruning"]
                                                                  for c in concepts),
    }


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-2,
                        help="one learning rate for experts, gate and token: the tiny random models need a high one "
                             "to learn visibly in a few dozen steps (the host tests use the same)")
    parser.add_argument("--families", default="sdxl,sd2,sd1")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "family_cost.json")
    opts = parser.parse_args()
    host = boot(Path(tempfile.mkdtemp(prefix="r2moe_bench_")))
    results = [measure(host, f, opts.steps, opts.resolution, opts.lr) for f in opts.families.split(",")]
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    report = {"provenance": provenance(Path(__file__), HOST_PARTS), "steps": opts.steps,
              "resolution": opts.resolution, "learning_rate": opts.lr, "results": results}
    opts.out.write_text(json.dumps(report, indent=2))
    LOG.info("written %s", opts.out)


if __name__ == "__main__":
    main()
