"""`make demo`: a headless ComfyUI with the pack learns concepts and shows them, through the HTTP API.

By default it uses the pretrained world model (bench/world: an SD1.x-layout UNet, CLIP-L and TAESD trained on a
procedural world of shapes, shipped in the repo) and learns two of the world's concepts, then any photo folders
given with --images (each with an optional caption.txt). --ckpt tiny uses the built-in tiny SD1.5-layout model
(random weights: its images are noise, the point is that the whole graph runs); --ckpt path/to/sd15.safetensors
learns the --images folders on that checkpoint with the reference settings (800 steps at 512 px: hours on a CPU,
minutes on a GPU).

Every concept is sampled with the bank and, with the same prompt and seed, with the base model alone;
`output/r2moe_demo_before_after.png` shows per concept its reference photo, the base model's image and the image
after learning (with the world model, the image alignment before and after, as the lifelong benchmark measures
it). Then a second workflow (scripts/api_workflows/api_regional_two_concepts.json) draws the first two concepts in
one image: the rule-based layout planner (no network) puts the first on the left and the second on the right,
R2MoERegionalApply gives each box its own concept, and the stock KSampler samples it; the image and its layout
preview close the picture. With a SAM checkpoint in the host's models/sams (or --sam NAME) the
R2MoEHierarchicalSampler refines the boxes with SAM instead; without one, box masks are used.
"""

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
from demo_graph import DemoConcept, training_graph
from demo_report import ConceptRow, before_after_picture

LOG = logging.getLogger("r2moe.demo")
WORKFLOW = REPO / "scripts" / "api_workflows" / "api_train_two_concepts.json"
REGIONAL_WORKFLOW = REPO / "scripts" / "api_workflows" / "api_regional_two_concepts.json"
# A few minutes alone on 2 cores; generous, since a busy shared machine can be several times slower.
WORKFLOW_TIMEOUT_S = 3600.0
TINY = "r2moe_tiny_sd15.safetensors"
WORLD_NAME = "r2moe_world_v3.safetensors"


# Per model kind: training inputs of R2MoETrainConcept (yours: the template's reference settings), sampling
# (size, steps, images per prompt), and the places of the concept prompts.
# The world's come from the lifelong benchmark's budget (`world_train_inputs`), so the demo learns as it measures.
TRAIN_INPUTS = {"tiny": {"steps": 120, "resolution": 128, "lr_experts": 5e-3, "lr_router": 5e-3, "lr_token": 5e-3,
                         "preview_every": 20}}
# The world samples as it is evaluated (bench/eval_world.py): CFG 5 against the empty prompt, which is what it
# learned as the unconditional prompt; it never saw words like "blurry".
WORLD_NEGATIVE, WORLD_CFG = "", 5.0
SAMPLING = {"world": (64, 20, 4), "tiny": (128, 8, 1), "user": (512, 25, 1)}
PLACES = {"world": ("on the left, grass background", "on the right, snow background", "in the center, sky background"),
          "tiny": ("on the grass", "by the sea"), "user": ("on the grass", "by the sea")}
HELDOUT_SEED = 1  # the world concepts' training photos are drawn with seed 0
# A third, independent set of true renders: scored against the held-out ones like a generated column, it is what a
# model that draws the concept perfectly would score, the ceiling of the metric on that concept.
RENDERS_SEED = 2

DESCRIBE = {"world": "built-in world model, SD1.x layout pretrained on a procedural world of shapes",
            "tiny": "built-in tiny SD1.5-layout model, random weights", "user": "yours"}


def _repo_code_on_path() -> None:
    """r2moe_core and the world model's code in bench/ (plain PyTorch), imported only where the demo needs them."""
    for folder in (str(REPO), str(REPO / "bench")):
        if folder not in sys.path:
            sys.path.insert(0, folder)


def native_size(ckpt: Path) -> int:
    """The pixel size a user checkpoint was trained at, from its tensor names alone: SDXL 1024 (two text encoders
    under `conditioner.embedders`), SD 2.x 768 (OpenCLIP under `cond_stage_model.model`), SD1.x 512."""
    from safetensors import safe_open

    with safe_open(str(ckpt), "pt") as handle:
        keys = list(handle.keys())
    if any(k.startswith("conditioner.embedders.1.") for k in keys):
        return 1024
    if any(k.startswith("cond_stage_model.model.") for k in keys):
        return 768
    return 512


