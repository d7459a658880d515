"""R2MoEApplyBank on the real host: identity, LoRA equivalence, caching, composition, cloning, merging, refusals."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from comfy_inprocess import call_node

from r2moe_testkit.banks import add_random_concept, force_coefficient_one
from r2moe_testkit.sampling import encode, find_runtime, sample

PROMPT = "a photo of a dog on the beach"


@pytest.fixture(scope="module")
def empty_bank(tiny):
    return call_node("R2MoENewBank", model=tiny[0], rank=4, top_k=3, prune_threshold=0.4, distill_lambda=1e-5)[0]


@pytest.fixture(scope="module")
def concept_bank(host, empty_bank):
    bank = add_random_concept(host.core, empty_bank, "dog", "<dog1>", seed=1, scale=0.2)
    return add_random_concept(host.core, bank, "cat", "<cat1>", seed=2, scale=0.2)


def apply(model, clip, bank, strength=1.0, **kw):
    return call_node("R2MoEApplyBank", model=model, clip=clip, bank=bank, strength=strength, **kw)


def test_empty_bank_is_bit_identical_to_the_stock_model(tiny, empty_bank):
    model, clip, _ = tiny
    patched, patched_clip = apply(model, clip, empty_bank)
    assert patched.model_options["transformer_options"]["patches_replace"]["attn2"], "patch must be installed"
    assert torch.equal(sample(model, clip, PROMPT), sample(patched, patched_clip, PROMPT))


def test_one_expert_at_coefficient_one_equals_the_same_lora_merged(host, tiny, concept_bank):
    import comfy.sd

    model, clip, _ = tiny
    gate_in = encode(clip, PROMPT)[0][0].float().mean(dim=1)[0]
    bank = force_coefficient_one(concept_bank, task=1, gate_in=gate_in)
    runtime_bank, _ = apply(model, clip, bank)
    runtime = find_runtime(runtime_bank)
    coeffs = runtime.coefficients(encode(clip, PROMPT)[0][0], bank.projection_names()[0])
    assert coeffs[0, 1].item() == 1.0 and coeffs[0].sum().item() == 1.0

    lora = host.core.expert_as_lora(bank, task=1)
    merged, _ = comfy.sd.load_lora_for_models(model, clip, lora, 1.0, 0.0)
    stock = sample(model, clip, PROMPT, cfg=1.0)
    via_bank = sample(runtime_bank, clip, PROMPT, cfg=1.0)
    via_lora = sample(merged, clip, PROMPT, cfg=1.0)
    effect = (via_lora - stock).abs().max().item()
    mismatch = (via_bank - via_lora).abs().max().item()
    assert effect > 0.05, "the expert must visibly change the result, or the comparison proves nothing"
    assert mismatch < 1e-3 * max(1.0, effect) * 10, f"bank vs merged LoRA differ by {mismatch} (effect {effect})"


def test_expert_deltas_are_computed_once_per_run_not_per_step(tiny, concept_bank):
    model, clip, _ = tiny
    patched, patched_clip = apply(model, clip, concept_bank)
    runtime = find_runtime(patched)
    sample(patched, patched_clip, PROMPT, steps=4, cfg=7.0)
    per_run = runtime.delta_computations
    assert per_run == len(concept_bank.projection_names()), "one ΔK/ΔV per projection for the conditional prompt"
    sample(patched, patched_clip, PROMPT, steps=4, cfg=7.0, seed=5)
    assert runtime.delta_computations == 2 * per_run, "a new run computes them once again, still not per step"


def _first_call_chunks(model):
    """Clone `model` with a model_function_wrapper that records the first UNet call's output per chunk type."""
    record = {}
    patched = model.clone()

    def wrapper(apply_model, args):
        out = apply_model(args["input"], args["timestep"], **args["c"])
        if not record:
            kinds = args["cond_or_uncond"]
            for i, chunk in enumerate(out.chunk(len(kinds))):
                record[kinds[i]] = chunk.clone()
        return out

    patched.set_model_unet_function_wrapper(wrapper)
    return patched, record


def test_unconditional_branch_gets_no_experts(tiny, concept_bank):
    model, clip, _ = tiny
    patched, patched_clip = apply(model, clip, concept_bank)
    stock_probe, stock_rec = _first_call_chunks(model)
    bank_probe, bank_rec = _first_call_chunks(patched)
    sample(stock_probe, clip, PROMPT, negative="blurry", steps=2, cfg=7.0)
    sample(bank_probe, patched_clip, PROMPT, negative="blurry", steps=2, cfg=7.0)
    assert torch.equal(stock_rec[1], bank_rec[1]), "uncond prediction must be the stock model's"
    assert not torch.allclose(stock_rec[0], bank_rec[0], atol=1e-4), "cond prediction must carry the experts"


