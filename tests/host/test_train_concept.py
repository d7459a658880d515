"""R2MoETrainConcept on the real host with the tiny model: learning, forgetting, pruning, cancel, bad inputs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from comfy_inprocess import call_node

from r2moe_testkit.sampling import encode, sample

CONCEPTS = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "concepts"
DOG_PROMPT, CAT_PROMPT, OTHER_PROMPT = "photo of a <dog1> dog", "photo of a <cat1> cat", "a red car in a city street"
FAST = {  # short, high-rate runs at 64 px: the tiny model learns visibly in a few dozen steps
    "steps": 40, "batch_size": 2, "resolution": 64, "lr_experts": 1e-2, "lr_router": 1e-2, "lr_token": 1e-2,
    "distill_lambda": 1e-5, "distill_mode": "exact", "prune_threshold": 0.0, "seed": 0, "optimizer": "AdamW",
    "gradient_checkpointing": False,
}


def pictures(seed: int, n: int = 4, size: int = 96) -> torch.Tensor:
    """A stand-in photo set: one random colour pattern with small variations (CI has no GPU, not no data)."""
    gen = torch.Generator().manual_seed(seed)
    base = torch.rand(1, size // 8, size // 8, 3, generator=gen)
    base = base.repeat_interleave(8, 1).repeat_interleave(8, 2)
    return (base + 0.05 * torch.rand(n, size, size, 3, generator=gen)).clamp(0, 1)


def train(tiny, bank, name, token, cls, images, **overrides):
    model, clip, vae = tiny
    return call_node(
        "R2MoETrainConcept", model=model, clip=clip, vae=vae, bank=bank, concept_name=name, trigger_token=token,
        class_word=cls, images=images, **(FAST | overrides),
    )


def predict(tiny, bank, prompt):
    model, clip, _ = tiny
    patched, patched_clip = call_node("R2MoEApplyBank", model=model, clip=clip, bank=bank, strength=1.0)
    return sample(patched, patched_clip, prompt, steps=2, cfg=1.0, size=64)


@pytest.fixture(scope="module")
def empty(tiny):
    return call_node("R2MoENewBank", model=tiny[0], rank=4, top_k=3, prune_threshold=0.4, distill_lambda=1e-5)[0]


@pytest.fixture(scope="module")
def after_dog(tiny, empty):
    return train(tiny, empty, "dog", "<dog1>", "dog", pictures(1))


def denoise_error(host, tiny, bank, images, prompt: str) -> float:
    """ε-prediction error on a concept's own images at fixed noise levels: what training lowers."""
    import comfy.model_management

    model, clip, vae = tiny
    training_host = __import__(host.pack.__name__ + ".nodes.host.training_host", fromlist=["x"])
    patched, patched_clip = call_node("R2MoEApplyBank", model=model, clip=clip, bank=bank, strength=1.0)
    with torch.inference_mode():
        pixels = torch.stack([host.core.square_resize(i, 64) for i in images])
        x0 = model.model.process_latent_in(vae.encode(pixels)).float()
        context = encode(patched_clip, prompt)[0][0].repeat(len(x0), 1, 1)
        gen = torch.Generator().manual_seed(11)
        predict_noise, errors = training_host.noise_predictor(patched), []
        for sigma in (0.5, 2.0, 6.0):
            noise = torch.randn(x0.shape, generator=gen)
            s = torch.full((len(x0),), sigma)
            eps = predict_noise(x0 + sigma * noise, s, context)
            errors.append(torch.nn.functional.mse_loss(eps.cpu(), noise).item())
    comfy.model_management.soft_empty_cache()
    return sum(errors) / len(errors)


