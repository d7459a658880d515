"""The methods the lifelong benchmark compares, trained through the same loop (`r2moe_core.training_step`).

Every method adapts only the K/V projections of the 16 cross-attention layers and learns one trigger-token
vector per concept, initialised from the class word. A method hands the loop a *task* object per concept: the
trainable state, its K/V delta and its regulariser, duck-typed like `ExpertTrainer`. Simplifications against the
papers are stated in `SIMPLIFICATIONS` and copied into every report.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace

import torch
from safetensors.torch import save as st_save

import r2moe_core as core
from r2moe_core.bank.bank_file import bank_to_tensors
from r2moe_core.moe.delta_cache import BankRuntime
from r2moe_core.train.concept_run import ConceptIdentity, TrainingHost, finish_task, start_task
from r2moe_core.train.trainer import ExpertTrainer, TrainSettings

from .hlag import RowRegions, planned_regions
from .text import TextEncoder
from .unet import CrossAttention, Delta, UNet

METHODS = ("r2moe", "r2moe_hlag", "r2moe_prior", "r2moe_no_rdm", "r2moe_no_sae", "r2moe_no_prune",
           "textual_inversion", "lora_sequential", "c_lora", "lora_per_concept", "custom_diffusion")

SIMPLIFICATIONS = {
    "r2moe": "pack defaults: rank 4, top-k 3, exact routing distillation (margin 0), SAE, τ-pruning at 0.4",
    "r2moe_hlag": "r2moe trained alike, every prompt drawn with regional attention as the nodes do by default: the "
                  "rule planner's box for the trigger (half the width, at the side the prompt names or centred), "
                  "its expert mixture inside, the scene words with base weights outside (η 1, box masks); "
                  "prompts without a trigger get no expert",
    "r2moe_prior": "r2moe plus class-prior preservation: Budget.prior_images images of `photo of a {class}` drawn "
                   "by the frozen world model (euler, the evaluation's steps and cfg) in every batch, weight 1",
    "r2moe_no_rdm": "routing distillation off (the new router columns are unconstrained on old prompts)",
    "r2moe_no_sae": "no selective activation: the new expert competes for the top-k like the others in training",
    "r2moe_no_prune": "no layer-wise pruning after each task",
    "textual_inversion": "the trigger token trained alone (no adapter): what the experts must beat",
    "lora_sequential": "one rank-4 K/V LoRA fine-tuned through all tasks (fresh optimizer per task)",
    "c_lora": "one rank-4 K/V LoRA per task, all summed; penalty λ·Σ((P/rms P)⊙ΔW_t)² with P the sum of earlier "
              "LoRAs (the paper's self-regularisation, normalised so λ is scale-free); no prompt initialisation "
              "tricks",
    "lora_per_concept": "one rank-4 K/V LoRA per concept, the one whose trigger is in the prompt is applied "
                        "(the stack users keep today, chosen perfectly)",
    "custom_diffusion": "full K/V weights fine-tuned sequentially through all tasks (one copy), lower learning "
                        "rate as in the paper; no regularisation images",
}


@dataclass(frozen=True)
class TaskStart:
    """What a task starts from: the world as a `TrainingHost` (encode, predict noise) and the concept's captions."""

    host: TrainingHost
    captions: list[str]


@dataclass(frozen=True)
class Budget:
    """The same for every method: steps, batch, rank; learning rates per parameter family."""

    steps: int = 50
    batch_size: int = 2
    rank: int = 4
    # LoRA factors and experts. A quarter of the rate chosen on world v2: on v3 the v2 rate drew concepts worse
    # than the trigger token alone, on their training photos as on held-out renders (bench/learning_sweep.py on
    # development concepts, not the demo's; results/learning_sweep.json keeps the reading at each rate).
    lr: float = 5e-4
    lr_router: float = 5e-2  # R2MoE gate scores (score units per step)
    lr_token: float = 5e-3
    lr_full: float = 1e-4  # custom diffusion's full K/V weights
    # R2MoE: share of the steps only the trigger token learns in; a quarter, chosen against none and half on
    # development concepts (bench/learning_sweep.py; the node's default stays 0, see TrainSettings).
    token_warmup: float = 0.25
    # R2MoE: exponent of the timestep draw's density (t/T)^bias once its token warm-up is over (TrainSettings).
    # Chosen against 0 and 2 on development concepts (bench/learning_sweep.py): it lifts held-out image alignment
    # and costs some identity alignment. Baselines draw uniformly: the token alone gained nothing from a bias.
    timestep_bias: float = 1.0
    c_lora_lambda: float = 1e-2
    strength: float = 1.0  # R2MoE: the bank's strength when sampling (R2MoEApplyBank's widget)
    prior_images: int = 8  # class-prior images for the methods that use them (r2moe_prior)
    prior_weight: float = 1.0


