"""Learning one concept as a new task (a new expert per projection, a router increment, a token), host-free.

Trainable: the new expert of task t in every projection, the router increment R_t (columns of experts 1..t; the
auxiliary column stays zero) and the trigger token's input embedding. Frozen: the base model, old experts, the
summed router of earlier tasks. Loss: ε-prediction MSE on random timesteps plus λ·routing distillation.

Selective activation (SAE): while training task t the gate always includes the auxiliary expert and expert t,
plus the top-k' old experts (k' = min(t-1, K-1)). Routing distillation (RDM): the reference penalty
λ·Σ‖M_old·R_t‖_F on the stored gate inputs of old concepts, and, by default, its exact form: after every step
R_t is projected so that M_old·R_t = 0 on the old experts' columns (old concepts keep exactly the gate scores
they had) and the new expert scores `-margin` on every old concept's stored prompt embedding. Margin 0 (default)
is the λ→∞ limit of the reference term: the new expert ties with the auxiliary expert on old prompts, so old
concepts keep their gate scores exactly but give the new expert the auxiliary expert's share. A margin of m caps
that share at e^-m (20: ~2e-9, outputs unchanged to float precision), at a price: prompt embeddings of different
concepts are strongly correlated, so the new expert's own gate weight is pushed down too; it then learns through
larger weights, and layer-wise pruning (which reads gate weights) removes more of it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch

from ..bank.expert_bank import Concept, ExpertBank, ProjectionExperts
from ..bank.experts import LoraExpert, expert_delta
from ..errors import InvalidInputError
from ..moe.routing import gate_input, inference_coefficients, training_coefficients

DISTILL_MODES = ("exact", "soft", "off")
OPTIMIZERS = ("AdamW", "Adam", "SGD")


@dataclass(frozen=True)
class TrainSettings:
    """Reference defaults (800 steps, batch 2, AdamW, lr 1e-4 for experts and router, 1e-3 for the token);
    `distill_lambda` falls back to the bank's when None."""

    steps: int = 800
    batch_size: int = 2
    lr_experts: float = 1e-4
    lr_router: float = 1e-4
    lr_token: float = 1e-3
    distill_lambda: float | None = None
    distill_mode: str = "exact"
    selective_activation: bool = True
    new_expert_margin: float = 0.0
    optimizer: str = "AdamW"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise InvalidInputError("steps and batch size must be at least 1.")
        for name in ("lr_experts", "lr_router", "lr_token"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise InvalidInputError(f"{name} must be a finite number >= 0, got {value}.")
        if self.distill_mode not in DISTILL_MODES:
            raise InvalidInputError(f"distill_mode must be one of {DISTILL_MODES}, got {self.distill_mode!r}.")
        if self.optimizer not in OPTIMIZERS:
            raise InvalidInputError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}.")


