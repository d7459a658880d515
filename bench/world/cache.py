"""Caches of the benchmark world: what is costly to compute (an evaluator with no shipped file, finished jobs) is
stored once per version of the code that computes it, atomically, so changed code never reads a stale entry."""

from __future__ import annotations

import hashlib
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch
from provenance import digest_files, source_closure

from .evaluators import EvaluatorReport, EvaluatorSettings, WorldEvaluator, train_evaluator
from .shipped_evaluators import read_shipped
from .threads import one_thread
from .vocab import SIZE

WORLD = Path(__file__).resolve().parent
Model = TypeVar("Model", bound=torch.nn.Module)
Report = TypeVar("Report")


def evaluator_digest() -> str:
    """The code the evaluator's training reads (its module and what it imports): a change to a method or the
    protocol does not retrain it, a change to the renders or the vocabulary does."""
    return digest_files(source_closure(WORLD / "evaluators.py"))


def world_evaluator(cache: Path | None, settings: EvaluatorSettings) -> tuple[WorldEvaluator, EvaluatorReport]:
    """The world evaluator for `settings`: the shipped file where there is one (the same yardstick on every
    machine), else trained once per version of the code it reads and per settings, then read from cache."""
    shipped = read_shipped(settings)
    return shipped if shipped is not None else trained_evaluator(cache, settings)


def trained_evaluator(cache: Path | None, settings: EvaluatorSettings) -> tuple[WorldEvaluator, EvaluatorReport]:
    """Trained on this machine (minutes on 2 cores), once per version of the code it reads and per settings."""
    key = (settings.images, settings.epochs, settings.size)
    digest = hashlib.sha256((evaluator_digest() + repr(key)).encode()).hexdigest()[:16]
    return cached_model(cache / f"evaluator_{digest}.pkl" if cache else None,
                        lambda: train_evaluator(train_images=settings.images, epochs=settings.epochs,
                                                size=settings.size),
                        lambda state: evaluator_from_state(state, settings.size))


def cached_model(path: Path | None, train: Callable[[], tuple[Model, Report]],
                 restore: Callable[[dict], Model]) -> tuple[Model, Report]:
    """A yardstick model and its report: read from `path` if there, else trained on one thread and stored there.
    Float sums depend on the thread count, so one thread gives the same model on every run of one machine; across
    machines they still differ (vector units), which is why the benchmarks' evaluators are shipped files."""
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
