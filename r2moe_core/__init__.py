"""R2MoE core: plain PyTorch, no ComfyUI imports, usable from any script.

Expert bank model and file format, MoE routing and expert math, model fingerprints, trigger-token handling.
"""

from .bank import FORMAT_VERSION, Concept, ExpertBank, ProjectionExperts
from .bank_io import bank_from_bytes, bank_to_bytes, load_bank, save_bank
from .config import BankConfig
from .errors import BankFormatError, BankMismatchError, InvalidInputError, R2MoEError
from .experts import LoraExpert, StackedExperts, expert_delta
from .fingerprint import ModelFingerprint, compute_fingerprint, fingerprint_differences
from .layers import PROJECTIONS, LayerSpec, block_key
from .layout import (
    LAYOUT_VERSION,
    Layout,
    Region,
    box_masks,
    find_tokens,
    layout_from_json,
    layout_to_dict,
    layout_to_json,
    validate_layout,
)
from .log import LOGGER
from .lora_export import expert_as_lora
from .planner_llm import LLMPlanner
from .planners import Planner, RuleBasedPlanner
from .pruning import PruneReport, new_expert_coefficients, prune_bank, prune_task
from .regional import RegionalRuntime, RegionMasks, blend_regions, token_grid
from .routing import (
    gate_input,
    gate_scores,
    inference_coefficients,
    mixture_coefficients,
    select_experts,
    training_coefficients,
)
from .version import __version__

__all__ = [
    "FORMAT_VERSION",
    "LAYOUT_VERSION",
    "LOGGER",
    "PROJECTIONS",
    "BankConfig",
    "BankFormatError",
    "BankMismatchError",
    "Concept",
    "ExpertBank",
    "InvalidInputError",
    "LLMPlanner",
    "LayerSpec",
    "Layout",
    "LoraExpert",
    "ModelFingerprint",
    "Planner",
    "ProjectionExperts",
    "PruneReport",
    "R2MoEError",
    "Region",
    "RegionMasks",
    "RegionalRuntime",
    "RuleBasedPlanner",
    "StackedExperts",
    "__version__",
    "bank_from_bytes",
    "bank_to_bytes",
    "blend_regions",
    "block_key",
    "box_masks",
    "compute_fingerprint",
    "expert_as_lora",
    "expert_delta",
    "find_tokens",
    "fingerprint_differences",
    "gate_input",
    "gate_scores",
    "inference_coefficients",
    "layout_from_json",
    "layout_to_dict",
    "layout_to_json",
    "load_bank",
    "mixture_coefficients",
    "new_expert_coefficients",
    "prune_bank",
    "prune_task",
    "save_bank",
    "select_experts",
    "token_grid",
    "training_coefficients",
    "validate_layout",
]