def world_layers(unet: UNet) -> list[core.LayerSpec]:
    return [core.LayerSpec(name, m.to_k.in_features, m.to_k.out_features)
            for name, m in unet.named_modules() if isinstance(m, CrossAttention) and name.endswith("attn2")]


def projection_weights(unet: UNet) -> dict[str, torch.Tensor]:
    modules = dict(unet.named_modules())
    return {f"{layer.name}.{p}": getattr(modules[layer.name], p).weight
            for layer in world_layers(unet) for p in core.PROJECTIONS}


class _Lora(torch.nn.Module):
    """Rank-r factors for every K/V projection; Δ = context @ down @ up (zero at start)."""

    def __init__(self, layers: list[core.LayerSpec], rank: int, gen: torch.Generator) -> None:
        super().__init__()
        self.names = [n for layer in layers for n in layer.projection_names()]
        dims = {n: (layer.in_dim, layer.out_dim) for layer in layers for n in layer.projection_names()}
        self.downs = torch.nn.ParameterList(
            [torch.nn.Parameter((torch.rand(dims[n][0], rank, generator=gen) * 2 - 1) / math.sqrt(dims[n][0]))
             for n in self.names])
        self.ups = torch.nn.ParameterList([torch.nn.Parameter(torch.zeros(rank, dims[n][1])) for n in self.names])
        self.index = {n: i for i, n in enumerate(self.names)}

    def delta(self, name: str, context: torch.Tensor) -> torch.Tensor:
        i = self.index[name]
        return (context @ self.downs[i]) @ self.ups[i]

    def weight(self, i: int) -> torch.Tensor:
        return self.downs[i] @ self.ups[i]

    def tensors(self, prefix: str) -> dict[str, torch.Tensor]:
        out = {}
        for i, n in enumerate(self.names):
            out[f"{prefix}{n}.down"], out[f"{prefix}{n}.up"] = self.downs[i].detach(), self.ups[i].detach()
        return out


class _Full(torch.nn.Module):
    """A dense ΔW for every K/V projection (Custom Diffusion's trainable K/V, stored as a difference)."""

    def __init__(self, layers: list[core.LayerSpec]) -> None:
        super().__init__()
        self.names = [n for layer in layers for n in layer.projection_names()]
        dims = {n: (layer.in_dim, layer.out_dim) for layer in layers for n in layer.projection_names()}
        self.weights = torch.nn.ParameterList([torch.nn.Parameter(torch.zeros(*dims[n])) for n in self.names])
        self.index = {n: i for i, n in enumerate(self.names)}

    def delta(self, name: str, context: torch.Tensor) -> torch.Tensor:
        return context @ self.weights[self.index[name]]

    def tensors(self, prefix: str) -> dict[str, torch.Tensor]:
        return {f"{prefix}{n}.delta": w.detach() for n, w in zip(self.names, self.weights, strict=True)}