def test_training_learns_the_concept(host, tiny, empty, after_dog):
    bank, curve, report, preview = after_dog
    assert bank.num_tasks == 1 and bank.concepts[0].token == "<dog1>" and empty.num_tasks == 0
    assert preview.shape == (1, 64, 64, 3) and "previews: 1 of 'photo of a <dog1> dog'" in report
    picture = bank.concepts[0].thumbnail  # the bank keeps the last preview as the concept's picture
    assert picture is not None and picture.dtype == torch.uint8 and picture.shape == (64, 64, 3)
    assert torch.equal(picture, (preview[0] * 255).round().to(torch.uint8))
    text, _, gallery = call_node("R2MoEBankInfo", bank=bank)
    assert "has a picture" in text and gallery.shape[0] == 1 and gallery.shape[-1] == 3
    assert curve.shape[0] == 1 and curve.shape[-1] == 3 and "learned 'dog' as <dog1>" in report
    base = denoise_error(host, tiny, empty, pictures(1), DOG_PROMPT)
    learned = denoise_error(host, tiny, bank, pictures(1), DOG_PROMPT)
    assert learned < 0.8 * base, f"denoising error on the concept's photos {base:.4f} -> {learned:.4f}"
    off = call_node("R2MoEApplyBank", model=tiny[0], clip=tiny[1], bank=bank, strength=0.0)
    assert torch.equal(sample(off[0], off[1], OTHER_PROMPT, steps=2, cfg=1.0, size=64),
                       sample(tiny[0], tiny[1], OTHER_PROMPT, steps=2, cfg=1.0, size=64)), \
        "with experts off, a prompt without the trigger token must be exactly the base model's"


def test_previews_show_the_concept_as_it_learns_and_change_nothing(host, tiny, after_dog, monkeypatch):
    """Every preview_every steps the node draws the concept's prompt with the current state and shows it beside the
    loss curve (the live preview); the trained bank is the same as without previews, and the last preview (the
    node's IMAGE output) depends on the learned state alone."""
    import comfy.utils

    previews = __import__(host.pack.__name__ + ".nodes.host.training_preview", fromlist=["x"])
    monkeypatch.setattr(previews, "BUDGET", 100.0)  # no preview left out for time here (the bound: below)
    shown = []
    monkeypatch.setattr(comfy.utils, "PROGRESS_BAR_HOOK",
                        lambda value, total, preview, node_id=None: shown.append((value, preview)))
    quiet = train(tiny, after_dog[0], "cat", "<cat1>", "cat", pictures(2), steps=12, preview_every=0)
    watched = train(tiny, after_dog[0], "cat", "<cat1>", "cat", pictures(2), steps=12, preview_every=4)
    pictures_shown = [(step, p) for step, p in shown if p is not None]
    assert [step for step, _ in pictures_shown][-3:] == [4, 8, 12]
    kind, image, _ = pictures_shown[-1][1]
    assert kind == "JPEG" and image.width > image.height  # the loss curve and the preview side by side
    assert "previews: 3 of 'photo of a <cat1> cat'" in watched[2] and "previews: 1 " in quiet[2]
    bank_file = __import__(host.pack.__name__ + ".r2moe_core.bank.bank_file", fromlist=["x"])
    a, b = bank_file.bank_to_tensors(quiet[0])[0], bank_file.bank_to_tensors(watched[0])[0]
    assert all(torch.equal(a[k], b[k]) for k in a), "previews must not change what is learned"
    assert torch.equal(quiet[3], watched[3]), "the last preview depends on the learned state alone"
    assert watched[3].shape == (1, 64, 64, 3) and torch.isfinite(watched[3]).all()
    monkeypatch.setattr(previews, "BUDGET", 0.0)  # any preview would exceed it: only the final one is drawn
    bounded = train(tiny, after_dog[0], "cat", "<cat1>", "cat", pictures(2), steps=12, preview_every=4)
    assert "previews: 1 " in bounded[2] and "2 left out to stay within 10 %" in bounded[2]
    assert torch.equal(bounded[3], watched[3])


