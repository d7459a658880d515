"""Merging two banks made for the same base model: every concept of both, each routed as in its own bank.

The experts and tokens carry over unchanged (bank B's tasks are renumbered after bank A's). What needs work is
the gate: a concept of A was never kept away from B's experts, so the plain union would blend B's experts into
A's prompts. Each projection's gate columns are corrected by the least-norm change that makes, on every stored
concept prompt (and on any protected plain prompt the caller encodes),

- the scores of the concept's own bank's experts exactly what that bank gave, and
- the scores of the other bank's experts `-FOREIGN_SCORE`, so their share of the mixture is at most
  e^-FOREIGN_SCORE of the auxiliary expert's (which scores 0).

A concept found in both banks (same name, token, embedding, prompt and experts: banks that share an ancestor) is
kept once, with A's task index; its expert's gate column is fitted to both banks' routing of their own prompts.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from ..bank.expert_bank import Concept, ExpertBank, ProjectionExperts
from ..bank.experts import LoraExpert
from ..bank.fingerprint import fingerprint_differences
from ..errors import BankMismatchError, InvalidInputError
from .bank_edit import concept_mixtures

FOREIGN_SCORE = 16.0  # the other bank's experts score -16 on a concept's prompt: share <= e^-16 (1e-7)
MAX_SCORE_ERROR = 1e-3  # a fitted score further than this from its target means two prompts cannot be told apart
CLASH_MODES = ("refuse", "rename incoming")


@dataclass(frozen=True)
class MergeReport:
    """What the merge did, for the node's report."""

    from_a: tuple[str, ...]
    from_b: tuple[str, ...]  # the incoming concepts, by their names in the merged bank
    shared: tuple[str, ...]  # found in both banks, kept once
    renamed: tuple[tuple[str, str, str, str], ...]  # (old name, new name, old token, new token)
    max_mixture_change: float  # largest change of any coefficient of any concept at its own prompt
    notes: tuple[str, ...] = ()

    def summary(self) -> str:
        lines = [
            f"merged: {len(self.from_a)} concept(s) from bank A, {len(self.from_b)} from bank B"
            + (f", {len(self.shared)} found in both and kept once ({', '.join(self.shared)})" if self.shared else "")
        ]
        for old, new, old_token, new_token in self.renamed:
            lines.append(f"  incoming '{old}' ({old_token}) renamed '{new}' ({new_token}): write {new_token}")
        lines.append(f"  largest mixture change of any concept at its own prompt: {self.max_mixture_change:.2e}")
        lines.extend(f"  {note}" for note in self.notes)
        return "\n".join(lines)


def _same_concept(a_bank: ExpertBank, a: Concept, b_bank: ExpertBank, b: Concept) -> bool:
    """The same learned concept in two banks: identical record and identical experts in every projection."""
    if (a.name, a.token, a.class_word, a.kept) != (b.name, b.token, b.class_word, b.kept):
        return False
    if not (torch.equal(a.embedding, b.embedding) and torch.equal(a.gate_input, b.gate_input)):
        return False
    for name in a_bank.projection_names():
        ea, eb = a_bank.projections[name].experts.get(a.task), b_bank.projections[name].experts.get(b.task)
        if (ea is None) != (eb is None):
            return False
        if ea is not None and not (torch.equal(ea.down, eb.down) and torch.equal(ea.up, eb.up)):
            return False
    return True


def _free_name(name: str, taken: set[str]) -> str:
    for n in range(2, 1000):
        candidate = f"{name} {n}"
        if candidate not in taken:
            return candidate
    raise InvalidInputError(f"Could not find a free name for '{name[:100]}'; rename it before merging.")


def _free_token(token: str, taken: set[str]) -> str:
    for n in range(2, 1000):
        candidate = f"{token[:-1]}_{n}>" if token.endswith(">") and len(token) > 2 else f"{token}_{n}"
        if candidate not in taken:
            return candidate
    raise InvalidInputError(f"Could not find a free trigger token for '{token[:100]}'; rename it before merging.")


