"""Bank editing nodes: remove a concept, rename a concept or change its trigger token, merge two banks. Thin
adapters over r2moe_core.moe.bank_edit and bank_merge; the banks that come in are never modified (save the one
that comes out)."""

from __future__ import annotations

from typing import Any

from comfy_api.latest import io, ui

from ..r2moe_core.log import LOGGER
from ..r2moe_core.moe.bank_edit import removal_summary, remove_concept, rename_concept
from ..r2moe_core.moe.bank_merge import CLASH_MODES, check_mergeable, merge_banks
from ..r2moe_core.moe.routing_update import plain_prompts
from .host.clip_tokens import prompt_gate_inputs
from .host.model_inspection import check_clip_serves
from .types import BANK_TIP, Bank, schema_extras

CATEGORY = "R2MoE"


class R2MoERemoveConcept(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="R2MoERemoveConcept",
            display_name="R2MoE Remove Concept",
            category=CATEGORY,
            description=(
                "A bank without one concept: its expert in every layer, its gate columns, trigger token and stored "
                "prompt. The report says which other concepts routed to it (their mixtures move) and which are "
                "unchanged bit for bit. Save the result to keep it; the saved file's previous version is kept."
            ),
            inputs=[
                Bank.Input("bank", tooltip=BANK_TIP),
                io.String.Input("concept_name", default="", tooltip="The concept to remove (its name, not its token)."),
            ],
            outputs=[
                Bank.Output(display_name="bank", tooltip="The bank without the concept."),
                io.String.Output(display_name="report", tooltip="Whose mixtures changed, and by how much."),
            ],
        )

    @classmethod
    def execute(cls, bank, concept_name) -> io.NodeOutput:
        name = concept_name.strip()
        after, changes = remove_concept(bank, name)
        report = removal_summary(name, changes)
        LOGGER.info("R2MoE: %s", report.replace("\n", ";"))
        return io.NodeOutput(after, report, ui=ui.PreviewText(report))


class R2MoERenameConcept(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="R2MoERenameConcept",
            display_name="R2MoE Rename Concept",
            category=CATEGORY,
            description=(
                "Give a concept a new name and/or a new trigger token (blank keeps the old one), with the same "
                "checks as training: one word, not used by another concept. Experts and routing are untouched."
            ),
            inputs=[
                Bank.Input("bank", tooltip=BANK_TIP),
                io.String.Input("concept_name", default="", tooltip="The concept's current name."),
                io.String.Input("new_name", default="", tooltip="Its new name (blank: keep)."),
                io.String.Input("new_token", default="", tooltip="Its new trigger token, e.g. <rex1> (blank: keep)."),
            ],
            outputs=[Bank.Output(display_name="bank", tooltip="The bank with the concept renamed.")],
        )

    @classmethod
    def execute(cls, bank, concept_name, new_name="", new_token="") -> io.NodeOutput:
        renamed = rename_concept(bank, concept_name.strip(), new_name, new_token)
        concept = next(c for c in renamed.concepts if c.task == bank.concept_by_name(concept_name.strip()).task)
        text = f"'{concept_name.strip()}' is now '{concept.name}', written {concept.token}"
        return io.NodeOutput(renamed, ui=ui.PreviewText(text))


class R2MoEMergeBanks(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="R2MoEMergeBanks",
            **schema_extras(["combine banks", "join banks"]),
            display_name="R2MoE Merge Banks",
            category=CATEGORY,
            description=(
                "One bank with the concepts of two banks made for the same checkpoint (a friend's bank, or two "
                "copies trained apart). Experts and tokens carry over unchanged; the gate is refitted so every "
                "concept routes at its own prompt as in its own bank (mixture change reported, typically < 1e-5) "
                "and the other bank's experts stay out of it. Concepts found in both banks are kept once."
            ),
            inputs=[
                Bank.Input("bank_a", tooltip="The bank to add to; its settings and task numbers are kept."),
                Bank.Input("bank_b", tooltip="The bank whose concepts join bank A."),
                io.Combo.Input(
                    "on_clash", options=list(CLASH_MODES), default=CLASH_MODES[0],
                    tooltip="When a concept of bank B has the name or trigger token of a different concept of A: "
                    "refuse, or rename the incoming one ('dog 2', <dog1_2>; the report says what to write).",
                ),
                io.Clip.Input(
                    "clip", optional=True,
                    tooltip="The checkpoint's CLIP: with it, plain prompts ('photo of a dog', the empty prompt) "
                    "keep their routing in both banks too. Without it only the concepts' own prompts are held.",
                ),
            ],
            outputs=[
                Bank.Output(display_name="bank", tooltip="The merged bank (save it to keep it)."),
                io.String.Output(display_name="report", tooltip="What came from where, renames, mixture change."),
            ],
        )

    @classmethod
    def validate_inputs(cls, on_clash: str = CLASH_MODES[0], **_: Any) -> bool | str:
        if on_clash not in CLASH_MODES:
            return f"on_clash must be one of {', '.join(CLASH_MODES)}, got {str(on_clash)[:100]!r}."
        return True

    @classmethod
    def execute(cls, bank_a, bank_b, on_clash=CLASH_MODES[0], clip=None) -> io.NodeOutput:
        check_mergeable(bank_a, bank_b)  # before any text encoding
        protected = None
        if clip is not None:
            check_clip_serves(bank_a, clip)
            words = sorted({c.class_word for c in (*bank_a.concepts, *bank_b.concepts)})
            protected = prompt_gate_inputs(clip, plain_prompts(words))
        merged, report = merge_banks(bank_a, bank_b, on_clash, protected)
        text = report.summary()
        if clip is None:
            text += "\n  no CLIP connected: plain prompts were not held (connect one to keep their routing too)"
        LOGGER.info("R2MoE: %s", text.replace("\n", ";"))
        return io.NodeOutput(merged, text, ui=ui.PreviewText(text))


BANK_EDIT_NODES: list[type[io.ComfyNode]] = [R2MoERemoveConcept, R2MoERenameConcept, R2MoEMergeBanks]
