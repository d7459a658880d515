"""A community LoRA as a gated expert: its K/V updates read from any common key style, the gate fitted so the
trigger prompts use it and every old prompt keeps its routing."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

import r2moe_core as core
from r2moe_core.bank.expert_bank import ConceptIdentity
from r2moe_core.moe.concept_export import diffusers_path, kohya_lora_key
from r2moe_core.moe.lora_import import import_lora, read_lora
from r2moe_testkit.banks import add_random_concept


def community_lora(bank, rank=2, style="kohya", alpha=None, seed=0):
    """A LoRA as trainers write it: K/V of text cross-attention plus self-attention and text-encoder tensors."""
    gen = torch.Generator().manual_seed(seed)
    out, deltas = {}, {}
    for layer in bank.layers:
        for proj in core.PROJECTIONS:
            name = f"{layer.name}.{proj}"
            down = torch.randn(rank, layer.in_dim, generator=gen) * 0.3
            up = torch.randn(layer.out_dim, rank, generator=gen) * 0.3
            scale = 1.0 if alpha is None else alpha / rank
            deltas[name] = (up @ down) * scale  # ΔW [out, in]
            if style == "kohya":
                key, pair = kohya_lora_key(name), (".lora_down.weight", ".lora_up.weight")
            elif style == "peft":
                key, pair = f"unet.{diffusers_path(name)}", (".lora_A.weight", ".lora_B.weight")
            else:
                key, pair = f"diffusion_model.{name}", (".lora_down.weight", ".lora_up.weight")
            out[key + pair[0]], out[key + pair[1]] = down, up
            if alpha is not None:
                out[key + ".alpha"] = torch.tensor(alpha)
    out["lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight"] = torch.zeros(rank, 4)
    out["lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight"] = torch.zeros(1)
    return out, deltas


def delta_of(expert):
    return expert.delta_weight()


@pytest.mark.parametrize("style", ["kohya", "peft", "comfy"])
def test_every_common_key_style_is_read_with_its_alpha_and_the_rest_reported(empty_bank, style):
    tensors, deltas = community_lora(empty_bank, style=style, alpha=1.0 if style != "peft" else None)
    imported = read_lora(tensors, empty_bank, strength=0.5)
    assert set(imported.experts) == set(empty_bank.projection_names())
    for name, (down, up) in imported.experts.items():
        assert torch.allclose((down @ up).T, 0.5 * deltas[name], atol=1e-5), "ΔW = strength · alpha/r · up down"
    assert imported.kept_energy > 0.9999 and imported.ignored == {"text encoder": 1, "self-attention": 1}
    assert "6/6 text cross-attention K/V projections (LoRA rank 2)" in imported.summary(6)


def test_a_lora_of_higher_rank_keeps_its_leading_directions(empty_bank):
    tensors, deltas = community_lora(empty_bank, rank=6)
    imported = read_lora(tensors, empty_bank)
    for name, (down, up) in imported.experts.items():
        assert down.shape[1] == empty_bank.config.rank == 2
        best = torch.linalg.svdvals(deltas[name])
        error = torch.linalg.matrix_norm((down @ up).T - deltas[name])
        assert torch.isclose(error, best[2:].square().sum().sqrt(), rtol=1e-4), "the best rank-2 approximation"
    assert 0.2 < imported.kept_energy < 0.9 and "cut to the bank's rank" in imported.summary(6)


def test_files_without_kv_updates_or_of_another_model_are_refused(empty_bank):
    with pytest.raises(core.InvalidInputError, match="no text cross-attention K/V update"):
        read_lora({"lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": torch.zeros(2, 4)}, empty_bank)
    tensors, _ = community_lora(empty_bank)
    key = next(k for k in tensors if k.endswith("attn2_to_k.lora_down.weight"))
    tensors[key] = torch.zeros(2, 99)
    with pytest.raises(core.InvalidInputError, match="made for another model"):
        read_lora(tensors, empty_bank)
    with pytest.raises(core.InvalidInputError, match="LoHa"):
        read_lora({"lora_unet_x.hada_w1_a": torch.zeros(1)}, empty_bank)


def test_imported_expert_serves_its_prompts_and_old_prompts_keep_their_routing(empty_bank):
    common = torch.randn(empty_bank.layers[0].in_dim, generator=torch.Generator().manual_seed(1))
    bank = add_random_concept(core, empty_bank, "dog", "<dog1>", seed=3)
    bank = replace(bank, concepts=(replace(bank.concepts[0], gate_input=common + 0.1 * torch.randn(common.shape)),))
    gen = torch.Generator().manual_seed(5)
    token_part = 0.2 * torch.randn(common.shape, generator=gen)
    examples = common + token_part + 0.05 * torch.randn(3, common.shape[0], generator=gen)
    plain = common + 0.05 * torch.randn(4, common.shape[0], generator=gen)  # the examples without the trigger
    tensors, _ = community_lora(bank)
    after, report = import_lora(bank, read_lora(tensors, bank), ConceptIdentity("style", "<sty1>", "painting"),
                                torch.zeros(1, bank.token_dim), examples, plain)
    assert [c.name for c in after.concepts] == ["dog", "style"] and after.concepts[1].task == 2
    assert report.share_on_examples > 0.998
    old_before, old_after = core.concept_mixtures(bank, "dog"), core.concept_mixtures(after, "dog")
    # the new expert scores -margin (-8) there: its share is at most e^-8 of the auxiliary expert's
    assert torch.allclose(old_after[:, :2], old_before, atol=5e-4) and old_after[:, 2].max() < 5e-4
    for name, proj in after.projections.items():  # plain prompts: scores of the old expert unchanged
        assert torch.allclose(plain @ proj.experts[1].gate, plain @ bank.projections[name].experts[1].gate, atol=1e-4)
    held_out = common + token_part + 0.05 * torch.randn(2, common.shape[0], generator=gen)
    coefficient = core.inference_coefficients(held_out, after.projections[after.projection_names()[0]].router(3),
                                              torch.ones(3, dtype=torch.bool), 3)[:, 2]
    assert (coefficient > 0.9).all(), "a trigger prompt not among the examples routes to it too"
    assert "kept in 6, removed in 0" in report.summary()
    with pytest.raises(core.InvalidInputError, match="already used by concept 'dog'"):
        import_lora(bank, read_lora(tensors, bank), ConceptIdentity("style", "<dog1>", "painting"), torch.zeros(1, 16),
                    examples, plain)
