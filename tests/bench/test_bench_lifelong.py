"""The lifelong benchmark's quick mode end to end on the shipped world model, plus its methods' invariants."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from world.checkpoint import SHIPPED, load_world
from world.concepts import load_concepts
from world.methods import METHODS, Budget, make_method, world_layers
from world.protocol import ConceptData, World, train_task

REPO = Path(__file__).resolve().parents[2]
KEYS = ("image_alignment", "image_alignment_heldout", "image_alignment_train", "text_alignment", "forgetting",
        "params_added", "bytes_added", "train_s_per_task", "class_drift", "class_drift_unseen", "class_drift_other")


@pytest.fixture(scope="module")
def quick_results(tmp_path_factory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("lifelong")
    subprocess.run([sys.executable, str(REPO / "bench" / "lifelong.py"), "--quick", "--out", str(out)], check=True,
                   timeout=900)
    return json.loads((out / "lifelong_quick.json").read_text()), out


def test_quick_mode_writes_every_method_in_the_shared_shape(quick_results) -> None:
    results, out = quick_results
    assert set(results["methods"]) == set(METHODS)
    for name, numbers in results["methods"].items():
        for key in KEYS:
            assert isinstance(numbers[key], (int, float)) and numbers[key] == numbers[key], (name, key)
    for plot in ("forgetting", "params", "grid"):
        assert (out / f"lifelong_world_{plot}.png").stat().st_size > 1000
    assert "| r2moe |" in (out / "lifelong_quick.md").read_text()
    assert all(0.0 < v <= 1.0 for v in results["evaluator_accuracy"].values())


def test_the_result_names_the_code_that_made_it_and_is_current_until_that_code_changes(quick_results) -> None:
    from provenance import staleness

    record = quick_results[0]["provenance"]
    assert record["script"] == "bench/lifelong.py" and set(record["code"]) == {"reads", "weights"}
    assert record["libraries"]["torch"] == torch.__version__ and record["threads"] >= 1
    assert staleness(record) == []
    assert staleness(record | {"code": record["code"] | {"reads": "0" * 16}}) == ["reads"]


def test_image_alignment_is_measured_against_images_the_method_never_trained_on(quick_results) -> None:
    results = quick_results[0]
    for track in results["tracks"].values():
        assert all(n >= 1 for n in track["references"]["heldout_images"])
        for numbers in track["methods"].values():
            assert numbers["image_alignment"] == numbers["image_alignment_heldout"]
    world = ConceptData.from_spec(load_concepts(REPO / "bench" / "world" / "concepts_10.json")[0], 3)
    assert not any((h == t).all() for h in world.heldout for t in world.images), "held-out renders are new scenes"


def test_drift_prompts_reach_beyond_the_gates_protected_list() -> None:
    from world.concepts import CLASS_WORDS
    from world.protocol import EvalSettings, other_class_prompts, protected_class_prompts, unseen_class_prompts

    specs = load_concepts(REPO / "bench" / "world" / "concepts_10.json")[:3]
    concepts = [ConceptData.from_spec(s, 1, heldout=0) for s in specs]
    protected = set(protected_class_prompts(concepts, EvalSettings()))
    unseen = unseen_class_prompts(concepts, seed=0)
    assert unseen and not protected & set(unseen)
    assert any(p.startswith("photo of two ") for p in unseen)
    learned = {c.class_word for c in concepts}
    others = other_class_prompts(concepts, seed=0)
    assert others and all(p.split()[3] in set(CLASS_WORDS) - learned for p in others)


def test_quick_mode_measures_what_the_methods_are(quick_results) -> None:
    methods = quick_results[0]["methods"]
    # one LoRA per concept never touches an earlier concept: with fixed sampling seeds it cannot forget (only float
    # noise from the batch growing); sequential fine-tuning of the same weights does move old concepts
    assert abs(methods["lora_per_concept"]["forgetting"]) < 0.05
    assert methods["lora_sequential"]["forgetting"] != 0.0
    # pruning only removes: the pruned bank is never larger, and both grow per concept unlike sequential LoRA
    assert methods["r2moe"]["params_added"] <= methods["r2moe_no_prune"]["params_added"]
    per_task = methods["lora_sequential"]["params_per_task"]
    assert per_task[-1] - per_task[0] == 2 * 768  # only the two new trigger vectors
    assert methods["custom_diffusion"]["params_added"] > methods["lora_per_concept"]["params_added"]


def test_every_method_learns_through_the_same_loop_and_keeps_the_base_frozen() -> None:
    world = World(*load_world(SHIPPED))
    before = {k: v.clone() for k, v in world.unet.state_dict().items()}
    spec = load_concepts(REPO / "bench" / "world" / "concepts_10.json")[0]
    concept = ConceptData.from_spec(spec, 3)
    for name in METHODS:
        method = make_method(name, world.unet, Budget(steps=3, batch_size=1))
        train_task(world, method, concept, 3, seed=0)
        assert concept.token in method.tokens and method.params_added() > 0, name
        context = world.text(["photo of a " + spec.token], method.tokens)
        delta = method.sampling_delta(["photo of a " + spec.token], context)
        if name == "textual_inversion":  # the token alone: no adapter, the token moved off its start
            assert delta is None and method.params_added() == 768, name
            continue
        assert delta is not None, name
        moved = [delta(p, context) for layer in world_layers(world.unet) for p in layer.projection_names()]
        assert any(d is not None and d.abs().sum() > 0 for d in moved), name  # it learned something
    after = world.unet.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_hlag_row_draws_a_trigger_in_its_planned_box_and_leaves_other_prompts_to_the_base_model() -> None:
    from world.protocol import EvalSettings, generate
    from world.vocab import SIZE

    world = World(*load_world(SHIPPED))
    spec = load_concepts(REPO / "bench" / "world" / "concepts_10.json")[0]
    concept = ConceptData.from_spec(spec, 3, heldout=0)
    hlag, plain = (make_method(name, world.unet, Budget(steps=3, batch_size=1)) for name in ("r2moe_hlag", "r2moe"))
    for method in (hlag, plain):
        train_task(world, method, concept, 3, seed=0)
    settings = EvalSettings(images_per_concept=1, steps=4)
    untriggered = [f"photo of a {spec.class_word} on the right, sand background"]
    ours, base = generate(world, hlag, untriggered, 0, settings), generate(world, None, untriggered, 0, settings)
    assert abs(ours[0].astype(int) - base[0].astype(int)).max() <= 1  # no region, no expert: the base model's image
    triggered = [f"photo of a {spec.token} {spec.class_word} on the left, grass background"]
    (runtime,) = hlag.regional_hook(world.text, triggered, SIZE).runtimes
    (region,) = runtime.layout.regions
    assert region.tokens == (spec.token,) and region.box[2] <= 0.5  # the planner's box on the named side
    assert plain.regional_hook(world.text, triggered, SIZE) is None
    regional, bank_only = generate(world, hlag, triggered, 0, settings), generate(world, plain, triggered, 0, settings)
    assert abs(regional[0].astype(int) - bank_only[0].astype(int)).max() > 8  # the regional path is what drew it
