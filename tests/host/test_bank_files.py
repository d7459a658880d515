"""Save/Load nodes on the real host: round trip, model folder listing, crash safety, clear refusals."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from comfy_inprocess import call_node

from r2moe_testkit.banks import add_random_concept


@pytest.fixture
def bank(host, tiny):
    empty = call_node("R2MoENewBank", model=tiny[0], rank=4, top_k=3, prune_threshold=0.4, distill_lambda=1e-5)[0]
    return add_random_concept(host.core, empty, "dog", "<dog1>", seed=3)


def test_save_then_load_through_the_nodes_round_trips(host, bank):
    import folder_paths

    (path,) = call_node("R2MoESaveBank", bank=bank, name="roundtrip")
    assert path.endswith("models/r2moe/roundtrip.safetensors") and os.path.isfile(path)
    folder_paths.filename_list_cache.clear()
    schema_options = host.nodes.NODE_CLASS_MAPPINGS["R2MoELoadBank"].GET_SCHEMA().inputs[0].options
    assert "roundtrip.safetensors" in schema_options
    (loaded,) = call_node("R2MoELoadBank", bank_name="roundtrip.safetensors")
    assert [c.token for c in loaded.concepts] == ["<dog1>"]
    name = bank.projection_names()[5]
    assert torch.equal(loaded.projections[name].experts[1].up, bank.projections[name].experts[1].up)
    assert torch.equal(loaded.fingerprint.samples, bank.fingerprint.samples)


def test_interrupted_save_leaves_the_previous_bank_intact(host, bank, monkeypatch):
    (path,) = call_node("R2MoESaveBank", bank=bank, name="crashy")
    before = Path(path).read_bytes()
    bigger = add_random_concept(host.core, bank, "cat", "<cat1>", seed=4)

    def crash(_fd):
        raise KeyboardInterrupt  # the user hits Ctrl-C (or the process dies) mid-write

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(KeyboardInterrupt):
        call_node("R2MoESaveBank", bank=bigger, name="crashy")
    monkeypatch.undo()
    assert Path(path).read_bytes() == before
    assert not [f for f in os.listdir(os.path.dirname(path)) if f.endswith(".tmp")]
    (loaded,) = call_node("R2MoELoadBank", bank_name="crashy.safetensors")
    assert loaded.num_tasks == 1


@pytest.mark.parametrize("bad", ["../escape", "sub/dir", "", ".hidden"])
def test_unsafe_names_are_refused(host, bank, bad):
    with pytest.raises(host.core.InvalidInputError, match="plain file name"):
        call_node("R2MoESaveBank", bank=bank, name=bad)


def test_a_lora_in_the_bank_folder_gets_a_clear_message(host):
    import folder_paths
    from safetensors.torch import save_file

    folder = folder_paths.get_folder_paths("r2moe")[0]
    save_file({"x.lora_up.weight": torch.zeros(1, 1)}, os.path.join(folder, "l.safetensors"))
    with pytest.raises(host.core.BankFormatError, match="not an R2MoE expert bank"):
        call_node("R2MoELoadBank", bank_name="l.safetensors")


def test_prune_node_shrinks_the_saved_file_and_reports_it(host, bank):
    (before_path,) = call_node("R2MoESaveBank", bank=bank, name="before_prune")
    pruned, report = call_node("R2MoEPruneBank", bank=bank, prune_threshold=1.0)
    (after_path,) = call_node("R2MoESaveBank", bank=pruned, name="after_prune")
    saved = os.path.getsize(before_path) - os.path.getsize(after_path)
    assert pruned.expert_count() == 0 and "removed 32 of 32" in report
    assert saved > 0.9 * bank.expert_bytes(), "a pruned expert must not leave tensors in the file"
    unchanged, _ = call_node("R2MoEPruneBank", bank=bank, prune_threshold=0.0)
    assert unchanged.expert_count() == bank.expert_count()


@pytest.mark.parametrize("posted", [".crashy.safetensors.4242.tmp", "nope.safetensors", "../models/r2moe/x"])
def test_the_loader_refuses_any_name_that_is_not_a_listed_bank(host, bank, posted):
    """The pinned host does not check combo values: a save's temporary file or a made-up name posted over the API
    is refused when the graph is validated, and the node refuses it too."""
    import asyncio

    import execution
    import folder_paths

    (path,) = call_node("R2MoESaveBank", bank=bank, name="crashy")
    Path(path).with_name(".crashy.safetensors.4242.tmp").write_bytes(Path(path).read_bytes())
    folder_paths.filename_list_cache.clear()
    graph = {"1": {"class_type": "R2MoELoadBank", "inputs": {"bank_name": posted}},
             "2": {"class_type": "R2MoEBankInfo", "inputs": {"bank": ["1", 0]}}}
    valid = asyncio.run(execution.validate_prompt("posted-bank", graph, None))
    assert not valid[0] and "is not a bank in models/r2moe" in str(valid[3])
    with pytest.raises(host.core.InvalidInputError, match="is not a bank in models/r2moe"):
        call_node("R2MoELoadBank", bank_name=posted)
    assert valid[0] is False and call_node("R2MoELoadBank", bank_name="crashy.safetensors")[0].num_tasks == 1
    Path(path).with_name(".crashy.safetensors.4242.tmp").unlink()


def test_bank_history_lists_versions_and_restores_one_through_the_executor(host, bank):
    """Three saves of one name, then the history node in a graph: list, restore by digest, queue again."""
    import folder_paths
    from comfy_inprocess import run_graph

    for name in ("cat", "owl"):
        grown = add_random_concept(host.core, bank, name, f"<{name}1>", seed=len(name))
        call_node("R2MoESaveBank", bank=bank, name="history")
        call_node("R2MoESaveBank", bank=grown, name="history", keep_versions=3)
    folder_paths.filename_list_cache.clear()
    versions = host.core.bank_versions(Path(folder_paths.get_folder_paths("r2moe")[0]) / "history.safetensors")
    assert [v.concepts for v in versions] == [("dog", "owl"), ("dog",), ("dog", "cat"), ("dog",)]

    def history(restore: str) -> tuple[str, list[str]]:
        graph = {"1": {"class_type": "R2MoEBankHistory", "inputs": {"bank_name": "history.safetensors",
                                                                    "restore": restore}},
                 "2": {"class_type": "R2MoEBankInfo", "inputs": {"bank": ["1", 0]}}}
        result = run_graph(graph, prompt_id=f"history-{restore or 'list'}")
        assert result.success, result.messages
        return result.outputs["1"]["text"][0], result.outputs["2"]["text"][0]

    listed, _ = history("")
    assert "3 kept version(s)" in listed and versions[2].digest in listed and "dog, cat" in listed
    restored, info = history(versions[2].digest[:8])
    assert f"version {versions[2].digest} is current" in restored and "<cat1>" in info
    again, info_again = history(versions[2].digest[:8])
    assert "<cat1>" in info_again and again.count("dog, owl") == 1, "queued twice, restored once"


def test_remove_and_rename_concepts_through_the_executor(host, bank):
    """Load -> Remove -> Rename -> Save in one graph, as a user wires it; the saved file keeps the old version."""
    import folder_paths
    from comfy_inprocess import run_graph

    library = add_random_concept(host.core, bank, "mug", "<mug1>", seed=8)
    call_node("R2MoESaveBank", bank=library, name="library")
    folder_paths.filename_list_cache.clear()
    graph = {
        "1": {"class_type": "R2MoELoadBank", "inputs": {"bank_name": "library.safetensors"}},
        "2": {"class_type": "R2MoERemoveConcept", "inputs": {"bank": ["1", 0], "concept_name": "dog"}},
        "3": {"class_type": "R2MoERenameConcept", "inputs": {"bank": ["2", 0], "concept_name": "mug",
                                                             "new_name": "cup", "new_token": "<cup1>"}},
        "4": {"class_type": "R2MoESaveBank", "inputs": {"bank": ["3", 0], "name": "library"}},
    }
    result = run_graph(graph, prompt_id="edit-library")
    assert result.success, result.messages
    assert result.outputs["2"]["text"][0].startswith("removed 'dog'")
    assert "'mug' is now 'cup', written <cup1>" in result.outputs["3"]["text"][0]
    (saved,) = call_node("R2MoELoadBank", bank_name="library.safetensors")
    assert [(c.name, c.token) for c in saved.concepts] == [("cup", "<cup1>")]
    before = (Path(folder_paths.get_folder_paths("r2moe")[0]) / "library.safetensors").read_bytes()
    del graph["2"]
    graph["3"]["inputs"].update(bank=["1", 0], concept_name="cup", new_token="<my cup>")
    result = run_graph(graph, prompt_id="edit-library-bad")
    assert not result.success and "must be one word" in str(result.messages)
    assert (Path(folder_paths.get_folder_paths("r2moe")[0]) / "library.safetensors").read_bytes() == before


def test_merge_and_import_through_the_executor(host, tiny, bank, tmp_path):
    """Load A + Load B -> Merge -> Import LoRA -> Save in one graph, as a user wires it."""
    import folder_paths
    from comfy_inprocess import run_graph
    from safetensors.torch import save_file

    from r2moe_core.moe.concept_export import kohya_lora_key

    call_node("R2MoESaveBank", bank=bank, name="bank_a")
    call_node("R2MoESaveBank", bank=add_random_concept(host.core, bank.without_concept("dog"), "owl", "<owl1>",
                                                       seed=5), name="bank_b")
    layer = bank.layers[0]
    key = kohya_lora_key(f"{layer.name}.to_k")
    save_file({f"{key}.lora_down.weight": torch.randn(4, layer.in_dim) * 0.1,
               f"{key}.lora_up.weight": torch.randn(layer.out_dim, 4) * 0.1},
              str(Path(folder_paths.get_folder_paths("loras")[0]) / "one_layer.safetensors"))
    folder_paths.filename_list_cache.clear()
    graph = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": host.checkpoint.name}},
        "2": {"class_type": "R2MoELoadBank", "inputs": {"bank_name": "bank_a.safetensors"}},
        "3": {"class_type": "R2MoELoadBank", "inputs": {"bank_name": "bank_b.safetensors"}},
        "4": {"class_type": "R2MoEMergeBanks", "inputs": {"bank_a": ["2", 0], "bank_b": ["3", 0],
                                                          "on_clash": "refuse", "clip": ["1", 1]}},
        "5": {"class_type": "R2MoEImportLoRA", "inputs": {
            "clip": ["1", 1], "bank": ["4", 0], "lora_name": "one_layer.safetensors", "concept_name": "style",
            "trigger_token": "<sty1>", "class_word": "painting", "example_prompts": "", "strength": 1.0,
            "prune_threshold": 0.4}},
        "6": {"class_type": "R2MoESaveBank", "inputs": {"bank": ["5", 0], "name": "library"}},
    }
    result = run_graph(graph, prompt_id="merge-import")
    assert result.success, result.messages
    assert "1 concept(s) from bank A, 1 from bank B" in result.outputs["4"]["text"][0]
    assert "1/32 text cross-attention K/V projections" in result.outputs["5"]["text"][0]
    (saved,) = call_node("R2MoELoadBank", bank_name="library.safetensors")
    assert [(c.name, c.task) for c in saved.concepts] == [("dog", 1), ("owl", 2), ("style", 3)]