def prepare_checkpoint(ckpt: Path | None) -> tuple[str, str]:
    """Put the checkpoint into the host's models/checkpoints; return its name and kind (world, tiny or user)."""
    folder = HOST_ROOT / "models" / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    if ckpt is None or str(ckpt) == "tiny":
        ensure_tiny_checkpoint(folder / TINY)
        return TINY, "tiny"
    if str(ckpt) == "world":
        _repo_code_on_path()
        from world.checkpoint import SHIPPED, assemble

        target = folder / WORLD_NAME
        if not target.is_file() or target.stat().st_mtime < SHIPPED.stat().st_mtime:
            assemble(SHIPPED, target)  # the shipped UNet + VAE plus the text encoder rebuilt from its seed
        return WORLD_NAME, "world"
    ckpt = ckpt.expanduser().resolve()
    if not ckpt.is_file():
        raise SystemExit(f"CKPT={ckpt} does not exist; give the path of an SD1.x, SD 2.x or SDXL .safetensors "
                         "checkpoint.")
    target = folder / ckpt.name
    if not target.exists():
        target.symlink_to(ckpt)
    return ckpt.name, "user"


def world_concept_sets(root: Path) -> list[tuple[str, Path, str]]:
    """The first two concepts of the world's default set, as photo folders with caption.txt; beside each, in
    `root/heldout/<name>`, 8 renders of the concept that are not among its photos (other backgrounds, places and
    sizes), which image alignment is measured against, and in `root/renders/<name>` 8 more, scored as the
    metric's ceiling."""
    _repo_code_on_path()
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
        for kind, seed in (("heldout", HELDOUT_SEED), ("renders", RENDERS_SEED)):
            (root / kind / spec.name).mkdir(parents=True, exist_ok=True)
            for i, (pixels, _) in enumerate(concept_images(spec, 8, seed=seed)):
                Image.fromarray(pixels).save(root / kind / spec.name / f"{i:02d}.png")
        out.append((spec.name, folder, spec.class_word))
    return out


def world_train_inputs() -> dict[str, float | int]:
    """R2MoETrainConcept's inputs for the world: the lifelong benchmark's learning rates, batch and token warm-up,
    the demo's step count (`world.demo_settings`), and its photos as they are, without the node's rescaled views.
    The world only ever draws whole scenes with objects at a third of the canvas: close-ups and shrunken copies
    of its renders are sizes it never draws, and on two concepts outside the demo's set the expert learned them
    as dark blotches over the whole image (held-out image alignment 37.8 and 44.3 with 3 views per photo, 41.6
    and 48.6 without)."""
    _repo_code_on_path()
    from world.demo_settings import DEMO_STEPS
    from world.methods import Budget

    budget = Budget()
    return {"steps": DEMO_STEPS, "batch_size": budget.batch_size, "lr_experts": budget.lr,
            "lr_router": budget.lr_router, "lr_token": budget.lr_token, "token_warmup": budget.token_warmup,
            "timestep_bias": budget.timestep_bias, "augment_views": 0, "preview_every": 25}


def heldout_references(concept: DemoConcept, kind: str = "heldout") -> list[Path]:
    """The held-out renders `world_concept_sets` wrote for a world concept (`kind` "renders": the ceiling's)."""
    return sorted((concept.folder.parent / kind / concept.folder.name).glob("*.png"))


def concept_folders(images: str) -> list[Path]:
    """The IMAGES folders, checked before anything is set up."""
    folders = [Path(p.strip()).expanduser() for p in images.split(",") if p.strip()]
    missing = [str(f) for f in folders if not f.is_dir()]
    if missing:
        raise SystemExit(f"IMAGES names folders that do not exist: {', '.join(missing)}; give concept photo "
                         "folders, comma-separated.")
    for folder in folders:
        photos(folder)  # a folder the training node would refuse stops the demo before the server starts
    return folders


