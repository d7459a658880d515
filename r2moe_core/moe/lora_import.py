"""A community LoRA as a gated expert of the bank: its text cross-attention K/V updates become a new concept's
expert, called by a trigger token of the user's choice, and only the gate is fitted.

Reading: kohya (`lora_unet_..._attn2_to_k.lora_down/lora_up/alpha`, diffusers or ComfyUI block names), PEFT /
diffusers (`unet.<path>.lora_A/lora_B`, `..._lora.down/up`) and ComfyUI (`diffusion_model.<name>.lora_down`)
key styles. Everything else in the file (text encoder, self-attention, feed-forward, convolutions) is counted in
the report and ignored: the bank adapts K/V of text cross-attention only. A LoRA of higher rank than the bank's
experts is cut to its leading singular directions (the report says how much of its update that keeps).

Gate: the same exact routing distillation as training, solved in closed form instead of by steps, since only the
router changes. With u (scores 1 on each example prompt's gate input, 0 on every protected prompt: the old
concepts' stored prompts, the empty and plain class prompts, the examples without the trigger) and w (0 there,
-1 on the protected ones), the new expert's column is S·u + margin·w, with S NEW_SCORE above the best of the
auxiliary and old experts' scores on the examples. So at its trigger prompts the imported expert carries about
e^8/(e^8 + 1 + ...) ≈ 0.9997 of the mixture (the LoRA at `strength`); the old experts' columns are not changed
at all, so a prompt keeps its old mixture wherever the new expert scores low (exactly so, to within e^-margin,
on the protected prompts).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from ..bank.attention_targets import PROJECTIONS
from ..bank.expert_bank import Concept, ConceptIdentity, ExpertBank, ProjectionExperts
from ..bank.experts import LoraExpert
from ..errors import InvalidInputError
from .concept_export import diffusers_path, kohya_lora_key
from .pruning import PruneReport, prune_task
from .routing import inference_coefficients

NEW_SCORE = 8.0  # the imported expert's score on its prompts, the old experts' (negated) there
PAIRS = ((".lora_down.weight", ".lora_up.weight"), (".lora_A.weight", ".lora_B.weight"),
         (".lora.down.weight", ".lora.up.weight"))
UNSUPPORTED = {".hada_w1_a": "LoHa", ".lokr_w1": "LoKr", ".diff": "full weight difference", ".oft_blocks": "OFT"}


@dataclass(frozen=True)
class ImportedLoRA:
    """The K/V updates found in a LoRA file, cut to the bank's rank (no gate yet)."""

    experts: Mapping[str, tuple[torch.Tensor, torch.Tensor]]  # projection -> (down [in, r], up [r, out])
    source_rank: int
    kept_energy: float  # smallest share of any projection's update kept by the rank cut (1.0 = exact)
    ignored: Mapping[str, int]  # kind of module -> number of tensors left out

    def summary(self, total_projections: int) -> str:
        kept = f"{len(self.experts)}/{total_projections} text cross-attention K/V projections"
        cut = "" if self.kept_energy >= 0.9999 else f", cut to the bank's rank (keeps >= {self.kept_energy:.0%} of " \
            "each update; a bank of higher rank keeps more)"
        ignored = ", ".join(f"{kind} {n}" for kind, n in sorted(self.ignored.items())) or "nothing"
        return f"{kept} (LoRA rank {self.source_rank}{cut}); ignored tensors: {ignored}"


def _candidate_prefixes(projection: str) -> list[str]:
    dotted = diffusers_path(projection)
    out = [kohya_lora_key(projection), "lora_unet_" + projection.replace(".", "_"), f"diffusion_model.{projection}"]
    if dotted is not None:
        out += [f"unet.{dotted}", f"base_model.model.{dotted}", dotted]
        stem, proj = dotted.rsplit(".", 1)
        out.append(f"unet.{stem}.processor.{proj}_lora")  # the old diffusers attention-processor format
    return out