class BaselineTask(torch.nn.Module):
    """What `training_step` needs from a task: batch size, deltas, a regulariser, the trigger vector."""

    def __init__(self, budget: Budget, token_init: torch.Tensor, trainable: list[tuple[list, float]],
                 delta: Delta, penalty: Callable[[], torch.Tensor] | None = None, penalty_lambda: float = 0.0) -> None:
        torch.nn.Module.__init__(self)
        self.settings = SimpleNamespace(batch_size=budget.batch_size, steps=budget.steps, seed=0)
        self.token = torch.nn.Parameter(token_init.detach().float().clone())
        self.groups = [{"params": params, "lr": lr} for params, lr in trainable]
        self.groups.append({"params": [self.token], "lr": budget.lr_token})
        self.delta_fn, self.penalty, self.distill_lambda = delta, penalty, penalty_lambda
        self.prior_rows = 0  # `training_step` marks class-prior rows; a baseline treats every row alike

    def observe_gate_inputs(self, m: torch.Tensor) -> None:
        """Baselines have no gate."""

    def delta(self, name: str, context: torch.Tensor) -> torch.Tensor | None:
        return self.delta_fn(name, context)

    named_delta = delta  # the core loop's name for it

    def optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.groups, weight_decay=0.0)

    def distill_loss(self) -> torch.Tensor:
        return self.penalty() if self.penalty is not None else self.token.new_zeros(())

    def after_step(self) -> None:
        pass

    def timestep_bias(self) -> float:
        """Baselines draw timesteps uniformly (the token alone did no better with a bias, see Budget)."""
        return 0.0


class R2MoETask:
    """Adapter from `ExpertTrainer` (indexed projections) to the UNet's named delta hook."""

    def __init__(self, trainer: ExpertTrainer) -> None:
        self.trainer = trainer
        self.settings, self.token = trainer.settings, trainer.token

    @property
    def distill_lambda(self) -> float:
        return self.trainer.distill_lambda

    def delta(self, name: str, context: torch.Tensor) -> torch.Tensor:
        return self.trainer.named_delta(name, context)

    named_delta = delta  # the core loop's name for it

    def to(self, device: torch.device | str) -> R2MoETask:
        self.trainer.to(device)
        return self

    def optimizer(self) -> torch.optim.Optimizer:
        return self.trainer.optimizer()

    def distill_loss(self) -> torch.Tensor:
        return self.trainer.distill_loss()

    def observe_gate_inputs(self, m: torch.Tensor) -> None:
        self.trainer.observe_gate_inputs(m)

    @property
    def prior_rows(self) -> int:
        return self.trainer.prior_rows

    @prior_rows.setter
    def prior_rows(self, rows: int) -> None:
        self.trainer.prior_rows = rows

    def after_step(self) -> None:
        self.trainer.after_step()

    def timestep_bias(self) -> float:
        return self.trainer.timestep_bias()


@dataclass
class Method:
    """One method's lifelong state. `begin` opens a task, `end` closes it with the concept's gate inputs."""

    name: str
    unet: UNet
    budget: Budget
    seed: int = 0
    tokens: dict[str, torch.Tensor] = field(default_factory=dict)
    class_words: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.layers = world_layers(self.unet)
        self.prior_images = 0  # class-prior images per batch source (r2moe_prior sets Budget.prior_images)
        self.gen = torch.Generator().manual_seed(self.seed)

    def begin(self, token: str, class_word: str, token_init: torch.Tensor,
              start: TaskStart) -> BaselineTask | R2MoETask:
        raise NotImplementedError

    def end(self, task: BaselineTask | R2MoETask, token: str, class_word: str, start: TaskStart) -> None:
        self.tokens[token] = task.token.detach().clone()
        self.class_words.append(class_word)

    def sampling_delta(self, prompts: list[str], context: torch.Tensor) -> Delta | None:
        raise NotImplementedError

    def regional_hook(self, text: TextEncoder, prompts: list[str], size: int) -> RowRegions | None:
        """The UNet's `regional` hook for these prompts' conditional pass, for methods that sample regionally."""
        return None

    def stored(self) -> dict[str, torch.Tensor]:
        """Every tensor the method must keep to draw its concepts (what a user stores on disk)."""
        return {f"token.{t}": v for t, v in self.tokens.items()}

    def params_added(self) -> int:
        return sum(v.numel() for v in self.stored().values())

    def bytes_added(self) -> int:
        stored = self.stored()
        return len(st_save({k: v.float().contiguous() for k, v in stored.items()})) if stored else 0