def concept_sets(folders: list[Path], output: Path, kind: str) -> list[tuple[str, Path, str]]:
    """(name, folder, class word) per concept: the world's two concepts and then the user's folders (world
    model), the user's folders alone (your checkpoint), or two drawn sets (tiny model without folders)."""
    out = world_concept_sets(output / "demo_concepts") if kind == "world" else []
    if not folders and kind != "world":
        drawn = draw_concept_sets(output / "demo_concepts")
        return [(name, folder, cls) for name, (folder, cls) in drawn.items()]
    for folder in folders:
        captions = folder / "caption.txt"
        words = captions.read_text().split() if captions.is_file() else []
        class_word = words[words.index("<new1>") + 1].strip(",") if "<new1>" in words[:-1] else folder.name
        out.append((folder.name, folder.resolve(), class_word))
    return out


def regional_graph(
    ckpt_name: str, bank_file: str, prompt: str, size: int, steps: int, sam_name: str | None,
    negative: str | None = None, cfg: float | None = None,
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
    if negative is not None:
        graph["6"]["inputs"]["text"] = negative
    if cfg is not None:
        graph["8"]["inputs"]["cfg"] = cfg
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


def world_alignment(rows: list[tuple[list[Path], dict[str, list[Path]]]], cache: Path) -> list[dict[str, float]]:
    """Per concept and column, image alignment (x100: mean cosine of the world evaluator's features, as the
    lifelong benchmark measures it) of the drawn images to the concept's held-out references."""
    _repo_code_on_path()
    import numpy as np
    from PIL import Image
    from world.cache import world_evaluator
    from world.demo_settings import DEMO_EVALUATOR
    from world.evaluators import image_alignment

    evaluator, report = world_evaluator(cache, DEMO_EVALUATOR)
    LOG.info("world evaluator held-out accuracy: %s", {k: round(v, 2) for k, v in report.accuracy.items()})

    def pixels(paths: list[Path]) -> list[np.ndarray]:
        side = DEMO_EVALUATOR.size
        return [np.asarray(Image.open(p).convert("RGB").resize((side, side), Image.Resampling.BOX)) for p in paths]

    return [{column: round(100 * image_alignment(evaluator, pixels(drawn), pixels(refs)), 1)
             for column, drawn in columns.items()} for refs, columns in rows]


def demo_concepts(folders: list[tuple[str, Path, str]], places: tuple[str, ...]) -> list[DemoConcept]:
    out = []
    for i, (name, folder, class_word) in enumerate(folders):
        slug = re.sub(r"[^0-9a-z]", "", name.lower())[:12] or "concept"
        token = f"<{slug}>" if slug[-1].isdigit() else f"<{slug}1>"
        out.append(DemoConcept(name, folder, class_word, token,
                               f"photo of a {token} {class_word} {places[i % len(places)]}"))
    return out


def photos(folder: Path) -> list[Path]:
    """The folder's photos in the order the training node reads them, checked as it checks them."""
    _repo_code_on_path()
    from r2moe_core.errors import InvalidInputError
    from r2moe_core.train.concept_photos import concept_files

    try:
        return concept_files(folder)[0]
    except InvalidInputError as err:
        raise SystemExit(f"IMAGES: {err}") from err


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ckpt", type=Path, default=Path("world"),
                        help="world (default: the pretrained world model), tiny (random weights, for a quick check "
                             "of the graph) or the path of an SD1.5 checkpoint")
    parser.add_argument("--images", default="", help="concept photo folders, comma-separated: learned after the "
                                                     "world's two concepts (world model) or alone (your checkpoint)")
    parser.add_argument("--steps", type=int, default=0,
                        help="training steps per concept (default: 100 world, 120 tiny, 800 yours)")
    parser.add_argument("--output", type=Path, default=REPO / "output")
    parser.add_argument("--sam", default="auto",
                        help="SAM file in models/sams for the two-concept image: auto (the first one, if any), "
                        "none (box masks), or a file name")
    parser.add_argument("--token-only", choices=("auto", "yes", "no"), default="auto",
                        help="also learn each trigger token alone (textual inversion) and draw it beside R2MoE: "
                             "doubles the training; auto = yes on the built-in models, no on your checkpoint")
    parser.add_argument("--host", type=Path, default=HOST_ROOT, help=argparse.SUPPRESS)
    opts = parser.parse_args()
    opts.output.mkdir(parents=True, exist_ok=True)
    folders = concept_folders(opts.images)  # checked before anything is set up
    ckpt_name, kind = prepare_checkpoint(opts.ckpt)
    built_in = kind != "user"  # the tiny or the world model: small canvas, short sampling, 2-layer CLIP
    concepts = demo_concepts(concept_sets(folders, opts.output, kind), PLACES[kind])
    if len(concepts) < 2:
        raise SystemExit("the demo needs two concepts for its two-concept image: give two IMAGES folders, "
                         "comma-separated, with your own checkpoint")
    train_inputs = world_train_inputs() if kind == "world" else dict(TRAIN_INPUTS.get(kind, {}))
    if opts.steps:
        train_inputs["steps"] = opts.steps
    size, sample_steps, batch = SAMPLING[kind]
    if kind == "world":  # the world's own size (128 px)
        from world.vocab import SIZE

        size = train_inputs["resolution"] = SIZE
    if kind == "user":  # the family's own size for sampling; training's resolution 0 takes it too
        size = native_size(HOST_ROOT / "models" / "checkpoints" / ckpt_name)
        train_inputs.setdefault("resolution", 0)
    token_only = opts.token_only == "yes" or (opts.token_only == "auto" and built_in)
    world_sampling = {"negative": WORLD_NEGATIVE, "cfg": WORLD_CFG} if kind == "world" else {}
    graph, nodes = training_graph(json.loads(WORKFLOW.read_text()), ckpt_name, concepts, train_inputs, size, batch,
                                  sample_steps, token_only, **world_sampling)
    scene = "grass background" if kind == "world" else "by the sea"
    first, second = concepts[:2]
    two_prompt = (f"photo of a {first.token} {first.class_word} on the left and a {second.token} "
                  f"{second.class_word} on the right, {scene}")
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
        saved = {n: saved_images(entry, (n,), opts.output) for c in nodes
                 for n in (c.after, c.base, c.loss, c.token_only) if n is not None}
        saved["20"] = saved_images(entry, ("20",), opts.output)
        sam_name = pick_sam(server, opts.sam)
        sampling = f"R2MoEHierarchicalSampler with SAM {sam_name}" if sam_name else "box masks, stock KSampler"
        LOG.info("Two concepts in one image: %r (%s)", two_prompt, sampling)
        t0 = time.monotonic()
        regional_graph_ = regional_graph(ckpt_name, bank_file, two_prompt, size, sample_steps, sam_name,
                                         **world_sampling)
        regional = server.run(regional_graph_, timeout=WORKFLOW_TIMEOUT_S)
        regional_s = time.monotonic() - t0
        regional_image, layout_image = saved_images(regional, ("10", "12"), opts.output)
    references = [photos(c.folder) for c in concepts]
    columns = [{"base": saved[n.base], "r2moe": saved[n.after]} | ({"token_only": saved[n.token_only]}
                                                                   if n.token_only else {}) for n in nodes]
    alignment = (world_alignment([(heldout_references(c), cols | {"renders": heldout_references(c, "renders")})
                                  for c, cols in zip(concepts, columns, strict=True)], opts.output / ".cache")
                 if kind == "world" else [None] * len(concepts))
    picture = before_after_picture(
        [ConceptRow(f"{c.token} {c.class_word}: {c.prompt}", refs[0], {k: v[0] for k, v in cols.items()}, a)
         for c, cols, refs, a in zip(concepts, columns, references, alignment, strict=True)],
        (regional_image, layout_image, two_prompt), opts.output / "r2moe_demo_before_after.png")
    write_json_report(opts.output / "r2moe_demo_report.json", concepts, alignment)
    report = opts.output / "r2moe_demo_report.md"
    bank_text = entry["outputs"]["19"]["text"][0]
    training = "\n\n".join(entry["outputs"][n.train]["text"][0] for n in nodes)
    scores = "".join(alignment_row(c, a) for c, a in zip(concepts, alignment, strict=True))
    images = [p for paths in saved.values() for p in paths]
    report.write_text(
        "# R2MoE demo run\n\n"
        f"- date: {time.strftime('%Y-%m-%d %H:%M:%S')}\n"
        f"- checkpoint: {ckpt_name} ({DESCRIBE[kind]})\n"
        f"- device: {'GPU' if server.gpu else 'CPU'}; server start {boot_s:.1f} s, workflow {run_s:.1f} s\n"
        f"- R2MoE nodes listed by /object_info: {', '.join(ours)}\n"
        f"- training workflow: built from {WORKFLOW.relative_to(REPO)} (one training node per concept, each "
        "concept sampled with the bank, with the base model alone and, where learned, with its token alone; "
        "same seed)\n"
        f"- before/after picture: {picture}\n"
        "\n## Concepts learned\n\n"
        "Image alignment: mean cosine (x100) between the world evaluator's features of the generated images and "
        "of renders of the concept that were not among its training photos (other backgrounds, places and sizes), "
        "as the lifelong benchmark measures it. Same prompt and seed in every column: the base model (it does not "
        "know the trigger token), the trigger token learned alone (textual inversion, same steps), and R2MoE "
        "(expert, gate and token). The last column scores 8 more true renders of the concept the same way: what a "
        "model that draws the concept perfectly would reach. Where the token alone already reaches it, the metric "
        "cannot show what the experts add.\n\n"
        "| concept | prompt | base model | token alone | R2MoE | R2MoE best | true renders |\n"
        "|---|---|---|---|---|---|---|\n"
        + scores
        + "\n## Two concepts in one image\n\n"
        f"- workflow: {REGIONAL_WORKFLOW.relative_to(REPO)}, {regional_s:.1f} s\n"
        f"- prompt: `{two_prompt}` (rule-based layout planner)\n"
        f"- sampling: {sampling}\n"
        f"- image: {regional_image}\n"
        f"- layout preview: {layout_image}\n"
        + "\n## Images\n\n" + "".join(f"- {p}\n" for p in images)
        + f"\n## Training and pruning\n\n```\n{training}\n```\n"
        + f"\n## Bank\n\n```\n{bank_text}\n```\n"
    )
    LOG.info("R2MoE demo finished: training workflow %.1f s, two-concept workflow %.1f s.", run_s, regional_s)
    for c, a in zip(concepts, alignment, strict=True):
        if a is not None:
            LOG.info("%s: image alignment to held-out renders: %s", c.token, a)
    LOG.info("Before/after picture: %s", picture)
    LOG.info("Report: %s", report)


