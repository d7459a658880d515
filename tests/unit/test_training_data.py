"""Training data beyond the photos: rescaled views with their caption words and loss masks, class-prior images
(cached, made once) and what prior preservation changes in a learned expert (toy world, real training loop)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from r2moe_core.bank.experts import expert_delta
from r2moe_core.errors import InvalidInputError
from r2moe_core.moe.routing import gate_input, inference_coefficients
from r2moe_core.train.augment import CLOSE_WORDS, FAR_WORDS, augmented_views
from r2moe_core.train.class_prior import PriorCache, PriorData, PriorKey
from r2moe_core.train.step import masked_mse
from r2moe_testkit.toy_tasks import SIGMAS, ToyWorld, concept_latents, learn

KEY = PriorKey("abc", "dog", 64, "euler/normal/25 steps/cfg 6.0")


def _photos(n: int = 3, res: int = 32) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return [torch.rand(res, res, 3, generator=gen) for _ in range(n)]


def test_views_keep_each_photo_and_add_rescaled_ones_with_matching_words_and_masks():
    views = augmented_views(_photos(), ["photo of a <d1> dog"] * 3, per_image=8, seed=1)
    assert len(views.captions) == 27 and views.pixels.shape == (27, 32, 32, 3)
    assert torch.equal(views.pixels[0], _photos()[0])  # the photo itself comes first, untouched
    far = close = 0
    for mask, caption in zip(views.masks, views.captions, strict=True):
        covered = float(mask.mean())
        if caption.startswith(FAR_WORDS):
            far += 1
            assert covered < 0.6**2 + 0.05, (caption, covered)  # the loss sees only the small photo
        elif caption.startswith(CLOSE_WORDS):
            close += 1
            assert covered == 1.0
        assert caption.endswith("photo of a <d1> dog")
    assert far and close
    again = augmented_views(_photos(), ["photo of a <d1> dog"] * 3, per_image=8, seed=1)
    assert torch.equal(views.pixels, again.pixels) and views.captions == again.captions
    assert augmented_views(_photos(), ["c"] * 3, per_image=0).captions == ["c"] * 3
    with pytest.raises(InvalidInputError, match="captions"):
        augmented_views(_photos(), ["c"], per_image=1)


def test_the_masked_loss_ignores_the_padding():
    prediction, target = torch.zeros(1, 4, 8, 8), torch.zeros(1, 4, 8, 8)
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., :4, :4] = 1.0
    target[..., 4:, :] = 100.0  # whatever the padding's target, it does not count
    assert float(masked_mse(prediction, target, mask)) == 0.0
    target[..., :4, :4] = 1.0
    assert float(masked_mse(prediction, target, mask)) == pytest.approx(1.0)


def test_class_prior_images_are_made_once_and_extended_only_by_the_missing_ones(tmp_path):
    calls: list[tuple[int, int]] = []

    def generate(first: int, n: int) -> torch.Tensor:
        calls.append((first, n))
        return torch.stack([torch.full((4, 8, 8), float(first + i)) for i in range(n)])

    cache = PriorCache(tmp_path)
    first = cache.get(KEY, 6, generate)
    assert calls == [(0, 4), (4, 2)] and first[:, 0, 0, 0].tolist() == [0, 1, 2, 3, 4, 5]
    assert torch.equal(cache.get(KEY, 5, generate), first[:5]) and len(calls) == 2  # from the cache, nothing made
    more = cache.get(KEY, 9, generate)
    assert calls[2:] == [(6, 3)] and more[:, 0, 0, 0].tolist() == list(range(9))
    other = PriorKey("abc", "cat", 64, KEY.sampler)
    assert cache.path(other) != cache.path(KEY)
    assert load_file(str(cache.path(KEY)))["latents"].shape[0] == 9


def test_a_cancelled_generation_keeps_the_finished_chunks_and_a_broken_file_is_rebuilt(tmp_path):
    def cancelled(first: int, n: int) -> torch.Tensor:
        if first >= 4:
            raise KeyboardInterrupt
        return torch.zeros(n, 4, 8, 8)

    cache = PriorCache(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        cache.get(KEY, 8, cancelled)
    assert cache.load(KEY).shape[0] == 4
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    cache.path(KEY).write_bytes(b"not a safetensors file")
    assert cache.get(KEY, 2, lambda first, n: torch.ones(n, 4, 8, 8)).shape[0] == 2


def test_prior_data_refuses_empty_latents_and_bad_weights():
    with pytest.raises(InvalidInputError, match="P >= 1"):
        PriorData(torch.zeros(0, 4, 8, 8), "photo of a dog")
    with pytest.raises(InvalidInputError, match="prior_weight"):
        PriorData(torch.zeros(1, 4, 8, 8), "photo of a dog", float("nan"))


def _error_with_concept_mixture(world: ToyWorld, bank, prompt: str, route_prompt: str, seed: int) -> float:
    """Denoising error on the latents of `seed` for `prompt`, with the experts mixed as for `route_prompt`."""
    tokens = {c.token: c.embedding for c in bank.concepts}
    context = world.encoder([prompt] * 4, tokens)
    m = gate_input(world.encoder([route_prompt], tokens)).expand(4, -1)
    n = bank.num_experts

    def delta(name, ctx):
        proj = bank.projections[name]
        ids = sorted(proj.experts)
        if not ids:
            return 0
        g = inference_coefficients(m, proj.router(n), proj.alive_mask(n), bank.config.top_k)[:, ids]
        downs = torch.stack([proj.experts[e].down for e in ids])
        return expert_delta(ctx, g, downs, torch.stack([proj.experts[e].up for e in ids]))

    gen = torch.Generator().manual_seed(7)
    noise = torch.randn(4, 4, 4, 4, generator=gen)
    sigma = SIGMAS[torch.randint(0, len(SIGMAS), (4,), generator=gen)]
    with torch.no_grad():
        x = concept_latents(seed) + noise * sigma.view(-1, 1, 1, 1)
        return float(torch.nn.functional.mse_loss(world.denoiser(x, sigma, context, delta), noise))


def test_prior_preservation_keeps_the_class_prompt_drawing_the_class_through_the_new_expert():
    """The prior rows pass through the new expert with the concept's own mixture: the expert learns to keep
    `photo of dog` drawing the class images even where it is applied, and the concept is learned as well."""
    world = ToyWorld.make()
    prior = PriorData(torch.cat([concept_latents(s) for s in (20, 21, 22, 23)]), "photo of dog", 1.0)
    own = "photo of <dog1> dog"
    plain, _ = learn(world, world.bank, "dog", seed=1)
    kept, _ = learn(world, world.bank, "dog", seed=1, prior=prior)
    without = _error_with_concept_mixture(world, plain, "photo of dog", own, 20)
    with_prior = _error_with_concept_mixture(world, kept, "photo of dog", own, 20)
    assert with_prior < 0.9 * without, (with_prior, without)
    base = _error_with_concept_mixture(world, world.bank, own, own, 1)
    assert _error_with_concept_mixture(world, kept, own, own, 1) < 0.5 * base