def test_learning_a_second_concept_keeps_the_first_one_routed_as_before(tiny, after_dog):
    dog_bank = after_dog[0]
    before = predict(tiny, dog_bank, DOG_PROMPT)
    isolated = train(tiny, dog_bank, "cat", "<cat1>", "cat", pictures(2), new_expert_margin=20.0)[0]
    unguarded = train(tiny, dog_bank, "cat", "<cat1>", "cat", pictures(2), new_expert_margin=20.0,
                      distill_mode="off")[0]
    drift = (predict(tiny, isolated, DOG_PROMPT) - before).abs().max().item()
    drift_off = (predict(tiny, unguarded, DOG_PROMPT) - before).abs().max().item()
    assert drift < 1e-3, f"the dog changed by {drift} after learning the cat"
    assert drift_off > 20 * max(drift, 1e-4), f"without distillation the dog should change (moved {drift_off})"
    cat_shift = (predict(tiny, isolated, CAT_PROMPT) - predict(tiny, dog_bank, CAT_PROMPT)).abs().mean().item()
    assert cat_shift > 0.02, "the cat must still be learned"


def test_default_exact_distillation_keeps_old_gate_scores(tiny, after_dog):
    dog_bank = after_dog[0]
    cat_bank = train(tiny, dog_bank, "cat", "<cat1>", "cat", pictures(2))[0]
    m = dog_bank.concepts[0].gate_input[None]
    for name, proj in cat_bank.projections.items():
        old = m @ dog_bank.projections[name].router(2)
        new = m @ proj.router(3)
        assert torch.allclose(new[:, :2], old, atol=1e-3)
        assert float(new[0, 2]) == pytest.approx(-8.0, abs=1e-2), "the new expert stays out of the dog's mixture"


def test_pruning_thresholds(tiny, after_dog):
    dog_bank = after_dog[0]
    all_pruned = train(tiny, dog_bank, "cat", "<cat1>", "cat", pictures(2), steps=5, prune_threshold=1.0)
    none_pruned = train(tiny, dog_bank, "cat", "<cat1>", "cat", pictures(2), steps=5, prune_threshold=0.0)
    assert all_pruned[0].concept_by_name("cat").kept == () and "removed 32 of 32" in all_pruned[2]
    assert "warning: pruning removed 100% of the new expert" in all_pruned[2], "the user is told and given a τ"
    assert len(none_pruned[0].concept_by_name("cat").kept) == 32 and "warning" not in none_pruned[2]
    assert all_pruned[0].expert_bytes() == dog_bank.expert_bytes()


def test_real_photo_folder_with_captions(tiny, empty):
    folder = CONCEPTS / "dog"
    if not folder.is_dir():
        pytest.skip("../shared/data/concepts is not beside this checkout")
    model, clip, vae = tiny
    bank, _, report, _ = call_node(
        "R2MoETrainConcept", model=model, clip=clip, vae=vae, bank=empty, concept_name="real dog",
        trigger_token="<rdog>", class_word="dog", folder=str(folder), **(FAST | {"steps": 3}),
    )
    assert bank.concept_by_token("<rdog>") is not None and "3 steps" in report


def test_cancel_leaves_the_saved_bank_byte_identical(host, tiny, after_dog, monkeypatch):
    import comfy.model_management

    (path,) = call_node("R2MoESaveBank", bank=after_dog[0], name="cancel_me")
    before = Path(path).read_bytes()
    calls = {"n": 0}
    real = comfy.model_management.throw_exception_if_processing_interrupted

    def cancel_at_third_step():
        calls["n"] += 1
        if calls["n"] == 3:
            comfy.model_management.interrupt_current_processing(True)
        real()

    monkeypatch.setattr(comfy.model_management, "throw_exception_if_processing_interrupted", cancel_at_third_step)
    with pytest.raises(comfy.model_management.InterruptProcessingException):
        train(tiny, after_dog[0], "cat", "<cat1>", "cat", pictures(2))
    comfy.model_management.interrupt_current_processing(False)
    assert Path(path).read_bytes() == before and after_dog[0].num_tasks == 1
    assert not [f for f in os.listdir(os.path.dirname(path)) if f.endswith(".tmp")]


