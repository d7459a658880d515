"""Resuming a training run after Cancel or a crash: its trainable state every N steps in one file.

The file holds what the next steps depend on: the trainable tensors (experts, router scores, token), the tracked
gate input of the concept, the optimizer's state, the batch-and-noise generator's state, the step reached and the
losses so far, and a key made from every input of the run. A run whose key matches continues from the file's step
and ends where an uninterrupted run would; any other run starts afresh and overwrites it. Written atomically
(a crash mid-write leaves the previous checkpoint), removed when the run has finished.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch

from ..log import LOGGER

FORMAT = 1


class Resumable(Protocol):
    """A trainer whose run can be checkpointed: its named state tensors out, and back in."""

    def resumable_state(self) -> dict[str, torch.Tensor]: ...

    def check_state(self, tensors: dict[str, torch.Tensor]) -> None: ...

    def restore_state(self, tensors: dict[str, torch.Tensor]) -> None: ...


def run_key(parts: Iterable[object]) -> str:
    """A digest of a run's inputs: tensors by their bytes, everything else by its repr."""
    digest = hashlib.sha256()
    for part in parts:
        if isinstance(part, torch.Tensor):
            tensor = part.detach().cpu().contiguous()
            digest.update(repr((tuple(tensor.shape), str(tensor.dtype))).encode())
            digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
        else:
            digest.update(repr(part).encode())
        digest.update(b"\0")
    return digest.hexdigest()


@dataclass
class RunCheckpoint:
    """`path`: the run's checkpoint file; `key`: `run_key` of its inputs; `every`: steps between writes (0: off)."""

    path: Path
    key: str
    every: int
    resumed_from: int = 0  # the step the run continued from (0: it started afresh)
    writes: int = field(default=0)

    def due(self, step: int, steps: int) -> bool:
        return self.every > 0 and step % self.every == 0 and step < steps

    def load(self, trainer: Resumable, optimizer: torch.optim.Optimizer, generator: torch.Generator
             ) -> list[float]:
        """Restore a matching checkpoint into the run's objects; the losses so far ([] when there is none)."""
        if self.every <= 0 or not self.path.is_file():
            return []
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as err:  # a damaged file must not stop the run: it starts afresh
            LOGGER.warning("R2MoE: the training checkpoint %s cannot be read (%s); starting afresh.", self.path.name,
                           err)
            return []
        if not isinstance(state, dict) or state.get("format") != FORMAT or state.get("key") != self.key:
            LOGGER.info("R2MoE: %s belongs to a run with other inputs; starting afresh.", self.path.name)
            return []
        try:  # the optimizer first: if it refuses, nothing of the run has changed yet
            trainer.check_state(state["tensors"])
            optimizer.load_state_dict(state["optimizer"])
        except (KeyError, ValueError, RuntimeError) as err:
            LOGGER.warning("R2MoE: the training checkpoint %s does not fit this run (%s); starting afresh.",
                           self.path.name, err)
            return []
        trainer.restore_state(state["tensors"])
        generator.set_state(state["generator"])
        self.resumed_from = int(state["step"])
        return [float(x) for x in state["losses"]]

    def save(self, step: int, trainer: Resumable, optimizer: torch.optim.Optimizer,
             generator: torch.Generator, losses: list[float]) -> None:
        tensors = {name: value.detach().cpu().clone() for name, value in trainer.resumable_state().items()}
        state = {"format": FORMAT, "key": self.key, "step": step, "losses": list(losses), "tensors": tensors,
                 "optimizer": optimizer.state_dict(), "generator": generator.get_state()}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_name(self.path.name + ".tmp")
        torch.save(state, temporary)
        os.replace(temporary, self.path)
        self.writes += 1

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