class ScaleValuePatch:
    """Stands in for IPAdapter/InstantID: a replace patch that alters attention and counts its calls."""

    def __init__(self):
        self.calls = 0

    def __call__(self, q, k, v, extra_options):
        import comfy.ldm.modules.attention as attention

        self.calls += 1
        return attention.optimized_attention(q, k, v * 0.5, extra_options["n_heads"])

    def set_new_condition(self, **kwargs):
        return kwargs


def test_existing_attn2_replace_is_wrapped_and_still_runs(tiny, concept_bank):
    model, clip, _ = tiny
    other = model.clone()
    foreign = ScaleValuePatch()
    for layer in concept_bank.layers:
        other.set_model_attn2_replace(foreign, *layer.block_key)
    both, both_clip = apply(other, clip, concept_bank)
    only_bank, _ = apply(model, clip, concept_bank)
    out_both = sample(both, both_clip, PROMPT, steps=2)
    slot = both.model_options["transformer_options"]["patches_replace"]["attn2"][concept_bank.layers[0].block_key]
    assert isinstance(slot.previous, ScaleValuePatch), "the pre-existing patch was dropped"
    assert slot.previous.calls > 0, "the pre-existing patch never ran"  # ModelPatcher.clone() deep-copied it
    assert not torch.allclose(out_both, sample(other, clip, PROMPT, steps=2), atol=1e-4), "bank not applied"
    assert not torch.allclose(out_both, sample(only_bank, both_clip, PROMPT, steps=2), atol=1e-4)
    assert slot.set_new_condition(x=1) == {"x": 1}, "method calls reach the wrapped patch"


class MovablePatch(ScaleValuePatch):
    """A foreign patch with `.to(device)` (as IPAdapter's patches have): ComfyUI moves it on every model load."""

    def __init__(self):
        super().__init__()
        self.moved_to = []

    def to(self, device):
        self.moved_to.append(str(device))
        return self


def test_a_wrapped_patch_with_to_is_moved_on_load_and_the_bank_stays_in_its_slot(tiny, concept_bank):
    model, clip, _ = tiny
    other = model.clone()
    for layer in concept_bank.layers:
        other.set_model_attn2_replace(MovablePatch(), *layer.block_key)
    both, both_clip = apply(other, clip, concept_bank)
    only_foreign = sample(other, clip, PROMPT, steps=2)
    out_both = sample(both, both_clip, PROMPT, steps=2)  # loading calls .to(device) on every slot
    slot = both.model_options["transformer_options"]["patches_replace"]["attn2"][concept_bank.layers[0].block_key]
    assert type(slot).__name__ == "MoEAttentionPatch", f"the bank's slot was replaced by {type(slot).__name__}"
    assert slot.previous.moved_to and slot.previous.calls > 0, "the wrapped patch was not moved, or never ran"
    assert not torch.allclose(out_both, only_foreign, atol=1e-4), "the bank dropped out of the layers"


def test_patches_survive_clone_without_copying_the_bank(tiny, concept_bank):
    model, clip, _ = tiny
    patched, _ = apply(model, clip, concept_bank)
    clone = patched.clone()
    slots = patched.model_options["transformer_options"]["patches_replace"]["attn2"]
    clone_slots = clone.model_options["transformer_options"]["patches_replace"]["attn2"]
    assert set(slots) == set(clone_slots) and len(slots) == 16
    assert all(clone_slots[k] is slots[k] for k in slots)
    runtime = find_runtime(clone)
    name = concept_bank.projection_names()[0]
    assert runtime.bank.projections[name].experts[1].down is concept_bank.projections[name].experts[1].down
    assert torch.equal(sample(patched, clip, PROMPT, steps=2), sample(clone, clip, PROMPT, steps=2))


def test_bank_for_a_model_of_another_shape_is_refused(host, tiny, concept_bank):
    import comfy.model_management
    import comfy.model_patcher
    import comfy.supported_models

    config = comfy.supported_models.SD15(dict(host.tiny_models.UNET_CONFIG, model_channels=64))
    config.set_inference_dtype(torch.float32, None)
    wider = comfy.model_patcher.ModelPatcher(
        config.get_model({}, "", device=torch.device("cpu")), load_device=torch.device("cpu"),
        offload_device=torch.device("cpu"),
    )
    expected = r"made for a model with 16 cross-attention layers.*32/64/128"
    with pytest.raises(host.core.BankMismatchError, match=expected):
        apply(wider, tiny[1], concept_bank)


def test_bank_for_other_weights_is_refused_unless_allowed(host, tiny, concept_bank):
    other_model, _, _ = host.tiny_models.build_tiny(seed=7)
    with pytest.raises(host.core.BankMismatchError, match="allow_other_weights"):
        apply(other_model, tiny[1], concept_bank)
    patched, _ = apply(other_model, tiny[1], concept_bank, allow_other_weights=True)
    assert find_runtime(patched).bank is concept_bank


