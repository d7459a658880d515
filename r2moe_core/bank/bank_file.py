"""The bank file: one .safetensors with JSON metadata, no pickle, validated on load."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from ..errors import BankFormatError, BankMismatchError, InvalidInputError
from ..version import __version__
from .atomic_write import atomic_write_bytes
from .attention_targets import LayerSpec
from .config import BankConfig
from .expert_bank import FORMAT_VERSION, Concept, ExpertBank, ProjectionExperts
from .experts import LoraExpert
from .fingerprint import ModelFingerprint
from .model_family import family_name_for

DEFAULT_KEEP_VERSIONS = 3  # previous versions of a bank kept beside it on every save
FORMAT_NAME = "r2moe.expert-bank"


def _proj_prefix(index: int, proj: str) -> str:
    return f"proj.{index}.{proj.removeprefix('to_')}"


def bank_to_tensors(bank: ExpertBank) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Flatten a bank into named tensors and string metadata (the safetensors model)."""
    bank.validate()
    tensors: dict[str, torch.Tensor] = {
        "fingerprint.rms": bank.fingerprint.rms,
        "fingerprint.samples": bank.fingerprint.samples,
    }
    for index, layer in enumerate(bank.layers):
        for proj in ("to_k", "to_v"):
            entry = bank.projections[f"{layer.name}.{proj}"]
            prefix = _proj_prefix(index, proj)
            for expert_id, expert in entry.experts.items():
                tensors[f"{prefix}.expert.{expert_id}.down"] = expert.down
                tensors[f"{prefix}.expert.{expert_id}.up"] = expert.up
                tensors[f"{prefix}.expert.{expert_id}.gate"] = expert.gate
    for concept in bank.concepts:
        tensors[f"concept.{concept.task}.embedding"] = concept.embedding
        tensors[f"concept.{concept.task}.gate_input"] = concept.gate_input
        if concept.thumbnail is not None:
            tensors[f"concept.{concept.task}.thumbnail"] = concept.thumbnail
    header = {
        "format": FORMAT_NAME,
        # v2 only adds thumbnails: a bank without them stays readable by packs that read v1
        "format_version": FORMAT_VERSION if any(c.thumbnail is not None for c in bank.concepts) else 1,
        "written_by": f"r2moe {__version__}",
        "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "config": bank.config.to_dict(),
        "layers": [layer.to_dict() for layer in bank.layers],
        "num_tasks": bank.num_tasks,
        "token_dim": bank.token_dim,
        "family": bank.family,
        "token_encoders": [list(encoder) for encoder in bank.token_encoders],
        "fingerprint_digest": bank.fingerprint.digest,
        "concepts": [
            {"name": c.name, "token": c.token, "class_word": c.class_word, "task": c.task, "kept": list(c.kept)}
            | ({"thumbnail": True} if c.thumbnail is not None else {})
            for c in bank.concepts
        ],
    }
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    return tensors, {"format": FORMAT_NAME, "r2moe": json.dumps(header)}


def bank_to_bytes(bank: ExpertBank) -> bytes:
    tensors, metadata = bank_to_tensors(bank)
    return st_save(tensors, metadata=metadata)


def save_bank(bank: ExpertBank, path: str | Path, keep_versions: int = DEFAULT_KEEP_VERSIONS) -> Path:
    """Atomically write the bank; the previous files are kept as `<path>.bak`, `.bak2`, ... (`keep_versions`)."""
    path = Path(path)
    if path.suffix != ".safetensors":
        path = path.with_name(path.name + ".safetensors")
    atomic_write_bytes(path, bank_to_bytes(bank), keep_versions=keep_versions)
    return path


def _read_header(data: bytes, source: str) -> dict[str, Any]:
    if len(data) < 8:
        raise BankFormatError(f"{source} is empty or truncated; restore it from its .bak copy or re-save the bank.")
    header_len = int.from_bytes(data[:8], "little")
    if header_len <= 0 or 8 + header_len > len(data):
        raise BankFormatError(f"{source} is not a safetensors file (or it is truncated).")
    try:
        header = json.loads(data[8 : 8 + header_len])
    except ValueError as exc:
        raise BankFormatError(f"{source} has a damaged safetensors header: {exc}") from exc
    metadata = header.get("__metadata__") or {}
    if metadata.get("format") != FORMAT_NAME or "r2moe" not in metadata:
        raise BankFormatError(
            f"{source} is a safetensors file but not an R2MoE expert bank (a LoRA or checkpoint?). "
            "Load LoRAs with LoraLoader; load banks made by R2MoENewBank/R2MoESaveBank here."
        )
    try:
        info = json.loads(metadata["r2moe"])
    except ValueError as exc:
        raise BankFormatError(f"{source}: bank metadata is not valid JSON: {exc}") from exc
    version = info.get("format_version")
    if not isinstance(version, int):
        raise BankFormatError(f"{source}: bank metadata has no format version.")
    if version > FORMAT_VERSION:
        raise BankFormatError(
            f"{source} uses bank format v{version}, written by {info.get('written_by', 'a newer pack')}; this "
            f"pack reads up to v{FORMAT_VERSION}. Update the R2MoE pack."
        )
    return info


