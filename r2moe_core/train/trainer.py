"""Learning one concept as a new task (a new expert per projection, gate scores along its prompt, a token), host-free.

Trainable: the new expert of task t in every projection, one gate score per expert and projection along the
new concept's own prompt direction (`moe.routing_update`), and the trigger token's input embedding. Frozen: the
base model, old experts, every gate column as it was. Loss: ε-prediction MSE on random timesteps (masked to
the photo for rescaled views, `augment`), plus λ·routing distillation in the `soft` mode, plus the weighted MSE
of class-prior images when prior preservation is on (`class_prior`).

Selective activation (SAE): while training task t the gate always includes the auxiliary expert and expert t,
plus the top-k' old experts (k' = min(t-1, K-1)).

Routing distillation (RDM), `exact` (default): the gate changes only along a direction that scores 0 on every
old concept's stored prompt embedding, so old concepts keep their gate scores bit for bit, and the new expert
scores `-margin` there (its share of an old mixture is at most e^-margin of the auxiliary expert's). The plain
prompts (empty, `photo of a {class}`, the concept's captions without the trigger) are protected the same way in
every mode, so a prompt without a trigger does not start routing to the new expert. `soft`: the direction
ignores old prompts and the reference penalty λ·Σ‖M_old·ΔR_t‖_F is added to the loss; `off`: no protection of
old concepts (ablation).

The new expert starts at half of its mixture in every projection whatever the old experts' scores, so what is
kept after pruning depends on what training finds, not on which old experts happen to be alive there.

Token warm-up (`token_warmup`, a share of the steps): only the trigger token learns at first, through the
bank's mixture as it stands, and the new expert and its gate scores join afterwards, so the expert learns what
the token could not rather than racing it for the same signal.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from ..bank.expert_bank import Concept, ExpertBank, ProjectionExperts
from ..bank.experts import AUX_EXPERT, LoraExpert, expert_delta
from ..errors import InvalidInputError
from ..moe.routing import gate_input, inference_coefficients, select_experts, training_coefficients
from ..moe.routing_update import RoutingDirections, routing_directions

DISTILL_MODES = ("exact", "soft", "off")
GATE_INPUT_MOMENTUM = 0.9
OPTIMIZERS = ("AdamW", "Adam", "SGD")


@dataclass(frozen=True)
class TextCondition:
    """What a text encoder gives the UNet for a batch of prompts: the cross-attention context [B, T, D] and, for
    UNets that also read a pooled text embedding (SDXL), that embedding [B, P]. `training_step` reads only the
    context (for the gate) and hands the whole condition to the noise predictor."""

    context: torch.Tensor
    pooled: torch.Tensor | None = None


def context_of(encoded: torch.Tensor | TextCondition) -> torch.Tensor:
    """The cross-attention context of what an `encode` callable returned (a bare tensor or a TextCondition)."""
    return encoded.context if isinstance(encoded, TextCondition) else encoded


@dataclass(frozen=True)
class TrainSettings:
    """Reference defaults (800 steps, batch 2, AdamW, lr 1e-4 for the experts, 1e-3 for the token) except the
    token warm-up (not in the reference) and the router: its parameters are gate scores (`moe.routing_update`),
    so its learning rate is in score units per step (1e-2: a few units over a run) and the new expert scores -8
    on protected prompts (its share there is below e^-8 of the auxiliary expert's). `distill_lambda` falls back
    to the bank's when None."""

    steps: int = 800
    batch_size: int = 2
    lr_experts: float = 1e-4
    lr_router: float = 1e-2
    lr_token: float = 1e-3
    distill_lambda: float | None = None
    distill_mode: str = "exact"
    selective_activation: bool = True
    new_expert_margin: float = 8.0
    optimizer: str = "AdamW"
    seed: int = 0
    # Off by default: on the benchmark world a quarter helped (`bench/learning_sweep.py`), but in the toy world a
    # concept that repeats an old one then kept its new expert in 2 of 6 projections instead of none.
    token_warmup: float = 0.0
    # Exponent of the timestep draw's density (t/T)^bias once the token warm-up is over (`step.draw_timesteps`);
    # 0 is the reference's uniform draw, which the warm-up always uses.
    timestep_bias: float = 0.0

    @property
    def warmup_steps(self) -> int:
        """Steps at the start in which only the token learns (`token_warmup` of `steps`)."""
        return round(self.token_warmup * self.steps)

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise InvalidInputError("steps and batch size must be at least 1.")
        for name in ("lr_experts", "lr_router", "lr_token", "new_expert_margin", "timestep_bias"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise InvalidInputError(f"{name} must be a finite number >= 0, got {value}.")
        if self.distill_mode not in DISTILL_MODES:
            raise InvalidInputError(f"distill_mode must be one of {DISTILL_MODES}, got {self.distill_mode!r}.")
        if not (math.isfinite(self.token_warmup) and 0.0 <= self.token_warmup < 1.0):
            raise InvalidInputError(
                f"token_warmup is a share of the steps in [0, 1) (0: none), got {self.token_warmup}."
            )
        if self.optimizer not in OPTIMIZERS:
            raise InvalidInputError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}.")


def _checked_context_dim(
    bank: ExpertBank, token_init: torch.Tensor, concept_inputs: torch.Tensor, neutral_inputs: torch.Tensor | None
) -> int:
    """The one text width every layer reads, after checking the token and gate inputs against it."""
    if token_init.ndim != 2 or token_init.shape[1] != bank.token_dim:
        raise InvalidInputError(f"token embedding must be [n, {bank.token_dim}], got {tuple(token_init.shape)}")
    context_dims = {layer.in_dim for layer in bank.layers}
    if len(context_dims) != 1:
        raise InvalidInputError(f"all cross-attention layers must read one text width, found {sorted(context_dims)}")
    (context_dim,) = context_dims
    rows_of = (("concept", concept_inputs), ("neutral", neutral_inputs if neutral_inputs is not None
                                            else torch.zeros(0, context_dim)))
    for label, rows in rows_of:
        if rows.ndim != 2 or rows.shape[1] != context_dim:
            raise InvalidInputError(f"{label} gate inputs must be [N, {context_dim}], got {tuple(rows.shape)}")
    if concept_inputs.shape[0] == 0:
        raise InvalidInputError("training needs the gate input of at least one caption of the concept.")
    return context_dim


class FrozenProjection(torch.nn.Module):
    """One projection's state while task t trains, none of it trainable: the router as the bank left it
    [in, t+1], which experts are alive (the new one included), and the old experts stacked."""

    def __init__(self, proj: ProjectionExperts, task: int, out_dim: int, rank: int) -> None:
        super().__init__()
        n_experts = task + 1
        alive = proj.alive_mask(n_experts)
        alive[task] = True
        old_ids = sorted(proj.experts)
        downs = [proj.experts[e].down.float() for e in old_ids]
        ups = [proj.experts[e].up.float() for e in old_ids]
        self.register_buffer("router", proj.router(n_experts), persistent=False)
        self.register_buffer("alive", alive, persistent=False)
        self.register_buffer("old_ids", torch.tensor(old_ids, dtype=torch.long), persistent=False)
        self.register_buffer("old_downs", torch.stack(downs) if downs else torch.zeros(0, proj.in_dim, rank),
                             persistent=False)
        self.register_buffer("old_ups", torch.stack(ups) if ups else torch.zeros(0, rank, out_dim), persistent=False)


class ExpertTrainer(torch.nn.Module):
    """The trainable state of one task over a frozen bank; `export()` turns it into the next bank.

    `concept_inputs` [N, D] are the gate inputs of the concept's captions with the token at its start value;
    `neutral_inputs` [Z, D] those of prompts that must not route to the new expert (`plain_prompts`: the empty
    prompt, the plain class prompts and the concept's captions without the trigger).
    """

    def __init__(
        self,
        bank: ExpertBank,
        token_init: torch.Tensor,
        settings: TrainSettings,
        concept_inputs: torch.Tensor,
        neutral_inputs: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        context_dim = _checked_context_dim(bank, token_init, concept_inputs, neutral_inputs)
        neutral_inputs = torch.zeros(0, context_dim) if neutral_inputs is None else neutral_inputs
        self.bank = bank
        self.settings = settings
        self.task = bank.num_tasks + 1
        self.top_k = bank.config.top_k
        self.distill_lambda = bank.config.distill_lambda if settings.distill_lambda is None else settings.distill_lambda
        self.names = bank.projection_names()
        self.index = {name: i for i, name in enumerate(self.names)}
        old = [c.gate_input.float() for c in sorted(bank.concepts, key=lambda c: c.task)]
        self.register_buffer(
            "old_gate_inputs", torch.stack(old) if old else torch.zeros(0, context_dim), persistent=False
        )
        protected = neutral_inputs.float()
        if settings.distill_mode == "exact":
            protected = torch.cat([self.old_gate_inputs, protected])
        self.register_buffer("protected_inputs", protected, persistent=False)
        concept_mean = concept_inputs.float().mean(0)
        # The concept's gate input moves as its token trains: a running mean of the batches' gate inputs, from
        # which the routing directions are recomputed after every step (and from the final one at export).
        self.register_buffer("concept_gate", concept_mean.clone(), persistent=False)
        self.register_buffer("own_direction", torch.zeros(context_dim), persistent=False)
        self.register_buffer("away_direction", torch.zeros(context_dim), persistent=False)
        self.refresh_directions_()
        self.prior_rows = 0  # trailing batch rows that are class-prior images (`training_step` sets it)
        gen = torch.Generator().manual_seed(settings.seed)
        rank = bank.config.rank
        frozen, downs, ups, scores = [], [], [], []
        for layer in bank.layers:
            for name in layer.projection_names():
                state = FrozenProjection(bank.projections[name], self.task, layer.out_dim, rank)
                frozen.append(state)
                # nn.Linear's default init for `down` (Kaiming-uniform, a=sqrt(5)), zeros for `up`: the new
                # expert starts as an exact no-op, as in the reference.
                bound = 1.0 / math.sqrt(layer.in_dim)
                downs.append(torch.nn.Parameter((torch.rand(layer.in_dim, rank, generator=gen) * 2 - 1) * bound))
                ups.append(torch.nn.Parameter(torch.zeros(rank, layer.out_dim)))
                start = torch.zeros(self.task)
                start[-1] = self._even_start(concept_mean @ state.router, state.alive) if self.distinct_share else 0.0
                scores.append(torch.nn.Parameter(start))
        self.frozen = torch.nn.ModuleList(frozen)  # per projection, in `names` order: what the task does not train
        self.downs = torch.nn.ParameterList(downs)
        self.ups = torch.nn.ParameterList(ups)
        self.route_scores = torch.nn.ParameterList(scores)  # per projection: score of experts 1..t along `own`
        self.token = torch.nn.Parameter(token_init.detach().float().clone())
        self.register_buffer("steps_done", torch.zeros((), dtype=torch.long), persistent=False)
        self._follow_warmup()

    @property
    def experts_learning(self) -> bool:
        """Whether the token's warm-up is over, so the new expert and its gate scores learn this step."""
        return int(self.steps_done) >= self.settings.warmup_steps

    def _follow_warmup(self) -> None:
        """The new expert and its gate scores learn only once the token's warm-up is over: while their
        gradients are None the optimizer leaves them (and its moments of them) untouched."""
        for param in (*self.downs, *self.ups, *self.route_scores):
            param.requires_grad_(self.experts_learning)

    def _even_start(self, old_scores: torch.Tensor, alive: torch.Tensor) -> float:
        """The new expert's start score: the log-sum of the rest of its training mixture (so its share is 0.5),
        with that mixture chosen by the same rule as `training_coefficients`."""
        ids = torch.arange(old_scores.shape[0])
        candidates = alive.bool() & (ids >= 1) & (ids < self.task)
        chosen = select_experts(old_scores[None], candidates, min(self.task - 1, self.top_k - 1), ids == AUX_EXPERT)
        return float(torch.logsumexp(old_scores[chosen[0]], dim=0))

    @torch.no_grad()
    def refresh_directions_(self, concept: torch.Tensor | None = None) -> RoutingDirections:
        """Recompute u and w for the concept's current (or the given) mean gate input."""
        directions = routing_directions(self.concept_gate if concept is None else concept, self.protected_inputs)
        self.distinct_share = directions.distinct_share
        self.own_direction.copy_(directions.own)
        self.away_direction.copy_(directions.away * float(self.settings.new_expert_margin))
        return directions

    @torch.no_grad()
    def observe_gate_inputs(self, m: torch.Tensor) -> None:
        """Track the gate input of the concept's captions from a batch [B, D] (running mean, factor 0.9)."""
        self.concept_gate.mul_(GATE_INPUT_MOMENTUM).add_(m.detach().float().mean(0), alpha=1 - GATE_INPUT_MOMENTUM)

    # ---- routing and deltas ----------------------------------------------------------------------------------
    def router_increment(self, i: int) -> torch.Tensor:
        """ΔR_t of projection i [D, t+1]: a_e·u on the columns of experts 1..t, plus margin·w on the new one."""
        own = self.own_direction[:, None] * torch.cat([self.route_scores[i].new_zeros(1), self.route_scores[i]])
        away = torch.zeros_like(own)
        away[:, -1] = self.away_direction
        return own + away

    def router(self, i: int) -> torch.Tensor:
        return self.frozen[i].router + self.router_increment(i)

    def coefficients(self, i: int, m: torch.Tensor) -> torch.Tensor:
        """[B, t+1] mixture for gate inputs m [B, D] in projection i (SAE, or the inference rule when ablated)."""
        router, alive = self.router(i), self.frozen[i].alive.cpu()
        if self.settings.selective_activation:
            return training_coefficients(m, router, alive, self.task, self.top_k)
        # ablation: the new expert must win its place among the top-k like any other
        return inference_coefficients(m, router, alive, self.top_k, aux_in_softmax=True)

    def named_delta(self, name: str, context: torch.Tensor) -> torch.Tensor:
        """`delta` by projection name, as hosts call it."""
        return self.delta(self.index[name], context)

    def delta(self, i: int, context: torch.Tensor) -> torch.Tensor:
        """ΔK or ΔV of projection i for a context [B, N, D], differentiable in the trainable state.

        The last `prior_rows` rows (class-prior images) are mixed as the concept's own prompt is, with the
        mixture detached: the prior loss shapes the new expert's weights, never the gate."""
        coeffs = self.coefficients(i, gate_input(context))
        if self.prior_rows:
            own = self.coefficients(i, self.concept_gate[None].to(coeffs.device)).detach()
            coeffs = torch.cat([coeffs[: -self.prior_rows], own.expand(self.prior_rows, -1)])
        frozen = self.frozen[i]
        ids = torch.cat([frozen.old_ids, torch.tensor([self.task], device=frozen.old_ids.device)])
        downs = torch.cat([frozen.old_downs, self.downs[i][None]])
        ups = torch.cat([frozen.old_ups, self.ups[i][None]])
        g = coeffs.index_select(1, ids.to(coeffs.device))
        return expert_delta(context.float(), g, downs, ups).to(context.dtype)

    # ---- routing distillation --------------------------------------------------------------------------------
    def distill_loss(self) -> torch.Tensor:
        """Reference form, `soft` mode only: Σ over projections of ‖M_old · ΔR_t‖_F (zero in task 1). In `exact`
        mode ΔR_t is zero on old prompts by construction."""
        if self.settings.distill_mode != "soft" or self.old_gate_inputs.shape[0] == 0:
            return self.token.new_zeros(())
        m = self.old_gate_inputs
        return sum(torch.linalg.matrix_norm(m @ self.router_increment(i)) for i in range(len(self.names)))

    # ---- optimisation ----------------------------------------------------------------------------------------
    def optimizer(self) -> torch.optim.Optimizer:
        groups = [
            {"params": [*self.downs, *self.ups], "lr": self.settings.lr_experts},
            {"params": list(self.route_scores), "lr": self.settings.lr_router},
            {"params": [self.token], "lr": self.settings.lr_token},
        ]
        if self.settings.optimizer == "SGD":
            return torch.optim.SGD(groups)
        return getattr(torch.optim, self.settings.optimizer)(groups, **({"weight_decay": 0.0}))

    def timestep_bias(self) -> float:
        """The draw's exponent for the next step: the reference's uniform draw during the token warm-up (the token
        learns the whole look), the setting's bias once the experts learn."""
        return self.settings.timestep_bias if self.experts_learning else 0.0

    def after_step(self) -> None:
        """Follow the token: old prompts stay protected whatever the directions, by their construction."""
        self.refresh_directions_()
        self.steps_done += 1
        self._follow_warmup()

    # ---- resuming --------------------------------------------------------------------------------------------
    def resumable_state(self) -> dict[str, torch.Tensor]:
        """What the next steps depend on besides the optimizer: the trained tensors, the tracked gate input and the
        step count (the token warm-up reads it)."""
        return {**dict(self.named_parameters()), "concept_gate": self.concept_gate, "steps_done": self.steps_done}

    def check_state(self, tensors: dict[str, torch.Tensor]) -> None:
        """Raise ValueError unless `tensors` are this trainer's resumable state, name for name, shape for shape."""
        own = self.resumable_state()
        if set(tensors) != set(own) or any(tuple(tensors[k].shape) != tuple(v.shape) for k, v in own.items()):
            raise ValueError("its tensors are not this trainer's")

    @torch.no_grad()
    def restore_state(self, tensors: dict[str, torch.Tensor]) -> None:
        self.check_state(tensors)
        own = self.resumable_state()
        for name, value in own.items():
            value.copy_(tensors[name].to(value.device, value.dtype))
        self.refresh_directions_()
        self._follow_warmup()

    # ---- result ----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def export(self, name: str, token: str, class_word: str, gate_inputs: torch.Tensor) -> ExpertBank:
        """The next bank: old experts with updated gate columns, the new expert everywhere (prune afterwards)."""
        self.refresh_directions_(gate_inputs.detach().float().mean(0).to(self.concept_gate.device))
        projections = {}
        for layer in self.bank.layers:
            for pname in layer.projection_names():
                i = self.index[pname]
                proj = self.bank.projections[pname]
                router = self.router(i).detach().cpu()
                experts = {e: replace(x, gate=router[:, e].clone()) for e, x in proj.experts.items()}
                experts[self.task] = LoraExpert(
                    down=self.downs[i].detach().cpu().clone(),
                    up=self.ups[i].detach().cpu().clone(),
                    gate=router[:, self.task].clone(),
                )
                projections[pname] = ProjectionExperts(in_dim=proj.in_dim, experts=experts)
        concept = Concept(
            name=name,
            token=token,
            class_word=class_word,
            task=self.task,
            embedding=self.token.detach().cpu().clone(),
            gate_input=gate_inputs.detach().float().mean(0).cpu(),
        )
        return self.bank.with_concept(concept, projections)


@dataclass
class _TrainEntry:
    context: torch.Tensor


NamedDelta = Callable[[str, torch.Tensor], "torch.Tensor | None"]  # (projection name, context) -> ΔK/ΔV or None


class TrainingRuntime:
    """The runtime interface the host patch expects (entry_for / delta), backed by a trainable's delta by
    projection name: no caching, gradients flow into the trainable state."""

    has_experts = True

    def __init__(self, delta: NamedDelta) -> None:
        self.named_delta = delta

    def entry_for(
        self, context: torch.Tensor, cond_or_uncond: list[int] | None, cond_ids: list[object] | None = None
    ) -> _TrainEntry:
        return _TrainEntry(context)

    def delta(self, entry: _TrainEntry, name: str) -> torch.Tensor | None:
        return self.named_delta(name, entry.context)
