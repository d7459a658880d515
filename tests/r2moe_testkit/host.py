"""ComfyUI 0.3.75 in-process, loaded the way main.py does, with this pack found in custom_nodes.

Booting is once per test session (ComfyUI's modules are process-global).
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

from .paths import CACHE, REPO, TINY_CKPT_NAME, make_base_dir, require_host

_STATE: SimpleNamespace | None = None


class _SilentServer:
    """The few attributes PromptExecutor touches when there is no web server."""

    client_id = None
    last_node_id = None
    last_prompt_id = None

    def __init__(self) -> None:
        self.messages: list[tuple[str, Any]] = []

    def send_sync(self, event: str, data: Any, sid: Any = None) -> None:
        self.messages.append((event, data))

    def queue_updated(self) -> None:
        pass


def _find_pack() -> ModuleType:
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if path and Path(path).resolve() == (REPO / "__init__.py").resolve() and hasattr(module, "comfy_entrypoint"):
            return module
    raise RuntimeError("The R2MoE pack did not load into ComfyUI (see the IMPORT FAILED log line above).")


def tiny_checkpoint() -> Path:
    """The deterministic tiny checkpoint, built once into .host/cache (needs the host booted)."""
    path = CACHE / TINY_CKPT_NAME
    if not path.exists():
        tiny = sys.modules[_find_pack().__name__ + ".nodes.tiny_models"]
        tiny.write_tiny_checkpoint(str(path), seed=0)
    return path


def boot(base_dir: Path) -> SimpleNamespace:
    global _STATE
    if _STATE is not None:
        return _STATE
    root = require_host()
    os.environ["R2MOE_TINY_MODELS"] = "1"
    sys.path.insert(0, str(root))
    sys.argv = [sys.argv[0]]
    import comfy.options

    comfy.options.enable_args_parsing(False)
    from comfy.cli_args import args

    args.cpu = True
    args.use_pytorch_cross_attention = True
    args.base_directory = str(make_base_dir(base_dir))
    import execution
    import nodes
    import utils.extra_config  # noqa: F401  (as main.py does; keeps `utils` the package, not comfy/utils.py)

    asyncio.run(nodes.init_extra_nodes(init_custom_nodes=True, init_api_nodes=False))
    pack = _find_pack()
    checkpoint = tiny_checkpoint()
    make_base_dir(base_dir, checkpoint)
    import folder_paths

    folder_paths.filename_list_cache.clear()
    _STATE = SimpleNamespace(
        nodes=nodes, execution=execution, pack=pack, core=sys.modules[pack.__name__ + ".r2moe_core"],
        base_dir=base_dir, checkpoint=checkpoint,
    )
    return _STATE


def call_node(node_id: str, **inputs: Any) -> tuple[Any, ...]:
    """Run one node's execute the way the executor does (class clone, inference mode)."""
    import nodes
    import torch

    cls = nodes.NODE_CLASS_MAPPINGS[node_id]
    with torch.inference_mode():
        if hasattr(cls, "PREPARE_CLASS_CLONE"):
            out = cls.PREPARE_CLASS_CLONE({}).EXECUTE_NORMALIZED(**inputs)
            return tuple(out.args)
        obj = cls()
        return tuple(getattr(obj, cls.FUNCTION)(**inputs))


def run_graph(graph: dict[str, Any], prompt_id: str = "p") -> SimpleNamespace:
    """Validate and execute an API-format graph with ComfyUI's own executor."""
    import execution

    valid = asyncio.run(execution.validate_prompt(prompt_id, graph, None))
    ok, error, outputs, node_errors = valid[0], valid[1], valid[2], valid[3]
    if not ok:
        raise AssertionError(f"graph invalid: {error} {node_errors}")
    server = _SilentServer()
    executor = execution.PromptExecutor(server, cache_type=execution.CacheType.CLASSIC, cache_args={"lru": 0, "ram": 0})
    executor.execute(graph, prompt_id, {}, outputs)
    return SimpleNamespace(success=executor.success, outputs=executor.history_result.get("outputs", {}),
                           messages=server.messages + list(executor.status_messages))
