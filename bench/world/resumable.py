"""Resumable training stages: pretraining the world runs for hours on 2 cores, so it must stop and continue.

A stage (the VAE, then the UNet) saves its model, optimizer, scheduler, the data generator's state and torch's
global random state into a work directory every few minutes and when its time is up. Started again with the same
recipe it loads that state and goes on from the next step, so a run cut into chunks gives the same weights as one
run straight through (same thread count: float sums depend on it). A work directory remembers its recipe and
refuses another one, so two different runs never mix their states.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

LOG = logging.getLogger("r2moe.bench.pretrain")


class AllowanceSpentError(Exception):
    """The chunk's time or step allowance ran out; the state is saved and the same command continues it."""


class RecipeMismatchError(ValueError):
    """The work directory holds a run with other settings."""


@dataclass
class Allowance:
    """How much one invocation may do: wall-clock minutes and optimizer steps (None: no limit)."""

    minutes: float | None = None
    steps: int | None = None
    started: float = field(default_factory=time.monotonic)
    done: int = 0

    def spent(self) -> bool:
        over_time = self.minutes is not None and time.monotonic() - self.started >= self.minutes * 60
        return over_time or (self.steps is not None and self.done >= self.steps)


class WorkDir:
    """Where a run keeps its stage states (`<stage>.pt`, written atomically) and its recipe (`recipe.json`)."""

    def __init__(self, path: Path | None, recipe: dict) -> None:
        self.path = path
        if path is None:
            return
        path.mkdir(parents=True, exist_ok=True)
        stored = path / "recipe.json"
        if stored.is_file():
            old = json.loads(stored.read_text())
            if old != recipe:
                changed = sorted(k for k in set(old) | set(recipe) if old.get(k) != recipe.get(k))
                raise RecipeMismatchError(f"{path} holds a run with other settings ({', '.join(changed)}); use the "
                                          "same options to continue it, or another --work directory to start afresh")
        else:
            stored.write_text(json.dumps(recipe, indent=1, sort_keys=True) + "\n")

    def load(self, stage: str) -> dict | None:
        if self.path is None or not (self.path / f"{stage}.pt").is_file():
            return None
        return torch.load(self.path / f"{stage}.pt", weights_only=False)

    def save(self, stage: str, state: dict) -> None:
        if self.path is None:
            return
        target = self.path / f"{stage}.pt"
        tmp = target.with_name(target.name + ".tmp")
        torch.save(state, tmp)
        tmp.replace(target)


@dataclass
class Stage:
    """One training loop: `step(i)` runs optimizer step i and returns its loss."""

    name: str
    steps: int
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    step: Callable[[int], float]
    gen: torch.Generator
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
    log_every: int = 0
    extra: torch.nn.Module | None = None  # saved and restored beside the model (an EMA of its weights)

    def state(self, done: int) -> dict:
        return {"done": done, "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
                "gen": self.gen.get_state(), "torch_rng": torch.get_rng_state(),
                "extra": None if self.extra is None else self.extra.state_dict()}

    def restore(self, state: dict) -> int:
        self.model.load_state_dict(state["model"])
        if self.extra is not None:
            self.extra.load_state_dict(state["extra"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.gen.set_state(state["gen"])
        torch.set_rng_state(state["torch_rng"])
        return int(state["done"])


def run_stage(stage: Stage, work: WorkDir, allowance: Allowance, save_every_s: float = 300.0) -> None:
    """Run (or continue, or skip when finished) one stage; raises `AllowanceSpentError` after saving when the
    allowance is spent before the stage ends."""
    saved = work.load(stage.name)
    start = stage.restore(saved) if saved is not None else 0
    if start >= stage.steps:
        return
    if start:
        LOG.info("%s: continuing at step %d/%d", stage.name, start, stage.steps)
    last_save = time.monotonic()
    for i in range(start, stage.steps):
        if allowance.spent():
            work.save(stage.name, stage.state(i))
            raise AllowanceSpentError(f"{stage.name} step {i}/{stage.steps}")
        loss = stage.step(i)
        allowance.done += 1
        if stage.log_every and (i % stage.log_every == 0 or i == stage.steps - 1):
            LOG.info("%s step %d/%d: loss %.4f", stage.name, i, stage.steps, loss)
        if time.monotonic() - last_save >= save_every_s:
            work.save(stage.name, stage.state(i + 1))
            last_save = time.monotonic()
    work.save(stage.name, stage.state(stage.steps))
