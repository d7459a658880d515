"""The real ComfyUI server on 127.0.0.1 with the pack in custom_nodes: node listing and a full workflow over HTTP."""

from __future__ import annotations

from pathlib import Path

import pytest
from comfy_inprocess import CACHE, TINY_CKPT_NAME, make_base_dir, require_host
from comfy_server import ComfyServer, ensure_tiny_checkpoint

from r2moe_testkit.pack_nodes import pack_node_ids
from r2moe_testkit.workflows import load_api_workflow, training_graph, with_steps


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    require_host()
    checkpoint = ensure_tiny_checkpoint(CACHE / TINY_CKPT_NAME)
    base = make_base_dir(tmp_path_factory.mktemp("server_base"), checkpoint)
    log = base / "server.log"
    with ComfyServer(base_dir=base, log_path=log, gpu=False) as srv:
        srv.base = base
        yield srv
    if any(b"IMPORT FAILED" in line and b"r2moe" in line for line in log.read_bytes().splitlines()):
        pytest.fail("ComfyUI logged IMPORT FAILED for the pack")


def test_object_info_lists_every_node(server):
    info = server.get("/object_info")
    ids = pack_node_ids()
    missing = sorted(ids - set(info))
    assert len(ids) >= 14 and not missing, f"nodes missing from /object_info (pack failed to import?): {missing}"
    assert {info[i]["python_module"] for i in ids} == {"custom_nodes.r2moe"}
    assert info["R2MoEApplyBank"]["output"] == ["MODEL", "CLIP"]
    assert info["R2MoENewBank"]["output"] == ["R2MOE_BANK"]


def test_web_extension_is_served(server):
    assert "/extensions/r2moe/r2moe.js" in server.get("/extensions")


def test_example_workflow_over_http_writes_an_image(server):
    graph = with_steps(load_api_workflow("api_apply_bank.json"), steps=2)
    entry = server.run(graph, timeout=300)
    image = entry["outputs"]["9"]["images"][0]
    path = Path(server.base) / "output" / image["subfolder"] / image["filename"]
    assert path.is_file() and path.stat().st_size > 0
    # second workflow: the bank saved by the first one, loaded back by name through the model folder
    assert "demo_bank.safetensors" in server.get("/models/r2moe")
    graph["2"] = {"class_type": "R2MoELoadBank", "inputs": {"bank_name": "demo_bank.safetensors"}}
    del graph["12"]
    entry = server.run(graph, timeout=300)
    assert entry["outputs"]["9"]["images"]


def test_training_a_concept_over_http(server, tmp_path):
    from PIL import Image

    photos = tmp_path / "mug"
    photos.mkdir()
    for i, colour in enumerate([(200, 40, 40), (190, 50, 45), (210, 35, 50)]):
        Image.new("RGB", (80 + 16 * i, 64), colour).save(photos / f"{i:02d}.png")
    (photos / "caption.txt").write_text("<new1> mug on a table\n<new1> mug, close up\n<new1> mug in a kitchen\n")
    graph = training_graph(TINY_CKPT_NAME, str(photos), "trained_over_http")
    graph["5"] = {"class_type": "SaveImage", "inputs": {"images": ["3", 1], "filename_prefix": "loss"}}
    entry = server.run(graph, timeout=300)
    assert "learned 'mug' as <mug1>" in entry["outputs"]["3"]["text"][0]
    assert (Path(server.base) / "models" / "r2moe" / "trained_over_http.safetensors").is_file()
    assert entry["outputs"]["5"]["images"]


def test_concepts_route_lists_each_banks_trigger_tokens(server):
    """GET /r2moe/concepts: file name -> its concepts (name, trigger token, class word, thumbnail flag), read from
    the header alone; a damaged file is listed with its reason and no path."""
    folder = Path(server.base) / "models" / "r2moe"
    if not (folder / "trained_over_http.safetensors").is_file():
        pytest.skip("needs the bank test_training_a_concept_over_http saves")
    (folder / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    listing = server.get("/r2moe/concepts")["banks"]
    assert listing["trained_over_http.safetensors"]["concepts"] == [
        {"name": "mug", "token": "<mug1>", "class_word": "mug", "thumbnail": True}]  # its last training preview
    assert set(listing["broken.safetensors"]) == {"error"} and str(server.base) not in listing["broken.safetensors"][
        "error"]
    assert all(not name.startswith(("/", "..")) for name in listing)
    (folder / "broken.safetensors").unlink()
    assert "broken.safetensors" not in server.get("/r2moe/concepts")["banks"]


def test_bank_history_over_http(server):
    def save(rank: int) -> None:
        server.run({
            "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": TINY_CKPT_NAME}},
            "2": {"class_type": "R2MoENewBank", "inputs": {"model": ["1", 0], "rank": rank, "top_k": 3,
                                                           "prune_threshold": 0.4, "distill_lambda": 1e-05}},
            "3": {"class_type": "R2MoESaveBank", "inputs": {"bank": ["2", 0], "name": "history_http"}},
        }, timeout=120)

    save(4)
    save(8)
    entry = server.run({"1": {"class_type": "R2MoEBankHistory", "inputs": {"bank_name": "history_http.safetensors",
                                                                          "restore": ""}}}, timeout=60)
    text = entry["outputs"]["1"]["text"][0]
    assert "history_http.safetensors: 1 kept version(s)" in text and "version 1" in text