def check_mergeable(a: ExpertBank, b: ExpertBank) -> list[str]:
    """Raise unless both banks serve one base model with routing settings that agree; return notes on the
    settings that may differ (bank A's are kept)."""
    if a.layers != b.layers or a.token_dim != b.token_dim:
        raise BankMismatchError(
            "The two banks were made for different model architectures (other cross-attention layers or token "
            "width); only banks of the same base checkpoint can be merged."
        )
    differing = fingerprint_differences(a.fingerprint, b.fingerprint, list(a.layers))
    if differing:
        raise BankMismatchError(
            f"The two banks were made for different base models (fingerprints {a.fingerprint.digest} and "
            f"{b.fingerprint.digest}; {len(differing)} K/V projections differ). Merge banks of the same checkpoint."
        )
    for field_name, what in (("rank", "expert rank"), ("top_k", "top-k"), ("aux_in_inference", "auxiliary routing")):
        va, vb = getattr(a.config, field_name), getattr(b.config, field_name)
        if va != vb:
            raise InvalidInputError(
                f"The banks differ in {what} ({field_name} {va} and {vb}), which decides how experts mix; "
                "only banks created with the same settings can be merged."
            )
    notes = []
    for field_name in ("prune_threshold", "distill_lambda"):
        va, vb = getattr(a.config, field_name), getattr(b.config, field_name)
        if va != vb:
            notes.append(f"{field_name}: bank B's {vb} differs; bank A's {va} is kept for new concepts")
    return notes


def _scores(bank: ExpertBank, name: str, rows: torch.Tensor) -> dict[int, torch.Tensor]:
    """Per alive expert of projection `name`: its score on each row [R]."""
    return {i: rows @ e.gate.double() for i, e in bank.projections[name].experts.items()}


@dataclass(frozen=True)
class _IncomingConcepts:
    """Where bank B's concepts go in the merged bank: B task -> merged task, the new concept records, renames."""

    task_map: dict[int, int]
    shared: dict[int, int]  # B task -> A task, for concepts both banks hold
    incoming: list[Concept]
    renamed: list[tuple[str, str, str, str]]
    num_tasks: int


def _place_incoming(a: ExpertBank, b: ExpertBank, on_clash: str) -> _IncomingConcepts:
    """Number bank B's concepts after bank A's (shared ones map onto A's), renaming or refusing clashes."""
    shared = {}
    for cb in b.concepts:
        ca = a.concept_by_name(cb.name)
        if ca is not None and _same_concept(a, ca, b, cb):
            shared[cb.task] = ca.task
    names, tokens = {c.name for c in a.concepts}, {c.token for c in a.concepts}
    incoming, renamed = [], []
    next_task = a.num_tasks
    task_map = dict(shared)
    for cb in sorted(b.concepts, key=lambda c: c.task):
        if cb.task in shared:
            continue
        name, token = cb.name, cb.token
        if name in names or token in tokens:
            if on_clash == "refuse":
                other = a.concept_by_name(name) or a.concept_by_token(token)
                raise InvalidInputError(
                    f"Bank B's concept '{cb.name[:100]}' ({cb.token}) clashes with bank A's '{other.name[:100]}' "
                    f"({other.token}): same {'name' if name in names else 'trigger token'} but a different concept. "
                    "Rename one first (R2MoE Rename Concept), or set on_clash to 'rename incoming'."
                )
            new_name = _free_name(name, names) if name in names else name
            new_token = _free_token(token, tokens) if token in tokens else token
            renamed.append((name, new_name, token, new_token))
            name, token = new_name, new_token
        next_task += 1
        task_map[cb.task] = next_task
        names.add(name)
        tokens.add(token)
        incoming.append(replace(cb, name=name, token=token, task=next_task))
    return _IncomingConcepts(task_map, shared, incoming, renamed, next_task)


@dataclass(frozen=True)
class _FixedRows:
    """Gate inputs whose scores the merge keeps [R, D]: bank A's concepts, then B's new ones, then protected
    prompts; with their pseudo-inverse, the same in every projection, so computed once."""

    rows: torch.Tensor
    solve: torch.Tensor
    n_a: int
    n_b: int