class ExpertTrainer(torch.nn.Module):
    """The trainable state of one task over a frozen bank; `export()` turns it into the next bank."""

    def __init__(self, bank: ExpertBank, token_init: torch.Tensor, settings: TrainSettings) -> None:
        super().__init__()
        if token_init.ndim != 2 or token_init.shape[1] != bank.token_dim:
            raise InvalidInputError(f"token embedding must be [n, {bank.token_dim}], got {tuple(token_init.shape)}")
        self.bank = bank
        self.settings = settings
        self.task = bank.num_tasks + 1
        self.top_k = bank.config.top_k
        self.distill_lambda = bank.config.distill_lambda if settings.distill_lambda is None else settings.distill_lambda
        gen = torch.Generator().manual_seed(settings.seed)
        self.names = bank.projection_names()
        self.index = {name: i for i, name in enumerate(self.names)}
        n_experts = self.task + 1
        rank = bank.config.rank
        downs, ups, incs = [], [], []
        for layer in bank.layers:
            for name in layer.projection_names():
                proj = bank.projections[name]
                i = self.index[name]
                self.register_buffer(f"router_{i}", proj.router(n_experts), persistent=False)
                alive = proj.alive_mask(n_experts)
                alive[self.task] = True
                self.register_buffer(f"alive_{i}", alive, persistent=False)
                old_ids = sorted(proj.experts)
                self.register_buffer(f"old_ids_{i}", torch.tensor(old_ids, dtype=torch.long), persistent=False)
                self.register_buffer(
                    f"old_downs_{i}",
                    torch.stack([proj.experts[e].down.float() for e in old_ids]) if old_ids
                    else torch.zeros(0, layer.in_dim, rank),
                    persistent=False,
                )
                self.register_buffer(
                    f"old_ups_{i}",
                    torch.stack([proj.experts[e].up.float() for e in old_ids]) if old_ids
                    else torch.zeros(0, rank, layer.out_dim),
                    persistent=False,
                )
                # nn.Linear's default init for `down` (Kaiming-uniform, a=sqrt(5)), zeros for `up`: the new
                # expert starts as an exact no-op, as in the reference.
                bound = 1.0 / math.sqrt(layer.in_dim)
                downs.append(torch.nn.Parameter((torch.rand(layer.in_dim, rank, generator=gen) * 2 - 1) * bound))
                ups.append(torch.nn.Parameter(torch.zeros(rank, layer.out_dim)))
                incs.append(torch.nn.Parameter(torch.zeros(layer.in_dim, self.task)))  # columns 1..t
        self.downs = torch.nn.ParameterList(downs)
        self.ups = torch.nn.ParameterList(ups)
        self.router_incs = torch.nn.ParameterList(incs)
        self.token = torch.nn.Parameter(token_init.detach().float().clone())
        old = [c.gate_input.float() for c in sorted(bank.concepts, key=lambda c: c.task)]
        self.register_buffer(
            "old_gate_inputs", torch.stack(old) if old else torch.zeros(0, bank.layers[0].in_dim), persistent=False
        )
        if settings.distill_mode == "exact":
            self.project_routers_()

    # ---- routing and deltas ----------------------------------------------------------------------------------
    def router(self, i: int) -> torch.Tensor:
        base = getattr(self, f"router_{i}")
        inc = self.router_incs[i]
        return base + torch.cat([torch.zeros_like(inc[:, :1]), inc], dim=1)

    def coefficients(self, i: int, m: torch.Tensor) -> torch.Tensor:
        """[B, t+1] mixture for gate inputs m [B, D] in projection i (SAE, or the inference rule when ablated)."""
        router, alive = self.router(i), getattr(self, f"alive_{i}").cpu()
        if self.settings.selective_activation:
            return training_coefficients(m, router, alive, self.task, self.top_k)
        # ablation: the new expert must win its place among the top-k like any other
        return inference_coefficients(m, router, alive, self.top_k, aux_in_softmax=True)

    def delta(self, i: int, context: torch.Tensor) -> torch.Tensor:
        """ΔK or ΔV of projection i for a context [B, N, D], differentiable in the trainable state."""
        coeffs = self.coefficients(i, gate_input(context))
        old_ids = getattr(self, f"old_ids_{i}")
        ids = torch.cat([old_ids, torch.tensor([self.task], device=old_ids.device)])
        downs = torch.cat([getattr(self, f"old_downs_{i}"), self.downs[i][None]])
        ups = torch.cat([getattr(self, f"old_ups_{i}"), self.ups[i][None]])
        g = coeffs.index_select(1, ids.to(coeffs.device))
        return expert_delta(context.float(), g, downs, ups).to(context.dtype)

    # ---- routing distillation --------------------------------------------------------------------------------
    def distill_loss(self) -> torch.Tensor:
        """Reference form: Σ over projections of ‖M_old · R_t‖_F (zero in task 1)."""
        if self.settings.distill_mode == "off" or self.old_gate_inputs.shape[0] == 0:
            return self.token.new_zeros(())
        return sum(torch.linalg.matrix_norm(self.old_gate_inputs @ inc) for inc in self.router_incs)

    @torch.no_grad()
    def project_routers_(self) -> None:
        """Exact RDM: M·R_t = 0 on old columns, M·R_t = -margin on the new column (least-change projection)."""
        m = self.old_gate_inputs
        if m.shape[0] == 0:
            return
        pinv = torch.linalg.pinv(m.double())  # [D, J]
        margin = -float(self.settings.new_expert_margin)
        target = torch.full((m.shape[0],), margin, dtype=torch.float64, device=m.device)
        for inc in self.router_incs:
            work = inc.double()
            work[:, :-1] -= pinv @ (m.double() @ work[:, :-1])
            work[:, -1] -= pinv @ (m.double() @ work[:, -1] - target)
            inc.copy_(work.to(inc.dtype))

    # ---- optimisation ----------------------------------------------------------------------------------------
    def optimizer(self) -> torch.optim.Optimizer:
        groups = [
            {"params": [*self.downs, *self.ups], "lr": self.settings.lr_experts},
            {"params": list(self.router_incs), "lr": self.settings.lr_router},
            {"params": [self.token], "lr": self.settings.lr_token},
        ]
        if self.settings.optimizer == "SGD":
            return torch.optim.SGD(groups)
        return getattr(torch.optim, self.settings.optimizer)(groups, **({"weight_decay": 0.0}))

    def after_step(self) -> None:
        if self.settings.distill_mode == "exact":
            self.project_routers_()

    # ---- result ----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def export(self, name: str, token: str, class_word: str, gate_inputs: torch.Tensor) -> ExpertBank:
        """The next bank: old experts with updated gate columns, the new expert everywhere (prune afterwards)."""
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


