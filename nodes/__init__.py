"""ComfyUI adapters, grouped by stage. Importing this package requires a running ComfyUI."""

from .bank_nodes import BANK_NODES
from .layout_nodes import LAYOUT_NODES
from .regional import REGIONAL_NODES
from .train_nodes import TRAIN_NODES

ALL_NODES = [*BANK_NODES, *TRAIN_NODES, *LAYOUT_NODES, *REGIONAL_NODES]

__all__ = ["ALL_NODES"]