def cancel_after(host, monkeypatch, steps: int) -> None:
    """Press Cancel after `steps` training steps (the loop checks for it once before each step)."""
    import comfy.model_management

    training_host = __import__(host.pack.__name__ + ".nodes.host.training_host", fromlist=["x"])
    calls = {"n": 0}
    real = training_host.ComfyTrainingHost.check_interrupted

    def cancel(self):
        calls["n"] += 1
        if calls["n"] == steps + 1:
            comfy.model_management.interrupt_current_processing(True)
        real(self)

    monkeypatch.setattr(training_host.ComfyTrainingHost, "check_interrupted", cancel)


def test_a_cancelled_run_resumes_from_its_checkpoint_and_ends_as_an_uninterrupted_one(host, tiny, after_dog,
                                                                                         monkeypatch):
    import comfy.model_management
    import folder_paths

    bank_file = __import__(host.pack.__name__ + ".r2moe_core.bank.bank_file", fromlist=["x"])
    checkpoint = Path(folder_paths.get_folder_paths("r2moe")[0]) / "resume" / "cat.pt"
    run = {"steps": 10, "checkpoint_every": 4}
    straight = train(tiny, after_dog[0], "cat", "<cat1>", "cat", pictures(2), **run)
    assert "resumed" not in straight[2] and not checkpoint.exists(), "a finished run leaves no checkpoint"

    with monkeypatch.context() as patch:
        cancel_after(host, patch, 6)  # steps 1-6 run; the state of step 4 is on disk
        with pytest.raises(comfy.model_management.InterruptProcessingException):
            train(tiny, after_dog[0], "cat", "<cat1>", "cat", pictures(2), **run)
    comfy.model_management.interrupt_current_processing(False)
    assert checkpoint.is_file()
    resumed = train(tiny, after_dog[0], "cat", "<cat1>", "cat", pictures(2), **run)
    assert "resumed from step 4" in resumed[2] and not checkpoint.exists()
    a, b = bank_file.bank_to_tensors(straight[0])[0], bank_file.bank_to_tensors(resumed[0])[0]
    assert a.keys() == b.keys()
    worst = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    assert worst <= 1e-6, f"the resumed bank differs from the uninterrupted one by {worst}"

    with monkeypatch.context() as patch:
        cancel_after(host, patch, 6)
        with pytest.raises(comfy.model_management.InterruptProcessingException):
            train(tiny, after_dog[0], "cat", "<cat1>", "cat", pictures(2), **run)
    comfy.model_management.interrupt_current_processing(False)
    changed = train(tiny, after_dog[0], "cat", "<cat1>", "cat", pictures(2), **run | {"lr_token": 5e-3})
    assert "resumed" not in changed[2] and not checkpoint.exists(), "a changed input starts afresh"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"concept_name": "dog"}, "already has a concept named 'dog'.*replace_existing"),
        ({"trigger_token": "<dog1>", "concept_name": "dog2"}, "already used by concept 'dog'"),
        ({"images": None}, "No training images"),
        ({"folder": "/nonexistent/photos", "images": None}, "not found"),
        ({"trigger_token": "two words"}, "one word"),
    ],
)
def test_bad_inputs_get_clear_errors(host, tiny, after_dog, overrides, message):
    args = {"concept_name": "cat", "trigger_token": "<cat1>", "images": pictures(2)} | overrides
    model, clip, vae = tiny
    with pytest.raises(host.core.R2MoEError, match=message):
        call_node("R2MoETrainConcept", model=model, clip=clip, vae=vae, bank=after_dog[0], class_word="cat",
                  **(FAST | {"steps": 2} | args))


def test_gradient_checkpointing_gives_the_same_training(tiny, after_dog):
    dog_bank = after_dog[0]
    plain = train(tiny, dog_bank, "cat", "<cat1>", "cat", pictures(2), steps=3, gradient_checkpointing=False)[0]
    saved = train(tiny, dog_bank, "cat", "<cat1>", "cat", pictures(2), steps=3, gradient_checkpointing=True)[0]
    for name, proj in plain.projections.items():
        other = saved.projections[name].experts[2]
        assert torch.allclose(proj.experts[2].up, other.up, atol=1e-6), name
        assert torch.allclose(proj.experts[2].gate, other.gate, atol=1e-6), name
    assert torch.allclose(plain.concepts[1].embedding, saved.concepts[1].embedding, atol=1e-6)
    model = tiny[0].model.diffusion_model
    assert not any("forward" in vars(m) for m in model.modules()), "checkpointing must not outlive training"