def alignment_row(concept: DemoConcept, alignment: dict[str, float] | None) -> str:
    """One Markdown table row: the concept, its prompt, each column's image alignment, and whether R2MoE is above
    every other column."""
    def cell(key: str) -> str:
        return f"{alignment[key]:.1f}" if alignment and key in alignment else "–"

    best = "–" if not alignment else "yes" if alignment["r2moe"] > max(
        v for k, v in alignment.items() if k in ("base", "token_only")) else "no"
    return (f"| {concept.token} {concept.class_word} | `{concept.prompt}` | {cell('base')} | {cell('token_only')} | "
            f"{cell('r2moe')} | {best} | {cell('renders')} |\n")


def write_json_report(path: Path, concepts: list[DemoConcept], alignment: list[dict[str, float] | None]) -> None:
    """`{"concepts": {name: {"base": x, "token_only": y, "r2moe": z, "renders": c}}}`: held-out image alignment per
    concept, `renders` that of true renders (the metric's ceiling); empty per concept where it is not measured
    (the tiny model and your checkpoint have no evaluator)."""
    _repo_code_on_path()
    from provenance import provenance

    data = {"concepts": {c.name: a or {} for c, a in zip(concepts, alignment, strict=True)},
            "measured_against": "renders of each concept that were not among its training photos",
            "provenance": provenance(Path(__file__), ("core", "nodes", "reads", "weights"))}
    path.write_text(json.dumps(data, indent=1) + "\n")


if __name__ == "__main__":
    main()
