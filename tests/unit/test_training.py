"""The core training loop on the toy world: learning, forgetting, the two mechanisms that prevent it, pruning."""

from __future__ import annotations

import pytest
import torch

import r2moe_core as core
from r2moe_core.train.trainer import ExpertTrainer, TrainSettings
from r2moe_testkit.toy_tasks import ToyWorld, eval_loss, learn, prediction

DOG, CAT = "photo of <dog1> dog", "photo of <cat1> cat"


@pytest.fixture(scope="module")
def world():
    return ToyWorld.make()


@pytest.fixture(scope="module")
def after_dog(world):
    return learn(world, world.bank, "dog", seed=1)[0]


def test_a_concept_is_learned(world, after_dog):
    base, learned = eval_loss(world, world.bank, "dog", 1), eval_loss(world, after_dog, "dog", 1)
    assert learned < 0.7 * base, f"denoising error on the concept's images: {base:.3f} -> {learned:.3f}"
    assert after_dog.concepts[0].task == 1 and after_dog.expert_count() == len(after_dog.projection_names())


def _old_scores(bank, gate_in):
    return {n: (gate_in[None] @ p.router(bank.num_experts))[0] for n, p in bank.projections.items()}


def test_distillation_keeps_old_gate_scores_and_limits_forgetting(world, after_dog):
    before = prediction(world, after_dog, DOG)
    with_rdm, _ = learn(world, after_dog, "cat", seed=2)
    without_rdm, _ = learn(world, after_dog, "cat", seed=2, distill_mode="off")
    dog_in = after_dog.concepts[0].gate_input
    old, new = _old_scores(after_dog, dog_in), _old_scores(with_rdm, dog_in)
    for name in old:  # exact RDM: the dog's scores for experts 0 and 1 do not move, the cat's expert sits at -margin
        assert torch.allclose(new[name][:2], old[name][:2], atol=1e-4)
        assert float(new[name][2]) == pytest.approx(-TrainSettings().new_expert_margin, abs=1e-3)
    drift = (prediction(world, with_rdm, DOG) - before).abs().max().item()
    drift_off = (prediction(world, without_rdm, DOG) - before).abs().max().item()
    assert drift < 0.6 * drift_off, f"distillation must reduce forgetting: {drift} vs {drift_off} without"
    assert eval_loss(world, with_rdm, "cat", 2) < 0.7 * eval_loss(world, after_dog, "cat", 2), "cat must be learned"


def test_with_a_margin_an_old_concept_is_unchanged_to_float_precision(world, after_dog):
    before = prediction(world, after_dog, DOG)
    isolated, _ = learn(world, after_dog, "cat", seed=2, new_expert_margin=20.0)
    no_rdm, _ = learn(world, after_dog, "cat", seed=2, new_expert_margin=20.0, distill_mode="off")
    assert (prediction(world, isolated, DOG) - before).abs().max().item() < 1e-4
    assert (prediction(world, no_rdm, DOG) - before).abs().max().item() > 1e-2
    assert eval_loss(world, isolated, "cat", 2) < 0.7 * eval_loss(world, after_dog, "cat", 2), "cat must be learned"


def test_selective_activation_trains_the_new_expert_even_when_old_experts_win_the_gate():
    from dataclasses import replace

    top1 = ToyWorld.make(top_k=1)
    dog, _ = learn(top1, top1.bank, "dog", seed=1, steps=5)
    cat_in = core.gate_input(top1.encoder([CAT], {}))[0]
    dominant = {  # the dog's expert scores 50 on the cat's prompt: a plain top-1 gate never picks anything else
        n: replace(p, experts={1: replace(p.experts[1], gate=50.0 * cat_in / cat_in.square().sum())})
        for n, p in dog.projections.items()
    }
    dog = replace(dog, projections=dominant)
    with_sae, _ = learn(top1, dog, "cat", seed=2, steps=3)
    without_sae, _ = learn(top1, dog, "cat", seed=2, steps=3, selective_activation=False)
    assert all(torch.count_nonzero(p.experts[2].up) > 0 for p in with_sae.projections.values())
    assert all(torch.count_nonzero(p.experts[2].up) == 0 for p in without_sae.projections.values())


