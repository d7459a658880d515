"""Where the bank's experts act when a concept is drawn alone: each row keeps the experts on the layers it names
(read from the world UNet's query-token counts at 128 px) and nowhere else."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from expert_layers import ROWS, BankOnLayers, layers_for
from world.concepts import load_concepts
from world.methods import Budget, make_method
from world.protocol import ConceptData, World, train_task
from world.text import TextEncoder
from world.unet import UNet
from world.vae import WorldVAE

from r2moe_core.compose.grid_levels import grid_levels

CONCEPTS = Path(__file__).resolve().parents[2] / "bench" / "world" / "concepts_10.json"
ROW = dict(ROWS)


@pytest.fixture(scope="module")
def learned() -> tuple[World, object, ConceptData]:
    torch.manual_seed(0)
    world = World(UNet(), TextEncoder(), WorldVAE())
    concept = ConceptData.from_spec(load_concepts(CONCEPTS)[0], 3)
    method = make_method("r2moe", world.unet, Budget(steps=2, batch_size=1))
    train_task(world, method, concept, 2, seed=0)
    return world, method, concept


def _query_tokens(world: World) -> dict[str, int]:
    """Each cross-attention layer's query-token count on a 16x16 latent (a 128 px image)."""
    seen: dict[str, int] = {}

    def record(name: str, q: torch.Tensor, *_: object, **__: object) -> None:
        seen[name] = q.shape[1]

    with torch.no_grad():
        world.unet(torch.zeros(1, 4, 16, 16), torch.tensor([500.0]), world.empty, None, record)
    return seen


def test_each_row_keeps_the_experts_on_the_grids_it_names(learned) -> None:
    world, method, _ = learned
    tokens = _query_tokens(world)
    levels = grid_levels(world.unet, [layer.name for layer in method.bank.layers])
    assert set(levels) == set(tokens) and len(tokens) == 16
    assert layers_for(levels, ROW["every layer"]) is None
    assert layers_for(levels, ROW["the 2 finest grids"]) == {n for n, t in tokens.items() if t >= 64}
    assert layers_for(levels, ROW["the finest grid only"]) == {n for n, t in tokens.items() if t == 256}
    assert layers_for(levels, ROW["every grid but the 2 finest"]) == {n for n, t in tokens.items() if t < 64}
    assert layers_for(levels, ROW["no experts (the trigger token alone)"]) == frozenset()


def test_the_delta_is_the_banks_on_kept_layers_and_absent_elsewhere(learned) -> None:
    world, method, concept = learned
    prompts = [f"photo of a {concept.token} {concept.class_word} on the left, grass background"]
    context = world.text(prompts, method.tokens)
    levels = grid_levels(world.unet, [layer.name for layer in method.bank.layers])
    kept = layers_for(levels, ROW["the 2 finest grids"])
    full = method.sampling_delta(prompts, context)
    some = BankOnLayers(method, kept).sampling_delta(prompts, context)
    assert BankOnLayers(method, None).tokens is method.tokens
    for name in levels:
        for projection in ("to_k", "to_v"):
            expected = full(f"{name}.{projection}", context)
            got = some(f"{name}.{projection}", context)
            assert expected is not None and expected.abs().max() > 0
            if name in kept:
                torch.testing.assert_close(got, expected, atol=0, rtol=0)
            else:
                assert got is None, name
