"""The shipped example workflows (and the demo's two-concept graph) through ComfyUI's own validator and executor."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from comfy_inprocess import call_node, run_graph

from r2moe_testkit.banks import add_random_concept
from r2moe_testkit.sam import TINY_SAM_NAME, write_tiny_sam
from r2moe_testkit.workflows import load_api_workflow, with_steps


def test_example_workflow_executes_and_writes_images(host):
    import folder_paths

    result = run_graph(with_steps(load_api_workflow("api_apply_bank.json"), steps=2), prompt_id="graph-1")
    assert result.success, result.messages
    images = result.outputs["9"]["images"]
    path = os.path.join(folder_paths.get_output_directory(), images[0]["subfolder"], images[0]["filename"])
    assert os.path.getsize(path) > 0
    assert "R2MoE bank: 0 concept(s)" in result.outputs["10"]["text"][0]
    assert os.path.isfile(os.path.join(folder_paths.get_folder_paths("r2moe")[0], "demo_bank.safetensors"))


@pytest.mark.parametrize("sam_name", [None, TINY_SAM_NAME], ids=["boxes", "sam"])
def test_demo_two_concept_workflow_writes_the_image_and_its_layout(host, tiny, sam_name):
    """`make demo`'s last step (scripts/demo.py): planner -> regional patch -> sampler, plus the layout preview."""
    import folder_paths
    from demo import regional_graph
    from PIL import Image

    empty = call_node("R2MoENewBank", model=tiny[0], rank=4, top_k=3, prune_threshold=0.4, distill_lambda=1e-5)[0]
    bank = add_random_concept(host.core, empty, "mug", "<mug1>", seed=1)
    call_node("R2MoESaveBank", bank=add_random_concept(host.core, bank, "ball", "<ball1>", seed=2), name="demo_two")
    if sam_name is not None:
        write_tiny_sam(host.base_dir / "models" / "sams" / sam_name)
    folder_paths.filename_list_cache.clear()
    prompt = "photo of a <mug1> mug on the left and a <ball1> ball on the right, by the sea"
    graph = regional_graph(host.checkpoint.name, "demo_two.safetensors", prompt, size=64, steps=2, sam_name=sam_name)
    assert ("R2MoEHierarchicalSampler" in {n["class_type"] for n in graph.values()}) == (sam_name is not None)
    result = run_graph(graph, prompt_id=f"demo-regional-{sam_name}")
    assert result.success, result.messages
    for node, prefix in (("10", "r2moe_demo_regional"), ("12", "r2moe_demo_layout")):
        image = result.outputs[node]["images"][0]
        assert image["filename"].startswith(prefix)
        path = os.path.join(folder_paths.get_output_directory(), image["subfolder"], image["filename"])
        with Image.open(path) as picture:
            assert picture.size == (64, 64)


def test_demo_training_graph_learns_every_concept_and_samples_bank_and_base_side_by_side(host, tmp_path):
    """`make demo`'s training graph for three concepts: one chained training node each, every concept drawn with the
    bank, with the base model alone and with its token learned alone (same seed), and the four-column picture built
    from what it saved."""
    import folder_paths
    import numpy as np
    from demo import demo_concepts, photos
    from demo_concepts import draw_concept_sets
    from demo_graph import training_graph
    from demo_report import ConceptRow, before_after_picture
    from PIL import Image

    drawn = draw_concept_sets(tmp_path / "sets")
    folders = [(name, folder, cls) for name, (folder, cls) in drawn.items()]
    concepts = demo_concepts([*folders, ("third", folders[0][1], "thing")], ("on the grass", "by the sea"))
    template = load_api_workflow("api_train_two_concepts.json")
    graph, nodes = training_graph(template, host.checkpoint.name, concepts,
                                  {"steps": 2, "resolution": 64, "preview_every": 0}, size=64, batch=1, sample_steps=2,
                                  token_only=True)
    assert [graph[n.train]["inputs"]["bank"][0] for n in nodes] == ["2", nodes[0].train, nodes[1].train]
    alone = [graph[str(500 + 10 * i)]["inputs"] for i in range(3)]
    assert all(a["bank"] == ["2", 0] and a["lr_experts"] == a["lr_router"] == 0.0 and a["lr_token"] > 0 for a in alone)
    result = run_graph(graph, prompt_id="demo-training")
    assert result.success, result.messages
    assert "3 concept(s)" in result.outputs["19"]["text"][0]

    def image(node: str) -> Path:
        saved = result.outputs[node]["images"][0]
        return Path(folder_paths.get_output_directory()) / saved["subfolder"] / saved["filename"]

    for n in nodes:
        after, base, token = (np.asarray(Image.open(image(x))) for x in (n.after, n.base, n.token_only))
        assert after.shape == base.shape == token.shape == (64, 64, 3)
        assert not np.array_equal(after, base), "the bank changes what the same prompt and seed draw"
    rows = [ConceptRow(c.prompt, photos(c.folder)[0], {"base": image(n.base), "token_only": image(n.token_only),
                                                       "r2moe": image(n.after)},
                       {"base": 10.0, "token_only": 15.0, "r2moe": 20.0, "renders": 30.0})
            for c, n in zip(concepts, nodes, strict=True)]
    picture = before_after_picture(rows, (image(nodes[0].after), image(nodes[1].after), "two"), tmp_path / "p.png")
    with Image.open(picture) as shown:
        assert shown.width == 4 * 192 and shown.height > 4 * 192
    from demo import write_json_report

    scores = [{"base": 1.0, "token_only": 2.0, "r2moe": 3.0, "renders": 4.0}, None,
              {"base": 0.5, "token_only": 0.5, "r2moe": 0.5}]
    write_json_report(tmp_path / "report.json", concepts, scores)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["concepts"] == {c.name: s or {} for c, s in zip(concepts, scores, strict=True)}
    assert report["provenance"]["script"] == "scripts/demo.py" and set(report["provenance"]["code"]) == {
        "core", "nodes", "reads", "weights"}
    from demo import alignment_row

    # R2MoE is judged against the base model and the token alone; the true renders are the ceiling, not a rival.
    assert alignment_row(concepts[0], scores[0]).endswith("| 1.0 | 2.0 | 3.0 | yes | 4.0 |\n")
    assert alignment_row(concepts[2], scores[2]).endswith("| no | – |\n")
