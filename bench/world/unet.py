"""An SD1.x-layout UNet in plain PyTorch, state-dict compatible with ComfyUI's (`diffusion_model.*` keys).

The benchmark trains and samples without ComfyUI; the weights it produces load through the stock checkpoint
loaders. Cross-attention K/V can take a `delta(projection_name, context)` hook, which is how experts attach, and the
cross-attention itself a `regional` hook (multi-concept regional attention, see `Regional`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812 - the usual alias

Delta = Callable[[str, torch.Tensor], torch.Tensor | None]
Attention = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
# regional(name, q, to_k, to_v, attention, grid=(h, w)) -> attention output [B, tokens, inner] (before to_out),
# or None for a layer it leaves to the plain prompt. It owns the layer's K/V for the rows it is given (the host
# passes it for conditional passes only), so a regional sampler can attend each region's own prompt and blend
# them, as ComfyUI's attn2_replace patches do.
Regional = Callable[..., torch.Tensor | None]


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class ResBlock(nn.Module):
    def __init__(self, channels: int, emb_channels: int, out_channels: int) -> None:
        super().__init__()
        self.in_layers = nn.Sequential(
            nn.GroupNorm(32, channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1)
        )
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, out_channels))
        self.out_layers = nn.Sequential(
            nn.GroupNorm(32, out_channels), nn.SiLU(), nn.Dropout(0.0),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
        )
        self.skip_connection = nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x) + self.emb_layers(emb)[..., None, None].to(x.dtype)
        return self.skip_connection(x) + self.out_layers(h)


class CrossAttention(nn.Module):
    def __init__(self, query_dim: int, context_dim: int, heads: int, dim_head: int) -> None:
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, query_dim), nn.Dropout(0.0))
        self.name = ""  # set by the UNet: the module path, for delta hooks
        self.kv_cache: dict | None = None  # set by `UNet.fixed_contexts` while sampling

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Multi-head attention on projected q [B, n, inner], k/v [B, m, inner] -> [B, n, inner]."""
        b, n, _ = q.shape
        q, k, v = (t.view(b, -1, self.heads, t.shape[-1] // self.heads).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v)
        return out.transpose(1, 2).reshape(b, n, -1)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None, delta: Delta | None = None,
                regional: Regional | None = None) -> torch.Tensor:
        if regional is not None and context is not None:
            out = regional(self.name, self.to_q(x), self.to_k, self.to_v, self.attend)
            if out is not None:
                return self.to_out(out)
        if context is None:
            return self.to_out(self.attend(self.to_q(x), self.to_k(x), self.to_v(x)))
        return self.to_out(self.attend(self.to_q(x), *self.context_kv(context, delta)))

    def context_kv(self, context: torch.Tensor, delta: Delta | None) -> tuple[torch.Tensor, torch.Tensor]:
        key = (context.data_ptr(), tuple(context.shape), context.stride(), id(delta))
        if self.kv_cache is not None and key in self.kv_cache:
            return self.kv_cache[key][2:]
        k, v = self.to_k(context), self.to_v(context)
        if delta is not None:
            dk, dv = delta(f"{self.name}.to_k", context), delta(f"{self.name}.to_v", context)
            k = k if dk is None else k + dk
            v = v if dv is None else v + dv
        if self.kv_cache is not None:  # holding context and delta keeps their ids and memory from being reused
            self.kv_cache[key] = (context, delta, k, v)
        return k, v


class GEGLU(nn.Module):
    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, gate = self.proj(x).chunk(2, dim=-1)
        return x * F.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int = 4) -> None:
        super().__init__()
        self.net = nn.Sequential(GEGLU(dim, dim * mult), nn.Dropout(0.0), nn.Linear(dim * mult, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class BasicTransformerBlock(nn.Module):
    def __init__(self, dim: int, heads: int, dim_head: int, context_dim: int) -> None:
        super().__init__()
        self.attn1 = CrossAttention(dim, dim, heads, dim_head)
        self.ff = FeedForward(dim)
        self.attn2 = CrossAttention(dim, context_dim, heads, dim_head)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor, delta: Delta | None,
                regional: Regional | None = None) -> torch.Tensor:
        x = self.attn1(self.norm1(x)) + x
        x = self.attn2(self.norm2(x), context, delta, regional) + x
        return self.ff(self.norm3(x)) + x


class SpatialTransformer(nn.Module):
    def __init__(self, channels: int, heads: int, dim_head: int, context_dim: int) -> None:
        super().__init__()
        inner = heads * dim_head
        self.norm = nn.GroupNorm(32, channels, eps=1e-6)
        self.proj_in = nn.Conv2d(channels, inner, 1)
        self.transformer_blocks = nn.ModuleList([BasicTransformerBlock(inner, heads, dim_head, context_dim)])
        self.proj_out = nn.Conv2d(inner, channels, 1)

    def forward(self, x: torch.Tensor, context: torch.Tensor, delta: Delta | None,
                regional: Regional | None = None) -> torch.Tensor:
        b, _, h, w = x.shape
        y = self.proj_in(self.norm(x)).flatten(2).transpose(1, 2)
        hook = None if regional is None else partial(regional, grid=(h, w))  # the layer's token grid
        for block in self.transformer_blocks:
            y = block(y, context, delta, hook)
        return self.proj_out(y.transpose(1, 2).reshape(b, -1, h, w)) + x


class Downsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, size: Sequence[int] | None = None) -> torch.Tensor:
        x = F.interpolate(x, size=tuple(size) if size is not None else None, scale_factor=None if size else 2.0,
                          mode="nearest")
        return self.conv(x)


