"""The layout the code map promises: the core runs without ComfyUI, stages import downwards, no private imports."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import r2moe_core as core

REPO = Path(__file__).resolve().parents[2]
STAGES = ("bank", "moe", "train", "compose")  # each may import only the ones before it
SHARED = {"errors", "log", "version"}


def _relative_imports(path: Path) -> list[tuple[int, str, list[str]]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            found.append((node.level, node.module or "", [alias.name for alias in node.names]))
    return found


def test_core_imports_without_comfyui_and_exports_every_public_name():
    probe = (
        "import sys; sys.path.insert(0, sys.argv[1]); import r2moe_core; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in {'comfy', 'comfy_api', 'folder_paths', 'nodes'}); "
        "missing = [n for n in r2moe_core.__all__ if not hasattr(r2moe_core, n)]; "
        "sys.exit(f'imported {bad}, missing {missing}' if bad or missing else 0)"
    )
    result = subprocess.run([sys.executable, "-c", probe, str(REPO)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr or result.stdout
    for name in ("ExpertBank", "load_bank", "save_bank", "BankRuntime", "RegionalRuntime", "TrainSettings"):
        assert name in core.__all__


def test_core_stages_import_only_earlier_stages():
    root = REPO / "r2moe_core"
    for stage in STAGES:
        allowed = set(STAGES[: STAGES.index(stage) + 1]) | SHARED
        for path in sorted((root / stage).rglob("*.py")):
            package = list(path.relative_to(root).parent.parts)  # e.g. ["compose", "planning"]
            for level, module, _ in _relative_imports(path):
                base = package[: len(package) - (level - 1)]  # where the relative import starts from
                target = [*base, *(module.split(".") if module else [])][0]
                assert target in allowed, f"{path.relative_to(REPO)} imports r2moe_core.{module} (a later stage)"


def test_no_module_imports_a_private_name():
    roots = [REPO / d for d in ("r2moe_core", "nodes", "scripts", "bench", "tests")]
    offenders = []
    for path in (p for root in roots for p in root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                names = [a.name for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
                offenders += [f"{path.relative_to(REPO)}: {n}" for n in names]
    assert not offenders, offenders


MAX_FUNCTION_LINES, MAX_PARAMETERS = 80, 8


def _functions(path: Path) -> list[tuple[str, int, int]]:
    """(name, lines, parameters besides self/cls) of every function and method in a module."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            args = node.args
            names = [a.arg for a in (*args.posonlyargs, *args.args, *args.kwonlyargs)]
            params = len(names) - (1 if names[:1] in (["self"], ["cls"]) else 0)
            out.append((node.name, node.end_lineno - node.lineno + 1, params))
    return out


def test_functions_stay_short_and_take_few_parameters():
    """At most 80 lines and 8 parameters in the core and the node adapters; a node's `define_schema` (it only
    declares) may be longer and its `execute` (it receives the node's inputs and turns them into settings objects
    at once) may take more."""
    too_long, too_many = [], []
    for folder in ("r2moe_core", "nodes"):
        for path in sorted((REPO / folder).rglob("*.py")):
            for name, lines, params in _functions(path):
                where = f"{path.relative_to(REPO)}:{name}"
                if lines > MAX_FUNCTION_LINES and name != "define_schema":
                    too_long.append(f"{where} ({lines} lines)")
                if params > MAX_PARAMETERS and name != "execute":
                    too_many.append(f"{where} ({params} parameters)")
    assert not too_long and not too_many, f"too long: {too_long}; too many parameters: {too_many}"


def test_node_modules_and_host_adapters_live_apart():
    """`nodes/*_nodes.py` declare nodes (plus `types.py`, the socket types); `nodes/host/` holds the ComfyUI
    adapters they share and declares none."""
    odd = [p.name for p in (REPO / "nodes").glob("*.py")
           if not p.name.endswith("_nodes.py") and p.name not in {"__init__.py", "types.py"}]
    assert not odd, f"nodes/ modules that are neither node modules nor the socket types: {odd} (adapters: nodes/host/)"
    declaring = [p.name for p in (REPO / "nodes" / "host").glob("*.py") if "node_id=" in p.read_text()]
    assert not declaring, f"nodes/host/ modules that declare nodes: {declaring}"
