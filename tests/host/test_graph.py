"""The shipped example workflow through ComfyUI's own validator and executor, in process."""

from __future__ import annotations

import os

from comfy_inprocess import run_graph

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
