"""Multi-concept track: several learned concepts in one image, with and without regional attention.

K concepts are learned once, in order, with R2MoE and with one LoRA per concept (`protocol.train_task`, the
lifelong budget). Prompts place two (left/right halves) or three (left/center/right thirds) of them, e.g.
`photo of a <new1> toy on the left and a <new2> gem on the right, grass background`, N fixed seeds each.

Variants:
- `bank_only`: the R2MoE bank on the whole prompt (one gate for all concepts), no regions.
- `boxes`: regional attention (HLAG) through `r2moe_core.compose.regional_attention.RegionalRuntime`: the
  background prompt (the scene words, `grass background`) with base weights, each region prompt (that concept's
  clause with its place and the scene words, i.e. the caption it was learned with) with its own expert mixture,
  blended with box masks at strength η.
- `boxes_sam`: as `boxes`, but after round(T·steps) steps the masks switch to refined ones from the decoded x0
  estimate. SUBSTITUTION: there are no SAM weights offline, so a deterministic colour segmenter stands in for SAM
  (`hlag.colour_segmenter`: box pixels whose colour differs from the box's border colour, dilated, clipped to the
  box; nearly empty masks keep the box, by `r2moe_core.compose.masks.mask_refinement.refine_masks`). Every report
  says so.
- `boxes_attention`: as `boxes`, but until the same step each row records where its regions' concept tokens attend
  (`r2moe_core.compose.masks.attention_masks`, the code the hierarchical sampler node runs), and the masks made from
  those maps take over after it. No segmentation model, no decode.
- `lora_stack`: every LoRA of the prompt's concepts applied at once to the whole prompt (how users stack LoRAs).
- `lora_stack_regional`: the regional-LoRA packs' way: the same masks and blend as `boxes`, each region's K/V
  carrying its own concept's LoRA (`hlag.LoraRegions`) instead of an expert mixture.

Omission: fraction of placements (image, region, its concept) where the region does not show its concept.
Leakage: fraction of placements whose concept shows in a region of a different concept. Judged by
`recogniser.Recogniser`, whose held-out accuracy is reported alongside.
"""

from __future__ import annotations

import itertools
import logging
import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from r2moe_core.compose.grid_levels import grid_levels
from r2moe_core.compose.layout import Layout, Region, validate_layout
from r2moe_core.compose.masks.attention_masks import AttentionMaskOptions, ConceptAttention, masks_from_attention
from r2moe_core.compose.masks.mask_refinement import RefineOptions, refine_masks
from r2moe_core.compose.regional_attention import BlendSettings, RegionalRuntime
from r2moe_core.log import LOGGER as CORE_LOGGER

from .concepts import ConceptSpec
from .hlag import SEGMENTER, LoraRegions, RowRegions, colour_segmenter, switch_step
from .methods import Budget, LoraPerConceptMethod, Method, R2MoEMethod, make_method
from .protocol import ConceptData, World, train_task
from .recogniser import Features, Recogniser, build_recogniser, crop, draw_many
from .sampler import Eps, Switch, euler_cfg
from .scenes import place
from .unet import Delta
from .vocab import BACKGROUNDS, SIZE

LOG = logging.getLogger("r2moe.bench.multiconcept")
VARIANTS = ("bank_only", "boxes", "boxes_sam", "boxes_attention", "lora_stack", "lora_stack_regional")
DEFAULT_VARIANT = "boxes"  # what the nodes do by default: R2MoERegionalApply, or the hierarchical sampler without SAM
BOXES = {
    2: ((0.0, 0.0, 0.5, 1.0), (0.5, 0.0, 1.0, 1.0)),
    3: ((0.0, 0.0, 1 / 3, 1.0), (1 / 3, 0.0, 2 / 3, 1.0), (2 / 3, 0.0, 1.0, 1.0)),
}
PLACES = {2: ("left", "right"), 3: ("left", "center", "right")}


