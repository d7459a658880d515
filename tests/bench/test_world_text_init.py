"""The world's fixed random text encoder: init 2 keeps each word readable at its own row, where the shipped init 1
washes it out (the shipped world draws backgrounds at chance); old checkpoints keep rebuilding init 1."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file
from world.checkpoint import full_state, text_recipe
from world.text import random_text_encoder
from world.vocab import BACKGROUNDS


def _row_similarity(init: int) -> float:
    """Mean cosine, across background words, of the output row that holds the background word."""
    encoder = random_text_encoder(0, init)
    prompts = [f"one red circle in the middle, {b} background" for b in BACKGROUNDS]
    row = 1 + len(encoder.tokenizer("one red circle in the middle,", add_special_tokens=False)["input_ids"])
    with torch.no_grad():
        rows = torch.nn.functional.normalize(encoder(prompts)[:, row], dim=-1)
    n = len(prompts)
    return float(((rows @ rows.T).sum() - n) / (n * (n - 1)))


def test_second_init_keeps_words_apart_where_the_shipped_one_does_not():
    assert _row_similarity(1) > 0.9
    assert _row_similarity(2) < 0.6


def test_init_is_deterministic_and_checked():
    a, b = random_text_encoder(3, 2), random_text_encoder(3, 2)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    with pytest.raises(ValueError, match="unknown text encoder init"):
        random_text_encoder(0, 7)


def test_checkpoints_without_an_init_key_rebuild_the_first_encoder(tmp_path):
    tensors = {"model.diffusion_model.dummy": torch.zeros(1)}
    old, new = tmp_path / "old.safetensors", tmp_path / "new.safetensors"
    save_file(tensors, str(old), metadata={"r2moe_world_text_seed": "5"})
    save_file(tensors, str(new), metadata={"r2moe_world_text_seed": "5", "r2moe_world_text_init": "2"})
    assert text_recipe(old) == (5, 1) and text_recipe(new) == (5, 2)
    key = "cond_stage_model.transformer.text_model.encoder.layers.0.mlp.fc2.weight"
    expected = random_text_encoder(5, 1).state_dict()["text_model.encoder.layers.0.mlp.fc2.weight"].half()
    assert torch.equal(full_state(old)[key], expected)
    assert not torch.equal(full_state(new)[key], expected)
