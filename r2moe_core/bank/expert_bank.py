"""The expert bank: everything R2MoE keeps between tasks, as plain dataclasses of tensors.

A bank is treated as immutable: every change returns a new bank that shares the untouched tensors, because
ComfyUI caches node outputs and a node must never alter the bank another node received.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

import torch

from ..errors import BankMismatchError, InvalidInputError
from .attention_targets import PROJECTIONS, LayerSpec
from .config import BankConfig
from .experts import AUX_EXPERT, LoraExpert
from .fingerprint import ModelFingerprint
from .model_family import family_name_for, family_named, family_of_layers

FORMAT_VERSION = 2  # 2: concept thumbnails (banks without them are still written as 1)
_TOKEN = re.compile(r"^\S+$")


def check_trigger_token(token: str) -> None:
    """A trigger token is one word, and not the host's own `embedding:` syntax."""
    if not _TOKEN.match(token) or "embedding:" in token:
        raise InvalidInputError(f"Trigger token '{token}' must be one word without spaces (for example <dog1>).")


@dataclass(frozen=True)
class ConceptIdentity:
    """Who a new concept is before it has weights: its name in the bank, its trigger token and its class word."""

    name: str
    token: str
    class_word: str


THUMBNAIL_MIN, THUMBNAIL_MAX = 8, 128  # pixels per side of a concept's stored picture


def check_thumbnail(image: torch.Tensor, name: str) -> None:
    """A concept's thumbnail must be a small RGB picture: uint8 [h, w, 3], each side 8 to 128 pixels."""
    if not isinstance(image, torch.Tensor) or image.dtype != torch.uint8 or image.ndim != 3 or image.shape[-1] != 3:
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise InvalidInputError(f"Concept '{name}': the thumbnail must be uint8 [height, width, 3], got {shape}.")
    if not all(THUMBNAIL_MIN <= side <= THUMBNAIL_MAX for side in image.shape[:2]):
        raise InvalidInputError(f"Concept '{name}': thumbnail sides must be {THUMBNAIL_MIN}-{THUMBNAIL_MAX} px, got "
                                f"{tuple(image.shape[:2])}.")


def thumbnail_of(image: torch.Tensor) -> torch.Tensor:
    """An IMAGE ([h, w, 3] or [1, h, w, 3], floats in [0, 1]) as a thumbnail: longest side at most 128 px, uint8."""
    picture = image.detach().float().cpu().reshape(-1, *image.shape[-3:])[0].clamp(0, 1)
    height, width = picture.shape[:2]
    scale = min(1.0, THUMBNAIL_MAX / max(height, width))
    size = (max(THUMBNAIL_MIN, round(height * scale)), max(THUMBNAIL_MIN, round(width * scale)))
    if size != (height, width):
        picture = torch.nn.functional.interpolate(picture.permute(2, 0, 1)[None], size=size, mode="area"
                                                  if scale < 1 else "bilinear")[0].permute(1, 2, 0)
    return (picture * 255).round().to(torch.uint8).contiguous()


@dataclass(frozen=True)
class Concept:
    """A learned concept: how users call it and what R2MoE keeps to serve it."""

    name: str
    token: str
    class_word: str
    task: int
    embedding: torch.Tensor  # [n_vectors, token_dim]: the learned input embedding of the trigger token
    gate_input: torch.Tensor  # [context_dim]: mean text embedding of its prompt, for routing distillation
    kept: tuple[str, ...] = ()  # projections where its expert survived pruning
    thumbnail: torch.Tensor | None = None  # [h, w, 3] uint8, sides THUMBNAIL_MIN..THUMBNAIL_MAX: how it looks

    def __post_init__(self) -> None:
        if not self.name.strip():
            raise InvalidInputError("A concept needs a non-empty name.")
        if self.thumbnail is not None:
            check_thumbnail(self.thumbnail, self.name)
        check_trigger_token(self.token)
        if self.task < 1:
            raise InvalidInputError(f"Concept task index must be >= 1 (0 is the auxiliary expert), got {self.task}.")
        if self.embedding.ndim != 2 or self.gate_input.ndim != 1:
            raise InvalidInputError(
                f"Concept '{self.name}': embedding must be [n, dim] and gate input [dim], got "
                f"{tuple(self.embedding.shape)} and {tuple(self.gate_input.shape)}."
            )


