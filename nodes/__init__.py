"""ComfyUI adapters, grouped by stage. Importing this package requires a running ComfyUI."""

from .bank_nodes import BANK_NODES

ALL_NODES = [*BANK_NODES]

__all__ = ["ALL_NODES"]
