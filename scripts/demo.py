"""`make demo`: a headless ComfyUI with the pack learns two concepts and generates both, through the HTTP API.

Without --ckpt it uses the built-in tiny SD1.5-layout model (random weights: the images are noise, the point is
that the whole graph runs, end to end) at 128 px with short training; --ckpt world uses the pretrained world
model (bench/world: SD1.x-layout UNet, CLIP-L and TAESD trained on a procedural 64 px world of shapes, shipped in
the repo) with two of the world's concepts; with
--ckpt path/to/sd15.safetensors it uses that checkpoint with the reference settings (800 steps at 512 px: hours on
a CPU, minutes on a GPU). Concept photos come from --images dir1,dir2 (each with an optional caption.txt), else
from sets drawn here.

Then a second workflow (scripts/api_workflows/api_regional_two_concepts.json) draws both concepts in one image: the
rule-based layout planner (no network) puts the first concept on the left and the second on the right,
R2MoERegionalApply gives each box its own concept, and the stock KSampler samples it; the image and the layout
preview are saved as r2moe_demo_regional_*.png and r2moe_demo_layout_*.png. With a SAM checkpoint in the host's
models/sams (or --sam NAME) the R2MoEHierarchicalSampler refines the boxes with SAM instead; without one, box masks
are used. """

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from comfy_server import HOST_ROOT, REPO, ComfyServer, ensure_tiny_checkpoint
from demo_concepts import draw_concept_sets

LOG = logging.getLogger("r2moe.demo")
WORKFLOW = REPO / "scripts" / "api_workflows" / "api_train_two_concepts.json"
REGIONAL_WORKFLOW = REPO / "scripts" / "api_workflows" / "api_regional_two_concepts.json"
# A few minutes alone on 2 cores; generous, since a busy shared machine can be several times slower.
WORKFLOW_TIMEOUT_S = 3600.0
TINY = "r2moe_tiny_sd15.safetensors"
WORLD = REPO / "bench" / "world" / "weights" / "world_sd15.safetensors"
WORLD_NAME = "r2moe_world_sd15.safetensors"


DESCRIBE = {"world": "built-in world model, SD1.x layout pretrained on a procedural 64 px world",
            "tiny": "built-in tiny SD1.5-layout model, random weights", "user": "yours"}


def _bench_on_path() -> None:
    """The world model's code lives in bench/ (plain PyTorch), imported only when the world model is used."""
    bench = str(REPO / "bench")
    if bench not in sys.path:
        sys.path.insert(0, bench)


def prepare_checkpoint(ckpt: Path | None) -> tuple[str, str]:
    """Put the checkpoint into the host's models/checkpoints; return its name and kind (world, tiny or user)."""
    folder = HOST_ROOT / "models" / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    if ckpt is None or str(ckpt) == "tiny":
        ensure_tiny_checkpoint(folder / TINY)
        return TINY, "tiny"
    if str(ckpt) == "world":
        target = folder / WORLD_NAME
        if not target.is_file() or target.stat().st_mtime < WORLD.stat().st_mtime:
            _bench_on_path()
            from world.checkpoint import assemble

            assemble(WORLD, target)  # the shipped UNet + VAE plus the text encoder rebuilt from its seed
        return WORLD_NAME, "world"
    ckpt = ckpt.expanduser().resolve()
    if not ckpt.is_file():
        raise SystemExit(f"CKPT={ckpt} does not exist; give the path of an SD1.5 .safetensors checkpoint.")
    target = folder / ckpt.name
    if not target.exists():
        target.symlink_to(ckpt)
    return ckpt.name, "user"


def world_concept_sets(root: Path) -> list[tuple[str, Path, str]]:
    """The first two concepts of the world's default set, as photo folders with caption.txt."""
    _bench_on_path()
    from PIL import Image
    from world.concepts import concept_images, load_concepts

    out = []
    for spec in load_concepts(REPO / "bench" / "world" / "concepts_10.json")[:2]:
        folder = root / spec.name
        folder.mkdir(parents=True, exist_ok=True)
        captions = []
        for i, (pixels, caption) in enumerate(concept_images(spec, 5)):
            Image.fromarray(pixels).save(folder / f"{i:02d}.png")
            captions.append(caption.replace(spec.token, "<new1>"))
        (folder / "caption.txt").write_text("\n".join(captions) + "\n")
        out.append((spec.name, folder, spec.class_word))
    return out


