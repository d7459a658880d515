"""ComfyUI 0.3.75 in this Python process, loaded the way main.py does, with this pack found in custom_nodes.

Shared by the host test tier and the benchmarks. ComfyUI's modules are process-global: boot once.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

from comfy_server import DEV_MODELS, TINY_BUILDER, tiny_checkpoint_current, tiny_tag

REPO = Path(__file__).resolve().parent.parent
HOST_ROOT = REPO / ".host" / "ComfyUI"
CACHE = REPO / ".host" / "cache"
TINY_CKPT_NAME = "r2moe_tiny_sd15.safetensors"

_STATE: SimpleNamespace | None = None


def require_host() -> Path:
    if not (HOST_ROOT / "main.py").exists():
        raise RuntimeError(f"ComfyUI host not found at {HOST_ROOT}; run `make env` (or `make test`) first.")
    return HOST_ROOT


def link_dev_nodes(custom_nodes: Path) -> None:
    """The pack as a user installs it (custom_nodes/r2moe) and, beside it, the development-only model node."""
    for name, target in (("r2moe", REPO), ("r2moe_dev_models", DEV_MODELS)):
        link = custom_nodes / name
        if not link.exists():
            link.symlink_to(target, target_is_directory=True)


def load_tiny_models() -> ModuleType:
    """The tiny-model builder as a plain module (the custom node loads its own copy under ComfyUI's name)."""
    spec = importlib.util.spec_from_file_location("r2moe_tiny_models", TINY_BUILDER)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def make_base_dir(base: Path, checkpoint: Path | None = None) -> Path:
    """A ComfyUI base directory with only this pack in custom_nodes and the given checkpoint linked in."""
    (base / "custom_nodes").mkdir(parents=True, exist_ok=True)
    link_dev_nodes(base / "custom_nodes")
    for folder in ("checkpoints", "r2moe", "sams", "loras", "embeddings"):
        (base / "models" / folder).mkdir(parents=True, exist_ok=True)
    for folder in ("input", "output", "temp", "user"):
        (base / folder).mkdir(exist_ok=True)
    if checkpoint is not None:
        target = base / "models" / "checkpoints" / checkpoint.name
        if not target.exists():
            target.symlink_to(checkpoint)
    return base


class SilentServer:
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


def boot(base_dir: Path, gpu: bool = False) -> SimpleNamespace:
    """Import ComfyUI with `base_dir` as its base directory, load all nodes, build the tiny checkpoint once."""
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

    args.cpu = not gpu
    args.use_pytorch_cross_attention = True
    args.base_directory = str(make_base_dir(base_dir))
    # First, as main.py does: afterwards `utils` would resolve to comfy/utils.py and comfy_extras fail to import.
    importlib.import_module("utils.extra_config")
    import execution
    import nodes

    asyncio.run(nodes.init_extra_nodes(init_custom_nodes=True, init_api_nodes=False))
    pack = _find_pack()
    tiny_models = load_tiny_models()
    checkpoint = CACHE / TINY_CKPT_NAME
    if not tiny_checkpoint_current(checkpoint):
        tiny_models.write_tiny_checkpoint(str(checkpoint), seed=0, tag=tiny_tag())
    make_base_dir(base_dir, checkpoint)
    import folder_paths

    folder_paths.filename_list_cache.clear()
    _STATE = SimpleNamespace(
        nodes=nodes,
        execution=execution,
        pack=pack,
        core=sys.modules[pack.__name__ + ".r2moe_core"],
        tiny_models=tiny_models,
        base_dir=base_dir,
        checkpoint=checkpoint,
    )
    return _STATE


def family_checkpoint(family: str) -> str:
    """The tiny checkpoint of a model family ("sd1", "sd2", "sdxl") in the booted host's checkpoints folder, built
    once and cached like the SD1.5 one; returns its name for CheckpointLoaderSimple."""
    if _STATE is None:
        raise RuntimeError("boot() the host first")
    name = _STATE.tiny_models.CHECKPOINT_NAMES[family]
    path = CACHE / name
    if not tiny_checkpoint_current(path):
        _STATE.tiny_models.write_tiny_checkpoint(str(path), seed=0, tag=tiny_tag(), family=family)
    make_base_dir(_STATE.base_dir, path)
    import folder_paths

    folder_paths.filename_list_cache.clear()
    return name


def call_node(node_id: str, **inputs: Any) -> tuple[Any, ...]:
    """Run one node's execute the way the executor does (class clone, inference mode)."""
    import nodes
    import torch

    cls = nodes.NODE_CLASS_MAPPINGS[node_id]
    with torch.inference_mode():
        if hasattr(cls, "PREPARE_CLASS_CLONE"):
            return tuple(cls.PREPARE_CLASS_CLONE({}).EXECUTE_NORMALIZED(**inputs).args)
        obj = cls()
        return tuple(getattr(obj, cls.FUNCTION)(**inputs))


def run_graph(graph: dict[str, Any], prompt_id: str = "p") -> SimpleNamespace:
    """Validate and execute an API-format graph with ComfyUI's own executor."""
    import execution

    valid = asyncio.run(execution.validate_prompt(prompt_id, graph, None))
    if not valid[0]:
        raise AssertionError(f"graph invalid: {valid[1]} {valid[3]}")
    server = SilentServer()
    executor = execution.PromptExecutor(server, cache_type=execution.CacheType.CLASSIC, cache_args={"lru": 0, "ram": 0})
    executor.execute(graph, prompt_id, {}, valid[2])
    return SimpleNamespace(
        success=executor.success,
        outputs=executor.history_result.get("outputs", {}),
        messages=server.messages + list(executor.status_messages),
    )
