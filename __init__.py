"""R2MoE for ComfyUI: lifelong personal concepts as a mixture of LoRA experts on the cross-attention K/V.

Exported through ComfyUI's V3 `comfy_entrypoint`; this module deliberately defines no NODE_CLASS_MAPPINGS
(that would make ComfyUI ignore the entrypoint).
"""

from __future__ import annotations

import sys

from .r2moe_core.log import LOGGER
from .r2moe_core.version import __version__

WEB_DIRECTORY = "./web"

try:
    from comfy_api.latest import ComfyExtension, io
except ImportError:
    ComfyExtension = None  # type: ignore[assignment,misc]
    if "comfy" in sys.modules:  # inside a ComfyUI that predates the V3 node API
        LOGGER.error("R2MoE needs ComfyUI 0.3.47 or newer (V3 node API); please update ComfyUI.")

if ComfyExtension is not None:
    from .nodes import ALL_NODES
    from .nodes.host.model_folders import register_model_folder, register_sam_folder
    from .nodes.host.routes import register_routes

    register_model_folder()
    register_sam_folder()
    register_routes()

    class R2MoEExtension(ComfyExtension):
        async def get_node_list(self) -> list[type[io.ComfyNode]]:
            return list(ALL_NODES)

    async def comfy_entrypoint() -> R2MoEExtension:
        LOGGER.info("R2MoE %s: %d nodes", __version__, len(ALL_NODES))
        return R2MoEExtension()
