"""SD 2.x (v-prediction) and SDXL on the real host: the tiny checkpoints of each family through the stock loader,
and the pack's promises on each: identity, LoRA equivalence, trigger tokens in every text encoder, training,
the forgetting guard, regional composition, save/load and refusal across families."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from comfy_inprocess import call_node, family_checkpoint

from r2moe_testkit.banks import add_random_concept, force_coefficient_one, write_kohya_lora
from r2moe_testkit.denoising import denoise_error, pictures, resized
from r2moe_testkit.sampling import encode, first_call, sample

LAYERS = {"sd2": 16, "sdxl": 70}
TOKEN_WIDTHS = {"sd2": (("clip_h", 1024),), "sdxl": (("clip_l", 768), ("clip_g", 1280))}
FAST = {  # as the SD1.5 training tests: short, high-rate runs at 64 px
    "steps": 30, "batch_size": 2, "resolution": 64, "lr_experts": 1e-2, "lr_router": 1e-2, "lr_token": 1e-2,
    "distill_lambda": 1e-5, "distill_mode": "exact", "prune_threshold": 0.0, "seed": 0, "optimizer": "AdamW",
    "gradient_checkpointing": False, "augment_views": 0,
}
DOG_PROMPT, CAT_PROMPT = "photo of a <dog1> dog", "photo of a <cat1> cat"
SIZE = 64


@pytest.fixture(scope="module", params=["sd2", "sdxl"])
def family(request, host):
    """(family, (MODEL, CLIP, VAE)) of one family's tiny checkpoint through the stock CheckpointLoaderSimple."""
    name = family_checkpoint(request.param)
    return request.param, call_node("CheckpointLoaderSimple", ckpt_name=name)


@pytest.fixture(scope="module")
def empty(family):
    return call_node("R2MoENewBank", model=family[1][0], rank=4, top_k=3, prune_threshold=0.4,
                     distill_lambda=1e-5)[0]


@pytest.fixture(scope="module")
def concepts(host, empty):
    bank = add_random_concept(host.core, empty, "dog", "<dog1>", seed=1, scale=0.2)
    return add_random_concept(host.core, bank, "cat", "<cat1>", seed=2, scale=0.2)


def apply(models, bank, strength=1.0):
    return call_node("R2MoEApplyBank", model=models[0], clip=models[1], bank=bank, strength=strength)


def train(models, bank, name, token, word, images, **overrides):
    model, clip, vae = models
    return call_node("R2MoETrainConcept", model=model, clip=clip, vae=vae, bank=bank, concept_name=name,
                     trigger_token=token, class_word=word, images=images, **(FAST | overrides))


def test_the_family_is_read_off_the_model_and_kept_in_the_file(host, family, empty, tmp_path):
    import comfy.model_base

    name, (model, _, _) = family
    assert empty.family == name and len(empty.layers) == LAYERS[name]
    assert empty.token_encoders == TOKEN_WIDTHS[name]
    assert empty.token_dim == sum(w for _, w in TOKEN_WIDTHS[name])
    if name == "sd2":  # the stock loader took the tiny SD 2.x checkpoint as the v-prediction model it is
        assert model.model.model_type == comfy.model_base.ModelType.V_PREDICTION
    path = host.core.save_bank(empty, tmp_path / "bank.safetensors")
    assert host.core.load_bank(path).family == name


def test_empty_bank_is_bit_identical_to_the_stock_model(family, empty):
    models = family[1]
    patched, patched_clip = apply(models, empty)
    assert torch.equal(sample(models[0], models[1], "a dog", size=SIZE), sample(patched, patched_clip, "a dog",
                                                                              size=SIZE))


def test_one_expert_equals_the_same_lora_merged_by_the_stock_loader(host, family, concepts):
    import comfy.sd

    model, clip, _ = family[1]
    prompt = "a photo of a dog on the beach"
    gate_in = encode(clip, prompt)[0][0].float().mean(dim=1)[0]
    bank = force_coefficient_one(concepts, task=1, gate_in=gate_in)
    patched, _ = apply(family[1], bank)
    merged, _ = comfy.sd.load_lora_for_models(model, clip, host.core.expert_as_lora(bank, task=1), 1.0, 0.0)
    stock = sample(model, clip, prompt, cfg=1.0, size=SIZE)
    via_bank, via_lora = sample(patched, clip, prompt, cfg=1.0, size=SIZE), sample(merged, clip, prompt, cfg=1.0,
                                                                                    size=SIZE)
    effect, mismatch = (via_lora - stock).abs().max().item(), (via_bank - via_lora).abs().max().item()
    assert effect > 0.05, "the expert must visibly change the result, or the comparison proves nothing"
    assert mismatch < 1e-2 * max(1.0, effect), f"bank vs merged LoRA differ by {mismatch} (effect {effect})"


