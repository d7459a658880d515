"""Custom socket types (their strings are written into users' workflows: never rename), and the schema fields
only newer hosts take."""

import inspect
from typing import Any

from comfy_api.latest import io

Bank = io.Custom("R2MOE_BANK")
Layout = io.Custom("R2MOE_LAYOUT")
Sam = io.Custom("R2MOE_SAM")

BANK_TIP = "An expert bank (from R2MoE New Bank, Load Bank or Train Concept)."
LAYOUT_TIP = "A layout: background prompt and boxed regions (from Layout Planner or Layout From JSON)."
SAM_TIP = "A Segment Anything model from R2MoE SAM Loader."


def _schema_fields() -> set[str]:
    fields = getattr(io.Schema, "__dataclass_fields__", None)
    return set(fields) if fields else set(inspect.signature(io.Schema).parameters)


def schema_extras(search_aliases: list[str]) -> dict[str, Any]:
    """V3 schema fields newer ComfyUI releases accept (the node search's `search_aliases`), only where this host's
    io.Schema has them: the pinned 0.3.75 has none and would reject the keyword."""
    return {"search_aliases": list(search_aliases)} if "search_aliases" in _schema_fields() else {}


def advanced_input() -> dict[str, Any]:
    """`advanced=True` for an input, where this host's inputs take it (newer releases fold those inputs away)."""
    try:
        parameters = inspect.signature(io.Float.Input.__init__).parameters
    except (TypeError, ValueError):
        return {}
    return {"advanced": True} if "advanced" in parameters else {}