def test_class_prior_images_are_drawn_once_by_the_stock_sampler_and_survive_checkpointing(tiny, after_dog,
                                                                                          monkeypatch):
    import comfy.sample

    real, calls = comfy.sample.sample, {"n": 0}

    def counted(*args, **kwargs):
        calls["n"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(comfy.sample, "sample", counted)
    prior = {"prior_images": 3, "prior_weight": 1.0, "steps": 3}
    first = train(tiny, after_dog[0], "lamp", "<lamp1>", "lamp", pictures(3), **prior, gradient_checkpointing=True)
    assert calls["n"] == 3, "one stock sampling run per class-prior image"
    assert "3 class-prior images of 'photo of a lamp'" in first[2]
    again = train(tiny, after_dog[0], "lamp", "<lamp1>", "lamp", pictures(3), **prior)
    assert calls["n"] == 3, "the next concept of the class reuses the cached images"
    for name, proj in first[0].projections.items():  # the prior rows keep their routing through recomputation
        assert torch.allclose(proj.experts[2].up, again[0].projections[name].experts[2].up, atol=1e-6), name
    plain = train(tiny, after_dog[0], "lamp", "<lamp1>", "lamp", pictures(3), **(prior | {"prior_images": 0}))
    assert "no class-prior images" in plain[2]
    assert any(not torch.allclose(p.experts[2].up, plain[0].projections[n].experts[2].up)
               for n, p in first[0].projections.items()), "the prior images changed nothing"


def _training_graph(host, **inputs) -> dict:
    train = {"model": ["1", 0], "clip": ["1", 1], "vae": ["1", 2], "bank": ["2", 0], "concept_name": "mug",
             "trigger_token": "<mug1>", "class_word": "mug", "folder": "", **(FAST | {"steps": 2}), **inputs}
    return {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": host.checkpoint.name}},
            "2": {"class_type": "R2MoENewBank", "inputs": {"model": ["1", 0], "rank": 4, "top_k": 3,
                                                             "prune_threshold": 0.4, "distill_lambda": 1e-5}},
            "3": {"class_type": "R2MoETrainConcept", "inputs": train}}


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({"trigger_token": "<my mug>"}, "one word"),
        ({"optimizer": "adamw"}, "optimizer must be one of AdamW, Adam, SGD, got 'adamw'"),
        ({"distill_mode": "x" * 5000}, "distill_mode must be one of exact, soft, off, got 'x{200}'\\."),
        ({"trigger_token": "  "}, "one word"),
        ({"concept_name": "   "}, "non-empty name"),
        ({"folder": "/nonexistent/photos"}, "not found"),
        ({"folder": "BROKEN"}, r"notaphoto\.png .* is not a readable image"),
    ],
)
def test_bad_inputs_are_refused_before_any_model_loads(host, tmp_path, inputs, message):
    """ComfyUI validates the graph before it runs a node: these inputs never reach the checkpoint loader."""
    import asyncio
    import re

    import execution

    if inputs.get("folder") == "BROKEN":  # one real photo and one file that only calls itself a PNG
        from PIL import Image

        Image.new("RGB", (32, 32), "red").save(tmp_path / "a.png")
        (tmp_path / "notaphoto.png").write_bytes(b"this is text, not a picture")
        inputs = {"folder": str(tmp_path)}
    valid = asyncio.run(execution.validate_prompt("bad-input", _training_graph(host, **inputs), None))
    assert not valid[0]
    details = " ".join(e["details"] for node in valid[3].values() for e in node["errors"])
    assert re.search(message, details), details