def test_the_trigger_token_reaches_every_text_encoder_as_a_stock_embedding_file_would(host, family, concepts):
    """Each encoder gets its own part of the token (SDXL: CLIP-L the first 768 columns, bigG the rest): the
    exported embedding file (clip_l/clip_g keys for SDXL) read by the stock `embedding:` path gives the same
    context, and the pooled output SDXL's UNet also reads follows the token too."""
    name, (_, clip, _) = family
    prompt = "a photo of <dog1> dog on the grass"
    call_node("R2MoEExportConcept", clip=clip, bank=concepts, concept_name="dog", prompt=prompt,
              file_name=f"dog_{name}", overwrite=True)
    import folder_paths

    folder_paths.filename_list_cache.clear()
    _, patched_clip = apply(family[1], concepts)
    via_bank = encode(patched_clip, prompt)[0]
    via_file = encode(clip, "a photo of embedding:dog1 dog on the grass")[0]
    plain = encode(clip, "a photo of dog dog on the grass")[0]
    offset = 0
    for key, width in TOKEN_WIDTHS[name]:
        part = slice(offset, offset + width)
        assert not torch.allclose(via_bank[0][..., part], plain[0][..., part], atol=1e-4), f"{key} ignored the token"
        offset += width
    assert torch.allclose(via_bank[0], via_file[0], atol=1e-5), "the bank's token is not the exported embedding"
    if name == "sdxl":
        pooled_bank, pooled_file = via_bank[1]["pooled_output"], via_file[1]["pooled_output"]
        assert torch.allclose(pooled_bank, pooled_file, atol=1e-5)
        assert not torch.allclose(pooled_bank, plain[1]["pooled_output"], atol=1e-4)


@pytest.fixture(scope="module")
def after_dog(family, empty):
    return train(family[1], empty, "dog", "<dog1>", "dog", pictures(1))[0]


def test_training_lowers_the_denoising_error_on_the_concepts_photos(host, family, empty, after_dog):
    models = family[1]
    assert after_dog.num_tasks == 1 and after_dog.family == family[0]
    assert after_dog.concepts[0].embedding.shape == (1, empty.token_dim)
    before = denoise_error(host, models, empty, resized(host, pictures(1), SIZE), DOG_PROMPT)
    after = denoise_error(host, models, after_dog, resized(host, pictures(1), SIZE), DOG_PROMPT)
    assert after < 0.85 * before, f"denoising error on the concept's photos {before:.4f} -> {after:.4f}"


def test_a_second_concept_leaves_the_first_as_it_was(family, after_dog):
    models = family[1]

    def draw(bank, prompt):
        patched, patched_clip = apply(models, bank)
        return sample(patched, patched_clip, prompt, steps=2, cfg=1.0, size=SIZE)

    before = draw(after_dog, DOG_PROMPT)
    with_cat = train(models, after_dog, "cat", "<cat1>", "cat", pictures(2), new_expert_margin=20.0)[0]
    drift = (draw(with_cat, DOG_PROMPT) - before).abs().max().item()
    assert drift < 1e-3, f"the dog changed by {drift} after learning the cat"
    assert (draw(with_cat, CAT_PROMPT) - draw(after_dog, CAT_PROMPT)).abs().mean().item() > 1e-3, "cat not learned"


def test_regional_composition_on_each_familys_token_grids(family, concepts):
    """One full-canvas region is the bank patch on its prompt; two boxes keep the uncond rows stock. (SDXL's
    pooled text vector is not cross-attention: it comes from the positive prompt wired into the sampler.)"""
    model, clip, _ = family[1]

    def layout(regions):
        data = {"width": 128, "height": 128, "background": "a garden",
                "regions": [{"prompt": p, "box": b} for p, b in regions]}
        return call_node("R2MoELayoutFromJSON", layout_json=json.dumps(data))[0]

    prompt = "a <dog1> dog on the beach"
    full = call_node("R2MoERegionalApply", model=model, clip=clip, bank=concepts,
                     layout=layout([(prompt, [0.0, 0.0, 1.0, 1.0])]), strength=1.0)[0]
    bank_model, bank_clip = apply(family[1], concepts)
    via_regions, via_bank = first_call(full, bank_clip, prompt)[0], first_call(bank_model, bank_clip, prompt)[0]
    effect = (via_bank - first_call(model, bank_clip, prompt)[0]).abs().max().item()
    assert effect > 1e-2 and (via_regions - via_bank).abs().max().item() < 1e-4 * max(1.0, effect)
    two = call_node("R2MoERegionalApply", model=model, clip=clip, bank=concepts, strength=1.0,
                    layout=layout([("a <dog1> dog", [0.0, 0.0, 0.5, 1.0]), ("a <cat1> cat", [0.5, 0.0, 1.0, 1.0])]))[0]
    stock, regional = first_call(model, clip, "a garden", "blurry", 7.0), first_call(two, clip, "a garden", "blurry",
                                                                                        7.0)
    assert torch.equal(stock[1], regional[1]) and not torch.allclose(stock[0], regional[0], atol=1e-4)


