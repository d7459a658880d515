"""Test tiers: unit (plain PyTorch core), host (ComfyUI in-process), e2e (ComfyUI server over HTTP)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "scripts"))  # comfy_inprocess, comfy_server: shared with the demo and benchmarks
sys.path.insert(0, str(REPO / "bench"))  # world: the benchmark's procedural text-to-image world

# The core must be usable on its own: import it as a top-level package, the way a script would.
if "r2moe_core" not in sys.modules:
    _spec = importlib.util.spec_from_file_location(
        "r2moe_core", REPO / "r2moe_core" / "__init__.py", submodule_search_locations=[str(REPO / "r2moe_core")]
    )
    _module = importlib.util.module_from_spec(_spec)
    sys.modules["r2moe_core"] = _module
    _spec.loader.exec_module(_module)