def concept_sets(images: str, output: Path, kind: str) -> list[tuple[str, Path, str]]:
    """(name, folder, class word) for the two concepts: the user's folders, or drawn ones."""
    folders = [Path(p.strip()).expanduser() for p in images.split(",") if p.strip()]
    if not folders and kind == "world":
        return world_concept_sets(output / "demo_concepts")
    if not folders:
        drawn = draw_concept_sets(output / "demo_concepts")
        return [(name, folder, cls) for name, (folder, cls) in drawn.items()]
    if len(folders) != 2 or not all(f.is_dir() for f in folders):
        raise SystemExit(f"IMAGES must name two existing folders, comma-separated; got {images!r}.")
    out = []
    for folder in folders:
        captions = folder / "caption.txt"
        words = captions.read_text().split() if captions.is_file() else []
        class_word = words[words.index("<new1>") + 1].strip(",") if "<new1>" in words[:-1] else folder.name
        out.append((folder.name, folder.resolve(), class_word))
    return out


def regional_graph(
    ckpt_name: str, bank_file: str, prompt: str, size: int, steps: int, sam_name: str | None
) -> dict[str, Any]:
    """The two-concept workflow for this run: both concepts in one image, plus the layout the planner made.

    The stock KSampler is the default because it needs nothing beyond the bank; the hierarchical sampler is used
    only when a SAM checkpoint is at hand, since SAM weights are never downloaded.
    """
    graph = json.loads(REGIONAL_WORKFLOW.read_text())
    graph["1"]["inputs"]["ckpt_name"] = ckpt_name
    graph["2"]["inputs"]["bank_name"] = bank_file
    graph["3"]["inputs"].update(prompt=prompt, width=size, height=size)
    # The regional patch replaces the positive prompt by the layout's; the plain words keep the graph readable.
    graph["5"]["inputs"]["text"] = re.sub(r"<[^<>\s]+>\s*", "", prompt)
    graph["7"]["inputs"].update(width=size, height=size)
    graph["8"]["inputs"]["steps"] = steps
    if sam_name is not None:
        sampler = graph.pop("8")["inputs"]
        del graph["4"]
        graph["13"] = {"class_type": "R2MoESAMLoader", "inputs": {"sam_name": sam_name}}
        graph["8"] = {
            "class_type": "R2MoEHierarchicalSampler",
            "inputs": {
                "model": ["1", 0], "clip": ["1", 1], "vae": ["1", 2], "bank": ["2", 0], "layout": ["3", 0],
                "sam": ["13", 0], "positive": sampler["positive"], "negative": sampler["negative"],
                "latent_image": sampler["latent_image"], "seed": sampler["seed"], "steps": steps,
                "cfg": sampler["cfg"], "sampler_name": sampler["sampler_name"], "scheduler": sampler["scheduler"],
                "denoise": 1.0, "switch_at": 0.5, "strength": 1.0,
            },
        }
    return graph


def pick_sam(server: ComfyServer, wanted: str) -> str | None:
    """The SAM file to refine the regions with: `wanted`, else the first one the server lists ('auto'), else none."""
    if wanted == "none":
        return None
    available = server.get("/models/sams")
    if wanted != "auto":
        if wanted not in available:
            raise SystemExit(f"--sam {wanted!r} is not in the server's models/sams (found: {available or 'none'}).")
        return wanted
    return available[0] if available else None


