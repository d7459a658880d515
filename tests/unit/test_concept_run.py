"""One concept's run through the core (`r2moe_core.train.concept_run`) on the toy world: what the node and the
benchmark both call."""

from __future__ import annotations

from dataclasses import dataclass, replace

import pytest
import torch

import r2moe_core as core
from r2moe_core.bank.expert_bank import ConceptIdentity
from r2moe_core.train.concept_run import RunHooks, run_concept
from r2moe_core.train.step import TrainingData
from r2moe_core.train.trainer import TrainSettings
from r2moe_testkit.toy_tasks import SIGMAS, ToyWorld, concept_latents, eval_loss

DOG = ConceptIdentity("dog", "<dog1>", "dog")
CAPTIONS = ["photo of <dog1> dog"] * 4
SETTINGS = TrainSettings(steps=120, lr_experts=3e-2, lr_router=3e-2, lr_token=1e-2, seed=1)


@dataclass
class ToyHost:
    """The toy world as a `TrainingHost`; `cancel_at` raises at that step, as a user's Cancel would."""

    world: ToyWorld
    cancel_at: int = 0
    sigmas: torch.Tensor = SIGMAS
    device: torch.device = torch.device("cpu")  # noqa: RUF009 (a constant)
    checks: int = 0

    def encoder(self, token, vector):
        return lambda texts: self.world.encoder(list(texts), {token: vector})

    def noise_predictor(self, delta):
        def added(proj, ctx):
            d = delta(proj, ctx)
            return 0 if d is None else d

        return lambda x, sigma, context: self.world.denoiser(x, sigma, context, added)

    def check_interrupted(self):
        self.checks += 1
        if self.checks == self.cancel_at:
            raise RuntimeError("cancelled")


@pytest.fixture(scope="module")
def world():
    return ToyWorld.make()


def _data() -> TrainingData:
    return TrainingData(concept_latents(1), CAPTIONS)


def test_a_run_learns_the_concept_and_prunes_with_the_banks_threshold(world):
    bank = replace(world.bank, config=replace(world.bank.config, prune_threshold=1.0))
    result = run_concept(ToyHost(world), bank, DOG, world.encoder.word("dog")[None], _data(), SETTINGS)
    assert result.prune.threshold == 1.0 and not result.prune.kept, "the bank's τ = 1 removes the whole expert"
    assert len(result.losses) == SETTINGS.steps
    kept = run_concept(ToyHost(world), bank, DOG, world.encoder.word("dog")[None], _data(), SETTINGS,
                       prune_threshold=0.0)
    assert kept.prune.threshold == 0.0 and not kept.prune.removed, "a run's own τ overrides the bank's"
    before, after = eval_loss(world, world.bank, "dog", 1), eval_loss(world, kept.bank, "dog", 1)
    assert after < 0.7 * before, f"denoising error on the concept's images: {before:.3f} -> {after:.3f}"
    assert [c.name for c in kept.bank.concepts] == ["dog"] and not bank.concepts


def test_cancel_stops_the_run_at_the_next_step_and_the_bank_is_as_it_was(world):
    host = ToyHost(world, cancel_at=3)
    with pytest.raises(RuntimeError, match="cancelled"):
        run_concept(host, world.bank, DOG, world.encoder.word("dog")[None], _data(), SETTINGS)
    assert host.checks == 3 and not world.bank.concepts


def test_the_training_widgets_leave_bank_owned_settings_to_the_bank():
    request = core.ConceptRequest.from_options({"concept_name": "mug", "trigger_token": "<mug1>",
                                                "class_word": "mug", "prune_threshold": -1.0, "distill_lambda": -1.0})
    assert request.prune_threshold is None and request.settings.distill_lambda is None
    chosen = core.ConceptRequest.from_options({"concept_name": "mug", "trigger_token": "<mug1>",
                                               "class_word": "mug", "prune_threshold": 0.2, "distill_lambda": 0.5})
    assert chosen.prune_threshold == 0.2 and chosen.settings.distill_lambda == 0.5
    with pytest.raises(core.InvalidInputError, match="prune_threshold"):
        core.ConceptRequest.from_options({"concept_name": "mug", "trigger_token": "<mug1>", "class_word": "mug",
                                          "prune_threshold": -0.5})


