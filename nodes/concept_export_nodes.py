"""Export node: one concept as a standard LoRA (models/loras) plus its trigger token as an embedding
(models/embeddings), for the stock LoraLoader, `embedding:` prompts and other SD tools."""

from __future__ import annotations

import os

import folder_paths
from comfy_api.latest import io, ui
from safetensors.torch import save as safetensors_bytes

from ..r2moe_core.bank.atomic_write import atomic_write_bytes
from ..r2moe_core.bank.compatibility import bank_file_name
from ..r2moe_core.errors import InvalidInputError
from ..r2moe_core.log import LOGGER
from ..r2moe_core.moe.concept_export import embedding_name, embedding_tensors, mixture_as_lora
from ..r2moe_core.moe.gate_map import prompt_gate_weights
from ..r2moe_core.version import __version__
from .host.clip_tokens import clip_with_concepts, encode_prompt
from .host.model_inspection import check_clip_serves
from .types import BANK_TIP, Bank

CATEGORY = "R2MoE"


def _target(folder: str, file_name: str, overwrite: bool) -> str:
    path = os.path.join(folder_paths.get_folder_paths(folder)[0], file_name)
    if os.path.exists(path) and not overwrite:
        raise InvalidInputError(f"{path} exists; choose another file_name or enable overwrite.")
    return path


class R2MoEExportConcept(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="R2MoEExportConcept",
            display_name="R2MoE Export Concept (LoRA + embedding)",
            category=CATEGORY,
            description=(
                "Write one concept for any SD tool: its expert mixture at the given prompt as a standard LoRA "
                "(kohya key names) in models/loras, and its trigger token as a textual-inversion embedding in "
                "models/embeddings. Stock LoraLoader + `embedding:<name>` in the prompt then draw what the bank "
                "draws for that prompt (exactly at CFG 1; the LoRA also touches the negative prompt, the bank not)."
            ),
            inputs=[
                io.Clip.Input("clip", tooltip="The checkpoint's CLIP: the prompt is encoded to find its mixture."),
                Bank.Input("bank", tooltip=BANK_TIP),
                io.String.Input("concept_name", default="", tooltip="The concept to export."),
                io.String.Input("prompt", default="", multiline=True, tooltip="The prompt whose mixture the "
                                "LoRA freezes (blank: `a photo of <token> <class word>`)."),
                io.String.Input("file_name", default="", tooltip="LoRA file name in models/loras (blank: the "
                                "concept name)."),
                io.Float.Input("strength", default=1.0, min=0.0, max=4.0, step=0.05, optional=True,
                               tooltip="Baked into the LoRA (then load it at 1.0)."),
                io.Boolean.Input("overwrite", default=False, optional=True,
                                 tooltip="Replace existing files of the same names."),
            ],
            outputs=[io.String.Output(display_name="report", tooltip="The files written and how to use them.")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, clip, bank, concept_name, prompt="", file_name="", strength=1.0, overwrite=False
                ) -> io.NodeOutput:  # fmt: skip
        concept = bank.concept_by_name(concept_name.strip())
        if concept is None:
            known = ", ".join(f"'{c.name}'" for c in bank.concepts) or "none"
            raise InvalidInputError(f"No concept named '{concept_name.strip()[:200]}' in this bank ({known}).")
        check_clip_serves(bank, clip)
        text = prompt.strip() or f"a photo of {concept.token} {concept.class_word}"
        if concept.token not in text:
            raise InvalidInputError(f"The prompt must contain the trigger token {concept.token}: the LoRA is the "
                                    "mixture the bank uses for prompts that name the concept.")
        lora_file = bank_file_name(file_name.strip() or concept.name)
        embed = embedding_name(concept.token)
        lora_path = _target("loras", lora_file, overwrite)
        embed_path = _target("embeddings", f"{embed}.safetensors", overwrite)
        weights = prompt_gate_weights(bank, encode_prompt(clip_with_concepts(clip, bank), text).float().cpu())
        lora = mixture_as_lora(bank, weights, strength)
        if not lora:
            raise InvalidInputError(f"'{concept.name}' has no expert left in any layer at this prompt (all pruned?).")
        metadata = {"ss_network_module": "networks.lora", "ss_network_dim": str(bank.config.rank),
                    "r2moe_concept": concept.name, "r2moe_prompt": text[:1000], "r2moe_version": __version__}
        atomic_write_bytes(lora_path, safetensors_bytes(lora, metadata=metadata), keep_versions=0)
        atomic_write_bytes(embed_path, safetensors_bytes(embedding_tensors(bank, concept.name)), keep_versions=0)
        usage = text.replace(concept.token, f"embedding:{embed}")
        report = (f"wrote {lora_path} ({len(lora) // 3} projections) and {embed_path}\nuse: LoraLoader "
                  f"{lora_file} (model strength 1.0, clip strength 0) and the prompt: {usage}")
        LOGGER.info("R2MoE: exported '%s': %s", concept.name, report.replace("\n", "; "))
        return io.NodeOutput(report, ui=ui.PreviewText(report))


EXPORT_NODES: list[type[io.ComfyNode]] = [R2MoEExportConcept]