def saved_images(entry: dict[str, Any], nodes: Iterable[str], output: Path) -> list[Path]:
    """Paths of the images the given SaveImage nodes wrote; fails when ComfyUI reports a file that is not there."""
    images = [output / img["subfolder"] / img["filename"] for node in nodes for img in entry["outputs"][node]["images"]]
    missing = [str(p) for p in images if not p.is_file()]
    if missing:
        raise SystemExit(f"ComfyUI reported images that are not on disk: {missing}")
    return images


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ckpt", type=Path, default=None,
                        help="an SD1.5 checkpoint, or 'world' for the pretrained world model; default: the tiny model")
    parser.add_argument("--images", default="", help="two concept photo folders, comma-separated")
    parser.add_argument("--steps", type=int, default=0,
                        help="training steps per concept (default: 150 world, 120 tiny, 800 yours)")
    parser.add_argument("--output", type=Path, default=REPO / "output")
    parser.add_argument("--sam", default="auto",
                        help="SAM file in models/sams for the two-concept image: auto (the first one, if any), "
                        "none (box masks), or a file name")
    parser.add_argument("--host", type=Path, default=HOST_ROOT, help=argparse.SUPPRESS)
    opts = parser.parse_args()
    opts.output.mkdir(parents=True, exist_ok=True)
    ckpt_name, kind = prepare_checkpoint(opts.ckpt)
    built_in = kind != "user"  # the tiny or the world model: small canvas, short sampling, 2-layer CLIP

    graph = json.loads(WORKFLOW.read_text())
    graph["1"]["inputs"]["ckpt_name"] = ckpt_name
    concepts = concept_sets(opts.images, opts.output, kind)
    places = ("on the left, grass background", "on the right, snow background") if kind == "world" else (
        "on the grass", "by the sea")
    subjects: list[str] = []  # "<token> class" per concept, for the two-concept prompt
    for (name, folder, class_word), train_id, prompt_id, where in zip(
        concepts, ("3", "4"), ("7", "8"), places, strict=True
    ):
        token = f"<{re.sub(r'[^0-9a-z]', '', name.lower())[:12] or 'concept'}1>"
        graph[train_id]["inputs"].update(concept_name=name, trigger_token=token, class_word=class_word,
                                         folder=str(folder))
        graph[prompt_id]["inputs"]["text"] = f"photo of a {token} {class_word} {where}"
        subjects.append(f"{token} {class_word}")
        if kind == "world":
            graph[train_id]["inputs"].update(steps=opts.steps or 150, resolution=64, lr_experts=2e-3,
                                             lr_router=2e-3, lr_token=5e-3, preview_every=25)
        elif built_in:
            graph[train_id]["inputs"].update(steps=opts.steps or 120, resolution=128, lr_experts=5e-3,
                                             lr_router=5e-3, lr_token=5e-3, preview_every=20)
        elif opts.steps:
            graph[train_id]["inputs"]["steps"] = opts.steps
    size, sample_steps = {"world": (64, 20), "tiny": (128, 8)}.get(kind, (512, 25))
    if built_in:
        graph["10"]["inputs"].update(width=size, height=size, batch_size=4 if kind == "world" else 1)
        for sampler in ("11", "12"):
            graph[sampler]["inputs"]["steps"] = sample_steps
    scene = "grass background" if kind == "world" else "by the sea"
    two_prompt = f"photo of a {subjects[0]} on the left and a {subjects[1]} on the right, {scene}"
    bank_file = f"{graph['5']['inputs']['name']}.safetensors"  # what R2MoESaveBank writes into models/r2moe

    log_path = opts.output / "r2moe_demo_server.log"
    started = time.monotonic()
    with ComfyServer(output_dir=opts.output, log_path=log_path, tiny_models=built_in) as server:
        boot_s = time.monotonic() - started
        info = server.get("/object_info")
        ours = sorted(n for n in info if n.startswith("R2MoE"))
        t0 = time.monotonic()
        entry = server.run(graph, timeout=WORKFLOW_TIMEOUT_S)
        run_s = time.monotonic() - t0
        images = saved_images(entry, ("15", "16", "17", "18", "20"), opts.output)
        sam_name = pick_sam(server, opts.sam)
        sampling = f"R2MoEHierarchicalSampler with SAM {sam_name}" if sam_name else "box masks, stock KSampler"
        LOG.info("Two concepts in one image: %r (%s)", two_prompt, sampling)
        t0 = time.monotonic()
        regional_graph_ = regional_graph(ckpt_name, bank_file, two_prompt, size, sample_steps, sam_name)
        regional = server.run(regional_graph_, timeout=WORKFLOW_TIMEOUT_S)
        regional_s = time.monotonic() - t0
        regional_image, layout_image = saved_images(regional, ("10", "12"), opts.output)
    report = opts.output / "r2moe_demo_report.md"
    bank_text = entry["outputs"]["19"]["text"][0]
    training = "\n\n".join(entry["outputs"][n]["text"][0] for n in ("3", "4"))
    report.write_text(
        "# R2MoE demo run\n\n"
        f"- date: {time.strftime('%Y-%m-%d %H:%M:%S')}\n"
        f"- checkpoint: {ckpt_name} ({DESCRIBE[kind]})\n"
        f"- device: {'GPU' if server.gpu else 'CPU'}; server start {boot_s:.1f} s, workflow {run_s:.1f} s\n"
        f"- R2MoE nodes listed by /object_info: {', '.join(ours)}\n"
        f"- workflow: {WORKFLOW.relative_to(REPO)}\n"
        f"- images:\n" + "".join(f"  - {p}\n" for p in images)
        + "\n## Two concepts in one image\n\n"
        f"- workflow: {REGIONAL_WORKFLOW.relative_to(REPO)}, {regional_s:.1f} s\n"
        f"- prompt: `{two_prompt}` (rule-based layout planner)\n"
        f"- sampling: {sampling}\n"
        f"- image: {regional_image}\n"
        f"- layout preview: {layout_image}\n"
        + f"\n## Training and pruning\n\n```\n{training}\n```\n"
        + f"\n## Bank\n\n```\n{bank_text}\n```\n"
    )
    LOG.info("R2MoE demo finished: training workflow %.1f s, two-concept workflow %.1f s.", run_s, regional_s)
    LOG.info("Images: %s", ", ".join(str(p) for p in images))
    LOG.info("Two-concept image: %s", regional_image)
    LOG.info("Its layout preview: %s", layout_image)
    LOG.info("Report: %s", report)


if __name__ == "__main__":
    main()
