"""The pack's promises with the UNet computing in bf16 and fp16, as on a user's GPU (on CPU here; the device check
runs this file on CUDA): an empty bank is stock, one expert is the same LoRA merged by the stock loader, training
lowers the denoising error while every trained tensor stays fp32, one full-canvas region is the bank patch, and
export/import round-trip through the stock LoraLoader. Each test also proves the forward really ran in half.

Tolerances are fractions of the effect being compared (how far the concept moves the result from stock), fixed
per dtype from its unit roundoff (bf16 2^-8, fp16 2^-11): a merged LoRA rounds W + BA to half once, the bank adds
BA·x to the half-precision W·x, so the two paths differ by a few roundoffs of K/V per layer, carried through the
UNet and the sampler's steps.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from comfy_inprocess import call_node, family_checkpoint

from r2moe_testkit.banks import add_random_concept, force_coefficient_one, write_kohya_lora
from r2moe_testkit.denoising import denoise_error, pictures, resized
from r2moe_testkit.half_precision import DTYPES, Recorder, cpu_runs, forward_dtypes, half_precision_loading
from r2moe_testkit.sampling import encode, first_call, sample

SIZE = 64
PROMPT = "a photo of a dog on the beach"
# Largest accepted mismatch as a share of the effect. bf16 keeps 8 significant bits, fp16 11: the bf16 bound is
# the fp16 one scaled by their roundoff ratio (8), capped so that a sign error or a dropped delta still fails.
RELATIVE = {"bf16": 0.12, "fp16": 0.02}
FAST = {
    "steps": 30, "batch_size": 2, "resolution": SIZE, "lr_experts": 1e-2, "lr_router": 1e-2, "lr_token": 1e-2,
    "distill_lambda": 1e-5, "distill_mode": "exact", "prune_threshold": 0.0, "seed": 0, "optimizer": "AdamW",
    "gradient_checkpointing": False, "augment_views": 0,
}
record = Recorder()


@pytest.fixture(scope="module", params=[("sd1", "bf16"), ("sd1", "fp16"), ("sdxl", "bf16"), ("sdxl", "fp16")],
                ids=lambda p: "-".join(p))
def half(request, host):
    """(case, dtype name, (MODEL, CLIP, VAE)) of a tiny checkpoint loaded by the stock loader in half precision."""
    family, name = request.param
    if not _host_uses_gpu() and not cpu_runs(name):
        pytest.skip(f"this CPU build of torch lacks {name} kernels for the UNet's ops")
    checkpoint = host.checkpoint.name if family == "sd1" else family_checkpoint(family)
    with half_precision_loading(name):
        models = call_node("CheckpointLoaderSimple", ckpt_name=checkpoint)
    assert models[0].model.get_dtype() == DTYPES[name] and models[0].model.manual_cast_dtype is None
    return f"{family}-{name}", name, models


def _host_uses_gpu() -> bool:
    import comfy.model_management

    return comfy.model_management.get_torch_device().type == "cuda"


@pytest.fixture(scope="module")
def empty(half):
    return call_node("R2MoENewBank", model=half[2][0], rank=4, top_k=3, prune_threshold=0.4, distill_lambda=1e-5)[0]


@pytest.fixture(scope="module")
def concepts(host, empty):
    bank = add_random_concept(host.core, empty, "dog", "<dog1>", seed=1, scale=0.2)
    return add_random_concept(host.core, bank, "cat", "<cat1>", seed=2, scale=0.2)


def apply(models, bank):
    return call_node("R2MoEApplyBank", model=models[0], clip=models[1], bank=bank, strength=1.0)


def assert_ran_in(seen: dict, name: str) -> None:
    dtype = DTYPES[name]
    assert seen["unet_in"] == {dtype} and seen["unet_out"] == {dtype}, f"the UNet did not run in {name}: {seen}"
    assert seen["to_k_in"] == seen["to_k_weight"] == seen["to_k_out"] == {dtype}, f"K/V not in {name}: {seen}"


def compare(case: str, check: str, name: str, effect: float, mismatch: float, floor: float = 0.05) -> None:
    record(case, check, effect=effect, mismatch=mismatch, relative=mismatch / max(effect, 1e-12),
           bound=RELATIVE[name])
    assert effect > floor, f"{check}: the concept must visibly change the result ({effect}), or this proves nothing"
    assert mismatch < RELATIVE[name] * effect, f"{check}: mismatch {mismatch} of effect {effect} in {name}"


def test_the_unet_really_computes_in_half_and_an_empty_bank_is_stock(half, empty):
    case, name, models = half
    model, clip, _ = models
    patched, patched_clip = apply(models, empty)
    with forward_dtypes(patched) as seen:
        via_bank = sample(patched, patched_clip, PROMPT, steps=2, size=SIZE)
    assert_ran_in(seen, name)
    stock = sample(model, clip, PROMPT, steps=2, size=SIZE)
    record(case, "empty_bank", max_abs_difference=(via_bank - stock).abs().max().item(),
           forward=sorted(str(d) for d in set().union(*seen.values())))
    assert torch.equal(stock, via_bank)


def test_one_expert_equals_the_same_lora_merged_by_the_stock_loader(host, half, concepts):
    import comfy.sd

    case, name, models = half
    model, clip, _ = models
    gate_in = encode(clip, PROMPT)[0][0].float().mean(dim=1)[0]
    bank = force_coefficient_one(concepts, task=1, gate_in=gate_in)
    patched, _ = apply(models, bank)
    merged, _ = comfy.sd.load_lora_for_models(model, clip, host.core.expert_as_lora(bank, task=1), 1.0, 0.0)
    stock = sample(model, clip, PROMPT, cfg=1.0, size=SIZE)
    with forward_dtypes(patched) as seen:
        via_bank = sample(patched, clip, PROMPT, cfg=1.0, size=SIZE)
    assert_ran_in(seen, name)
    via_lora = sample(merged, clip, PROMPT, cfg=1.0, size=SIZE)
    compare(case, "expert_vs_merged_lora", name, (via_lora - stock).abs().max().item(),
            (via_bank - via_lora).abs().max().item())


def test_training_lowers_the_denoising_error_with_fp32_masters_of_every_trained_tensor(host, half, empty,
                                                                                      monkeypatch):
    case, name, models = half
    if case == "sdxl-fp16" and not _host_uses_gpu():
        pytest.skip("fp16 backward through the SDXL layout runs ~15x slower than bf16 on a CPU (9 min); the device "
                    "check runs this case on CUDA")
    model, clip, vae = models
    trainer_module = __import__(host.pack.__name__ + ".r2moe_core.train.trainer", fromlist=["x"])
    stock_optimizer, trained = trainer_module.ExpertTrainer.optimizer, {}

    def spy(self):
        optimizer = stock_optimizer(self)
        in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
        trained.update({n: p.dtype for n, p in self.named_parameters() if id(p) in in_optimizer})
        return optimizer

    monkeypatch.setattr(trainer_module.ExpertTrainer, "optimizer", spy)
    with forward_dtypes(model) as seen:
        after = call_node("R2MoETrainConcept", model=model, clip=clip, vae=vae, bank=empty, concept_name="dog",
                          trigger_token="<dog1>", class_word="dog", images=pictures(1), **FAST)[0]
    assert_ran_in(seen, name)
    kinds = {kind for n in trained for kind in ("down", "up", "router", "token", "gate") if kind in n}
    assert {"down", "up", "token"} <= kinds and len(trained) > 2, f"unexpected trainable set {sorted(trained)}"
    assert set(trained.values()) == {torch.float32}, f"trained tensors not fp32: {trained}"
    dog = after.concept_by_name("dog")
    stored = [dog.embedding, dog.gate_input] + [t for p in after.projections.values()
                                                for e in p.experts.values() for t in (e.down, e.up, e.gate)]
    assert {t.dtype for t in stored} == {torch.float32}
    before_error = denoise_error(host, models, empty, resized(host, pictures(1), SIZE), "photo of a <dog1> dog")
    after_error = denoise_error(host, models, after, resized(host, pictures(1), SIZE), "photo of a <dog1> dog")
    record(case, "training", error_before=before_error, error_after=after_error,
           trained_tensors=len(trained), trained_dtypes=sorted({str(d) for d in trained.values()}))
    assert after_error < 0.85 * before_error, f"denoising error {before_error:.4f} -> {after_error:.4f} in {name}"


def test_one_full_canvas_region_equals_the_bank_patch(half, concepts):
    case, name, models = half
    model, clip, _ = models
    prompt = "a <dog1> dog on the beach"
    data = {"width": 128, "height": 128, "background": "a garden",
            "regions": [{"prompt": prompt, "box": [0.0, 0.0, 1.0, 1.0]}]}
    layout = call_node("R2MoELayoutFromJSON", layout_json=json.dumps(data))[0]
    full = call_node("R2MoERegionalApply", model=model, clip=clip, bank=concepts, layout=layout, strength=1.0)[0]
    bank_model, bank_clip = apply(models, concepts)
    with forward_dtypes(full) as seen:
        via_regions = first_call(full, bank_clip, prompt, size=SIZE)[0]
    assert_ran_in(seen, name)
    via_bank = first_call(bank_model, bank_clip, prompt, size=SIZE)[0]
    stock = first_call(model, bank_clip, prompt, size=SIZE)[0]
    # Both paths add the same deltas to the same half-precision K/V: equal up to the blend's own rounding.
    compare(case, "full_canvas_region_vs_bank", name, (via_bank - stock).abs().max().item(),
            (via_regions - via_bank).abs().max().item(), floor=1e-2)


def test_an_exported_concept_draws_the_same_through_the_stock_lora_loader(half, concepts):
    """Export Concept writes a LoRA + embedding that stock nodes draw like the bank."""
    import folder_paths

    case, name, models = half
    model, clip, _ = models
    prompt = "a photo of <dog1> dog on the grass"
    stem = f"dog_{case}"
    call_node("R2MoEExportConcept", clip=clip, bank=concepts, concept_name="dog", prompt=prompt, file_name=stem,
              overwrite=True)
    folder_paths.filename_list_cache.clear()
    lora_model, lora_clip = call_node("LoraLoader", model=model, clip=clip, lora_name=f"{stem}.safetensors",
                                      strength_model=1.0, strength_clip=0.0)
    stock_prompt = f"a photo of embedding:{stem} dog on the grass"
    _rename_embedding(stem)
    via_bank = sample(*apply(models, concepts), prompt, cfg=1.0, size=SIZE)
    via_stock = sample(lora_model, lora_clip, stock_prompt, cfg=1.0, size=SIZE)
    plain = sample(model, clip, "a photo of dog dog on the grass", cfg=1.0, size=SIZE)
    compare(case, "export_vs_bank", name, (via_bank - plain).abs().max().item(),
            (via_stock - via_bank).abs().max().item())


def test_an_imported_lora_draws_like_the_stock_loader(host, half, empty):
    """A rank-4 LoRA in kohya's names for this UNet becomes a gated concept; its trigger prompt draws what stock
    LoraLoader + the token's embedding file draw."""
    import folder_paths
    from safetensors.torch import save_file

    from r2moe_core.moe.concept_export import embedding_tensors

    case, name, models = half
    model, clip, _ = models
    lora_name = f"kohya_{case}.safetensors"
    write_kohya_lora(host.core, empty, Path(folder_paths.get_folder_paths("loras")[0]) / lora_name)
    folder_paths.filename_list_cache.clear()
    grown, _ = call_node("R2MoEImportLoRA", clip=clip, bank=empty, lora_name=lora_name, concept_name="style",
                         trigger_token="<sty1>", class_word="cat", example_prompts="a photo of <sty1> cat",
                         strength=1.0, prune_threshold=0.0)
    save_file(embedding_tensors(grown, "style"),  # the imported token as a stock embedding file
              str(Path(folder_paths.get_folder_paths("embeddings")[0]) / f"sty_{case}.safetensors"))
    folder_paths.filename_list_cache.clear()
    lora_model, lora_clip = call_node("LoraLoader", model=model, clip=clip, lora_name=lora_name,
                                      strength_model=1.0, strength_clip=0.0)
    stock_prompt = f"a photo of embedding:sty_{case} cat"
    via_bank = sample(*apply(models, grown), "a photo of <sty1> cat", cfg=1.0, size=SIZE)
    via_stock = sample(lora_model, lora_clip, stock_prompt, cfg=1.0, size=SIZE)
    plain = sample(model, clip, stock_prompt, cfg=1.0, size=SIZE)
    compare(case, "import_vs_stock_lora", name, (via_stock - plain).abs().max().item(),
            (via_bank - via_stock).abs().max().item())


def _rename_embedding(stem: str) -> None:
    """Export names the embedding after the token (dog1); keep one per case so the cases never share a file."""
    import folder_paths

    folder = Path(folder_paths.get_folder_paths("embeddings")[0])
    source = folder / "dog1.safetensors"
    if source.exists():
        source.replace(folder / f"{stem}.safetensors")
    folder_paths.filename_list_cache.clear()