class R2MoEMethod(Method):
    def __post_init__(self) -> None:
        super().__post_init__()
        config = core.BankConfig(rank=self.budget.rank)
        fingerprint = core.compute_fingerprint(self.layers, projection_weights(self.unet))
        self.bank = core.ExpertBank.empty(config, self.layers, fingerprint, token_dim=768)
        variant = self.name.removeprefix("r2moe").lstrip("_")
        self.prior_images = self.budget.prior_images if variant == "prior" else 0
        self.distill_mode = "off" if variant == "no_rdm" else "exact"
        self.selective = variant != "no_sae"
        self.prune = variant != "no_prune"
        self.regional = variant == "hlag"
        self.reports: list[core.PruneReport] = []

    def begin(self, token: str, class_word: str, token_init: torch.Tensor, start: TaskStart) -> R2MoETask:
        b = self.budget
        settings = TrainSettings(steps=b.steps, batch_size=b.batch_size, lr_experts=b.lr, lr_router=b.lr_router,
                                 lr_token=b.lr_token, token_warmup=b.token_warmup,
                                 timestep_bias=b.timestep_bias, distill_mode=self.distill_mode,
                                 selective_activation=self.selective, seed=self.seed + self.bank.num_tasks)
        concept = ConceptIdentity(token.strip("<>"), token, class_word)
        return R2MoETask(start_task(start.host, self.bank, concept, token_init, start.captions, settings))

    def kept_share(self) -> float:
        """Expert parameters (down, up) stored, over those of every concept's expert in every projection."""
        rank = self.bank.config.rank
        full = sum(2 * rank * (layer.in_dim + layer.out_dim) for layer in self.layers) * max(self.bank.num_tasks, 1)
        kept = sum(x.down.numel() + x.up.numel() for p in self.bank.projections.values() for x in p.experts.values())
        return kept / full

    def end(self, task: R2MoETask, token: str, class_word: str, start: TaskStart) -> None:
        super().end(task, token, class_word, start)
        concept = ConceptIdentity(token.strip("<>"), token, class_word)
        encode = start.host.encoder(token, task.token)
        # without pruning: τ = 0 removes nothing
        self.bank, report = finish_task(task.trainer, encode, concept, start.captions, None if self.prune else 0.0)
        if self.prune:
            self.reports.append(report)

    def regional_hook(self, text: TextEncoder, prompts: list[str], size: int) -> RowRegions | None:
        return planned_regions(text, self.bank, self.tokens, prompts, size) if self.regional else None

    def sampling_delta(self, prompts: list[str], context: torch.Tensor) -> Delta | None:
        runtime = BankRuntime(self.bank, self.budget.strength)
        entry = runtime.entry_for(context, None)
        return lambda name, ctx: runtime.delta(entry, name)

    def stored(self) -> dict[str, torch.Tensor]:
        tensors, _ = bank_to_tensors(self.bank)
        return {k: v for k, v in tensors.items() if not k.startswith("fingerprint.")}

    def bytes_added(self) -> int:
        return len(core.bank_to_bytes(self.bank))


class TextualInversionMethod(Method):
    """The trigger token alone: nothing but the token is stored or trained."""

    def begin(self, token: str, class_word: str, token_init: torch.Tensor, start: TaskStart) -> BaselineTask:
        return BaselineTask(self.budget, token_init, [], lambda name, context: None)

    def sampling_delta(self, prompts: list[str], context: torch.Tensor) -> Delta | None:
        return None


class SequentialLoraMethod(Method):
    def __post_init__(self) -> None:
        super().__post_init__()
        self.lora = _Lora(self.layers, self.budget.rank, self.gen)

    def begin(self, token: str, class_word: str, token_init: torch.Tensor, start: TaskStart) -> BaselineTask:
        params = [*self.lora.downs, *self.lora.ups]
        return BaselineTask(self.budget, token_init, [(params, self.budget.lr)], self.lora.delta)

    def sampling_delta(self, prompts: list[str], context: torch.Tensor) -> Delta | None:
        return self.lora.delta

    def stored(self) -> dict[str, torch.Tensor]:
        return super().stored() | self.lora.tensors("lora.")


