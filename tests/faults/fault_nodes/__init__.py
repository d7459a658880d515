"""Test-only ComfyUI custom node: arms a failure inside the pack's training loop (the faults tier links it in).

`R2MoETestFaultAt` passes a bank through unchanged and makes the next training run raise at step `at_step`, the
way an out-of-memory error or a driver fault would end a real run after the models are loaded and cloned.
"""

from __future__ import annotations

import sys
from typing import Any


def _training_run() -> Any:
    for name, module in list(sys.modules.items()):
        if name.endswith(".r2moe_core.train.concept_run") and hasattr(module, "training_step"):
            return module
    raise RuntimeError("the R2MoE pack's training run module (r2moe_core.train.concept_run) is not loaded")


class R2MoETestFaultAt:
    CATEGORY = "R2MoE/testing"
    RETURN_TYPES = ("R2MOE_BANK",)
    FUNCTION = "arm"

    @classmethod
    def INPUT_TYPES(cls) -> dict:  # noqa: N802 (ComfyUI's name)
        return {"required": {"bank": ("R2MOE_BANK",), "at_step": ("INT", {"default": 3, "min": 1})}}

    @classmethod
    def IS_CHANGED(cls, **_: Any) -> float:  # noqa: N802 (ComfyUI's name)
        return float("nan")  # arm again on every run

    def arm(self, bank: Any, at_step: int) -> tuple[Any]:
        host = _training_run()
        real = getattr(host.training_step, "unarmed", host.training_step)
        calls = {"n": 0}

        def failing_step(*args: Any, **kwargs: Any) -> Any:
            calls["n"] += 1
            if calls["n"] == at_step:
                host.training_step = real
                raise RuntimeError(f"injected fault at training step {at_step}")
            return real(*args, **kwargs)

        failing_step.unarmed = real
        host.training_step = failing_step
        return (bank,)


NODE_CLASS_MAPPINGS = {"R2MoETestFaultAt": R2MoETestFaultAt}