def test_a_bank_of_another_family_is_refused_naming_both(host, tiny, family, empty):
    sd1_bank = call_node("R2MoENewBank", model=tiny[0], rank=4, top_k=3, prune_threshold=0.4,
                         distill_lambda=1e-5)[0]
    label = {"sd2": "SD 2.x", "sdxl": "SDXL"}[family[0]]
    with pytest.raises(host.core.BankMismatchError, match=f"made for SD1.x; the connected MODEL is {label}"):
        apply(family[1], sd1_bank)
    with pytest.raises(host.core.BankMismatchError, match=f"made for {label}; the connected MODEL is SD1.x"):
        apply(tiny, empty)
    forged = replace(empty, family="sd1")  # a file that lies about its family is refused on load
    with pytest.raises(host.core.BankMismatchError, match=r"says SD1\.x"):
        forged.validate()


def test_a_kohya_lora_of_the_family_imports_and_draws_like_the_stock_loader(host, family, empty):
    """A LoRA in kohya's names for this UNet (`lora_unet_input_blocks_4_1_...`, as kohya's SDXL trainer writes
    them) becomes a gated concept; its trigger prompt draws what stock LoraLoader + the token's embedding file
    draw (SDXL: the file carries `clip_l` and `clip_g`)."""
    from pathlib import Path

    import folder_paths
    from safetensors.torch import save_file

    name, (model, clip, _) = family
    write_kohya_lora(host.core, empty, Path(folder_paths.get_folder_paths("loras")[0]) / f"kohya_{name}.safetensors")
    folder_paths.filename_list_cache.clear()
    grown, report = call_node(
        "R2MoEImportLoRA", clip=clip, bank=empty, lora_name=f"kohya_{name}.safetensors", concept_name="style",
        trigger_token="<sty1>", class_word="cat", example_prompts="a photo of <sty1> cat", strength=1.0,
        prune_threshold=0.0)
    count = 2 * LAYERS[name]
    assert f"{count}/{count} text cross-attention K/V projections" in report
    from r2moe_core.moe.concept_export import embedding_tensors

    save_file(embedding_tensors(grown, "style"),
              str(Path(folder_paths.get_folder_paths("embeddings")[0]) / f"sty_{name}.safetensors"))
    lora_model, lora_clip = call_node("LoraLoader", model=model, clip=clip, lora_name=f"kohya_{name}.safetensors",
                                      strength_model=1.0, strength_clip=0.0)
    via_bank = sample(*apply(family[1], grown), "a photo of <sty1> cat", cfg=1.0, size=SIZE)
    via_stock = sample(lora_model, lora_clip, f"a photo of embedding:sty_{name} cat", cfg=1.0, size=SIZE)
    plain = sample(model, clip, f"a photo of embedding:sty_{name} cat", cfg=1.0, size=SIZE)
    effect, mismatch = (via_stock - plain).abs().max().item(), (via_bank - via_stock).abs().max().item()
    assert effect > 0.05 and mismatch < 0.01 * effect, f"bank vs stock LoRA: {mismatch} of {effect}"


def test_the_hierarchical_sampler_refines_with_sam_on_each_family(host, family, concepts):
    """Box masks, then SAM masks from the model's own x0: the masks change and so does the image."""
    import folder_paths

    from r2moe_testkit.sam import TINY_SAM_NAME, write_tiny_sam

    model, clip, vae = family[1]
    write_tiny_sam(host.base_dir / "models" / "sams" / TINY_SAM_NAME)
    folder_paths.filename_list_cache.clear()
    sam = call_node("R2MoESAMLoader", sam_name=TINY_SAM_NAME)[0]
    data = {"width": SIZE, "height": SIZE, "background": "a garden",
            "regions": [{"prompt": "a <dog1> dog", "box": [0.0, 0.1, 0.5, 1.0]},
                        {"prompt": "a <cat1> cat", "box": [0.5, 0.2, 1.0, 0.9]}]}
    layout = call_node("R2MoELayoutFromJSON", layout_json=json.dumps(data))[0]
    latent = call_node("EmptyLatentImage", width=SIZE, height=SIZE, batch_size=1)[0]

    def run(switch_at):
        return call_node(
            "R2MoEHierarchicalSampler", model=model, clip=clip, vae=vae, bank=concepts, layout=layout, sam=sam,
            positive=encode(clip, "a garden"), negative=encode(clip, "blurry"), latent_image=latent, seed=7, steps=4,
            cfg=5.0, sampler_name="euler", scheduler="normal", denoise=1.0, switch_at=switch_at, strength=1.0)

    refined, masks, image = run(0.5)
    boxes_only = run(1.0)[0]
    assert image.shape == (1, SIZE, SIZE, 3)
    assert not torch.equal(masks, call_node("R2MoELayoutPreview", layout=layout)[1]), "SAM did not refine the boxes"
    assert (refined["samples"] - boxes_only["samples"]).abs().max().item() > 1e-3