def test_a_non_image_in_the_folder_is_named_when_training_loads_it(host, tiny, after_dog, tmp_path):
    (tmp_path / "b.png").write_bytes(b"not an image")
    model, clip, vae = tiny
    with pytest.raises(host.core.R2MoEError, match=r"b\.png .* is not a readable image"):
        call_node("R2MoETrainConcept", model=model, clip=clip, vae=vae, bank=after_dog[0], class_word="cat",
                  concept_name="cat", trigger_token="<cat1>", folder=str(tmp_path), **(FAST | {"steps": 2}))


def test_a_name_from_another_node_is_checked_when_it_arrives_not_refused_as_blank(host):
    import asyncio

    import execution

    graph = _training_graph(host, concept_name=["4", 0])
    graph["4"] = {"class_type": "PrimitiveString", "inputs": {"value": "mug"}}
    valid = asyncio.run(execution.validate_prompt("linked-name", graph, None))
    assert valid[0], valid[3]


def test_the_log_says_how_long_the_run_will_take_once_the_first_steps_are_timed(tiny, empty, caplog):
    import logging

    with caplog.at_level(logging.INFO):
        train(tiny, empty, "eta", "<eta1>", "thing", pictures(3), steps=8, preview_every=0)
    lines = [r.getMessage() for r in caplog.records if "s per step" in r.getMessage()]
    assert len(lines) == 1 and "about" in lines[0] and "for the 8 steps" in lines[0], lines


def test_a_failed_training_run_leaves_no_dead_model_in_the_hosts_list(host, tmp_path, monkeypatch):
    """One executor across prompts, as in a server: a run that fails after the models are cloned and loaded must
    not leave ComfyUI's loaded-model list holding a clone whose parent it lost (the host then warns "memory leak
    with model BaseModel" and runs a full garbage collection on every later load)."""
    import asyncio
    import gc

    import comfy.model_management
    import execution
    from comfy_inprocess import SilentServer
    from PIL import Image

    for i, colour in enumerate(["red", "darkred", "firebrick"]):
        Image.new("RGB", (64, 64), colour).save(tmp_path / f"{i}.png")
    concept_run = __import__(host.pack.__name__ + ".r2moe_core.train.concept_run", fromlist=["x"])
    real_step, calls = concept_run.training_step, {"n": 0}

    def fails_at_the_second_step(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] % 2 == 0:
            raise RuntimeError("out of memory (injected)")
        return real_step(*args, **kwargs)

    monkeypatch.setattr(concept_run, "training_step", fails_at_the_second_step)
    executor = execution.PromptExecutor(SilentServer(), cache_type=execution.CacheType.CLASSIC,
                                        cache_args={"lru": 0, "ram": 0})
    dead = []
    for run in range(3):
        graph = _training_graph(host, folder=str(tmp_path), steps=5, seed=run)
        valid = asyncio.run(execution.validate_prompt(f"fail-{run}", graph, None))
        executor.execute(graph, f"fail-{run}", {}, valid[2])
        assert not executor.success
        gc.collect()
        dead.append(sum(1 for m in comfy.model_management.current_loaded_models if m.is_dead()))
    assert dead == [0, 0, 0], f"dead loaded-model entries after each failed run: {dead}"