def test_remove_and_rename_over_http(server):
    """The bank trained over HTTP (one concept, 'mug'): rename it, then remove it, each saved by name."""
    if not (Path(server.base) / "models" / "r2moe" / "trained_over_http.safetensors").is_file():
        pytest.skip("needs the bank test_training_a_concept_over_http saves")
    entry = server.run({
        "1": {"class_type": "R2MoELoadBank", "inputs": {"bank_name": "trained_over_http.safetensors"}},
        "2": {"class_type": "R2MoERenameConcept", "inputs": {"bank": ["1", 0], "concept_name": "mug",
                                                             "new_name": "cup", "new_token": "<cup1>"}},
        "3": {"class_type": "R2MoERemoveConcept", "inputs": {"bank": ["2", 0], "concept_name": "cup"}},
        "4": {"class_type": "R2MoESaveBank", "inputs": {"bank": ["3", 0], "name": "edited_over_http"}},
    }, timeout=120)
    assert "'mug' is now 'cup', written <cup1>" in entry["outputs"]["2"]["text"][0]
    assert entry["outputs"]["3"]["text"][0] == "removed 'cup'"
    assert (Path(server.base) / "models" / "r2moe" / "edited_over_http.safetensors").is_file()


def test_export_concept_over_http(server):
    if not (Path(server.base) / "models" / "r2moe" / "trained_over_http.safetensors").is_file():
        pytest.skip("needs the bank test_training_a_concept_over_http saves")
    entry = server.run({
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": TINY_CKPT_NAME}},
        "2": {"class_type": "R2MoELoadBank", "inputs": {"bank_name": "trained_over_http.safetensors"}},
        "3": {"class_type": "R2MoEExportConcept", "inputs": {"clip": ["1", 1], "bank": ["2", 0],
                                                             "concept_name": "mug", "prompt": "", "file_name": ""}},
    }, timeout=120)
    assert "embedding:mug1" in entry["outputs"]["3"]["text"][0]
    assert (Path(server.base) / "models" / "loras" / "mug.safetensors").is_file()
    assert (Path(server.base) / "models" / "embeddings" / "mug1.safetensors").is_file()


def test_merge_banks_over_http(server):
    """The bank trained over HTTP merged with itself: its concept is found in both and kept once."""
    if not (Path(server.base) / "models" / "r2moe" / "trained_over_http.safetensors").is_file():
        pytest.skip("needs the bank test_training_a_concept_over_http saves")
    entry = server.run({
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": TINY_CKPT_NAME}},
        "2": {"class_type": "R2MoELoadBank", "inputs": {"bank_name": "trained_over_http.safetensors"}},
        "3": {"class_type": "R2MoEMergeBanks", "inputs": {"bank_a": ["2", 0], "bank_b": ["2", 0],
                                                          "on_clash": "refuse", "clip": ["1", 1]}},
        "4": {"class_type": "R2MoESaveBank", "inputs": {"bank": ["3", 0], "name": "merged_over_http"}},
    }, timeout=120)
    assert "1 found in both and kept once (mug)" in entry["outputs"]["3"]["text"][0]
    assert (Path(server.base) / "models" / "r2moe" / "merged_over_http.safetensors").is_file()


def test_import_lora_over_http(server):
    """The LoRA the export test wrote (models/loras/mug.safetensors) comes back in as a new gated concept."""
    if not (Path(server.base) / "models" / "loras" / "mug.safetensors").is_file():
        pytest.skip("needs the LoRA test_export_concept_over_http writes")
    entry = server.run({
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": TINY_CKPT_NAME}},
        "2": {"class_type": "R2MoELoadBank", "inputs": {"bank_name": "trained_over_http.safetensors"}},
        "3": {"class_type": "R2MoEImportLoRA", "inputs": {
            "clip": ["1", 1], "bank": ["2", 0], "lora_name": "mug.safetensors", "concept_name": "mug again",
            "trigger_token": "<mug2>", "class_word": "mug", "example_prompts": "", "strength": 1.0,
            "prune_threshold": 0.4}},
        "4": {"class_type": "R2MoESaveBank", "inputs": {"bank": ["3", 0], "name": "imported_over_http"}},
    }, timeout=120)
    assert "imported as 'mug again' (<mug2>)" in entry["outputs"]["3"]["text"][0]
    assert (Path(server.base) / "models" / "r2moe" / "imported_over_http.safetensors").is_file()
