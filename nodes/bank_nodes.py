"""Bank lifecycle nodes: create, load, save, apply, inspect. Thin adapters over r2moe_core."""

from __future__ import annotations

import os

import torch
from comfy_api.latest import io, ui

from ..r2moe_core.bank.bank_file import DEFAULT_KEEP_VERSIONS, load_bank, save_bank
from ..r2moe_core.bank.compatibility import bank_file_name
from ..r2moe_core.bank.config import BankConfig
from ..r2moe_core.bank.expert_bank import ExpertBank
from ..r2moe_core.bank.model_family import require_family
from ..r2moe_core.bank.report import bank_report, concept_gallery, expert_map
from ..r2moe_core.errors import InvalidInputError
from ..r2moe_core.log import LOGGER
from ..r2moe_core.moe.gate_map import gate_heatmap, gate_summary, prompt_gate_weights
from ..r2moe_core.moe.pruning import prune_bank
from .host.bank_patch import apply_bank
from .host.clip_tokens import clip_with_concepts, encode_prompt
from .host.model_folders import bank_dir, bank_files, bank_name_check, bank_path
from .host.model_inspection import check_clip_serves, model_fingerprint
from .types import BANK_TIP, Bank

CATEGORY = "R2MoE"


class R2MoENewBank(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="R2MoENewBank",
            display_name="R2MoE New Bank",
            category=CATEGORY,
            description="An empty expert bank fitted to this model: the starting point for learning concepts.",
            inputs=[
                io.Model.Input("model", tooltip="The SD1.x, SD 2.x or SDXL model the bank's experts will adapt."),
                io.Int.Input("rank", default=4, min=1, max=64, tooltip="LoRA rank of each expert (reference: 4)."),
                io.Int.Input(
                    "top_k", default=3, min=1, max=16,
                    tooltip="How many learned experts the gate mixes per layer and prompt (reference: 3).",
                ),
                io.Float.Input(
                    "prune_threshold", default=0.4, min=0.0, max=1.0, step=0.01,
                    tooltip="After training, a new expert is dropped in layers where it gives less than this share of "
                            "the experts' output on its concept's prompts.",
                ),
                io.Float.Input(
                    "distill_lambda", default=1e-5, min=0.0, max=1.0, step=1e-6,
                    tooltip="Weight of routing distillation, which keeps old concepts routed as before.",
                ),
            ],
            outputs=[
                Bank.Output(
                    display_name="bank",
                    tooltip="An empty bank fitted to this model; train concepts into it.",
                ),
            ],
        )

    @classmethod
    def execute(cls, model, rank, top_k, prune_threshold, distill_lambda) -> io.NodeOutput:
        config = BankConfig(rank=rank, top_k=top_k, prune_threshold=prune_threshold, distill_lambda=distill_lambda)
        layers, fingerprint = model_fingerprint(model)
        family = require_family(layers)
        return io.NodeOutput(ExpertBank.empty(config, layers, fingerprint, token_dim=family.token_dim))


class R2MoELoadBank(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="R2MoELoadBank",
            display_name="R2MoE Load Bank",
            category=CATEGORY,
            description="Load an expert bank from ComfyUI/models/r2moe.",
            inputs=[io.Combo.Input("bank_name", options=bank_files(), tooltip="A bank file in models/r2moe.")],
            outputs=[Bank.Output(display_name="bank", tooltip="The bank read from the file, fully validated.")],
        )

    @classmethod
    def fingerprint_inputs(cls, bank_name: str) -> str:
        try:
            stat = os.stat(bank_path(bank_name))
        except (InvalidInputError, OSError):
            return bank_name
        return f"{bank_name}:{stat.st_mtime_ns}:{stat.st_size}"

    @classmethod
    def validate_inputs(cls, bank_name: str) -> bool | str:
        return bank_name_check(bank_name)

    @classmethod
    def execute(cls, bank_name) -> io.NodeOutput:
        return io.NodeOutput(load_bank(bank_path(bank_name)))