def test_an_exported_concept_draws_the_same_through_stock_loralora_and_an_embedding(host, tiny, concept_bank):
    """R2MoE Export Concept, then only stock nodes: LoraLoader with the written file and `embedding:dog1` in the
    prompt give the bank's image of that prompt (CFG 1: the bank leaves the negative prompt alone)."""
    import folder_paths

    model, clip, _ = tiny
    prompt = "a photo of <dog1> dog on the grass"
    (report,) = call_node("R2MoEExportConcept", clip=clip, bank=concept_bank, concept_name="dog", prompt=prompt,
                          file_name="dog_export", overwrite=True)
    assert "use: LoraLoader dog_export.safetensors" in report and "embedding:dog1" in report
    folder_paths.filename_list_cache.clear()
    lora_model, lora_clip = call_node("LoraLoader", model=model, clip=clip, lora_name="dog_export.safetensors",
                                      strength_model=1.0, strength_clip=0.0)
    patched, patched_clip = apply(model, clip, concept_bank)
    via_bank = sample(patched, patched_clip, prompt, cfg=1.0)
    via_stock = sample(lora_model, lora_clip, "a photo of embedding:dog1 dog on the grass", cfg=1.0)
    plain = sample(model, clip, "a photo of dog dog on the grass", cfg=1.0)
    effect, mismatch = (via_bank - plain).abs().max().item(), (via_stock - via_bank).abs().max().item()
    assert effect > 0.05, "the concept must change the image, or the comparison proves nothing"
    assert mismatch < 1e-3 * max(1.0, effect), f"stock LoRA + embedding vs bank differ by {mismatch} ({effect})"
    with pytest.raises(host.core.InvalidInputError, match="exists; choose another file_name or enable overwrite"):
        call_node("R2MoEExportConcept", clip=clip, bank=concept_bank, concept_name="dog", prompt=prompt,
                  file_name="dog_export")


def with_prompt_gate_inputs(model, clip, bank, prompts):
    """The bank with each concept's stored gate input taken from its real prompt, as training stores it."""
    _, patched_clip = apply(model, clip, bank)
    concepts = tuple(replace(c, gate_input=encode(patched_clip, prompts[c.name])[0][0].float().mean(dim=1)[0])
                     for c in bank.concepts)
    return replace(bank, concepts=concepts)


def test_merged_banks_draw_each_concept_as_its_own_bank_did(host, tiny, empty_bank):
    """Two banks learned apart on one checkpoint, merged: each concept's image equals its own bank's image, while
    the plain union of the two (gate columns copied as they were) changes it."""
    model, clip, _ = tiny
    prompts = {"dog": "a photo of <dog1> dog", "mug": "a photo of <mug1> mug", "owl": "a photo of <owl1> bird"}
    bank_a = add_random_concept(host.core, empty_bank, "dog", "<dog1>", seed=1, scale=0.2)
    bank_a = with_prompt_gate_inputs(model, clip, add_random_concept(host.core, bank_a, "mug", "<mug1>", seed=2,
                                                                     scale=0.2), prompts)
    bank_b = with_prompt_gate_inputs(model, clip, add_random_concept(host.core, empty_bank, "owl", "<owl1>", seed=3,
                                                                     scale=0.2), prompts)
    merged, report = call_node("R2MoEMergeBanks", bank_a=bank_a, bank_b=bank_b, on_clash="refuse", clip=clip)
    assert "2 concept(s) from bank A, 1 from bank B" in report and [c.task for c in merged.concepts] == [1, 2, 3]
    for name, source in (("dog", bank_a), ("mug", bank_a), ("owl", bank_b)):
        before = sample(*apply(model, clip, source), prompts[name])
        after = sample(*apply(model, clip, merged), prompts[name])
        plain = sample(model, clip, prompts[name].replace(source.concept_by_name(name).token + " ", ""))
        effect, mismatch = (before - plain).abs().max().item(), (after - before).abs().max().item()
        assert effect > 0.05 and mismatch < 1e-3 * effect, f"{name}: merged differs by {mismatch} ({effect})"
    union = replace(merged, projections={
        n: replace(p, experts={**p.experts, 3: replace(p.experts[3], gate=bank_b.projections[n].experts[1].gate)})
        for n, p in merged.projections.items()})
    before, after = sample(*apply(model, clip, bank_a), prompts["dog"]), sample(*apply(model, clip, union),
                                                                                prompts["dog"])
    assert (after - before).abs().max().item() > 1e-2, "unfitted, the owl expert bleeds into the dog's image"
    with pytest.raises(host.core.InvalidInputError, match="clashes with bank A's 'dog'"):
        call_node("R2MoEMergeBanks", bank_a=bank_a, bank_b=add_random_concept(host.core, empty_bank, "dog",
                                                                              "<dog1>", seed=9), on_clash="refuse")


