"""The host as a GPU user runs it: UNet and text-encoder weights in bf16 or fp16 and the UNet computed in that dtype.

On a CPU, ComfyUI 0.3.75 keeps half-precision weights but casts them up to fp32 for every forward ("manual cast"),
so the half-precision compute path a GPU user hits never runs. `half_precision_loading` makes the stock loaders
take the same decisions a CUDA card gets: the command-line switches (--bf16-unet/--fp16-unet and
--bf16-text-enc/--fp16-text-enc) and no manual cast for the UNet. Test scaffolding only: the pack never does this.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
FLAGS = {"bf16": ("bf16_unet", "bf16_text_enc"), "fp16": ("fp16_unet", "fp16_text_enc")}
# R2MOE_HALF_RECORD=path: every measured figure of the half-precision tests is written there as JSON (the device
# check reads them from a CUDA run; CI leaves it unset).
RECORD_ENV = "R2MOE_HALF_RECORD"


@contextmanager
def half_precision_loading(name: str) -> Iterator[None]:
    """While open, models loaded by the stock loaders hold `name` ("bf16"/"fp16") weights and the UNet computes in
    that dtype on any device (ComfyUI's text encoders always compute in fp32, whatever their weights)."""
    import comfy.model_management as management
    from comfy.cli_args import args

    dtype, original = DTYPES[name], management.unet_manual_cast
    saved = {flag: getattr(args, flag) for flag in FLAGS[name]}

    def no_cast_for_half(weight_dtype: torch.dtype, inference_device: Any, *rest: Any, **kw: Any) -> Any:
        return None if weight_dtype == dtype else original(weight_dtype, inference_device, *rest, **kw)

    for flag in FLAGS[name]:
        setattr(args, flag, True)
    management.unet_manual_cast = no_cast_for_half
    try:
        yield
    finally:
        management.unet_manual_cast = original
        for flag, value in saved.items():
            setattr(args, flag, value)


def cpu_runs(name: str) -> bool:
    """Whether this CPU build of torch runs the UNet's ops (conv, group norm, attention, matmul) in `name`."""
    dtype = DTYPES[name]
    try:
        x = torch.randn(1, 4, 8, 8, dtype=dtype)
        y = torch.nn.functional.conv2d(x, torch.randn(4, 4, 3, 3, dtype=dtype), padding=1)
        y = torch.nn.functional.group_norm(y, 2)
        q = y.flatten(2).transpose(1, 2)[:, None]
        torch.nn.functional.scaled_dot_product_attention(q, q, q)
        (q @ q.transpose(-1, -2)).softmax(-1)
    except RuntimeError:
        return False
    return True


@contextmanager
def forward_dtypes(model: Any) -> Iterator[dict[str, set[torch.dtype]]]:
    """Record the dtypes the UNet really computed in: the UNet's input and output, and every text cross-attention
    K projection's input, weight and output (the tensors the pack's K/V deltas are added to)."""
    seen: dict[str, set[torch.dtype]] = {"unet_in": set(), "unet_out": set(), "to_k_in": set(), "to_k_weight": set(),
                                         "to_k_out": set()}
    unet = model.model.diffusion_model

    def unet_hook(module: Any, args: tuple, out: torch.Tensor) -> None:  # a hook that returns None changes nothing
        seen["unet_in"].add(args[0].dtype)
        seen["unet_out"].add(out.dtype)

    handles = [unet.register_forward_hook(unet_hook)]

    def k_hook(module: Any, args: tuple, out: torch.Tensor) -> None:
        seen["to_k_in"].add(args[0].dtype)
        seen["to_k_weight"].add(module.weight.dtype)
        seen["to_k_out"].add(out.dtype)

    for name, module in unet.named_modules():
        if name.endswith("attn2.to_k"):
            handles.append(module.register_forward_hook(k_hook))
    try:
        yield seen
    finally:
        for handle in handles:
            handle.remove()


class Recorder:
    """Measured figures keyed by test and case, written as JSON when RECORD_ENV names a file."""

    def __init__(self) -> None:
        self.figures: dict[str, dict[str, Any]] = {}

    def __call__(self, case: str, check: str, **values: Any) -> None:
        self.figures.setdefault(case, {})[check] = values
        self.flush()

    def flush(self) -> None:
        target = os.environ.get(RECORD_ENV)
        if target:
            Path(target).write_text(json.dumps(self.figures, indent=2, default=str))
