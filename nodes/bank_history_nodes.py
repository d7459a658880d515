"""Bank history node: the kept versions of a saved bank, with what each holds, and restoring one."""

from __future__ import annotations

import os
from pathlib import Path

from comfy_api.latest import io, ui

from ..r2moe_core.bank.atomic_write import kept_versions
from ..r2moe_core.bank.bank_file import DEFAULT_KEEP_VERSIONS, load_bank
from ..r2moe_core.bank.bank_history import bank_versions, restore_version
from ..r2moe_core.errors import InvalidInputError
from ..r2moe_core.log import LOGGER
from .host.model_folders import bank_files, bank_name_check, bank_path
from .types import Bank

CATEGORY = "R2MoE"


class R2MoEBankHistory(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="R2MoEBankHistory",
            display_name="R2MoE Bank History",
            category=CATEGORY,
            description=(
                "Every save keeps the previous files of a bank (<name>.safetensors.bak, .bak2, ...). Lists them "
                "with their concepts and digests; put a digest in restore to make that version current again "
                "(the file it replaces is kept as a version, so a restore can be undone the same way)."
            ),
            inputs=[
                io.Combo.Input("bank_name", options=bank_files(), tooltip="A bank file in models/r2moe."),
                io.String.Input("restore", default="", tooltip="Empty: only list. A digest from the list (at "
                                "least 6 characters): make that version the current file."),
                io.Int.Input("keep_versions", default=DEFAULT_KEEP_VERSIONS, min=1, max=100, optional=True,
                             tooltip="How many previous versions a restore keeps (as R2MoE Save Bank does)."),
            ],
            outputs=[
                Bank.Output(display_name="bank", tooltip="The current bank (after a restore, the restored one)."),
                io.String.Output(display_name="history", tooltip="The versions, newest first."),
            ],
            is_output_node=True,
        )

    @classmethod
    def fingerprint_inputs(cls, bank_name: str, restore: str = "", keep_versions: int = 3) -> str:
        """Run again whenever any version on disk changed (a save elsewhere, a restore)."""
        try:
            path = bank_path(bank_name)
        except InvalidInputError:
            return bank_name
        files = [path, *(p for _, p in kept_versions(Path(path)))]
        stats = [f"{f}:{os.stat(f).st_mtime_ns}:{os.stat(f).st_size}" for f in files if os.path.exists(f)]
        return "|".join([bank_name, restore, str(keep_versions), *stats])

    @classmethod
    def validate_inputs(cls, bank_name: str) -> bool | str:
        return bank_name_check(bank_name)

    @classmethod
    def execute(cls, bank_name, restore="", keep_versions=DEFAULT_KEEP_VERSIONS) -> io.NodeOutput:
        path = bank_path(bank_name)
        header = ""
        if restore.strip():
            restored = restore_version(path, restore, keep_versions)
            header = f"{bank_name}: version {restored.digest} is current.\n"
            LOGGER.info("R2MoE: %s now holds version %s", path, restored.digest)
        lines = [v.line() for v in bank_versions(path)]
        report = header + f"{bank_name}: {len(lines) - 1} kept version(s), newest first\n" + "\n".join(lines)
        return io.NodeOutput(load_bank(path), report, ui=ui.PreviewText(report))


BANK_HISTORY_NODES: list[type[io.ComfyNode]] = [R2MoEBankHistory]