@dataclass(frozen=True)
class StepResult:
    loss: float
    mse: float
    distill: float


def training_step(
    trainer: ExpertTrainer,
    optimizer: torch.optim.Optimizer,
    predict_noise: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    encode: Callable[[Sequence[str]], torch.Tensor],
    latents: torch.Tensor,
    captions: Sequence[str],
    sigmas: torch.Tensor,
    generator: torch.Generator,
) -> StepResult:
    """One optimizer step: a random batch, random timesteps, x_t = x0 + σ·ε, loss = MSE(ε̂, ε) + λ·RDM.

    `predict_noise(x_t, sigma, context)` is the frozen denoiser with this trainer's deltas applied;
    `encode(captions)` the text encoder with the trainable token embedding in place.
    """
    n = latents.shape[0]
    batch = trainer.settings.batch_size
    rows = torch.randint(0, n, (batch,), generator=generator)
    steps = torch.randint(0, sigmas.shape[0], (batch,), generator=generator)
    noise = torch.randn((batch, *latents.shape[1:]), generator=generator)
    device = latents.device
    x0 = latents[rows.to(device)]
    sigma = sigmas[steps].to(device, x0.dtype)
    noise = noise.to(device, x0.dtype)
    x_t = x0 + noise * sigma.view(-1, *([1] * (x0.ndim - 1)))
    context = encode([captions[int(r)] for r in rows])
    mse = torch.nn.functional.mse_loss(predict_noise(x_t, sigma, context).float(), noise.float())
    distill = trainer.distill_loss()
    loss = mse + trainer.distill_lambda * distill
    if not torch.isfinite(loss):
        raise InvalidInputError(
            f"Training diverged (loss {loss.item()}); lower the learning rates or check the images and model."
        )
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    trainer.after_step()
    return StepResult(float(loss.detach()), float(mse.detach()), float(distill.detach()))


@dataclass
class _TrainEntry:
    context: torch.Tensor


class TrainingRuntime:
    """The runtime interface the host patch expects (entry_for / delta), backed by a trainer: no caching,
    gradients flow into the trainable state."""

    has_experts = True

    def __init__(self, trainer: ExpertTrainer) -> None:
        self.trainer = trainer

    def entry_for(
        self, context: torch.Tensor, cond_or_uncond: list[int] | None, cond_ids: list[object] | None = None
    ) -> _TrainEntry:
        return _TrainEntry(context)

    def delta(self, entry: _TrainEntry, name: str) -> torch.Tensor:
        return self.trainer.delta(self.trainer.index[name], entry.context)
