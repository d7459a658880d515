"""Hyper-parameters stored with every bank, so a bank re-trains and re-routes the way it was made."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from ..errors import InvalidInputError


@dataclass(frozen=True)
class BankConfig:
    """R2MoE settings; the defaults are the reference R2MoE configuration (rank 4, top-3, τ = 0.4, λ = 1e-5)."""

    rank: int = 4
    top_k: int = 3
    prune_threshold: float = 0.4
    distill_lambda: float = 1e-5
    # Keep the auxiliary expert in the inference softmax, as the reference code does (and as training does),
    # so that a concept routes at inference exactly as it was trained.
    aux_in_inference: bool = True

    def __post_init__(self) -> None:
        if not 1 <= self.rank <= 256:
            raise InvalidInputError(f"rank must be between 1 and 256, got {self.rank}; the reference uses 4.")
        if not 1 <= self.top_k <= 64:
            raise InvalidInputError(f"top_k must be between 1 and 64, got {self.top_k}; the reference uses 3.")
        if not (math.isfinite(self.prune_threshold) and 0.0 <= self.prune_threshold <= 1.0):
            raise InvalidInputError(
                f"prune_threshold is a gate coefficient and must lie in [0, 1], got {self.prune_threshold}."
            )
        if not (math.isfinite(self.distill_lambda) and self.distill_lambda >= 0.0):
            raise InvalidInputError(f"distill_lambda must be finite and >= 0, got {self.distill_lambda}.")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BankConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})