def test_training_on_a_dynamic_vram_host_takes_the_static_delegate(host, tiny, empty):
    """Newer ComfyUI loads models as ModelPatcherDynamic on NVIDIA GPUs (weights streamed, only modules over 16 KB
    wrapped); training must run on its non-dynamic delegate. A stand-in with the same two methods: its own clone
    refuses weight wrappers, as a dynamic patcher does for small modules, so training on it directly fails."""
    model, clip, vae = tiny
    calls = []

    class DynamicStandIn(type(model)):
        def is_dynamic(self):
            return True

        def get_non_dynamic_delegate(self):
            calls.append(1)
            return model.clone()

        def add_weight_wrapper(self, *args, **kwargs):
            raise AssertionError("weight wrappers on the dynamic patcher itself")

    dynamic = model.clone()
    dynamic.__class__ = DynamicStandIn
    bank, _, report, _ = call_node(
        "R2MoETrainConcept", model=dynamic, clip=clip, vae=vae, bank=empty, concept_name="dyn",
        trigger_token="<dyn1>", class_word="dog", images=pictures(5), **FAST)
    assert calls and "learned 'dyn' as <dyn1>" in report and bank.num_tasks == 1

    class NoDelegate(DynamicStandIn):
        def get_non_dynamic_delegate(self):
            raise RuntimeError("Cannot create non-dynamic delegate: cached_patcher_init is not initialized.")

    # The text encoder too: the delegate holds its own copy of the encoder, and that copy is the one that runs.
    import copy

    ran = []

    class DynamicClipPatcher(type(clip.patcher)):
        def is_dynamic(self):
            return True

        def get_non_dynamic_delegate(self):
            delegate = clip.patcher.clone()
            delegate.model = copy.deepcopy(clip.patcher.model)
            for module in delegate.model.modules():  # the encoder is entered below its top module
                module.register_forward_hook(lambda module, args, out: ran.append(1))
            return delegate

    dynamic_clip = clip.clone()
    dynamic_clip.patcher.__class__ = DynamicClipPatcher
    bank, *_ = call_node(
        "R2MoETrainConcept", model=model, clip=dynamic_clip, vae=vae, bank=empty, concept_name="dyn",
        trigger_token="<dyn1>", class_word="dog", images=pictures(5), **FAST)
    assert ran and bank.num_tasks == 1, "training ran the dynamic encoder, not its static delegate's copy"

    dynamic.__class__ = NoDelegate
    with pytest.raises(host.core.InvalidInputError, match="--disable-dynamic-vram"):
        call_node("R2MoETrainConcept", model=dynamic, clip=clip, vae=vae, bank=empty, concept_name="dyn",
                  trigger_token="<dyn1>", class_word="dog", images=pictures(5), **FAST)


def test_a_run_too_large_for_the_free_memory_is_refused_before_anything_is_encoded(host, tiny, after_dog,
                                                                                     monkeypatch):
    """The estimate is compared with what the device has before the photos go through the VAE; the message names
    the setting to lower, and a run that fits is not refused."""
    import comfy.model_management

    model, clip, vae = tiny
    encoded = {"n": 0}
    real_encode = type(vae).encode

    def counting_encode(self, *args, **kwargs):
        encoded["n"] += 1
        return real_encode(self, *args, **kwargs)

    monkeypatch.setattr(type(vae), "encode", counting_encode)
    args = {"concept_name": "cat", "trigger_token": "<cat1>", "images": pictures(2), "class_word": "cat"}
    with pytest.raises(host.core.InvalidInputError, match=r"GiB is free there\. Lower batch_size to \d+ or less"):
        call_node("R2MoETrainConcept", model=model, clip=clip, vae=vae, bank=after_dog[0],
                  **(FAST | {"steps": 2, "batch_size": 64, "resolution": 2048} | args))
    assert encoded["n"] == 0, "refused before the photos were encoded"

    tight = 1024**3  # a device with 1 GiB free and nothing loaded that could be unloaded
    monkeypatch.setattr(comfy.model_management, "get_free_memory", lambda *a, **k: tight)
    monkeypatch.setattr(type(model), "model_size", lambda self: 0)
    refusal = r"about 1\.0 GiB is free there\. (Lower batch_size|Use batch_size 1)"
    with pytest.raises(host.core.InvalidInputError, match=refusal):
        call_node("R2MoETrainConcept", model=model, clip=clip, vae=vae, bank=after_dog[0],
                  **(FAST | {"steps": 2, "batch_size": 32, "resolution": 512} | args))
    assert encoded["n"] == 0
    monkeypatch.undo()
    _, _, report, _ = call_node("R2MoETrainConcept", model=model, clip=clip, vae=vae, bank=after_dog[0],
                                **(FAST | {"steps": 2} | args))
    assert "estimated peak memory" in report
