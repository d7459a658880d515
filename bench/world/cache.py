"""Caches of the benchmark world: what is costly to compute (the evaluator, finished jobs) is stored once per
version of the code that computes it, atomically, so changed code never reads a stale entry."""

from __future__ import annotations

import hashlib
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch
from provenance import digest_files, source_closure

from .evaluators import EvaluatorReport, WorldEvaluator, train_evaluator
from .threads import one_thread
from .vocab import SIZE

WORLD = Path(__file__).resolve().parent
Model = TypeVar("Model", bound=torch.nn.Module)
Report = TypeVar("Report")


def evaluator_digest() -> str:
    """The code the evaluator's training reads (its module and what it imports): a change to a method or the
    protocol does not retrain it, a change to the renders or the vocabulary does."""
    return digest_files(source_closure(WORLD / "evaluators.py"))


def cached_evaluator(cache: Path | None, images: int, epochs: int, size: int = SIZE
                     ) -> tuple[WorldEvaluator, EvaluatorReport]:
    """The world evaluator for `size` px images, trained once per version of the code it reads and per settings
    (minutes on 2 cores), then read from cache."""
    digest = hashlib.sha256((evaluator_digest() + repr((images, epochs, size))).encode()).hexdigest()[:16]
    return cached_model(cache / f"evaluator_{digest}.pkl" if cache else None,
                        lambda: train_evaluator(train_images=images, epochs=epochs, size=size),
                        lambda state: evaluator_from_state(state, size))


def cached_model(path: Path | None, train: Callable[[], tuple[Model, Report]],
                 restore: Callable[[dict], Model]) -> tuple[Model, Report]:
    """A yardstick model and its report: read from `path` if there, else trained on one thread (float sums depend
    on the thread count, and one thread gives the same model on every machine) and stored there."""
    if path is not None and path.is_file():
        state, report = pickle.loads(path.read_bytes())
        return restore(state), report
    with one_thread():
        model, report = train()
    if path is not None:
        write_pickle(path, (model.state_dict(), report))
    return model, report


def evaluator_from_state(state: dict, size: int = SIZE) -> WorldEvaluator:
    evaluator = WorldEvaluator(size=size)
    evaluator.load_state_dict(state)
    return evaluator.eval()


def write_pickle(path: Path, value: object) -> None:
    """Atomic: a cache entry is either whole or absent, whatever interrupts the run."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(pickle.dumps(value))
    tmp.replace(path)