class Step(nn.Sequential):
    """One UNet block (ComfyUI's TimestepEmbedSequential): routes emb/context to the layers that take them."""

    def forward(self, x, emb, context, delta=None, size=None, regional=None):  # type: ignore[override]
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context, delta, regional)
            elif isinstance(layer, Upsample):
                x = layer(x, size)
            else:
                x = layer(x)
        return x


class UNet(nn.Module):
    """SD1.x layout: attention at input blocks 1,2,4,5,7,8, the middle, and output blocks 3..11."""

    def __init__(self, model_channels: int = 32, channel_mult: Sequence[int] = (1, 2, 4, 4), num_res_blocks: int = 2,
                 heads: int = 8, context_dim: int = 768, in_channels: int = 4) -> None:
        super().__init__()
        self.model_channels = model_channels
        emb = model_channels * 4
        self.time_embed = nn.Sequential(nn.Linear(model_channels, emb), nn.SiLU(), nn.Linear(emb, emb))
        attention_levels = {0, 1, 2}
        self.input_blocks = nn.ModuleList([Step(nn.Conv2d(in_channels, model_channels, 3, padding=1))])
        chans, ch = [model_channels], model_channels
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                out = model_channels * mult
                layers: list[nn.Module] = [ResBlock(ch, emb, out)]
                ch = out
                if level in attention_levels:
                    layers.append(SpatialTransformer(ch, heads, ch // heads, context_dim))
                self.input_blocks.append(Step(*layers))
                chans.append(ch)
            if level != len(channel_mult) - 1:
                self.input_blocks.append(Step(Downsample(ch)))
                chans.append(ch)
        self.middle_block = Step(ResBlock(ch, emb, ch), SpatialTransformer(ch, heads, ch // heads, context_dim),
                                 ResBlock(ch, emb, ch))
        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for i in range(num_res_blocks + 1):
                out = model_channels * mult
                layers = [ResBlock(ch + chans.pop(), emb, out)]
                ch = out
                if level in attention_levels:
                    layers.append(SpatialTransformer(ch, heads, ch // heads, context_dim))
                if level and i == num_res_blocks:
                    layers.append(Upsample(ch))
                self.output_blocks.append(Step(*layers))
        self.out = nn.Sequential(nn.GroupNorm(32, ch), nn.SiLU(), nn.Conv2d(model_channels, in_channels, 3, padding=1))
        for name, module in self.named_modules():
            if isinstance(module, CrossAttention):
                module.name = name

    @contextmanager
    def fixed_contexts(self) -> Iterator[None]:
        """Compute each cross-attention's K/V once per context inside the block, not once per sampling step.

        K/V read only the 77-token context (and an expert delta, which reads only the context too), so they are
        the same at every step: the numbers stay identical and world-model sampling ran 1.45x faster on one thread
        (convolutions are most of the rest). Only under no_grad, for contexts and deltas unchanged in the block.
        """
        layers = [m for m in self.modules() if isinstance(m, CrossAttention)]
        for layer in layers:
            layer.kv_cache = {}
        try:
            yield
        finally:
            for layer in layers:
                layer.kv_cache = None

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor]) -> UNet:
        """A UNet shaped like the weights (`diffusion_model.` keys stripped), read from the tensor shapes as
        ComfyUI's model detection does, so world checkpoints of either width load."""
        model_channels = state["input_blocks.0.0.weight"].shape[0]
        widths = [state[f"input_blocks.{i}.0.out_layers.3.weight"].shape[0] for i in range(1, 64)
                  if f"input_blocks.{i}.0.out_layers.3.weight" in state]
        mult = tuple(w // model_channels for w in widths[::2])  # num_res_blocks = 2 per level
        unet = cls(model_channels=model_channels, channel_mult=mult)
        unet.load_state_dict(state)
        return unet

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor,
                delta: Delta | None = None, regional: Regional | None = None) -> torch.Tensor:
        """`regional`, when given, replaces every cross-attention of this call (see `Regional`)."""
        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels).to(x.dtype))
        skips, h = [], x
        for block in self.input_blocks:
            h = block(h, emb, context, delta, regional=regional)
            skips.append(h)
        h = self.middle_block(h, emb, context, delta, regional=regional)
        for block in self.output_blocks:
            h = torch.cat([h, skips.pop()], dim=1)
            h = block(h, emb, context, delta, skips[-1].shape[-2:] if skips else None, regional)
        return self.out(h)
