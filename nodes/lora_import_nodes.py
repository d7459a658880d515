"""Import node: a LoRA from models/loras as a new gated concept of the bank (thin adapter over
r2moe_core.moe.lora_import: reading the file and encoding the prompts is all it does)."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

import comfy.utils
import folder_paths
import torch
from comfy_api.latest import io, ui

from ..r2moe_core.bank.expert_bank import ConceptIdentity, check_trigger_token
from ..r2moe_core.errors import InvalidInputError
from ..r2moe_core.log import LOGGER
from ..r2moe_core.moe.lora_import import import_lora, read_lora
from ..r2moe_core.moe.routing_update import plain_prompts
from .host.clip_tokens import clip_with_concepts, prompt_gate_inputs
from .host.model_folders import LORA_FOLDER, lora_path
from .host.model_inspection import check_clip_serves
from .host.training_host import class_word_embedding
from .types import BANK_TIP, Bank, schema_extras

if TYPE_CHECKING:  # ComfyUI's own classes, for the annotations only
    from comfy.sd import CLIP

CATEGORY = "R2MoE"
OFFSET_SCALE = 1.0


def import_token_embedding(
    clip: CLIP, class_word: str, token: str, encoders: tuple[tuple[str, int], ...]
) -> torch.Tensor:
    """The trigger token's vector: the class word's embedding plus a fixed offset drawn from the token's name.

    An imported LoRA brings no token, and nothing trains one. The class word alone would make the trigger prompt
    differ from the plain prompt only by a repeated word, too faint for the gate to key on; the offset (as long as
    the class word's vector, orthogonal to it) makes the trigger a distinct word, as the rare trigger words LoRA
    trainers use are."""
    base = class_word_embedding(clip, class_word, encoders)
    seed = int.from_bytes(hashlib.sha256(token.encode()).digest()[:8], "little")
    offset = torch.randn(base.shape, generator=torch.Generator().manual_seed(seed))
    offset -= (offset * base).sum() / base.square().sum().clamp_min(1e-12) * base
    return base + OFFSET_SCALE * offset * (base.norm() / offset.norm().clamp_min(1e-12))


def import_prompts(text: str, token: str, class_word: str) -> list[str]:
    """The user's example prompts, one per line (each must contain the trigger), or four plain ones."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        subject = f"{token} {class_word}".strip()
        return [f"a photo of {subject}", subject, f"a picture of {subject} in a room", f"{subject} outdoors"]
    missing = [line for line in lines if token not in line.split()]
    if missing:
        raise InvalidInputError(
            f"Every example prompt must contain the trigger token {token} as a word; this one does not: "
            f"'{missing[0][:200]}'."
        )
    return lines


class R2MoEImportLoRA(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="R2MoEImportLoRA",
            **schema_extras(["lora to concept", "add lora to bank"]),
            display_name="R2MoE Import LoRA",
            category=CATEGORY,
            description=(
                "A LoRA you already have (models/loras) becomes a new concept of the bank, called by a trigger token "
                "you choose. Its text cross-attention K/V updates become the concept's expert (other layers are "
                "listed in the report and left out); only the gate is fitted, from the example prompts, so those "
                "prompts use the LoRA and every old concept and plain prompt keeps its routing."
            ),
            inputs=[
                io.Clip.Input("clip", tooltip="The checkpoint's CLIP (the bank's model), to read the example prompts."),
                Bank.Input("bank", tooltip=BANK_TIP),
                io.Combo.Input("lora_name", options=folder_paths.get_filename_list(LORA_FOLDER),
                               tooltip="A LoRA for this checkpoint's model family (SD1.x), from models/loras."),
                io.String.Input("concept_name", default="", tooltip="A name for the concept, e.g. 'watercolor'."),
                io.String.Input("trigger_token", default="", tooltip="One word that calls it in prompts, e.g. <wc1>."),
                io.String.Input("class_word", default="",
                                tooltip="What it is ('painting', 'dog'): the token starts as this word's embedding."),
                io.String.Input(
                    "example_prompts", default="", multiline=True,
                    tooltip="A few prompts with the trigger token, one per line, like the ones you will write. "
                    "Blank: 'a photo of <token> <class word>' and three like it.",
                ),
                io.Float.Input("strength", default=1.0, min=-4.0, max=4.0, step=0.05,
                               tooltip="The LoRA's strength, as in LoraLoader (it is stored in the expert)."),
                io.Float.Input("prune_threshold", default=0.4, min=0.0, max=1.0, step=0.05,
                               tooltip="Layer-wise pruning as for a trained concept: the expert is dropped where its "
                               "share of the output on the example prompts is below this."),
            ],
            outputs=[
                Bank.Output(display_name="bank", tooltip="The bank with the imported concept (save it to keep it)."),
                io.String.Output(display_name="report", tooltip="What was taken from the file, what was left out."),
            ],
        )

    @classmethod
    def validate_inputs(cls, concept_name: str | None = None, trigger_token: str | None = None,
                        lora_name: str | None = None, **_: Any) -> bool | str:
        try:
            if concept_name is not None and not concept_name.strip():
                raise InvalidInputError("A concept needs a non-empty name.")
            if trigger_token is not None:
                check_trigger_token(trigger_token.strip())
            if lora_name is not None:
                lora_path(lora_name)
        except InvalidInputError as err:
            return str(err)
        return True

    @classmethod
    def execute(cls, clip, bank, lora_name, concept_name, trigger_token, class_word="", example_prompts="",
                strength=1.0, prune_threshold=0.4) -> io.NodeOutput:
        name, token, word = concept_name.strip(), trigger_token.strip(), class_word.strip()
        bank.check_new_concept(name, token)
        check_clip_serves(bank, clip, new_concept=True)
        prompts = import_prompts(example_prompts or "", token, word)
        imported = read_lora(comfy.utils.load_torch_file(lora_path(lora_name), safe_load=True), bank, strength)
        embedding = import_token_embedding(clip, word, token, bank.token_encoders)
        reader = clip_with_concepts(clip, bank, {token: embedding})
        examples = prompt_gate_inputs(reader, prompts)
        protected = prompt_gate_inputs(reader, plain_prompts([word, *(c.class_word for c in bank.concepts)], prompts,
                                                             token))
        grown, report = import_lora(bank, imported, ConceptIdentity(name, token, word), embedding, examples, protected,
                                    prune_threshold)
        summary = f"{lora_name}: " + report.summary()
        LOGGER.info("R2MoE: %s", summary.replace("\n", ";"))
        return io.NodeOutput(grown, summary, ui=ui.PreviewText(summary))


IMPORT_NODES: list[type[io.ComfyNode]] = [R2MoEImportLoRA]
