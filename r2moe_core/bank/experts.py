"""LoRA experts and their gated sum on the K/V projections: ΔK = Σ_e g_e · (c @ down_e) @ up_e, the same for V."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from ..errors import InvalidInputError

# Expert id 0 in every projection: the auxiliary expert, never trained, so its delta and gate column are zero.
AUX_EXPERT = 0


@dataclass(frozen=True)
class LoraExpert:
    """One expert on one projection: the low-rank update c -> (c @ down) @ up, i.e. ΔW = (down @ up)^T, and its
    column of the gate (`gate`, [in]): its routing score for a prompt is mean_tokens(c) · gate."""

    down: torch.Tensor  # [in, r]
    up: torch.Tensor  # [r, out]
    gate: torch.Tensor  # [in]

    def __post_init__(self) -> None:
        if self.down.ndim != 2 or self.up.ndim != 2 or self.down.shape[1] != self.up.shape[0]:
            raise InvalidInputError(
                f"expert down {tuple(self.down.shape)} and up {tuple(self.up.shape)} must be [in, r] and [r, out]"
            )
        if tuple(self.gate.shape) != (self.down.shape[0],):
            raise InvalidInputError(f"expert gate column must be [{self.down.shape[0]}], got {tuple(self.gate.shape)}")

    @property
    def rank(self) -> int:
        return int(self.down.shape[1])

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.down, self.up, self.gate))

    def delta_weight(self) -> torch.Tensor:
        """ΔW [out, in] in the nn.Linear convention, for merging or exporting as a plain LoRA."""
        return (self.down.float() @ self.up.float()).T


@dataclass(frozen=True)
class StackedExperts:
    """The alive trained experts of one projection, stacked so one einsum serves them all."""

    ids: tuple[int, ...]
    downs: torch.Tensor  # [E, in, r]
    ups: torch.Tensor  # [E, r, out]

    @classmethod
    def from_experts(cls, experts: Mapping[int, LoraExpert], in_dim: int, out_dim: int) -> StackedExperts:
        ids = tuple(sorted(experts))
        if not ids:
            return cls((), torch.zeros(0, in_dim, 1), torch.zeros(0, 1, out_dim))
        ranks = {experts[i].rank for i in ids}
        if len(ranks) != 1:
            raise InvalidInputError(f"experts of one projection must share a rank, found ranks {sorted(ranks)}")
        return cls(ids, torch.stack([experts[i].down for i in ids]), torch.stack([experts[i].up for i in ids]))

    def to(self, device: torch.device, dtype: torch.dtype) -> StackedExperts:
        return StackedExperts(self.ids, self.downs.to(device, dtype), self.ups.to(device, dtype))


def expert_delta(
    context: torch.Tensor, coeffs: torch.Tensor, downs: torch.Tensor, ups: torch.Tensor
) -> torch.Tensor:
    """ΔK (or ΔV) = Σ_e g_e · (c @ down_e) @ up_e, per batch row: [B, N, in] -> [B, N, out].

    `coeffs` is [B, E]: each row of the batch has its own mixture over the E stacked experts.
    """
    if context.ndim != 3 or coeffs.ndim != 2 or downs.ndim != 3 or ups.ndim != 3:
        raise InvalidInputError(
            f"expert_delta needs context [B,N,in], coeffs [B,E], downs [E,in,r], ups [E,r,out]; got "
            f"{tuple(context.shape)}, {tuple(coeffs.shape)}, {tuple(downs.shape)}, {tuple(ups.shape)}"
        )
    batch, _, in_dim = context.shape
    experts, d_in, rank = downs.shape
    if coeffs.shape != (batch, experts) or d_in != in_dim or ups.shape[:2] != (experts, rank):
        raise InvalidInputError(
            f"expert_delta shapes disagree: context {tuple(context.shape)}, coeffs {tuple(coeffs.shape)}, "
            f"downs {tuple(downs.shape)}, ups {tuple(ups.shape)}"
        )
    hidden = torch.einsum("bni,eir->bner", context, downs.to(context.dtype))
    hidden = hidden * coeffs.to(context.dtype)[:, None, :, None]
    return torch.einsum("bner,ero->bno", hidden, ups.to(context.dtype))
