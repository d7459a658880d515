"""Where the experts live: the cross-attention layers of an SD1.x-layout UNet, named the host-neutral way."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidInputError

PROJECTIONS = ("to_k", "to_v")

_PATH = re.compile(
    r"^(?:(?P<io>input|output)_blocks\.(?P<num>\d+)|middle_block)\.\d+\.transformer_blocks\.(?P<tb>\d+)\.attn2$"
)


@dataclass(frozen=True)
class LayerSpec:
    """One adapted cross-attention layer: its module path inside the UNet and the K/V projection widths."""

    name: str
    in_dim: int
    out_dim: int

    @property
    def block_key(self) -> tuple[str, int, int]:
        """The (block, number, transformer index) key the UNet uses for per-layer attention patches."""
        return block_key(self.name)

    def projection_names(self) -> tuple[str, str]:
        return tuple(f"{self.name}.{p}" for p in PROJECTIONS)  # type: ignore[return-value]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "in_dim": self.in_dim, "out_dim": self.out_dim}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LayerSpec:
        return cls(name=str(data["name"]), in_dim=int(data["in_dim"]), out_dim=int(data["out_dim"]))


def block_key(path: str) -> tuple[str, int, int]:
    """Map `input_blocks.4.1.transformer_blocks.0.attn2` to ("input", 4, 0)."""
    match = _PATH.match(path)
    if match is None:
        raise InvalidInputError(
            f"'{path}' is not an SD1.x cross-attention module path "
            "(expected e.g. input_blocks.1.1.transformer_blocks.0.attn2)."
        )
    if match.group("io") is None:
        return ("middle", 0, int(match.group("tb")))
    return (match.group("io"), int(match.group("num")), int(match.group("tb")))


def describe_layers(layers: list[LayerSpec]) -> str:
    """Short human summary used in mismatch messages."""
    if not layers:
        return "no cross-attention layers"
    widths = sorted({layer.out_dim for layer in layers})
    contexts = sorted({layer.in_dim for layer in layers})
    return (
        f"{len(layers)} cross-attention layers, text context {'/'.join(map(str, contexts))}, "
        f"widths {'/'.join(map(str, widths))}"
    )
