"""ComfyUI adapters, grouped by stage. Importing this package requires a running ComfyUI."""

from .bank_edit_nodes import BANK_EDIT_NODES
from .bank_history_nodes import BANK_HISTORY_NODES
from .bank_nodes import BANK_NODES
from .concept_export_nodes import EXPORT_NODES
from .hierarchical_nodes import HIERARCHICAL_NODES
from .layout_nodes import LAYOUT_NODES
from .lora_import_nodes import IMPORT_NODES
from .regional_nodes import REGIONAL_NODES
from .sam_nodes import SAM_NODES
from .train_nodes import TRAIN_NODES

ALL_NODES = [
    *BANK_NODES, *BANK_HISTORY_NODES, *BANK_EDIT_NODES, *EXPORT_NODES, *IMPORT_NODES, *TRAIN_NODES,
    *LAYOUT_NODES, *REGIONAL_NODES, *SAM_NODES, *HIERARCHICAL_NODES,
]

__all__ = ["ALL_NODES"]
