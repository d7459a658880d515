"""R2MoE core: plain PyTorch, no ComfyUI imports, usable from any script.

Four stages, one subpackage each; a stage imports only the stages listed before it (and `errors`, `log`,
`version`), so there are no import cycles:

- `bank`: what is kept between concepts. The bank model (concepts, per-projection experts, config), the
  cross-attention layers it adapts, the model fingerprint, the file format with atomic writes, the
  compatibility checks run before a bank is used, trigger tokens in prompt text, LoRA export, the text and
  picture report.
- `moe`: the mixture at sampling time. Routing (gate scores, top-k, selective activation), the per-run cache
  of expert deltas, layer-wise pruning.
- `train`: learning one concept. The trainer and its settings, the request a node builds from its widgets,
  concept photo loading, the loss-curve plot.
- `compose`: several concepts in one image. Layouts, the rule and LLM planners, regional attention, SAM
  loading and mask refinement, the layout preview.

The names below are the stable import surface (`from r2moe_core import ExpertBank`).
"""

from .bank.attention_targets import PROJECTIONS, LayerSpec, block_key
from .bank.bank_file import DEFAULT_KEEP_VERSIONS, bank_from_bytes, bank_to_bytes, load_bank, save_bank
from .bank.bank_history import BankVersion, bank_versions, restore_version
from .bank.compatibility import bank_file_name, check_bank_fits, check_token_width
from .bank.config import BankConfig
from .bank.expert_bank import FORMAT_VERSION, Concept, ExpertBank, ProjectionExperts
from .bank.experts import AUX_EXPERT, LoraExpert, StackedExperts, expert_delta
from .bank.fingerprint import ModelFingerprint, compute_fingerprint, fingerprint_differences
from .bank.lora_export import expert_as_lora
from .bank.report import bank_report, expert_map
from .bank.trigger_tokens import embedding_name, substitute_triggers, trigger_pattern
from .compose.layout import (
    LAYOUT_VERSION,
    Layout,
    Region,
    box_masks,
    boxes_from_pixels,
    find_tokens,
    layout_from_json,
    layout_to_dict,
    layout_to_json,
    validate_layout,
    with_boxes,
)
from .compose.planning.llm_planner import LLMPlanner, check_key_env_name
from .compose.planning.planner import Planner
from .compose.planning.rule_planner import RuleBasedPlanner
from .compose.regional_attention import RegionalRuntime, RegionMasks, blend_regions, token_grid
from .errors import BankFormatError, BankMismatchError, InvalidInputError, R2MoEError
from .log import LOGGER
from .moe.bank_edit import MixtureChange, concept_mixtures, remove_concept, rename_concept
from .moe.bank_merge import MergeReport, merge_banks
from .moe.delta_cache import BankRuntime
from .moe.gate_map import gate_heatmap, gate_summary, prompt_gate_weights
from .moe.pruning import PruneReport, new_expert_coefficients, new_expert_shares, prune_bank, prune_task
from .moe.routing import (
    gate_input,
    gate_scores,
    inference_coefficients,
    mixture_coefficients,
    select_experts,
    training_coefficients,
)
from .train.concept_photos import load_concept_folder, make_captions, square_resize
from .train.loss_plot import loss_curve
from .train.request import ConceptRequest
from .train.step import TrainingData, training_step
from .train.trainer import ExpertTrainer, TrainSettings
from .version import __version__

__all__ = [
    "AUX_EXPERT",
    "DEFAULT_KEEP_VERSIONS",
    "FORMAT_VERSION",
    "LAYOUT_VERSION",
    "LOGGER",
    "PROJECTIONS",
    "BankConfig",
    "BankFormatError",
    "BankMismatchError",
    "BankRuntime",
    "BankVersion",
    "Concept",
    "ConceptRequest",
    "ExpertBank",
    "ExpertTrainer",
    "InvalidInputError",
    "LLMPlanner",
    "LayerSpec",
    "Layout",
    "LoraExpert",
    "MergeReport",
    "MixtureChange",
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
    "TrainSettings",
    "TrainingData",
    "__version__",
    "bank_file_name",
    "bank_from_bytes",
    "bank_report",
    "bank_to_bytes",
    "bank_versions",
    "blend_regions",
    "block_key",
    "box_masks",
    "boxes_from_pixels",
    "check_bank_fits",
    "check_key_env_name",
    "check_token_width",
    "compute_fingerprint",
    "concept_mixtures",
    "embedding_name",
    "expert_as_lora",
    "expert_delta",
    "expert_map",
    "find_tokens",
    "fingerprint_differences",
    "gate_heatmap",
    "gate_input",
    "gate_scores",
    "gate_summary",
    "inference_coefficients",
    "layout_from_json",
    "layout_to_dict",
    "layout_to_json",
    "load_bank",
    "load_concept_folder",
    "loss_curve",
    "make_captions",
    "merge_banks",
    "mixture_coefficients",
    "new_expert_coefficients",
    "new_expert_shares",
    "prompt_gate_weights",
    "prune_bank",
    "prune_task",
    "remove_concept",
    "rename_concept",
    "restore_version",
    "save_bank",
    "select_experts",
    "square_resize",
    "substitute_triggers",
    "token_grid",
    "training_coefficients",
    "training_step",
    "trigger_pattern",
    "validate_layout",
    "with_boxes",
]