def test_training_is_deterministic_for_a_seed(world):
    a, losses_a = learn(world, world.bank, "dog", seed=5, steps=20)
    b, losses_b = learn(world, world.bank, "dog", seed=5, steps=20)
    assert losses_a == losses_b
    name = a.projection_names()[3]
    assert torch.equal(a.projections[name].experts[1].down, b.projections[name].experts[1].down)
    assert torch.equal(a.concepts[0].embedding, b.concepts[0].embedding)


def test_fully_pruned_concept_costs_only_its_record(world, after_dog):
    cat, _ = learn(world, after_dog, "cat", seed=2, steps=30)
    pruned, report = core.prune_task(cat, task=2, threshold=1.0)
    assert len(report.removed) == len(cat.projection_names())
    growth = len(core.bank_to_bytes(pruned)) - len(core.bank_to_bytes(after_dog))
    record = pruned.concepts[1].embedding.numel() * 4 + pruned.concepts[1].gate_input.numel() * 4
    assert record <= growth < record + 1024, f"file grew by {growth} bytes for a {record}-byte concept record"
    unpruned, report0 = core.prune_task(cat, task=2, threshold=0.0)
    assert report0.removed == () and unpruned.expert_count() == cat.expert_count()


def test_non_finite_loss_is_a_clear_error(world):
    from r2moe_core.train.step import TrainingData, training_step

    start = world.encoder.word("dog")[None]
    concept_in = core.gate_input(world.encoder([DOG], {"<dog1>": start}))
    trainer = ExpertTrainer(world.bank, start, TrainSettings(steps=1), concept_in)
    latents = torch.full((2, 4, 4, 4), float("nan"))
    with pytest.raises(core.InvalidInputError, match="diverged"):
        training_step(
            trainer, trainer.optimizer(),
            lambda x, s, c: world.denoiser(x, s, c), lambda t: world.encoder(list(t), {}),
            TrainingData(latents, ["a", "b"]), torch.ones(10), torch.Generator().manual_seed(0),
        )


def high_noise_shares(world, settings: TrainSettings) -> list[float]:
    """Per training step, the share of its batch drawn from the noisier half of 1000 timesteps."""
    from r2moe_core.train.step import TrainingData, training_step

    start = world.encoder.word("dog")[None]
    concept_in = core.gate_input(world.encoder([DOG], {"<dog1>": start}))
    trainer = ExpertTrainer(world.bank, start, settings, concept_in)
    sigmas = torch.arange(1.0, 1001.0)  # σ = t + 1: the drawn timestep can be read back from σ
    shares: list[float] = []

    def predict(x, sigma, context):
        shares.append((sigma > 500).float().mean().item())
        return world.denoiser(x, sigma, context, lambda proj, ctx: trainer.delta(trainer.index[proj], ctx))

    data = TrainingData(torch.randn(2, 4, 4, 4), [DOG, DOG])
    optimizer, gen = trainer.optimizer(), torch.Generator().manual_seed(0)
    for _ in range(settings.steps):
        training_step(trainer, optimizer, predict, lambda t: world.encoder(list(t), {"<dog1>": trainer.token}), data,
                      sigmas, gen)
    return shares


@pytest.mark.parametrize("bias", [0.0, 1.0, 3.0])
def test_timestep_bias_moves_the_noise_levels_trained_on(world, bias):
    """Noise levels are drawn with density ∝ (t/T)^bias: the share above the middle timestep is 1 - 0.5^(bias+1),
    so a bias of 1 trains three quarters of the steps on the noisier half."""
    (share,) = high_noise_shares(world, TrainSettings(steps=1, batch_size=400, timestep_bias=bias))
    assert abs(share - (1 - 0.5 ** (bias + 1))) < 0.06


def test_token_warmup_draws_uniformly_and_the_bias_starts_with_the_experts(world):
    shares = high_noise_shares(world, TrainSettings(steps=2, batch_size=400, timestep_bias=3.0, token_warmup=0.5))
    assert abs(shares[0] - 0.5) < 0.06 and abs(shares[1] - 0.9375) < 0.06


def test_bad_settings_are_refused():
    with pytest.raises(core.InvalidInputError, match="distill_mode"):
        TrainSettings(distill_mode="strong")
    with pytest.raises(core.InvalidInputError, match="lr_token"):
        TrainSettings(lr_token=float("nan"))
    with pytest.raises(core.InvalidInputError, match="timestep_bias"):
        TrainSettings(timestep_bias=-1.0)
