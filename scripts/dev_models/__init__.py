"""Development-only ComfyUI custom node: makes the tiny and world test checkpoints loadable.

`make demo`, `make serve` and the test tiers link this folder into ComfyUI's custom_nodes beside the pack. With
R2MOE_TINY_MODELS=1 it registers the supported-model classes for the tiny SD1.5-layout checkpoint and the
benchmark's world model (stock ComfyUI detects SD1.5 only at 320 channels); otherwise it does nothing. It adds
no nodes.
"""

from __future__ import annotations

import logging
import os

NODE_CLASS_MAPPINGS: dict = {}

if os.environ.get("R2MOE_TINY_MODELS") == "1":
    from . import tiny_models

    tiny_models.register()
    logging.getLogger("r2moe").info("R2MoE dev models: tiny and world SD1.5-layout checkpoints enabled")