@dataclass(frozen=True)
class MultiSettings:
    images: int = 3  # per prompt, one fixed sampler seed each (seed, seed + 1, ...)
    steps: int = 12
    cfg: float = 5.0
    strength: float = 1.0  # η, the regional node's default
    sam_at: float = 0.4  # T: masks switch after round(T * steps) steps
    sam_dilate_px: int = 4  # half a latent cell: after area-averaging, cells the object touches keep weight
    sam_min_coverage: float = 0.05  # world objects cover 10-25 % of a box; below 5 % the segmenter found nothing
    attention_margin: float = 0.05  # AttentionMaskOptions.margin, the node's default
    strength_after_switch: float | None = None  # η with the refined masks (None: `strength`)
    min_tokens: int = 0  # BlendSettings: the layers that blend, mask growth and feathering (the nodes' defaults)
    mask_grow: float = 0.0
    mask_feather: float = 0.0
    finest_grids: int = 0
    seed: int = 0
    crops_per_box: int = 40  # judge training crops per (class, box); a fifth as many more are held out
    timing_rounds: int = 5

    @property
    def blend(self) -> BlendSettings:
        return BlendSettings(self.min_tokens, self.mask_grow, self.mask_feather, self.finest_grids)


@dataclass(frozen=True)
class MultiScene:
    """Two or three concepts side by side on one background."""

    concepts: tuple[ConceptData, ...]
    background: str

    @property
    def places(self) -> tuple[str, ...]:
        return PLACES[len(self.concepts)]

    @property
    def boxes(self) -> tuple[tuple[float, float, float, float], ...]:
        return BOXES[len(self.concepts)]

    @property
    def prompt(self) -> str:
        parts = [f"a {c.token} {c.class_word} {place(p)}" for c, p in zip(self.concepts, self.places, strict=True)]
        joined = " and ".join(parts) if len(parts) == 2 else f"{', '.join(parts[:-1])} and {parts[-1]}"
        return f"photo of {joined}, {self.background} background"

    @property
    def background_prompt(self) -> str:
        return f"{self.background} background"

    @property
    def region_prompts(self) -> list[str]:
        return [f"photo of a {c.token} {c.class_word} {place(p)}, {self.background} background"
                for c, p in zip(self.concepts, self.places, strict=True)]

    def layout(self, known_tokens: Sequence[str]) -> Layout:
        regions = tuple(Region(p, box, (c.token,))
                        for p, box, c in zip(self.region_prompts, self.boxes, self.concepts, strict=True))
        return validate_layout(Layout(width=SIZE, height=SIZE, background=self.background_prompt, regions=regions),
                               known_tokens)


def scene_sets(concepts: Sequence[ConceptData]) -> dict[str, list[MultiScene]]:
    """Every ordered pair; every triple in its 3 rotations (so no concept owns a place). With fewer than 3
    concepts, triples repeat one (A B A, B A B). Backgrounds cycle through the world's."""
    index = range(len(concepts))
    pairs = list(itertools.permutations(index, 2))
    triples = ([c[r:] + c[:r] for c in itertools.combinations(index, 3) for r in range(3)] if len(concepts) >= 3
               else [(0, 1, 0), (1, 0, 1)])
    backgrounds = list(BACKGROUNDS)

    def scenes(groups: list[tuple[int, ...]], offset: int) -> list[MultiScene]:
        return [MultiScene(tuple(concepts[i] for i in g), backgrounds[(offset + n) % len(backgrounds)])
                for n, g in enumerate(groups)]

    return {"pairs": scenes(pairs, 0), "triples": scenes(triples, 3)}


@dataclass
class Learned:
    """Both methods after the last concept, and their mean training seconds per concept."""

    r2moe: R2MoEMethod
    lora: LoraPerConceptMethod
    train_s: dict[str, float] = field(default_factory=dict)


def learn(world: World, concepts: Sequence[ConceptData], budget: Budget, seed: int) -> Learned:
    """Both methods learn the concepts in order, with the lifelong benchmark's loop and budget."""
    r2moe, r2moe_s = learn_method("r2moe", world, concepts, budget, seed)
    lora, lora_s = learn_method("lora_per_concept", world, concepts, budget, seed)
    return Learned(r2moe, lora, {"r2moe": r2moe_s, "lora_per_concept": lora_s})  # type: ignore[arg-type]


def learn_method(name: str, world: World, concepts: Sequence[ConceptData], budget: Budget, seed: int
                 ) -> tuple[Method, float]:
    """One method after learning `concepts` in order, and its mean training seconds per concept; seeded alike
    for every caller, so the benchmarks that read one method's bank read the same bank."""
    torch.manual_seed(seed)
    method = make_method(name, world.unet, budget, seed)
    spent = 0.0
    for t, concept in enumerate(concepts):
        took, losses = train_task(world, method, concept, budget.steps, seed * 1000 + t)
        spent += took
        LOG.info("%s learned %s in %.0f s (loss %.3f)", name, concept.token, took, float(np.mean(losses[-10:])))
    return method, round(spent / len(concepts), 2)


