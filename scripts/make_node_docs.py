"""Write web/docs/<NodeId>.md for every node: the frontend's node help (what it does, inputs, outputs, a typical
graph). Inputs and outputs come from the node schemas, so the help says what the node really takes; the typical
graphs are written here. Run after changing a node: `.venv/bin/python scripts/make_node_docs.py`."""

from __future__ import annotations

import logging
import sys
import tempfile
from pathlib import Path

from comfy_inprocess import REPO, boot

TYPICAL = {
    "R2MoENewBank": "Load Checkpoint (MODEL) → **R2MoE New Bank** → R2MoE Train Concept → R2MoE Save Bank",
    "R2MoELoadBank": "**R2MoE Load Bank** → R2MoE Apply Bank (with the checkpoint's MODEL and CLIP) → CLIP Text "
    "Encode → KSampler",
    "R2MoESaveBank": "R2MoE Train Concept → **R2MoE Save Bank** (the file appears in R2MoE Load Bank's list)",
    "R2MoERemoveConcept": "R2MoE Load Bank → **R2MoE Remove Concept** → R2MoE Save Bank (same name: the old file is "
    "kept as a version)",
    "R2MoERenameConcept": "R2MoE Load Bank → **R2MoE Rename Concept** → R2MoE Save Bank",
    "R2MoEMergeBanks": "R2MoE Load Bank (A) + R2MoE Load Bank (B) + Load Checkpoint (CLIP) → **R2MoE Merge Banks** "
    "→ R2MoE Save Bank",
    "R2MoEExportConcept": "Load Checkpoint (CLIP) + R2MoE Load Bank → **R2MoE Export Concept**; then, anywhere: "
    "LoraLoader (the written file) → KSampler, prompt `a photo of embedding:dog1 dog`",
    "R2MoEImportLoRA": "Load Checkpoint (CLIP) + R2MoE Load Bank → **R2MoE Import LoRA** (a file from models/loras, "
    "trigger <wc1>) → R2MoE Save Bank; then R2MoE Apply Bank and `a <wc1> painting of a harbour`",
    "R2MoEBankHistory": "**R2MoE Bank History** (queue it to list the versions; paste a digest into restore and "
    "queue again to bring that version back) → R2MoE Apply Bank",
    "R2MoEApplyBank": "Load Checkpoint + R2MoE Load Bank → **R2MoE Apply Bank** → MODEL to KSampler, CLIP to CLIP "
    "Text Encode (`a photo of <dog1> dog on the beach`)",
    "R2MoEBankInfo": "R2MoE Load Bank → **R2MoE Bank Info** → Preview Image (expert_map)",
    "R2MoEPruneBank": "R2MoE Load Bank → **R2MoE Prune Bank** → R2MoE Save Bank",
    "R2MoEGateMap": "Load Checkpoint (CLIP) + R2MoE Load Bank → **R2MoE Gate Map** → Preview Image",
    "R2MoETrainConcept": "Load Checkpoint (MODEL, CLIP, VAE) + R2MoE New Bank or Load Bank → **R2MoE Train "
    "Concept** → R2MoE Save Bank; loss_curve → Preview Image",
    "R2MoELayoutPlanner": "R2MoE Load Bank → **R2MoE Layout Planner** → R2MoE Regional Apply → KSampler",
    "R2MoELayoutFromJSON": "**R2MoE Layout From JSON** (draw the boxes in its editor) → R2MoE Regional Apply or R2MoE "
    "Hierarchical Sampler",
    "R2MoELayoutPreview": "R2MoE Layout Planner → **R2MoE Layout Preview** → Preview Image",
    "R2MoESAMLoader": "**R2MoE SAM Loader** → R2MoE Hierarchical Sampler or R2MoE SAM Refine",
    "R2MoESAMRefine": "KSamplerAdvanced (first steps) → VAE Decode → **R2MoE SAM Refine** → R2MoE Regional Apply "
    "(mask) → KSamplerAdvanced (remaining steps)",
    "R2MoEHierarchicalSampler": "Load Checkpoint + R2MoE Load Bank + R2MoE Layout From JSON + R2MoE SAM Loader → "
    "**R2MoE Hierarchical Sampler** → VAE Decode → Save Image",
    "R2MoERegionalApply": "Load Checkpoint + R2MoE Load Bank + R2MoE Layout Planner → **R2MoE Regional Apply** → "
    "KSampler (its positive prompt is replaced by the layout)",
}


def _socket(item: object) -> str:
    return str(getattr(item, "io_type", "") or type(item).__name__)


def node_doc(schema: object) -> str:
    lines = [f"# {schema.display_name}", "", schema.description, "", "## Inputs", ""]
    lines += ["| input | type | what it is |", "|---|---|---|"]
    for item in schema.inputs:
        optional = " (optional)" if getattr(item, "optional", False) else ""
        lines.append(f"| `{item.id}`{optional} | {_socket(item)} | {item.tooltip} |")
    lines += ["", "## Outputs", "", "| output | type | what it is |", "|---|---|---|"]
    for item in schema.outputs:
        lines.append(f"| `{item.display_name or item.id}` | {_socket(item)} | {item.tooltip} |")
    lines += ["", "## Typical graph", "", TYPICAL[schema.node_id], ""]
    return "\n".join(lines)


def write_docs(out: Path) -> list[Path]:
    host = boot(Path(tempfile.mkdtemp(prefix="r2moe_docs_")))
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for cls in sys.modules[host.pack.__name__ + ".nodes"].ALL_NODES:
        schema = cls.define_schema()
        path = out / f"{schema.node_id}.md"
        path.write_text(node_doc(schema))
        written.append(path)
    return written


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("r2moe").info("wrote %d node help files", len(write_docs(REPO / "web" / "docs")))
