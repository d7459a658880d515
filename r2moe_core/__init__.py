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
from .log import LOGGER
from .lora_export import expert_as_lora
from .pruning import PruneReport, new_expert_coefficients, prune_bank, prune_task
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
    "LOGGER",
    "PROJECTIONS",
    "BankConfig",
    "BankFormatError",
    "BankMismatchError",
    "Concept",
    "ExpertBank",
    "InvalidInputError",
    "LayerSpec",
    "LoraExpert",
    "ModelFingerprint",
    "ProjectionExperts",
    "PruneReport",
    "R2MoEError",
    "StackedExperts",
    "__version__",
    "bank_from_bytes",
    "bank_to_bytes",
    "block_key",
    "compute_fingerprint",
    "expert_as_lora",
    "expert_delta",
    "fingerprint_differences",
    "gate_input",
    "gate_scores",
    "inference_coefficients",
    "load_bank",
    "mixture_coefficients",
    "new_expert_coefficients",
    "prune_bank",
    "prune_task",
    "save_bank",
    "select_experts",
    "training_coefficients",
]
