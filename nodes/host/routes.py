"""Read-only server routes for the front end: the concepts and trigger tokens of the banks in models/r2moe.

`GET /r2moe/concepts` answers `{"banks": {file name: {"concepts": [{"name", "token", "class_word",
"thumbnail"}]} or {"error": text}}}`. Only names inside the bank folders are listed, never a path; a file is read
once per change of its size or modification time (the header alone), so the prompt box can ask on every focus.
"""

from __future__ import annotations

import os
from typing import Any

import folder_paths

from ...r2moe_core.bank.bank_file import read_concept_list
from ...r2moe_core.errors import R2MoEError
from ...r2moe_core.log import LOGGER
from .model_folders import BANK_FOLDER

_cache: dict[str, tuple[tuple[int, int], dict[str, Any]]] = {}


def bank_entry(path: str) -> dict[str, Any]:
    """One bank file's listing (cached on its size and modification time)."""
    stat = os.stat(path)
    key = (stat.st_size, stat.st_mtime_ns)
    found = _cache.get(path)
    if found is not None and found[0] == key:
        return found[1]
    try:
        entry: dict[str, Any] = {"concepts": read_concept_list(path)}
    except (R2MoEError, OSError) as err:  # listed with its reason, so the user sees why a bank has no tokens
        entry = {"error": str(err).replace(os.path.dirname(path), "").lstrip(os.sep)[:300]}
    _cache[path] = (key, entry)
    return entry


def concept_listing() -> dict[str, Any]:
    """Every bank in the bank folders, by the name R2MoELoadBank lists it under."""
    banks: dict[str, Any] = {}
    for name in sorted(folder_paths.get_filename_list(BANK_FOLDER)):
        path = folder_paths.get_full_path(BANK_FOLDER, name)
        if name.endswith(".safetensors") and path and os.path.isfile(path):
            banks[name] = bank_entry(path)
    return {"banks": banks}


def register_routes() -> None:
    """Add the routes to the running ComfyUI server (none when there is no server, as in scripts and tests)."""
    try:
        from aiohttp import web
        from server import PromptServer
    except ImportError:
        return
    instance = getattr(PromptServer, "instance", None)
    if instance is None:
        return

    @instance.routes.get("/r2moe/concepts")
    async def concepts(_request: Any) -> Any:
        try:
            return web.json_response(concept_listing())
        except Exception as err:  # a listing failure must not break the page: say why
            LOGGER.warning("R2MoE: listing the banks' concepts failed: %s", err)
            return web.json_response({"banks": {}, "error": str(err)[:300]}, status=500)