class R2MoESaveBank(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="R2MoESaveBank",
            display_name="R2MoE Save Bank",
            category=CATEGORY,
            description=(
                "Write the bank to models/r2moe atomically; the file it replaces is kept as <name>.safetensors.bak "
                "(older ones as .bak2, .bak3, ...: see R2MoE Bank History)."
            ),
            inputs=[
                Bank.Input("bank", tooltip=BANK_TIP),
                io.String.Input("name", default="my_concepts", tooltip="File name in models/r2moe (no folders)."),
                io.Int.Input("keep_versions", default=DEFAULT_KEEP_VERSIONS, min=0, max=100, optional=True,
                             tooltip="Previous versions kept beside the bank (0: none)."),
            ],
            outputs=[io.String.Output(display_name="path", tooltip="Where the bank was written.")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, bank, name, keep_versions=DEFAULT_KEEP_VERSIONS) -> io.NodeOutput:
        path = str(save_bank(bank, os.path.join(bank_dir(), bank_file_name(name)), keep_versions))
        LOGGER.info("R2MoE: saved bank with %d concept(s) to %s", len(bank.concepts), path)
        return io.NodeOutput(path, ui=ui.PreviewText(f"saved {path}"))


class R2MoEApplyBank(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="R2MoEApplyBank",
            display_name="R2MoE Apply Bank",
            category=CATEGORY,
            description=(
                "Patch MODEL and CLIP with the bank: every learned concept's trigger token works in a stock "
                "CLIPTextEncode, and the experts mix per prompt in every cross-attention layer."
            ),
            inputs=[
                io.Model.Input("model", tooltip="The checkpoint's MODEL the bank was made for."),
                io.Clip.Input("clip", tooltip="The same checkpoint's CLIP; it learns the concepts' trigger tokens."),
                Bank.Input("bank", tooltip=BANK_TIP),
                io.Float.Input(
                    "strength", default=1.0, min=-2.0, max=2.0, step=0.05,
                    tooltip="Scales every expert's contribution (0 = base model with the concept tokens only).",
                ),
                io.Boolean.Input(
                    "allow_other_weights", default=False, optional=True,
                    tooltip="Use the bank on a fine-tune with the same shape but other weights (like a LoRA).",
                ),
            ],
            outputs=[
                io.Model.Output(
                    display_name="model",
                    tooltip="The MODEL with the experts mixed in; connect it to a stock KSampler.",
                ),
                io.Clip.Output(
                    display_name="clip",
                    tooltip="The CLIP that understands the trigger tokens; use it in CLIPTextEncode.",
                ),
            ],
        )

    @classmethod
    def execute(cls, model, clip, bank, strength, allow_other_weights=False) -> io.NodeOutput:
        return io.NodeOutput(*apply_bank(model, clip, bank, strength, allow_other_weights))


class R2MoEBankInfo(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="R2MoEBankInfo",
            display_name="R2MoE Bank Info",
            category=CATEGORY,
            description="What a bank holds: concepts, sizes, and which layers keep each concept's expert.",
            inputs=[Bank.Input("bank", tooltip=BANK_TIP)],
            outputs=[
                io.String.Output(display_name="text", tooltip="Concepts, tokens, sizes and settings, as text."),
                io.Image.Output(
                    display_name="expert_map",
                    tooltip="One row per concept, one column per layer: where its K and V experts survived pruning.",
                ),
                io.Image.Output(
                    display_name="gallery",
                    tooltip="Per concept: its picture (the last preview of its training), name, trigger token, "
                    "bytes in the file and the share of layers that kept its expert.",
                ),
            ],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, bank) -> io.NodeOutput:
        text = bank_report(bank)
        image = torch.from_numpy(expert_map(bank))[None]
        gallery = torch.from_numpy(concept_gallery(bank))[None]
        return io.NodeOutput(text, image, gallery, ui=ui.PreviewText(text))


class R2MoEPruneBank(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="R2MoEPruneBank",
            display_name="R2MoE Prune Bank",
            category=CATEGORY,
            description=(
                "Re-prune every concept's expert with another threshold: an expert is removed in each layer where "
                "its share of the experts' output on the concept's own prompt is below the threshold. Removal "
                "cannot be undone."
            ),
            inputs=[
                Bank.Input("bank", tooltip=BANK_TIP),
                io.Float.Input(
                    "prune_threshold", default=0.4, min=0.0, max=1.0, step=0.01,
                    tooltip="Higher removes more layers (smaller file, possibly weaker concepts); 0 removes nothing.",
                ),
            ],
            outputs=[
                Bank.Output(display_name="bank", tooltip="The re-pruned bank (save it to keep it)."),
                io.String.Output(display_name="report", tooltip="Per concept: projections kept and bytes saved."),
            ],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, bank, prune_threshold) -> io.NodeOutput:
        pruned, reports = prune_bank(bank, prune_threshold)
        saved = sum(r.bytes_saved for r in reports)
        lines = [r.summary() for r in reports] or ["the bank has no concepts"]
        text = "\n".join([*lines, f"total saved: {saved / 1024:.1f} KB"])
        return io.NodeOutput(pruned, text, ui=ui.PreviewText(text))


class R2MoEGateMap(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="R2MoEGateMap",
            display_name="R2MoE Gate Map",
            category=CATEGORY,
            description=(
                "Which experts a prompt routes to, layer by layer: the exact mixture weights the bank uses when "
                "sampling this prompt, as a heat map (rows: experts, columns: layers, K and V halves)."
            ),
            inputs=[
                io.Clip.Input("clip", tooltip="The checkpoint's CLIP (the same one you sample with)."),
                Bank.Input("bank", tooltip=BANK_TIP),
                io.String.Input(
                    "prompt",
                    multiline=True,
                    default="a photo of <dog1> dog",
                    tooltip="The positive prompt to inspect, trigger tokens included.",
                ),
            ],
            outputs=[
                io.Image.Output(display_name="gate_map", tooltip="Heat map of the gate weights per expert and layer."),
                io.String.Output(display_name="text", tooltip="Each expert's mean weight and where it is strongest."),
            ],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, clip, bank, prompt) -> io.NodeOutput:
        check_clip_serves(bank, clip)
        context = encode_prompt(clip_with_concepts(clip, bank), prompt).float().cpu()
        weights = prompt_gate_weights(bank, context)
        text = gate_summary(bank, weights)
        image = torch.from_numpy(gate_heatmap(bank, weights, prompt))[None]
        return io.NodeOutput(image, text, ui=ui.PreviewText(text))


BANK_NODES: list[type[io.ComfyNode]] = [
    R2MoENewBank,
    R2MoELoadBank,
    R2MoESaveBank,
    R2MoEApplyBank,
    R2MoEBankInfo,
    R2MoEPruneBank,
    R2MoEGateMap,
]
