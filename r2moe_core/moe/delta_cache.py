"""Per-Apply runtime state shared by the UNet wrapper and the 16 layer patches.

Host-neutral: the host adapter only feeds it the raw text context and the cond/uncond layout of each call.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

import torch

from ..bank.expert_bank import ExpertBank
from ..bank.experts import StackedExperts, expert_delta
from .routing import gate_input, inference_coefficients

_MAX_CACHED_CONTEXTS = 4


@dataclass
class _ContextEntry:
    """Everything derived from one text context: computed lazily, once, then reused on every step."""

    context: torch.Tensor
    cond_rows: torch.Tensor  # bool [B] on CPU: rows that get experts (the unconditional rows do not)
    gate_in: torch.Tensor
    deltas: dict[str, torch.Tensor | None] = field(default_factory=dict)
    _row_weight: dict[torch.device, torch.Tensor] = field(default_factory=dict)

    @property
    def has_cond(self) -> bool:
        return bool(self.cond_rows.any())

    def row_weight(self, device: torch.device) -> torch.Tensor:
        """[B, 1] float mask of the conditional rows, moved to the device once."""
        if device not in self._row_weight:
            self._row_weight[device] = self.cond_rows.float()[:, None].to(device)
        return self._row_weight[device]


class BankRuntime:
    """Routing and expert deltas for one bank at one strength, cached per distinct text context."""

    def __init__(self, bank: ExpertBank, strength: float, max_cached_contexts: int = _MAX_CACHED_CONTEXTS) -> None:
        """`max_cached_contexts`: how many text contexts keep their deltas (regional sampling needs one per
        region on top of the prompt and negative prompt)."""
        self.bank = bank
        self.strength = float(strength)
        self.max_cached_contexts = max(1, int(max_cached_contexts))
        self._stacked: dict[str, StackedExperts] = {}
        self._alive: dict[str, torch.Tensor] = {}
        self._router: dict[str, torch.Tensor] = {}
        for layer in bank.layers:
            for name in layer.projection_names():
                proj = bank.projections[name]
                self._stacked[name] = StackedExperts.from_experts(proj.experts, layer.in_dim, layer.out_dim)
                self._alive[name] = proj.alive_mask(bank.num_experts)
                self._router[name] = proj.router(bank.num_experts)
        self._on_device: dict[tuple, tuple[torch.Tensor, torch.Tensor, StackedExperts]] = {}
        self._entries: OrderedDict[tuple, _ContextEntry] = OrderedDict()
        self.has_experts = self.strength != 0.0 and any(s.ids for s in self._stacked.values())
        self.delta_computations = 0  # observable, so tests can prove deltas are not recomputed per step

    def _device_tensors(
        self, name: str, device: torch.device, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor, StackedExperts]:
        """Router, stacked-expert column index and experts on the compute device, moved once."""
        key = (name, device, dtype)
        if key not in self._on_device:
            stacked = self._stacked[name]
            self._on_device[key] = (
                self._router[name].to(device, torch.float32),
                torch.tensor(stacked.ids, dtype=torch.long).to(device),
                stacked.to(device, dtype),
            )
        return self._on_device[key]

    def entry_for(
        self, context: torch.Tensor, cond_or_uncond: list[int] | None, cond_ids: list[object] | None = None
    ) -> _ContextEntry:
        """Find (or create) the cache entry for this context and cond/uncond layout.

        `cond_ids` identify the conditionings batched into `context` (ComfyUI gives every cond a uuid per
        sampling run). With them the lookup never reads tensor values, so it never waits for the GPU; without
        them the context is compared by value.
        """
        batch = context.shape[0]
        if cond_or_uncond:
            chunk = max(batch // len(cond_or_uncond), 1)
            kinds = torch.tensor([cond_or_uncond[min(i // chunk, len(cond_or_uncond) - 1)] for i in range(batch)])
            cond_rows = kinds == 0
        else:
            cond_rows = torch.ones(batch, dtype=torch.bool)
        layout = (tuple(context.shape), context.device, context.dtype, tuple(cond_or_uncond or ()))
        if cond_ids:
            key: tuple = (layout, tuple(str(i) for i in cond_ids))
            found = self._entries.get(key)
        else:
            key, found = (layout, None, len(self._entries), id(context)), None
            for old_key, entry in self._entries.items():
                if old_key[0] == layout and old_key[1] is None and torch.equal(entry.context, context):
                    key, found = old_key, entry
                    break
        if found is not None:
            self._entries.move_to_end(key)
            return found
        entry = _ContextEntry(context=context, cond_rows=cond_rows, gate_in=gate_input(context))
        self._entries[key] = entry
        while len(self._entries) > self.max_cached_contexts:
            self._entries.popitem(last=False)
        return entry

    def delta(self, entry: _ContextEntry, name: str) -> torch.Tensor | None:
        """ΔK or ΔV for projection `name` on this context, or None when no expert contributes."""
        if name in entry.deltas:
            return entry.deltas[name]
        result = None
        # Decided on CPU-side facts only: reading GPU values here would stall the sampler every run.
        if self._stacked[name].ids and self.strength != 0.0 and entry.has_cond:
            ctx = entry.context
            router, columns, on_device = self._device_tensors(name, ctx.device, ctx.dtype)
            coeffs = inference_coefficients(
                entry.gate_in,
                router,
                self._alive[name],
                self.bank.config.top_k,
                aux_in_softmax=self.bank.config.aux_in_inference,
            )
            coeffs = coeffs.index_select(1, columns) * entry.row_weight(coeffs.device)
            result = expert_delta(ctx, coeffs * self.strength, on_device.downs, on_device.ups)
            self.delta_computations += 1
        entry.deltas[name] = result
        return result

    def coefficients(self, context: torch.Tensor, name: str) -> torch.Tensor:
        """Gate coefficients [B, num_experts] of one projection for a context (for reports and tests)."""
        return inference_coefficients(
            gate_input(context),
            self._router[name],
            self._alive[name],
            self.bank.config.top_k,
            self.bank.config.aux_in_inference,
        )
