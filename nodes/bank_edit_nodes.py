"""Bank editing nodes: remove a concept, rename a concept or change its trigger token. Thin adapters over
r2moe_core.moe.bank_edit; the bank that comes in is never modified (save the one that comes out)."""

from __future__ import annotations

from comfy_api.latest import io, ui

from ..r2moe_core.log import LOGGER
from ..r2moe_core.moe.bank_edit import removal_summary, remove_concept, rename_concept
from .types import BANK_TIP, Bank

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


BANK_EDIT_NODES: list[type[io.ComfyNode]] = [R2MoERemoveConcept, R2MoERenameConcept]