def _refit_gates(
    a: ExpertBank, b: ExpertBank, name: str, placed: _IncomingConcepts, fixed: _FixedRows | None
) -> tuple[ProjectionExperts, float]:
    """Projection `name` of the merged bank: A's and B's experts with gate columns refitted (least change) so
    every fixed row keeps the scores its own bank gave it; returns it with the largest score error."""
    experts_a, experts_b = a.projections[name].experts, b.projections[name].experts
    merged: dict[int, LoraExpert] = dict(experts_a)
    for task, expert in experts_b.items():
        if task not in placed.shared:
            merged[placed.task_map[task]] = expert
    in_dim = a.projections[name].in_dim
    if fixed is None or not merged:
        return ProjectionExperts(in_dim=in_dim, experts=merged), 0.0
    rows, n_a, n_b = fixed.rows, fixed.n_a, fixed.n_b
    ids = sorted(merged)
    target = torch.empty(rows.shape[0], len(ids), dtype=torch.float64)
    score_a, score_b = _scores(a, name, rows), _scores(b, name, rows)
    b_of = {placed.task_map[t]: t for t in experts_b}
    for j, expert_id in enumerate(ids):
        in_a, in_b = expert_id in experts_a, expert_id in b_of
        column = target[:, j]
        column[:n_a] = score_a[expert_id][:n_a] if in_a else -FOREIGN_SCORE
        column[n_a:n_a + n_b] = score_b[b_of[expert_id]][n_a:n_a + n_b] if in_b else -FOREIGN_SCORE
        if rows.shape[0] > n_a + n_b:
            # A protected prompt keeps the score of the bank the expert comes from (A's for shared ones).
            column[n_a + n_b:] = (score_a[expert_id] if in_a else score_b[b_of[expert_id]])[n_a + n_b:]
    start = torch.stack([merged[i].gate.double() for i in ids], dim=1)  # [D, E]
    fitted = start + fixed.solve @ (target - rows @ start)
    columns = {i: fitted[:, j].to(merged[i].gate.dtype) for j, i in enumerate(ids)}
    stored = torch.stack([columns[i].double() for i in ids], dim=1)  # as saved: the error is checked on it
    error = float((rows @ stored - target).abs().max())
    return ProjectionExperts(in_dim=in_dim, experts={i: replace(merged[i], gate=columns[i]) for i in ids}), error


def merge_banks(
    a: ExpertBank, b: ExpertBank, on_clash: str = "refuse", protected: torch.Tensor | None = None
) -> tuple[ExpertBank, MergeReport]:
    """Bank A plus the concepts of bank B. `protected` [J, D]: gate inputs of prompts that should route as before
    in both banks (plain class prompts, the empty prompt); their scores are kept like the concepts'."""
    if on_clash not in CLASH_MODES:
        raise InvalidInputError(f"on_clash must be one of {', '.join(CLASH_MODES)}, got {on_clash[:50]!r}.")
    notes = check_mergeable(a, b)
    placed = _place_incoming(a, b, on_clash)
    rows_a = [c.gate_input.double() for c in a.concepts]
    rows_b = [c.gate_input.double() for c in b.concepts if c.task not in placed.shared]
    extra = [] if protected is None else list(protected.double())
    fixed = None
    if rows_a or rows_b or extra:
        rows = torch.stack(rows_a + rows_b + extra)
        fixed = _FixedRows(rows, torch.linalg.pinv(rows), len(rows_a), len(rows_b))
    projections, worst = {}, 0.0
    for name in a.projection_names():
        projections[name], error = _refit_gates(a, b, name, placed, fixed)
        worst = max(worst, error)
    if worst > MAX_SCORE_ERROR:
        raise InvalidInputError(
            f"The two banks hold concepts whose prompts cannot be routed apart (a gate score misses its target by "
            f"{worst:.3g}): two concepts were learned from the same prompt. Remove one of them before merging."
        )
    bank = replace(a, projections=projections, concepts=(*a.concepts, *placed.incoming), num_tasks=placed.num_tasks)
    bank.validate()
    report = MergeReport(
        from_a=tuple(c.name for c in a.concepts),
        from_b=tuple(c.name for c in placed.incoming),
        shared=tuple(c.name for c in b.concepts if c.task in placed.shared),
        renamed=tuple(placed.renamed),
        max_mixture_change=max_mixture_change(a, b, bank, placed.task_map),
        notes=tuple(notes),
    )
    return bank, report


def max_mixture_change(a: ExpertBank, b: ExpertBank, merged: ExpertBank, task_map: dict[int, int]) -> float:
    """Largest change of any coefficient of any concept at its own prompt, against the bank it came from
    (experts the source bank did not have count with a coefficient of 0 there)."""
    worst = 0.0
    by_task = {c.task: c for c in merged.concepts}
    for source, mapping in ((a, {c.task: c.task for c in a.concepts}), (b, task_map)):
        columns = torch.tensor([mapping.get(i, -1) for i in range(source.num_experts)])
        columns[0] = 0
        for concept in source.concepts:
            if source is b and concept.task in task_map and task_map[concept.task] <= a.num_tasks:
                continue  # shared: compared as bank A's
            target = by_task[mapping[concept.task]]
            before = concept_mixtures(source, concept.name)
            after = concept_mixtures(merged, target.name)
            placed = torch.zeros_like(after)
            keep = columns >= 0
            placed[:, columns[keep]] = before[:, keep]
            worst = max(worst, float((after - placed).abs().max()))
    return worst

