"""The world evaluators the benchmarks and the demo judge by, shipped as files in bench/world/weights.

Trained on one thread, an evaluator is the same on every run of one machine but not across machines (float sums
differ with the CPU's vector units): two machines' evaluators for the same settings read absolute image alignment
5-9 points apart on the same drawings. A shipped file makes the yardstick the same everywhere; it is read in
preference to training wherever its settings are the ones asked for. Stored in fp16 (half the bytes); the held-out
accuracy it records is measured on the rounded weights, the model every reader gets.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from .evaluators import EvaluatorReport, EvaluatorSettings, WorldEvaluator, held_out_accuracy

LOG = logging.getLogger("r2moe.bench")
FOLDER = Path(__file__).resolve().parent / "weights"
FORMAT = "r2moe-world-evaluator/1"
RESHIP = "python bench/ship_evaluators.py"


def shipped_path(settings: EvaluatorSettings, folder: Path = FOLDER) -> Path:
    return folder / f"evaluator_{settings.images}x{settings.epochs}_{settings.size}px.safetensors"


def read_shipped(settings: EvaluatorSettings, folder: Path = FOLDER
                 ) -> tuple[WorldEvaluator, EvaluatorReport] | None:
    """The shipped evaluator for `settings` and its recorded held-out report; None where none is shipped."""
    path = shipped_path(settings, folder)
    if not path.is_file():
        return None
    restore = f"restore it with `git checkout -- {path.name}` in {path.parent} or rewrite it with `{RESHIP}`"
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
        state = load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{path} is not a readable safetensors file ({err}); {restore}") from err
    if meta.get("format") != FORMAT or json.loads(meta.get("settings", "{}")) != settings_record(settings):
        raise ValueError(f"{path} does not hold a world evaluator for {settings} (format {meta.get('format')!r}, "
                         f"settings {meta.get('settings')}); {restore}")
    model = WorldEvaluator(size=settings.size)
    try:
        model.load_state_dict({k: v.float() for k, v in state.items()})
    except RuntimeError as err:
        raise ValueError(f"{path} does not fit today's world evaluator ({str(err).splitlines()[0]}); {restore}"
                         ) from err
    report = EvaluatorReport(json.loads(meta["held_out"]), settings.images, settings.epochs)
    return model.eval(), report


def write_shipped(model: WorldEvaluator, settings: EvaluatorSettings, folder: Path = FOLDER,
                  trained_by: str = "") -> EvaluatorReport:
    """Rounds `model` to fp16, measures the rounded model held out and writes both (atomically)."""
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    rounded = WorldEvaluator(size=settings.size)
    rounded.load_state_dict({k: v.float() for k, v in state.items()})
    accuracy = {k: round(v, 4) for k, v in held_out_accuracy(rounded.eval()).items()}
    meta = {"format": FORMAT, "settings": json.dumps(settings_record(settings)),
            "held_out": json.dumps(accuracy), "trained_by": trained_by}
    path = shipped_path(settings, folder)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file(state, str(tmp), metadata=meta)
    tmp.replace(path)
    LOG.info("wrote %s (held out: %s)", path, {k: round(v, 3) for k, v in accuracy.items()})
    return EvaluatorReport(accuracy, settings.images, settings.epochs)


def settings_record(settings: EvaluatorSettings) -> dict[str, int]:
    return {"images": settings.images, "epochs": settings.epochs, "size": settings.size}