def write_community_lora(host, bank, path, rank=4, seed=11):
    """A kohya-style LoRA for the tiny model: K/V of every text cross-attention plus tensors the bank ignores."""
    from safetensors.torch import save_file

    from r2moe_core.moe.concept_export import kohya_lora_key

    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for layer in bank.layers:
        for proj in host.core.PROJECTIONS:
            key = kohya_lora_key(f"{layer.name}.{proj}")
            tensors[f"{key}.lora_down.weight"] = torch.randn(rank, layer.in_dim, generator=gen) * 0.1
            tensors[f"{key}.lora_up.weight"] = torch.randn(layer.out_dim, rank, generator=gen) * 0.1
            tensors[f"{key}.alpha"] = torch.tensor(float(rank))
            q_key = key.replace("attn2_to_k", "attn1_to_q").replace("attn2_to_v", "attn1_to_v")
            tensors[f"{q_key}.lora_down.weight"] = torch.zeros(rank, layer.out_dim)  # a no-op the loader reads
            tensors[f"{q_key}.lora_up.weight"] = torch.zeros(layer.out_dim, rank)
    save_file(tensors, str(path))


def test_an_imported_lora_draws_like_the_stock_loader_for_its_trigger_and_old_concepts_keep_theirs(
        host, tiny, empty_bank):
    """Stock LoraLoader at strength 1 with the trigger's vector as an embedding is the reference: the bank draws
    it for trigger prompts (also ones not among the examples) and leaves other prompts' images alone."""
    import folder_paths
    from safetensors.torch import save_file

    model, clip, _ = tiny
    prompts = {"dog": "a photo of <dog1> dog"}
    bank = with_prompt_gate_inputs(model, clip, add_random_concept(host.core, empty_bank, "dog", "<dog1>", seed=1,
                                                                   scale=0.2), prompts)
    write_community_lora(host, bank, Path(folder_paths.get_folder_paths("loras")[0]) / "community.safetensors")
    folder_paths.filename_list_cache.clear()
    grown, report = call_node(
        "R2MoEImportLoRA", clip=clip, bank=bank, lora_name="community.safetensors", concept_name="style",
        trigger_token="<sty1>", class_word="cat", example_prompts="a photo of <sty1> cat\n<sty1> cat on a sofa",
        strength=1.0, prune_threshold=0.4)
    assert "32/32 text cross-attention K/V projections (LoRA rank 4)" in report and "self-attention 64" in report
    lora_model, lora_clip = call_node("LoraLoader", model=model, clip=clip, lora_name="community.safetensors",
                                      strength_model=1.0, strength_clip=0.0)
    save_file({"emb_params": grown.concept_by_name("style").embedding},  # the token as a stock embedding file
              str(Path(folder_paths.get_folder_paths("embeddings")[0]) / "sty1.safetensors"))
    patched = apply(model, clip, grown)
    # An example prompt, then two it never saw: the gate's fit generalises, not quite as exactly
    for trigger, tolerance in (("a photo of <sty1> cat", 0.01), ("<sty1> cat in the snow", 0.02),
                               ("a <sty1> painting of a harbour", 0.02)):
        stock_text = trigger.replace("<sty1>", "embedding:sty1")
        via_bank, via_stock = sample(*patched, trigger, cfg=1.0), sample(lora_model, lora_clip, stock_text, cfg=1.0)
        plain = sample(model, clip, stock_text, cfg=1.0)
        effect, mismatch = (via_stock - plain).abs().max().item(), (via_bank - via_stock).abs().max().item()
        assert effect > 0.05 and mismatch < tolerance * effect, f"{trigger}: {mismatch} of {effect}"
    # Protected prompts (the old concept's, the plain class prompt) keep their images: the imported expert scores
    # -8 there (share <= e^-8). Other prompts without the trigger: its score there is not pinned, only low.
    for text, tolerance in ((prompts["dog"], 2e-3), ("photo of a cat", 2e-3), ("a photo of a cat", 0.02),
                            ("a cat in the snow", 0.02)):
        before, after = sample(*apply(model, clip, bank), text, cfg=1.0), sample(*patched, text, cfg=1.0)
        assert (after - before).abs().max().item() < tolerance * effect, text
    with pytest.raises(host.core.InvalidInputError, match="must contain the trigger token <sty1>"):
        call_node("R2MoEImportLoRA", clip=clip, bank=bank, lora_name="community.safetensors", concept_name="style",
                  trigger_token="<sty1>", class_word="cat", example_prompts="a cat", strength=1.0)