def _take(tensors: dict[str, torch.Tensor], key: str, source: str) -> torch.Tensor:
    try:
        return tensors.pop(key)
    except KeyError:
        raise BankFormatError(f"{source} is missing tensor '{key}'; the file is incomplete or damaged.") from None


def bank_from_bytes(data: bytes, source: str = "bank") -> ExpertBank:
    """Parse and fully validate a bank; every inconsistency is reported by name."""
    info = _read_header(data, source)
    try:
        tensors = dict(st_load(data))
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise BankFormatError(f"{source} could not be read as safetensors: {exc}") from exc
    try:
        config = BankConfig.from_dict(info["config"])
        layers = [LayerSpec.from_dict(d) for d in info["layers"]]
        num_tasks = int(info["num_tasks"])
        token_dim = int(info.get("token_dim", 768))
        # banks written before families were stored are SD1.x banks (the only family the pack took then)
        family = info.get("family")
        if family is None:
            family = family_name_for(layers, token_dim)
        concept_rows = list(info["concepts"])
    except (KeyError, TypeError, ValueError) as exc:
        raise BankFormatError(f"{source}: bank metadata is incomplete ({exc!r}).") from exc
    fingerprint = ModelFingerprint(
        rms=_take(tensors, "fingerprint.rms", source), samples=_take(tensors, "fingerprint.samples", source)
    )
    projections = {}
    for index, layer in enumerate(layers):
        for proj in ("to_k", "to_v"):
            prefix = _proj_prefix(index, proj)
            experts = {}
            for key in [k for k in tensors if k.startswith(f"{prefix}.expert.") and k.endswith(".down")]:
                expert_id = int(key.split(".")[-2])
                parts = {p: _take(tensors, f"{prefix}.expert.{expert_id}.{p}", source) for p in ("down", "up", "gate")}
                try:
                    experts[expert_id] = LoraExpert(**parts)
                except InvalidInputError as exc:
                    raise BankFormatError(f"{source}: {prefix}.expert.{expert_id}: {exc}") from exc
            projections[f"{layer.name}.{proj}"] = ProjectionExperts(in_dim=layer.in_dim, experts=experts)
    concepts = []
    for row in concept_rows:
        task = int(row["task"])
        try:
            concepts.append(
                Concept(
                    name=str(row["name"]),
                    token=str(row["token"]),
                    class_word=str(row.get("class_word", "")),
                    task=task,
                    embedding=_take(tensors, f"concept.{task}.embedding", source),
                    gate_input=_take(tensors, f"concept.{task}.gate_input", source),
                    kept=tuple(row.get("kept", ())),
                    thumbnail=_take(tensors, f"concept.{task}.thumbnail", source) if row.get("thumbnail") else None,
                )
            )
        except InvalidInputError as exc:
            raise BankFormatError(f"{source}: concept record {row.get('name')!r}: {exc}") from exc
    if tensors:
        raise BankFormatError(f"{source} holds tensors the metadata does not explain: {sorted(tensors)[:5]}")
    bank = ExpertBank(
        config=config,
        layers=tuple(layers),
        fingerprint=fingerprint,
        projections=projections,
        concepts=tuple(concepts),
        num_tasks=num_tasks,
        token_dim=token_dim,
        family=str(family),
    )
    try:
        bank.validate()
    except BankMismatchError as exc:
        raise BankFormatError(f"{source} is inconsistent: {exc}") from exc
    return bank


MAX_HEADER_BYTES = 64 << 20  # a bank's JSON header is kilobytes; anything near this is not a bank


def read_concept_list(path: str | Path) -> list[dict[str, Any]]:
    """Name, trigger token, class word and whether a thumbnail is stored, for every concept in a bank file, read
    from its header alone (no tensor is read), so a listing of many banks stays fast. A file that is not a bank
    raises BankFormatError."""
    path = Path(path)
    with path.open("rb") as handle:
        start = handle.read(8)
        size = int.from_bytes(start, "little") if len(start) == 8 else 0
        if not 0 < size <= MAX_HEADER_BYTES:
            raise BankFormatError(f"{path.name} is not a safetensors file (or it is truncated).")
        data = start + handle.read(size)
    info = _read_header(data, path.name)
    concepts = info.get("concepts")
    if not isinstance(concepts, list):
        raise BankFormatError(f"{path.name}: bank metadata has no concept list.")
    return [{"name": str(c.get("name", "")), "token": str(c.get("token", "")),
             "class_word": str(c.get("class_word", "")), "thumbnail": bool(c.get("thumbnail", False))}
            for c in concepts if isinstance(c, dict)]


def load_bank(path: str | Path) -> ExpertBank:
    path = Path(path)
    if not path.is_file():
        raise BankFormatError(f"Bank file not found: {path}. Put banks in ComfyUI/models/r2moe.")
    return bank_from_bytes(path.read_bytes(), source=str(path))