@pytest.mark.parametrize(("token_warmup", "cancel_at", "resumed_from"), [(0.0, 25, 20), (0.5, 15, 10)])
def test_a_cancelled_run_resumes_from_its_checkpoint_and_ends_where_a_straight_run_ends(
    world, tmp_path, token_warmup, cancel_at, resumed_from
):
    """With a token warm-up of half the steps the second case resumes inside the warm-up and crosses its end."""
    from r2moe_core.bank.bank_file import bank_to_tensors
    from r2moe_core.train.resume import RunCheckpoint

    start = world.encoder.word("dog")[None]
    settings = replace(SETTINGS, steps=30, token_warmup=token_warmup)
    straight = run_concept(ToyHost(world), world.bank, DOG, start, _data(), settings)
    checkpoint = RunCheckpoint(tmp_path / "dog.pt", "key-1", every=10)
    with pytest.raises(RuntimeError, match="cancelled"):
        run_concept(ToyHost(world, cancel_at=cancel_at), world.bank, DOG, start, _data(), settings,
                    hooks=RunHooks(resume=checkpoint))
    assert checkpoint.writes == (cancel_at - 1) // 10 and checkpoint.path.is_file()
    again = RunCheckpoint(tmp_path / "dog.pt", "key-1", every=10)
    resumed = run_concept(ToyHost(world), world.bank, DOG, start, _data(), settings,
                          hooks=RunHooks(resume=again))
    assert again.resumed_from == resumed_from and not again.path.exists()
    assert resumed.losses == straight.losses
    a, b = bank_to_tensors(straight.bank)[0], bank_to_tensors(resumed.bank)[0]
    assert all(torch.equal(a[k], b[k]) for k in a), "the resumed run must end bit for bit where the straight one does"


def test_a_checkpoint_of_other_inputs_or_a_damaged_one_starts_afresh(world, tmp_path):
    from r2moe_core.train.resume import RunCheckpoint

    start = world.encoder.word("dog")[None]
    settings = replace(SETTINGS, steps=12)
    with pytest.raises(RuntimeError, match="cancelled"):
        run_concept(ToyHost(world, cancel_at=8), world.bank, DOG, start, _data(), settings,
                    hooks=RunHooks(resume=RunCheckpoint(tmp_path / "dog.pt", "key-1", every=5)))
    other = RunCheckpoint(tmp_path / "dog.pt", "key-2", every=5)
    run_concept(ToyHost(world), world.bank, DOG, start, _data(), settings, hooks=RunHooks(resume=other))
    assert other.resumed_from == 0
    (tmp_path / "dog.pt").write_bytes(b"not a checkpoint")
    damaged = RunCheckpoint(tmp_path / "dog.pt", "key-1", every=5)
    run_concept(ToyHost(world), world.bank, DOG, start, _data(), settings, hooks=RunHooks(resume=damaged))
    assert damaged.resumed_from == 0 and not damaged.path.exists()


def test_during_the_token_warm_up_only_the_token_learns_and_the_expert_learns_after_it(world):
    from r2moe_core.train.concept_run import fit, start_task

    settings = replace(SETTINGS, steps=20, token_warmup=0.5)
    assert settings.warmup_steps == 10
    host = ToyHost(world)
    trainer = start_task(host, world.bank, DOG, world.encoder.word("dog")[None], CAPTIONS, settings)
    token, scores = trainer.token.detach().clone(), [s.detach().clone() for s in trainer.route_scores]
    encode = host.encoder(DOG.token, trainer.token)
    fit(trainer, host, encode, _data(), steps=10)
    assert not torch.equal(trainer.token, token), "the token learns during the warm-up"
    assert all(not u.abs().sum() for u in trainer.ups), "the new expert must stay a no-op during the warm-up"
    assert all(torch.equal(a, b) for a, b in zip(trainer.route_scores, scores, strict=True))
    fit(trainer, host, encode, _data(), steps=10)
    assert any(u.abs().sum() > 0 for u in trainer.ups), "after the warm-up the new expert learns"
    assert any(not torch.equal(a, b) for a, b in zip(trainer.route_scores, scores, strict=True))


@pytest.mark.parametrize("share", [1.0, -0.1, float("nan")])
def test_a_token_warm_up_outside_zero_to_one_is_refused(share):
    with pytest.raises(core.InvalidInputError, match="token_warmup"):
        replace(SETTINGS, token_warmup=share)