@dataclass(frozen=True)
class ProjectionExperts:
    """One adapted projection (K or V of one layer) and its alive trained experts, keyed by expert id.

    Expert id t is the expert of task t; id 0 is the auxiliary expert, whose delta and gate column are zero by
    construction (it is never trained), so it stores nothing. A pruned expert stores nothing either: its gate
    column is only ever read while it is alive, so it goes with it.
    """

    in_dim: int
    experts: Mapping[int, LoraExpert] = field(default_factory=dict)

    def router(self, num_experts: int) -> torch.Tensor:
        """The summed router [in_dim, num_experts]: gate columns of alive experts, zeros elsewhere."""
        router = torch.zeros(self.in_dim, num_experts)
        for expert_id, expert in self.experts.items():
            router[:, expert_id] = expert.gate.float()
        return router

    def alive_mask(self, num_experts: int) -> torch.Tensor:
        mask = torch.zeros(num_experts, dtype=torch.bool)
        mask[AUX_EXPERT] = True
        for expert_id in self.experts:
            mask[expert_id] = True
        return mask


@dataclass(frozen=True)
class ExpertBank:
    """Every concept learned on one base model: per K/V projection its experts and gate columns, the concepts'
    records (token, class word, gate input), and the settings and fingerprint it was made with. Immutable: each
    edit returns a new bank, so a graph's earlier outputs never change under it."""

    config: BankConfig
    layers: tuple[LayerSpec, ...]
    fingerprint: ModelFingerprint
    projections: Mapping[str, ProjectionExperts]
    concepts: tuple[Concept, ...] = ()
    num_tasks: int = 0
    token_dim: int = 768
    family: str = ""  # "sd1", "sd2", "sdxl" (see model_family); "" for a model of no known family

    @classmethod
    def empty(
        cls, config: BankConfig, layers: list[LayerSpec], fingerprint: ModelFingerprint, token_dim: int | None = None
    ) -> ExpertBank:
        """A bank fitted to a model, holding only the (zero) auxiliary expert in every projection; its family and
        token width follow from the layers' text-context width (`token_dim` sets the width for other models)."""
        if not layers:
            raise InvalidInputError(
                "The model has no cross-attention layers to adapt; R2MoE needs an SD1.x, SD 2.x or SDXL UNet."
            )
        projections = {
            f"{layer.name}.{proj}": ProjectionExperts(in_dim=layer.in_dim) for layer in layers for proj in PROJECTIONS
        }
        if token_dim is None:
            family = family_of_layers(layers)
            token_dim = family.token_dim if family is not None else 768
        family_name = family_name_for(layers, token_dim)
        bank = cls(config, tuple(layers), fingerprint, projections, (), 0, token_dim, family_name)
        bank.validate()
        return bank

    # ---- queries -------------------------------------------------------------------------------------------
    @property
    def token_encoders(self) -> tuple[tuple[str, int], ...]:
        """(embedding key, width) of each text encoder a trigger token feeds, in the order its vector stores them;
        one unnamed encoder for a model of no known family."""
        family = family_named(self.family)
        return family.encoders if family is not None else (("", self.token_dim),)

    @property
    def num_experts(self) -> int:
        """Router width: the auxiliary expert plus one id per task ever learned."""
        return self.num_tasks + 1

    def projection_names(self) -> list[str]:
        return [f"{layer.name}.{proj}" for layer in self.layers for proj in PROJECTIONS]

    def layer(self, name: str) -> LayerSpec:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(name)

    def concept_by_name(self, name: str) -> Concept | None:
        return next((c for c in self.concepts if c.name == name), None)

    def concept_by_token(self, token: str) -> Concept | None:
        return next((c for c in self.concepts if c.token == token), None)

    def expert_count(self) -> int:
        return sum(len(p.experts) for p in self.projections.values())

    def expert_bytes(self) -> int:
        return sum(e.nbytes for p in self.projections.values() for e in p.experts.values())

    def expert_params(self) -> int:
        return sum(e.down.numel() + e.up.numel() for p in self.projections.values() for e in p.experts.values())

    # ---- changes (each returns a new bank) -------------------------------------------------------------------
    def check_new_concept(self, name: str, token: str, replace_existing: bool = False) -> None:
        """Raise if a concept with this name and trigger token cannot join the bank; cheap, so callers run it
        before training, and `with_concept` runs it again."""
        if not name.strip():
            raise InvalidInputError("A concept needs a non-empty name.")
        check_trigger_token(token)
        existing = self.concept_by_name(name)
        if existing is not None and not replace_existing:
            raise InvalidInputError(
                f"The bank already has a concept named '{name}' (task {existing.task}). Choose another name, or "
                "enable replace_existing to learn it again."
            )
        clash = next((c for c in self.concepts if c.token == token and c.name != name), None)
        if clash is not None:
            raise InvalidInputError(
                f"Trigger token '{token}' is already used by concept '{clash.name}'. Pick a new token."
            )

    def with_concept(
        self, concept: Concept, projections: Mapping[str, ProjectionExperts], replace_existing: bool = False
    ) -> ExpertBank:
        """Add a concept learned as task `num_tasks + 1`, with every projection as training left it.

        `projections` holds, for every adapted projection, the old experts (their gate columns may have been
        updated by this task's router increment) plus the new expert where it was kept. With `replace_existing`,
        a concept of the same name is dropped first, experts included.
        """
        self.check_new_concept(concept.name, concept.token, replace_existing)
        existing = self.concept_by_name(concept.name)
        others = tuple(c for c in self.concepts if c.name != concept.name)
        task = self.num_tasks + 1
        if concept.task != task:
            raise InvalidInputError(f"The next task index is {task}, the concept says {concept.task}.")
        if set(projections) != set(self.projections):
            raise InvalidInputError("Training must return every adapted projection of the bank, and only those.")
        updated = {}
        for name, proj in projections.items():
            before = set(self.projections[name].experts) - ({existing.task} if existing else set())
            after = set(proj.experts)
            if not before <= after or not after <= before | {task}:
                raise InvalidInputError(f"{name}: training may only add expert {task}, got experts {sorted(after)}.")
            experts = dict(proj.experts)
            if existing is not None:
                experts.pop(existing.task, None)
            updated[name] = ProjectionExperts(in_dim=proj.in_dim, experts=experts)
        kept = tuple(n for n in self.projection_names() if task in updated[n].experts)
        bank = replace(self, projections=updated, concepts=(*others, replace(concept, kept=kept)), num_tasks=task)
        bank.validate()
        return bank

    def with_thumbnail(self, name: str, thumbnail: torch.Tensor | None) -> ExpertBank:
        """The bank with concept `name`'s picture set (None: removed)."""
        if self.concept_by_name(name) is None:
            raise InvalidInputError(f"No concept named '{name}' in this bank.")
        concepts = tuple(replace(c, thumbnail=thumbnail) if c.name == name else c for c in self.concepts)
        return replace(self, concepts=concepts)

    def concept_bytes(self, concept: Concept) -> int:
        """What a concept adds to the file: its experts, token vectors, gate input and thumbnail."""
        experts = sum(p.experts[concept.task].nbytes for p in self.projections.values()
                      if concept.task in p.experts)
        extra = 0 if concept.thumbnail is None else concept.thumbnail.numel()
        return experts + concept.embedding.nbytes + concept.gate_input.nbytes + extra

    def without_concept(self, name: str) -> ExpertBank:
        """Forget a concept: its record and its experts everywhere (its task index is not reused)."""
        concept = self.concept_by_name(name)
        if concept is None:
            raise InvalidInputError(f"No concept named '{name}' in this bank.")
        bank = self.without_experts(concept.task, self.projection_names())
        return replace(bank, concepts=tuple(c for c in bank.concepts if c.name != name))

    def without_experts(self, task: int, projection_names: list[str]) -> ExpertBank:
        """Remove the expert of `task` from the given projections (layer-wise pruning)."""
        projections = dict(self.projections)
        for name in projection_names:
            proj = projections[name]
            if task in proj.experts:
                projections[name] = replace(proj, experts={i: e for i, e in proj.experts.items() if i != task})
        concepts = tuple(
            replace(c, kept=tuple(n for n in c.kept if n not in set(projection_names))) if c.task == task else c
            for c in self.concepts
        )
        return replace(self, projections=projections, concepts=concepts)

    # ---- consistency -----------------------------------------------------------------------------------------
    def validate(self) -> None:
        """Raise with a precise message if any part of the bank contradicts another."""
        family = family_named(self.family)
        if self.family and family is None:
            raise BankMismatchError(f"Unknown model family '{self.family}'; update the R2MoE pack.")
        if family is not None and (family_of_layers(self.layers) != family or family.token_dim != self.token_dim):
            raise BankMismatchError(
                f"The bank says {family.label} but its layers or {self.token_dim}-wide tokens are not {family.label}'s."
            )
        expected = set(self.projection_names())
        if set(self.projections) != expected:
            missing, extra = expected - set(self.projections), set(self.projections) - expected
            raise BankMismatchError(f"Bank projections inconsistent: missing {sorted(missing)}, extra {sorted(extra)}")
        if self.fingerprint.rms.shape[0] != len(expected):
            raise BankMismatchError(
                f"Fingerprint covers {self.fingerprint.rms.shape[0]} projections, the bank adapts {len(expected)}."
            )
        rank = self.config.rank
        for layer in self.layers:
            for proj_name in PROJECTIONS:
                name = f"{layer.name}.{proj_name}"
                proj = self.projections[name]
                if proj.in_dim != layer.in_dim:
                    raise BankMismatchError(f"{name}: width {proj.in_dim} != layer input {layer.in_dim}.")
                for expert_id, expert in proj.experts.items():
                    if not 1 <= expert_id <= self.num_tasks:
                        raise BankMismatchError(f"{name}: expert id {expert_id} outside 1..{self.num_tasks}.")
                    want_down, want_up = (layer.in_dim, rank), (rank, layer.out_dim)
                    if tuple(expert.down.shape) != want_down or tuple(expert.up.shape) != want_up:  # gate: own check
                        raise BankMismatchError(
                            f"{name}: expert {expert_id} has down {tuple(expert.down.shape)} and up "
                            f"{tuple(expert.up.shape)}, expected {want_down} and {want_up}."
                        )
        names, tokens, tasks = set(), set(), set()
        for concept in self.concepts:
            if concept.name in names or concept.token in tokens or concept.task in tasks:
                raise BankMismatchError(
                    f"Concept '{concept.name}' repeats a name, trigger token or task index of another concept."
                )
            names.add(concept.name)
            tokens.add(concept.token)
            tasks.add(concept.task)
            if concept.task > self.num_tasks:
                raise BankMismatchError(f"Concept '{concept.name}' has task {concept.task} > {self.num_tasks}.")
            if concept.embedding.shape[1] != self.token_dim:
                raise BankMismatchError(
                    f"Concept '{concept.name}' embedding width {concept.embedding.shape[1]} != {self.token_dim}."
                )
            context_dims = {layer.in_dim for layer in self.layers}
            if concept.gate_input.shape[0] not in context_dims:
                raise BankMismatchError(f"Concept '{concept.name}' gate input width does not match the context.")