def stacked_loras(method: LoraPerConceptMethod, prompts: Sequence[str]) -> Delta | None:
    """Each row gets the sum of the LoRAs of every trigger in its prompt."""
    rows = {t: torch.tensor([float(t in p) for p in prompts]).view(-1, 1, 1) for t in method.loras}
    rows = {t: w for t, w in rows.items() if w.any()}
    if not rows:
        return None

    def delta(name: str, context: torch.Tensor) -> torch.Tensor:
        parts = [w * method.loras[t].delta(name, context) for t, w in rows.items()]
        return sum(parts[1:], parts[0])

    return delta


@dataclass
class Prepared:
    """One variant ready to sample a batch of scenes: its conditional ε and optional mask switch."""

    cond: Eps
    uncond: Eps
    switch: Switch | None = None
    stats: dict[str, int] = field(default_factory=dict)


def concept_positions(world: World, prompt: str, tokens: dict[str, torch.Tensor]) -> list[int]:
    """Where the trigger token's vectors sit in the encoded prompt (after the start token)."""
    return [1 + k for k, piece in enumerate(world.text.token_ids(prompt, tokens)) if isinstance(piece, torch.Tensor)]


def _regional(world: World, learned: Learned, scenes: Sequence[MultiScene], settings: MultiSettings,
              context: torch.Tensor, refine: str = "", loras: bool = False
              ) -> tuple[Eps, Switch | None, dict[str, int]]:
    """Conditional ε with one RegionalRuntime per row; with `refine` ("sam" or "attention"), the switch that swaps
    in refined masks; with `loras`, each region carries its own concept's LoRA instead of the bank's experts."""
    bank, tokens = learned.r2moe.bank, (learned.lora if loras else learned.r2moe).tokens
    layouts = [s.layout(list(learned.r2moe.tokens)) for s in scenes]
    backgrounds = world.text([s.background_prompt for s in scenes], tokens)
    regions = world.text([p for s in scenes for p in s.region_prompts], tokens)
    starts = np.cumsum([0, *(len(s.concepts) for s in scenes)])
    blend = settings.blend
    later = settings.strength if settings.strength_after_switch is None else settings.strength_after_switch

    def runtime(i: int, masks: torch.Tensor | None = None) -> RegionalRuntime:
        own = [regions[j:j + 1] for j in range(starts[i], starts[i + 1])]
        args = (bank, layouts[i], backgrounds[i:i + 1], own, settings.strength if masks is None else later, 1.0,
                masks, blend)
        if loras:
            return LoraRegions([learned.lora.loras[c.token].delta for c in scenes[i].concepts], *args)
        return RegionalRuntime(*args)

    hook = RowRegions(bank.layers, [runtime(i) for i in range(len(scenes))],
                      grid_levels(world.unet, [layer.name for layer in bank.layers]))
    stats = {"regions": 0, "kept_box": 0}
    recorders = []
    if refine == "attention":
        for i, scene in enumerate(scenes):
            recorders.append(ConceptAttention([concept_positions(world, p, tokens) for p in scene.region_prompts]))
            recorders[-1].recording = True
            hook.runtimes[i].recorder = recorders[-1]

    def switch_attention(x0: torch.Tensor) -> None:
        options = AttentionMaskOptions(margin=settings.attention_margin, min_coverage=settings.sam_min_coverage)
        new, level = [], CORE_LOGGER.level
        CORE_LOGGER.setLevel(logging.ERROR)  # as for the segmenter: fallbacks are counted in `stats`
        try:
            for i, recorder in enumerate(recorders):
                recorder.recording = False
                maps = recorder.maps()
                result = masks_from_attention(maps, layouts[i], SIZE, SIZE, options) if maps is not None else None
                stats["regions"] += len(layouts[i].regions)
                stats["kept_box"] += len(layouts[i].regions) if result is None else len(result.fallbacks)
                new.append(runtime(i, None if result is None else result.masks))
        finally:
            CORE_LOGGER.setLevel(level)
        hook.runtimes = new

    def switch_masks(x0: torch.Tensor) -> None:
        options = RefineOptions(min_coverage=settings.sam_min_coverage, dilate_px=settings.sam_dilate_px)
        new, level = [], CORE_LOGGER.level
        CORE_LOGGER.setLevel(logging.ERROR)  # a warning per empty mask would flood the log; counted in `stats`
        try:
            for i, image in enumerate(world.decode(x0)):
                result = refine_masks(colour_segmenter(image), layouts[i], SIZE, SIZE, options)
                stats["regions"] += len(layouts[i].regions)
                stats["kept_box"] += len(result.fallbacks)
                new.append(runtime(i, result.masks))
        finally:
            CORE_LOGGER.setLevel(level)
        hook.runtimes = new

    refiners = {"sam": switch_masks, "attention": switch_attention}
    switch = (switch_step(settings.steps, settings.sam_at), refiners[refine]) if refine else None
    return lambda x, t: world.unet(x, t, context, None, hook), switch, stats