def _kind(key: str) -> str:
    low = key.lower()
    if low.startswith(("lora_te", "te_", "text_encoder")) or "text_model" in low:
        return "text encoder"
    if "attn1" in low:
        return "self-attention"
    if "attn2" in low:
        return "cross-attention Q/out"
    if "ff" in low.split("_") or ".ff." in low or "_ff_" in low:
        return "feed-forward"
    return "other UNet"


def _rank_cut(delta_t: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """down [in, r], up [r, out] with down @ up the best rank-r approximation of ΔW^T [in, out]."""
    u, s, vh = torch.linalg.svd(delta_t.double(), full_matrices=False)
    root = s[:rank].sqrt()
    down = torch.zeros(delta_t.shape[0], rank, dtype=torch.float64)
    up = torch.zeros(rank, delta_t.shape[1], dtype=torch.float64)
    n = min(rank, s.shape[0])
    down[:, :n] = u[:, :n] * root[:n]
    up[:n] = root[:n, None] * vh[:n]
    total = float(s.square().sum())
    return down.float(), up.float(), float(s[:n].square().sum()) / total if total > 0 else 1.0


def read_lora(tensors: Mapping[str, torch.Tensor], bank: ExpertBank, strength: float = 1.0) -> ImportedLoRA:
    """The text cross-attention K/V updates of a LoRA state dict for this bank's layers, as rank-r experts."""
    for marker, kind in UNSUPPORTED.items():
        if any(marker in key for key in tensors):
            raise InvalidInputError(
                f"This file is a {kind} (LyCORIS) adapter, not a plain LoRA; only LoRA files (lora_down/lora_up "
                "or lora_A/lora_B) can become experts."
            )
    used: set[str] = set()
    experts, ranks, worst = {}, set(), 1.0
    for layer in bank.layers:
        for proj_name in PROJECTIONS:
            name = f"{layer.name}.{proj_name}"
            found = None
            for prefix in _candidate_prefixes(name):
                for down_key, up_key in PAIRS:
                    if prefix + down_key in tensors and prefix + up_key in tensors:
                        found = (prefix, prefix + down_key, prefix + up_key)
                        break
                if found:
                    break
            if found is None:
                continue
            prefix, down_key, up_key = found
            down, up = tensors[down_key].float(), tensors[up_key].float()
            down, up = down.reshape(down.shape[0], -1), up.reshape(up.shape[0], -1)  # conv-style [r, in, 1, 1]
            rank = down.shape[0]
            if down.shape[1] != layer.in_dim or up.shape != (layer.out_dim, rank):
                raise InvalidInputError(
                    f"The LoRA's {down_key} is {tuple(down.shape)} and {up_key} {tuple(up.shape)}, but this bank's "
                    f"{name} maps {layer.in_dim} -> {layer.out_dim}: the LoRA was made for another model."
                )
            alpha_key = prefix + ".alpha"
            scale = float(tensors[alpha_key]) / rank if alpha_key in tensors else 1.0
            used.update({down_key, up_key, alpha_key})
            delta_t = (down.T @ up.T) * (scale * strength)  # ΔW^T [in, out]
            if not bool(delta_t.abs().max() > 0):
                continue  # a zero update stores nothing, as a pruned expert
            ranks.add(rank)
            cut_down, cut_up, energy = _rank_cut(delta_t, bank.config.rank)
            worst = min(worst, energy)
            experts[name] = (cut_down, cut_up)
    if not experts:
        kinds = Counter(_kind(key) for key in tensors)
        raise InvalidInputError(
            "This LoRA has no text cross-attention K/V update (attn2.to_k / attn2.to_v) for this bank's model "
            f"(it holds {dict(kinds) or 'no tensors'}): it was made for another model, or adapts other layers only."
        )
    ignored = Counter(_kind(key) for key in tensors if key not in used)
    return ImportedLoRA(experts, max(ranks), worst, dict(ignored))


@dataclass(frozen=True)
class ImportReport:
    concept: str
    token: str
    lora: str  # the file summary (`ImportedLoRA.summary`)
    share_on_examples: float  # the imported expert's mean coefficient on the example prompts
    prune: PruneReport

    def summary(self) -> str:
        kept = len(self.prune.kept)
        return (
            f"imported as '{self.concept}' ({self.token}): {self.lora}\n"
            f"  gate: the example prompts give the imported expert {self.share_on_examples:.4f} of the mixture; old "
            "concepts' and plain prompts' routing unchanged\n"
            f"  pruning at tau {self.prune.threshold:g}: expert kept in {kept}, removed in {len(self.prune.removed)}"
        )


def trigger_directions(examples: torch.Tensor, protected: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Least-norm u, w [D] (float64) with u = 1 on every example prompt and 0 on every protected one, w = 0 and -1:
    each example is held, not only their mean, so every example prompt gives the imported expert its full share."""
    rows = torch.cat([examples.double(), protected.double()])
    n = examples.shape[0]
    targets = torch.zeros(rows.shape[0], 2, dtype=torch.float64)
    targets[:n, 0] = 1.0
    targets[n:, 1] = -1.0
    solved = torch.linalg.pinv(rows) @ targets
    if float((rows @ solved - targets).abs().max()) > 1e-3:
        raise InvalidInputError(
            "The example prompts cannot be told apart from prompts without the trigger (or from an old concept's "
            "prompt): give example prompts that contain the trigger token, each different from the others."
        )
    return solved[:, 0], solved[:, 1]


def import_lora(
    bank: ExpertBank,
    imported: ImportedLoRA,
    concept: ConceptIdentity,
    token_embedding: torch.Tensor,
    example_inputs: torch.Tensor,
    protected_inputs: torch.Tensor,
    prune_threshold: float = 0.4,
    margin: float = 8.0,
) -> tuple[ExpertBank, ImportReport]:
    """The bank with the LoRA as the new concept. `example_inputs` [N, D]: gate inputs of prompts with the trigger
    (encoded with `token_embedding`); `protected_inputs` [J, D]: prompts that must keep their routing besides the
    old concepts' stored ones (the empty prompt, plain class prompts, the examples without the trigger)."""
    name, token = concept.name, concept.token
    bank.check_new_concept(name, token)
    if example_inputs.ndim != 2 or example_inputs.shape[0] == 0:
        raise InvalidInputError("Importing a LoRA needs at least one example prompt with its trigger token.")
    task = bank.num_tasks + 1
    concept_mean = example_inputs.float().mean(0)
    old = [c.gate_input.float() for c in bank.concepts]
    protected = torch.cat([torch.stack(old), protected_inputs.float()]) if old else protected_inputs.float()
    own, away = trigger_directions(example_inputs, protected)
    projections = {}
    for proj_name, proj in bank.projections.items():
        experts = dict(proj.experts)  # old experts' columns are not touched: every old routing stays as it was
        if proj_name in imported.experts:
            best_old = max((float((example_inputs.double() @ e.gate.double()).max()) for e in proj.experts.values()),
                           default=0.0)
            lead = NEW_SCORE + max(best_old, 0.0)  # NEW_SCORE above the auxiliary and the best old expert
            down, up = imported.experts[proj_name]
            experts[task] = LoraExpert(down=down, up=up, gate=(lead * own + margin * away).float())
        projections[proj_name] = ProjectionExperts(in_dim=proj.in_dim, experts=experts)
    record = Concept(name=name, token=token, class_word=concept.class_word, task=task,
                     embedding=token_embedding.detach().float().cpu().reshape(1, -1), gate_input=concept_mean)
    grown = bank.with_concept(record, projections)
    share = _mean_share(grown, task, example_inputs)
    pruned, prune_report = prune_task(grown, task, prune_threshold, example_inputs.float())
    return pruned, ImportReport(name, token, imported.summary(2 * len(bank.layers)), share, prune_report)


def _mean_share(bank: ExpertBank, task: int, inputs: torch.Tensor) -> float:
    values = []
    for proj in bank.projections.values():
        if task in proj.experts:
            c = inference_coefficients(inputs.float(), proj.router(bank.num_experts), proj.alive_mask(bank.num_experts),
                                       bank.config.top_k, bank.config.aux_in_inference)
            values.append(float(c[:, task].mean()))
    return sum(values) / len(values) if values else 0.0
