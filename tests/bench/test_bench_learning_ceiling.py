"""The learning ceiling: a whole-UNet fine-tune learns into a copy (the world every other row reads stays as it
was), and each concept's placements are drawn by that concept's own model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from learning_ceiling import PARTS, draw_row, fine_tune_unet, fine_tunes, no_delta, placements_of
from world.concepts import load_concepts
from world.methods import Budget
from world.multiconcept import MultiSettings
from world.protocol import ConceptData, World
from world.text import TextEncoder
from world.unet import UNet
from world.vae import WorldVAE

CONCEPTS = Path(__file__).resolve().parents[2] / "bench" / "world" / "concepts_10.json"


@pytest.fixture(scope="module")
def world_and_concepts() -> tuple[World, list[ConceptData]]:
    torch.manual_seed(0)
    world = World(UNet(), TextEncoder(), WorldVAE())
    return world, [ConceptData.from_spec(spec, 2, heldout=0) for spec in load_concepts(CONCEPTS)[:3]]


def test_the_fine_tune_learns_into_a_copy_and_leaves_the_world_as_it_was(world_and_concepts) -> None:
    world, concepts = world_and_concepts
    before = {k: v.clone() for k, v in world.unet.state_dict().items()}
    table = world.text.text_model.embeddings.token_embedding.weight
    start = table[world.text.tokenizer(concepts[0].class_word, add_special_tokens=False)["input_ids"]].mean(0)
    tuned, token = fine_tune_unet(world, concepts[0], 3, 1e-3, Budget(batch_size=1), seed=0)
    for key, value in world.unet.state_dict().items():
        torch.testing.assert_close(value, before[key], atol=0, rtol=0)
    changed = [k for k, v in tuned.unet.state_dict().items() if not torch.equal(v, before[k])]
    assert len(changed) > len(before) // 2, "most of the copy's weights should have learned"
    assert tuned.text is world.text and tuned.vae is world.vae
    assert not token.requires_grad and not torch.equal(token[0], start), "the token learns with the UNet"
    assert not any(p.requires_grad for p in tuned.unet.parameters())


@pytest.mark.parametrize("part", ["kv", "outside"])
def test_a_part_fine_tune_learns_only_that_part(world_and_concepts, part: str) -> None:
    world, concepts = world_and_concepts
    before = world.unet.state_dict()
    tuned, _ = fine_tune_unet(world, concepts[0], 2, 1e-3, Budget(batch_size=1), seed=0, part=part)
    changed = {k for k, v in tuned.unet.state_dict().items() if not torch.equal(v, before[k])}
    cross_kv = {k for k in before if ".attn2.to_k." in k or ".attn2.to_v." in k}
    assert cross_kv, "the world UNet has text cross-attention"
    if part == "kv":
        assert changed == cross_kv, "a K/V fine-tune learns every cross-attention K/V and nothing else"
    else:
        assert changed and not changed & {k for k in before if ".transformer_blocks." in k}


def test_a_fine_tune_setting_names_steps_rate_and_part() -> None:
    assert fine_tunes("400@1e-4:kv, 50@1e-5") == [(400, 1e-4, "kv"), (50, 1e-5, "all")]
    assert set(PARTS) >= {"all", "kv", "transformer", "outside"}
    for bad in ("400", "400@fast", "400@1e-4:neck", "0@1e-4"):
        with pytest.raises(ValueError, match="STEPS@LR"):
            fine_tunes(bad)


def test_every_region_of_the_pairs_and_triples_is_placed_once_under_its_own_concept(world_and_concepts) -> None:
    _, concepts = world_and_concepts
    placements = placements_of(concepts)
    assert list(placements) == [c.token for c in concepts]
    # 3 concepts: 6 ordered pairs (12 regions) and one triple in 3 rotations (9 regions)
    assert sum(len(v) for v in placements.values()) == 21
    for token, own in placements.items():
        assert len(own) == 7
        assert all(scene.concepts[r].token == token for scene, r in own)


def test_each_concept_is_drawn_by_the_model_its_row_names(world_and_concepts) -> None:
    world, concepts = world_and_concepts
    placements = {c.token: placements_of(concepts)[c.token][:2] for c in concepts[:2]}
    other = World(UNet(), world.text, world.vae)  # another (random) model stands in for a fine-tuned one
    settings = MultiSettings(images=1, steps=2)
    asked: list[str] = []

    def drawer(token: str) -> tuple[World, dict, object]:
        asked.append(token)
        return (other if token == concepts[1].token else world), {}, no_delta

    rows, owners = draw_row(drawer, placements, settings)
    assert asked == [c.token for c in concepts[:2]]
    assert owners == [r for own in placements.values() for _, r in own]
    base, _ = draw_row(lambda token: (world, {}, no_delta), placements, settings)
    first = len(placements[concepts[0].token])
    assert len(rows) == len(base) == 4
    for i, ((_, image), (_, plain)) in enumerate(zip(rows, base, strict=True)):
        assert (image == plain).all() == (i < first), f"row {i} drawn by the wrong model"