def prepare(world: World, variant: str, learned: Learned, scenes: Sequence[MultiScene], settings: MultiSettings
            ) -> Prepared:
    """Text contexts and hooks for `variant`; the unconditional pass is the base model in every variant."""
    prompts = [s.prompt for s in scenes]
    empty = world.empty.expand(len(scenes), -1, -1)

    def uncond(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return world.unet(x, t, empty)

    if variant in ("boxes", "boxes_sam", "boxes_attention", "lora_stack_regional"):
        loras = variant == "lora_stack_regional"
        context = world.text(prompts, (learned.lora if loras else learned.r2moe).tokens)
        refine = {"boxes_sam": "sam", "boxes_attention": "attention"}.get(variant, "")
        cond, switch, stats = _regional(world, learned, scenes, settings, context, refine, loras)
        return Prepared(cond, uncond, switch, stats)
    method = learned.r2moe if variant == "bank_only" else learned.lora
    context = world.text(prompts, method.tokens)
    if variant == "bank_only":
        delta = learned.r2moe.sampling_delta(prompts, context)
    elif variant == "lora_stack":
        delta = stacked_loras(learned.lora, prompts)
    else:
        raise ValueError(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")
    return Prepared(lambda x, t: world.unet(x, t, context, delta), uncond)


def generate(world: World, variant: str, learned: Learned, scenes: Sequence[MultiScene], seed: int,
             settings: MultiSettings) -> tuple[list[np.ndarray], float, dict[str, int]]:
    """One image per scene (one batch, sampler seed `seed`); returns images, sampling seconds, variant stats."""
    with torch.no_grad():
        prepared = prepare(world, variant, learned, scenes, settings)
        started = time.perf_counter()
        latents = euler_cfg(prepared.cond, prepared.uncond, len(scenes), settings.steps, settings.cfg, seed,
                            switch=prepared.switch)
        seconds = time.perf_counter() - started
    return world.decode(latents), seconds, prepared.stats


def score(recogniser: Recogniser, rows: Sequence[tuple[MultiScene, np.ndarray]]) -> dict[str, float | int]:
    """Omission and leakage over every placement (image, region, the concept asked there)."""
    labels = recogniser.labels([crop(image, box) for scene, image in rows for box in scene.boxes])
    omitted, leaked, position = [], [], 0
    for scene, _ in rows:
        shown = labels[position:position + len(scene.boxes)]
        position += len(scene.boxes)
        for r, concept in enumerate(scene.concepts):
            omitted.append(shown[r] != concept.token)
            leaked.append(any(shown[o] == concept.token for o, other in enumerate(scene.concepts)
                              if other.token != concept.token))
    return {"omission": round(float(np.mean(omitted)), 4), "leakage": round(float(np.mean(leaked)), 4),
            "placements": len(omitted)}


def region_alignment(features: Features, rows: Sequence[tuple[MultiScene, np.ndarray]],
                     references: dict[str, torch.Tensor], boxes: Sequence[int] | None = None) -> float:
    """Mean IA (x100) of each region's crop against its own concept's held-out renders. `boxes`, when given, names
    the one box each row is scored on (a single-concept image drawn for that box); else every box of the row."""
    crops, tokens = [], []
    for i, (scene, image) in enumerate(rows):
        for r in (range(len(scene.boxes)) if boxes is None else [boxes[i]]):
            crops.append(crop(image, scene.boxes[r]))
            tokens.append(scene.concepts[r].token)
    feats = features(crops)
    return round(100 * float(np.mean([float((feats[i] @ references[t].T).mean()) for i, t in enumerate(tokens)])),
                 2)


def standard_error(share: float, count: int) -> float:
    """The binomial standard error of a share of `count` placements (how far two omissions must be apart)."""
    return math.sqrt(max(share * (1 - share), 1e-9) / max(count, 1))


def omission_alone(recogniser: Recogniser, rows: Sequence[tuple[MultiScene, np.ndarray]], boxes: Sequence[int]
                   ) -> float:
    """How often the judge misses a concept drawn alone in its box (from `alone_rows`): the floor any composition
    of these concepts can reach, so a composition's omission reads against what the bank can draw at all."""
    labels = recogniser.labels([crop(image, scene.boxes[r]) for (scene, image), r in zip(rows, boxes, strict=True)])
    return round(float(np.mean([label != scene.concepts[r].token
                                for label, (scene, _), r in zip(labels, rows, boxes, strict=True)])), 4)


def alone_rows(world: World, learned: Learned, scenes: Sequence[MultiScene], seed: int, settings: MultiSettings
               ) -> tuple[list[tuple[MultiScene, np.ndarray]], list[int]]:
    """Each region's own prompt drawn alone by the bank (its concept at its place, nothing else), one image per
    region: the yardstick for a concept's image alignment inside a composition."""
    prompts = [p for s in scenes for p in s.region_prompts]
    owners = [(s, r) for s in scenes for r in range(len(s.concepts))]
    with torch.no_grad():
        context = world.text(prompts, learned.r2moe.tokens)
        delta = learned.r2moe.sampling_delta(prompts, context)
        empty = world.empty.expand(len(prompts), -1, -1)
        latents = euler_cfg(lambda x, t: world.unet(x, t, context, delta), lambda x, t: world.unet(x, t, empty),
                            len(prompts), settings.steps, settings.cfg, seed)
    return [(s, image) for (s, _), image in zip(owners, world.decode(latents), strict=True)], [r for _, r in owners]


def reference_compositions(world: World, recogniser: Recogniser, specs: Sequence[ConceptSpec],
                           sets: dict[str, list[MultiScene]]) -> dict[str, dict[str, float | int]]:
    """The metric on drawn (not generated) images, through the world VAE: each concept in its own box (`exact`,
    what a perfect model scores under this recogniser) and the concepts rotated one box on (`swapped`: leakage
    should be high). Bounds for reading the variants' numbers."""
    objects = {s.token: s.object() for s in specs}
    out = {}
    for name, shift in (("exact", 0), ("swapped", 1)):
        rows = []
        for scene in (s for scenes in sets.values() for s in scenes):
            drawn = scene.concepts[shift:] + scene.concepts[:shift]
            placed = [(objects[c.token], ((box[0] + box[2]) / 2, 0.5), 0.28) for c, box in zip(drawn, scene.boxes,
                                                                                                 strict=True)]
            rows.append((scene, draw_many(scene.background, placed)))
        images = world.decode(world.encode_images([image for _, image in rows]))
        out[name] = score(recogniser, [(scene, image) for (scene, _), image in zip(rows, images, strict=True)])
    return out


def time_regions(world: World, learned: Learned, sets: dict[str, list[MultiScene]], settings: MultiSettings
                 ) -> dict:
    """Sampling seconds per image, `boxes` against `bank_only` on the same prompt, alternated round by round."""
    out: dict = {}
    for scenes in sets.values():
        seconds: dict[str, list[float]] = {"bank_only": [], "boxes": []}
        for r in range(settings.timing_rounds):
            for variant in seconds:
                seconds[variant].append(generate(world, variant, learned, scenes[:1], settings.seed + r, settings)[1])
        median = {v: statistics.median(s) for v, s in seconds.items()}
        out[f"{len(scenes[0].concepts)}_regions"] = {
            "bank_only_s_per_image": round(median["bank_only"], 4), "boxes_s_per_image": round(median["boxes"], 4),
            "ratio": round(median["boxes"] / median["bank_only"], 3), "prompt": scenes[0].prompt}
    out.update(device=f"CPU ({torch.get_num_threads()} threads)", rounds=settings.timing_rounds,
               steps=settings.steps, measured="the sampling loop only (cond + uncond UNet passes per step; region "
               "K/V and expert deltas made lazily inside it), one image per call, variants alternated, median")
    return out


def run_multiconcept(world: World, specs: Sequence[ConceptSpec], concepts: Sequence[ConceptData], features: Features,
                     budget: Budget, settings: MultiSettings) -> tuple[dict, dict[str, list[np.ndarray]]]:
    """The whole track: learn, build the recogniser, generate every variant, score, time. Returns (results,
    the first seed's images per variant, pairs then triples)."""
    learned = learn(world, concepts, budget, settings.seed)
    boxes = [(box, p) for n in (2, 3) for box, p in zip(BOXES[n], PLACES[n], strict=True)]
    recogniser, accuracy = build_recogniser(
        specs, boxes, lambda images: world.decode(world.encode_images(images)), settings.crops_per_box, settings.seed)
    sets = scene_sets(concepts)
    accuracy["drawn_compositions"] = reference_compositions(world, recogniser, specs, sets)
    LOG.info("recogniser held-out accuracy: %s; on drawn compositions: %s", accuracy["per_class"],
             accuracy["drawn_compositions"])
    rows: dict[str, dict[str, list[tuple[MultiScene, np.ndarray]]]] = {v: {g: [] for g in sets} for v in VARIANTS}
    spent = {v: 0.0 for v in VARIANTS}
    stats = {v: {"regions": 0, "kept_box": 0} for v in VARIANTS}
    for group, scenes in sets.items():
        for j in range(settings.images):
            for variant in VARIANTS:  # side by side: the same seed and batch, so the same starting noise
                images, seconds, extra = generate(world, variant, learned, scenes, settings.seed + j, settings)
                rows[variant][group] += list(zip(scenes, images, strict=True))
                spent[variant] += seconds
                for key, value in extra.items():
                    stats[variant][key] += value
    references = {c.token: features(c.heldout or c.images) for c in concepts}
    alone, alone_boxes = [], []
    for scenes in sets.values():
        for j in range(settings.images):
            drawn, boxes_of = alone_rows(world, learned, scenes, settings.seed + j, settings)
            alone += drawn
            alone_boxes += boxes_of
    alone_ia = region_alignment(features, alone, references, alone_boxes)
    alone_omission = omission_alone(recogniser, alone, alone_boxes)
    variants = {}
    for variant in VARIANTS:
        everything = [row for group in sets for row in rows[variant][group]]
        ia = region_alignment(features, everything, references)
        variants[variant] = score(recogniser, everything) | {
            group: score(recogniser, rows[variant][group]) for group in sets} | {
            "image_alignment": ia, "image_alignment_vs_alone": round(ia / alone_ia, 3) if alone_ia > 0 else None,
            "images": len(everything), "sample_s_per_image_batched": round(spent[variant] / len(everything), 4)}
        if stats[variant]["regions"]:
            variants[variant]["regions_kept_box"] = round(stats[variant]["kept_box"] / stats[variant]["regions"],
                                                              4)
        LOG.info("%s: omission %.3f, leakage %.3f", variant, variants[variant]["omission"],
                 variants[variant]["leakage"])
    results = {
        "judge_accuracy": accuracy["balanced"],
        "default": DEFAULT_VARIANT,
        "alone_image_alignment": alone_ia,
        "alone_omission": alone_omission,
        "variants": variants,
        "settings": asdict(settings) | {
            "budget": asdict(budget), "concepts": [c.token for c in concepts],
            "prompts": {g: [s.prompt for s in scenes] for g, scenes in sets.items()},
            "background_prompt": "{background} background (base weights)",
            "region_prompt": "photo of a {token} {class} {place}, {background} background (its own expert mixture)",
            "boxes": {"2": BOXES[2], "3": BOXES[3]},
            "sam_switch_after_steps": switch_step(settings.steps, settings.sam_at) + 1,
            "sam_substitution": f"{SEGMENTER}: inside each box, pixels whose RGB distance to the median colour of "
                                "the box's 2-px inner border exceeds 40 + 2x that border's median spread, dilated by "
                                f"{settings.sam_dilate_px} px and clipped to the box; a mask covering less than "
                                f"{settings.sam_min_coverage:.0%} of its box keeps the box "
                                "(r2moe_core.compose.masks.mask_refinement.refine_masks). Not SAM: no SAM weights "
                                "exist offline.",
        },
        "recogniser_accuracy": accuracy,
        "timing": time_regions(world, learned, sets, settings),
        "train_s_per_concept": learned.train_s,
    }
    first = {v: [image for group in sets for _, image in rows[v][group][:len(sets[group])]] for v in VARIANTS}
    return results, first