class CLoraMethod(Method):
    def __post_init__(self) -> None:
        super().__post_init__()
        self.loras: list[_Lora] = []

    def _summed(self, loras: list[_Lora]) -> Delta:
        def delta(name: str, context: torch.Tensor) -> torch.Tensor | None:
            parts = [lora.delta(name, context) for lora in loras]
            return sum(parts[1:], parts[0]) if parts else None
        return delta

    def begin(self, token: str, class_word: str, token_init: torch.Tensor, start: TaskStart) -> BaselineTask:
        new = _Lora(self.layers, self.budget.rank, self.gen)
        with torch.no_grad():
            previous = [sum(lora.weight(i) for lora in self.loras) for i in range(len(new.names))] if self.loras \
                else None
            weights = [p / p.square().mean().sqrt().clamp_min(1e-12) for p in previous] if previous else None

        def penalty() -> torch.Tensor:
            if weights is None:
                return new.ups[0].new_zeros(())
            return sum(((w * new.weight(i)).square().sum() for i, w in enumerate(weights)), new.ups[0].new_zeros(()))

        return BaselineTask(self.budget, token_init, [([*new.downs, *new.ups], self.budget.lr)],
                            self._summed([*self.loras, new]), penalty, self.budget.c_lora_lambda)

    def end(self, task: BaselineTask, token: str, class_word: str, start: TaskStart) -> None:
        super().end(task, token, class_word, start)
        new = task.groups[0]["params"]
        lora = _Lora(self.layers, self.budget.rank, self.gen)
        half = len(new) // 2
        with torch.no_grad():
            for i in range(half):
                lora.downs[i].copy_(new[i])
                lora.ups[i].copy_(new[half + i])
        self.loras.append(lora.requires_grad_(False))

    def sampling_delta(self, prompts: list[str], context: torch.Tensor) -> Delta | None:
        return self._summed(self.loras)

    def stored(self) -> dict[str, torch.Tensor]:
        out = super().stored()
        for t, lora in enumerate(self.loras):
            out |= lora.tensors(f"lora{t}.")
        return out


class LoraPerConceptMethod(Method):
    def __post_init__(self) -> None:
        super().__post_init__()
        self.loras: dict[str, _Lora] = {}

    def begin(self, token: str, class_word: str, token_init: torch.Tensor, start: TaskStart) -> BaselineTask:
        self.loras[token] = lora = _Lora(self.layers, self.budget.rank, self.gen)
        return BaselineTask(self.budget, token_init, [([*lora.downs, *lora.ups], self.budget.lr)], lora.delta)

    def end(self, task: BaselineTask, token: str, class_word: str, start: TaskStart) -> None:
        super().end(task, token, class_word, start)
        self.loras[token].requires_grad_(False)

    def sampling_delta(self, prompts: list[str], context: torch.Tensor) -> Delta | None:
        """Each row gets the LoRA of the trigger in its prompt (rows without one get none)."""
        rows = {token: [i for i, p in enumerate(prompts) if token in p] for token in self.loras}
        rows = {t: r for t, r in rows.items() if r}
        if not rows:
            return None

        def delta(name: str, ctx: torch.Tensor) -> torch.Tensor:
            parts = [(idx, self.loras[token].delta(name, ctx[idx])) for token, idx in rows.items()]
            out = parts[0][1].new_zeros(ctx.shape[0], *parts[0][1].shape[1:])
            for idx, d in parts:
                out[idx] = d
            return out
        return delta

    def stored(self) -> dict[str, torch.Tensor]:
        out = super().stored()
        for token, lora in self.loras.items():
            out |= lora.tensors(f"lora.{token}.")
        return out


class CustomDiffusionMethod(Method):
    def __post_init__(self) -> None:
        super().__post_init__()
        self.full = _Full(self.layers)

    def begin(self, token: str, class_word: str, token_init: torch.Tensor, start: TaskStart) -> BaselineTask:
        return BaselineTask(self.budget, token_init, [(list(self.full.weights), self.budget.lr_full)], self.full.delta)

    def sampling_delta(self, prompts: list[str], context: torch.Tensor) -> Delta | None:
        return self.full.delta

    def stored(self) -> dict[str, torch.Tensor]:
        return super().stored() | self.full.tensors("kv.")


def make_method(name: str, unet: UNet, budget: Budget, seed: int = 0) -> Method:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose from {', '.join(METHODS)}")
    kind = {"textual_inversion": TextualInversionMethod, "lora_sequential": SequentialLoraMethod, "c_lora": CLoraMethod,
            "lora_per_concept": LoraPerConceptMethod, "custom_diffusion": CustomDiffusionMethod}
    return kind.get(name, R2MoEMethod)(name=name, unet=unet, budget=budget, seed=seed)
