"""Regional cross-attention for multi-concept images (the paper's HLAG, hierarchical layout-aware generation).

In every cross-attention layer the conditional rows' output becomes

    out = out_b + Σ_i η_i · M_i ⊙ (o_i − out_b)

where `out_b` attends to the background prompt with the base K/V and `o_i` to region i's prompt with K/V that
carry that region's own expert mixture (its gate sees the region prompt). A layer's token grid is smaller than
the image, so masks are made for each grid size once; region K/V are made once per layer per sampling run.

Blending outputs equals the reference code's masking of attention probabilities: a mask weighs a query token's
row of probabilities, and (M·P)V = M·(PV) row by row, so the two differ in nothing but cost. `BlendSettings`
holds what does change the image: which layers blend (by their grid's token count, as the reference code's "at
least 256 tokens", or by level: only the N finest grids, a rule that means the same at every image size), and how
far masks reach past their boxes (dilation) and how soft their edges are (feathering).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
from torch.nn import functional

from ..bank.attention_targets import LayerSpec
from ..bank.expert_bank import ExpertBank
from ..errors import InvalidInputError
from ..log import LOGGER
from ..moe.delta_cache import BankRuntime
from .layout import Layout, box_masks
from .masks.attention_masks import ConceptAttention

MAX_GRID_LEVELS = 8  # an SD UNet has 2-4 attention grid sizes; more than 8 is a typo
ASPECT_TOLERANCE = 0.02  # relative aspect-ratio difference between layout and image before we warn

Projection = Callable[[torch.Tensor], torch.Tensor]


def token_grid(
    tokens: int, activations_shape: Sequence[int] | None = None, original_shape: Sequence[int] | None = None
) -> tuple[int, int]:
    """(height, width) of the token grid a layer attends over.

    The host reports the layer's activation shape [B, C, h, w]; without it (older hosts), the latent's shape and
    the token count give the downsampling factor, as in other regional-prompting packs.
    """
    if activations_shape is not None and len(activations_shape) >= 2:
        h, w = int(activations_shape[-2]), int(activations_shape[-1])
        if h * w == tokens:
            return h, w
    if original_shape is not None and len(original_shape) >= 2:
        height, width = int(original_shape[-2]), int(original_shape[-1])
        for factor in (1, 2, 4, 8, 16, 32, 64):
            h, w = math.ceil(height / factor), math.ceil(width / factor)
            if h * w == tokens:
                return h, w
    raise InvalidInputError(
        f"Cannot place {tokens} attention tokens on a grid (activations {activations_shape}, latent "
        f"{original_shape}); regional attention needs a UNet whose layers attend over the latent grid "
        "(SD1.x, SD 2.x, SDXL)."
    )


def row_spans(batch: int, cond_or_uncond: Sequence[int] | None) -> list[tuple[int, int, bool]]:
    """Consecutive (start, end, is_conditional) row ranges of a batch laid out in equal chunks per cond kind.

    Without a layout every row counts as conditional (0 = cond, 1 = uncond, as in the host).
    """
    if not cond_or_uncond:
        return [(0, batch, True)]
    chunk = max(batch // len(cond_or_uncond), 1)
    spans: list[tuple[int, int, bool]] = []
    for index, kind in enumerate(cond_or_uncond):
        start = min(index * chunk, batch)
        end = batch if index == len(cond_or_uncond) - 1 else min(start + chunk, batch)
        if start >= end:
            continue
        cond = kind == 0
        if spans and spans[-1][2] == cond and spans[-1][1] == start:
            spans[-1] = (spans[-1][0], end, cond)
        else:
            spans.append((start, end, cond))
    return spans


def resize_masks(masks: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """[R, H, W] -> [R, height, width]: area averaging when shrinking (a cell's value is its covered fraction),
    bilinear when growing."""
    if masks.shape[-2:] == (height, width):
        return masks.clone()
    shrinking = height <= masks.shape[-2] and width <= masks.shape[-1]
    mode = "area" if shrinking else "bilinear"
    extra = {} if shrinking else {"align_corners": False}
    resized = functional.interpolate(masks[:, None].float(), size=(height, width), mode=mode, **extra)
    return resized[:, 0].clamp(0.0, 1.0)


def check_masks(masks: torch.Tensor, regions: int) -> torch.Tensor:
    """Validate user masks (one per region, [R, H, W] or [H, W] for one region); returns float32 on the CPU."""
    if not isinstance(masks, torch.Tensor):
        raise InvalidInputError(f"The mask input must be a MASK tensor, got {type(masks).__name__}.")
    if masks.ndim == 2:
        masks = masks[None]
    if masks.ndim == 4 and masks.shape[1] == 1:  # [R, 1, H, W], as some packs hand MASKs around
        masks = masks[:, 0]
    if masks.ndim != 3 or masks.shape[-1] == 0 or masks.shape[-2] == 0:
        raise InvalidInputError(f"The mask input must be [masks, height, width], got shape {tuple(masks.shape)}.")
    if masks.shape[0] != regions:
        raise InvalidInputError(
            f"The mask input holds {masks.shape[0]} mask(s) but the layout has {regions} region(s); give exactly one "
            "mask per region, in the layout's region order, or disconnect the mask to use the layout's boxes."
        )
    masks = masks.detach().float().cpu()
    if not torch.isfinite(masks).all():
        raise InvalidInputError("The mask input contains NaN or infinite values; use masks with values in [0, 1].")
    masks = masks.clamp(0.0, 1.0)
    empty = [str(i) for i in range(regions) if not masks[i].any()]
    if empty:
        LOGGER.warning("R2MoE: the mask of region(s) %s is empty; those regions have no effect.", ", ".join(empty))
    return masks


@dataclass(frozen=True)
class BlendSettings:
    """Where and how softly regions blend. Reach and softness are fractions of the grid's longer side, so one
    setting means the same at every layer and image size."""

    min_tokens: int = 0  # layers with fewer query tokens attend to the sampler's prompt as without the patch
    dilate: float = 0.0  # each mask grows by this much (max-pooled)
    feather: float = 0.0  # Gaussian σ of the mask edges
    finest_grids: int = 0  # > 0: only layers on the N finest attention grids blend (`grid_levels`); 0: every grid

    def __post_init__(self) -> None:
        if not 0 <= self.min_tokens <= 1 << 20:
            raise InvalidInputError(f"min_tokens must be between 0 and {1 << 20}, got {self.min_tokens}.")
        if not 0 <= self.finest_grids <= MAX_GRID_LEVELS:
            raise InvalidInputError(
                f"finest_grids must be between 0 (every grid) and {MAX_GRID_LEVELS}, got {self.finest_grids}.")
        for name in ("dilate", "feather"):
            value = getattr(self, name)
            if not (math.isfinite(value) and 0.0 <= value <= 0.5):
                raise InvalidInputError(f"{name} is a fraction of the image side in [0, 0.5], got {value}.")

    def blends(self, tokens: int, level: int) -> bool:
        """Whether a layer with `tokens` query tokens on grid level `level` (0: the finest) blends regions."""
        return tokens >= self.min_tokens and (self.finest_grids == 0 or level < self.finest_grids)

    @property
    def needs_levels(self) -> bool:
        return self.finest_grids > 0


def soften_masks(masks: torch.Tensor, settings: BlendSettings) -> torch.Tensor:
    """[R, h, w] masks dilated and feathered per `settings`; where they then overlap, cells are shared so the
    weights never sum above 1 (without that, two neighbours' overlap would extrapolate past both prompts)."""
    side = max(masks.shape[-2:])
    out = masks[:, None].float()
    reach = round(settings.dilate * side)
    if reach > 0:
        out = functional.max_pool2d(out, 2 * reach + 1, stride=1, padding=reach)
    sigma = settings.feather * side
    if sigma > 0:
        radius = max(1, math.ceil(3 * sigma))
        taps = torch.exp(-0.5 * (torch.arange(-radius, radius + 1, dtype=torch.float32) / sigma) ** 2)
        taps = taps / taps.sum()
        out = functional.pad(out, (radius, radius, radius, radius), mode="replicate")
        out = functional.conv2d(out, taps.view(1, 1, 1, -1))
        out = functional.conv2d(out, taps.view(1, 1, -1, 1))
    out = out[:, 0].clamp(0.0, 1.0)
    total = out.sum(0, keepdim=True)
    return torch.where(total > 1.0, out / total.clamp_min(1e-12), out)


class RegionMasks:
    """Per-region weights η_i · M_i on a layer's token grid, made once per (h, w, device, dtype)."""

    def __init__(
        self, layout: Layout, strength: float, masks: torch.Tensor | None = None, blend: BlendSettings | None = None
    ) -> None:
        self.layout = layout
        self.strengths = [float(strength if r.strength is None else r.strength) for r in layout.regions]
        self.masks = None if masks is None else check_masks(masks, len(layout.regions))
        self.blend = blend or BlendSettings()
        self._cache: dict[tuple[int, int, torch.device, torch.dtype], torch.Tensor] = {}
        self.resizes = 0  # observable: tests prove masks are not rebuilt per layer or step

    @property
    def sizes(self) -> set[tuple[int, int]]:
        """Grid sizes masks were made for."""
        return {(h, w) for h, w, _, _ in self._cache}

    def weights(self, height: int, width: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """[R, 1, height * width, 1], ready to broadcast over attention outputs [B, tokens, channels]."""
        key = (height, width, torch.device(device), dtype)
        found = self._cache.get(key)
        if found is None:
            if self.masks is None:
                grid = box_masks(self.layout, height, width)  # exact boxes at this resolution, none lost
            else:
                grid = resize_masks(self.masks, height, width)
            if self.blend.dilate or self.blend.feather:
                grid = soften_masks(grid, self.blend)
            scale = torch.tensor(self.strengths, dtype=torch.float32).view(-1, 1, 1)
            weights = (grid * scale).reshape(len(self.strengths), 1, height * width, 1)
            found = self._cache[key] = weights.to(device=device, dtype=dtype)
            self.resizes += 1
        return found


def blend_regions(base: torch.Tensor, outputs: Iterable[torch.Tensor], weights: torch.Tensor) -> torch.Tensor:
    """out = base + Σ_i w_i ⊙ (o_i − base); `outputs` may be a generator, so only one o_i is alive at a time."""
    out = base.clone()
    count = 0
    for index, output in enumerate(outputs):
        if index >= weights.shape[0]:
            raise InvalidInputError(f"blend_regions got more outputs than the {weights.shape[0]} region weights")
        out.add_(weights[index] * (output - base))
        count += 1
    if count != weights.shape[0]:
        raise InvalidInputError(f"blend_regions got {count} outputs for {weights.shape[0]} region weights")
    return out


def _rows(tensor: torch.Tensor, rows: int) -> torch.Tensor:
    return tensor if tensor.shape[0] == rows else tensor.repeat(rows, 1, 1)


class RegionalRuntime:
    """Text contexts, masks and cached K/V for one regional setup; shared by all cross-attention layers."""

    def __init__(
        self,
        bank: ExpertBank,
        layout: Layout,
        background: torch.Tensor,
        regions: Sequence[torch.Tensor],
        strength: float,
        expert_strength: float = 1.0,
        masks: torch.Tensor | None = None,
        blend: BlendSettings | None = None,
    ) -> None:
        if len(regions) != len(layout.regions):
            raise InvalidInputError(f"{len(regions)} region contexts for {len(layout.regions)} layout regions")
        for name, ctx in (("background", background), *((f"region {i}", c) for i, c in enumerate(regions))):
            if ctx.ndim != 3 or ctx.shape[0] != 1:
                raise InvalidInputError(f"the {name} text context must be [1, tokens, dim], got {tuple(ctx.shape)}")
        self.layout = layout
        self.contexts = [background.detach(), *(c.detach() for c in regions)]
        self.blend = blend or BlendSettings()
        self.masks = RegionMasks(layout, strength, masks, self.blend)
        # One cached entry per region on each device it runs on, plus room for a second device or dtype.
        self.experts = BankRuntime(bank, expert_strength, max_cached_contexts=2 * max(len(regions), 1))
        self._on_device: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = {}
        self._kv: dict[tuple[str, torch.device, torch.dtype], list[tuple[torch.Tensor, torch.Tensor]]] = {}
        self._warned_aspect = False
        self.kv_computations = 0  # observable: one per layer per sampling run
        self.recorder: ConceptAttention | None = None  # set to read masks from the concept tokens' attention

    def reset(self) -> None:
        """A new sampling run: the model's weights may have been re-patched since, so K/V are made afresh."""
        self._kv.clear()
        self._on_device.clear()

    def _contexts(self, device: torch.device, dtype: torch.dtype) -> list[torch.Tensor]:
        key = (torch.device(device), dtype)
        if key not in self._on_device:
            self._on_device[key] = [c.to(device=device, dtype=dtype) for c in self.contexts]
        return self._on_device[key]

    def keys_values(
        self, layer: LayerSpec, to_k: Projection, to_v: Projection, device: torch.device, dtype: torch.dtype
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """[(K_b, V_b), (K_1, V_1), ...]: the background with base weights, each region with its experts."""
        key = (layer.name, torch.device(device), dtype)
        found = self._kv.get(key)
        if found is not None:
            return found
        contexts = self._contexts(device, dtype)
        pairs = [(to_k(contexts[0]), to_v(contexts[0]))]
        pairs += [self.region_kv(i, layer, ctx, to_k(ctx), to_v(ctx)) for i, ctx in enumerate(contexts[1:])]
        self._kv[key] = pairs
        self.kv_computations += 1
        return pairs

    def region_kv(
        self, index: int, layer: LayerSpec, context: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Region `index`'s K/V: the base projections of its prompt plus its own expert mixture (the gate sees the
        region prompt). A subclass may give regions other weights (a benchmark's per-region LoRAs)."""
        if not self.experts.has_experts:
            return k, v
        k_name, v_name = layer.projection_names()
        entry = self.experts.entry_for(context, None, (f"r2moe_region_{index}",))
        dk, dv = self.experts.delta(entry, k_name), self.experts.delta(entry, v_name)
        return (k if dk is None else k + dk.to(k.dtype)), (v if dv is None else v + dv.to(v.dtype))

    def check_canvas(self, original_shape: Sequence[int] | None, latent_scale: int = 8) -> None:
        """Warn once when the image's aspect ratio differs from the layout's: boxes are fractions, so they stretch."""
        if self._warned_aspect or not original_shape or len(original_shape) < 2:
            return
        height, width = int(original_shape[-2]) * latent_scale, int(original_shape[-1]) * latent_scale
        want = self.layout.width / self.layout.height
        if height > 0 and abs(width / height - want) / want > ASPECT_TOLERANCE:
            self._warned_aspect = True
            LOGGER.warning(
                "R2MoE: the layout is %dx%d but the image is %dx%d; the boxes stretch with the image. Plan the layout "
                "at the image size for the intended composition.",
                self.layout.width,
                self.layout.height,
                width,
                height,
            )

    def attend(
        self,
        q: torch.Tensor,
        grid: tuple[int, int],
        layer: LayerSpec,
        to_k: Projection,
        to_v: Projection,
        kv_dtype: torch.dtype,
        attention: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
        heads: int = 1,
    ) -> torch.Tensor:
        """The regional blend for conditional rows q [n, tokens, inner]; `attention(q, k, v)` is the host kernel
        (`heads` is its head count, needed only while `recorder` records)."""
        rows = q.shape[0]
        pairs = self.keys_values(layer, to_k, to_v, q.device, kv_dtype)
        if self.recorder is not None and self.recorder.recording:
            self.recorder.record(q, [k for k, _ in pairs[1:]], heads, grid)
        weights = self.masks.weights(grid[0], grid[1], q.device, q.dtype)
        base = attention(q, _rows(pairs[0][0], rows), _rows(pairs[0][1], rows))
        outputs = (attention(q, _rows(k, rows), _rows(v, rows)) for k, v in pairs[1:])
        return blend_regions(base, outputs, weights)
