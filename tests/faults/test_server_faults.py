"""Bad input and faults sent to a real server: refused fast with a message, and the server keeps serving."""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest
from comfy_inprocess import TINY_CKPT_NAME

from r2moe_testkit.faults import status_messages
from r2moe_testkit.workflows import load_api_workflow, training_graph

LAYOUT = {"version": 1, "width": 512, "height": 512, "background": "a beach",
          "regions": [{"prompt": "a <dog1> dog", "box": [0.04, 0.1, 0.48, 0.95]}]}


def layout_graph(layout_json: str) -> dict:
    return {"1": {"class_type": "R2MoELayoutFromJSON", "inputs": {"layout_json": layout_json}},
            "2": {"class_type": "R2MoELayoutPreview", "inputs": {"layout": ["1", 0]}},
            "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}}}


def error_text(entry: dict) -> str:
    return " ".join(e["exception_message"] for e in status_messages(entry, "execution_error"))


@pytest.mark.parametrize(
    ("words", "expected"),
    [(1_000_000, "at most 1000000 are read"), (20_000, "background")],
    ids=["5MB-pasted-layout", "100KB-background"],
)
def test_oversized_layout_text_is_refused_and_quoted_short(server, words, expected):
    started = time.monotonic()
    _, answer = server.submit(layout_graph(json.dumps(LAYOUT | {"background": "sand " * words})))
    entry = server.finished(answer["prompt_id"], timeout=60)
    message = error_text(entry)
    assert expected in message, message
    assert len(message) < 600 and time.monotonic() - started < 10
    assert server.log_text().count("sand sand") < 10, "the value is not repeated whole in the log"
    assert server.alive()


def test_a_photo_folder_with_a_fake_png_is_refused_before_anything_runs(server, tmp_path):
    from PIL import Image

    Image.new("RGB", (64, 64), "red").save(tmp_path / "a.png")
    (tmp_path / "b.png").write_bytes(b"<html>not a photo</html>")
    graph = training_graph(TINY_CKPT_NAME, str(tmp_path), "never_written", steps=800)
    started = time.monotonic()
    status, answer = server.submit(graph)
    assert status == 400 and time.monotonic() - started < 5
    assert "b.png" in json.dumps(answer) and "not a readable image" in json.dumps(answer)
    assert not (server.base / "models" / "r2moe" / "never_written.safetensors").exists()
    assert server.alive()


def test_cancel_reaches_an_llm_planner_request_in_flight(server):
    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []

    def stall() -> None:  # accept and never answer
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            held.append(conn)

    threading.Thread(target=stall, daemon=True).start()
    graph = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": TINY_CKPT_NAME}},
        "2": {"class_type": "R2MoENewBank", "inputs": {"model": ["1", 0], "rank": 4, "top_k": 3,
                                                       "prune_threshold": 0.4, "distill_lambda": 1e-05}},
        "3": {"class_type": "R2MoELayoutPlanner", "inputs": {
            "prompt": "a dog on a beach", "bank": ["2", 0], "width": 512, "height": 512, "planner": "llm",
            "seed": int(time.time()), "base_url": f"http://127.0.0.1:{listener.getsockname()[1]}/v1",
            "model": "stalled", "api_key_env": "", "timeout_s": 300.0}},
        "4": {"class_type": "R2MoELayoutPreview", "inputs": {"layout": ["3", 0]}},
        "5": {"class_type": "PreviewImage", "inputs": {"images": ["4", 0]}},
    }
    _, answer = server.submit(graph)
    deadline = time.monotonic() + 60
    while not held:
        assert time.monotonic() < deadline, "the planner never connected"
        time.sleep(0.05)
    pressed = time.monotonic()
    server.post("/interrupt")
    entry = server.finished(answer["prompt_id"], timeout=30)
    assert status_messages(entry, "execution_interrupted") and time.monotonic() - pressed < 3
    time.sleep(0.5)
    assert len(held) == 1, "no retry after Cancel"
    listener.close()
    assert server.alive()


def test_a_few_hundred_small_prompts_keep_the_servers_memory_flat(server):
    def rss_mb() -> float:
        status = (f"/proc/{server.proc.pid}/status")
        with open(status) as handle:
            return next(int(line.split()[1]) for line in handle if line.startswith("VmRSS")) / 1024

    ids, rss = [], {}
    for i in range(240):
        layout = LAYOUT | {"background": f"a beach, variant {i}"}  # a new value each time: nothing is cached
        ids.append(server.submit(layout_graph(json.dumps(layout)))[1]["prompt_id"])
        if i in (79, 239):
            server.finished(ids[-1], timeout=300)
            rss[i] = rss_mb()
    for prompt_id in ids:
        assert server.finished(prompt_id)["status"]["status_str"] == "success"
    assert rss[239] - rss[79] < 25, f"memory grew {rss[79]:.1f} -> {rss[239]:.1f} MB over 160 prompts"
    assert server.alive()


def _hierarchical(sampler_name: str) -> dict:
    graph = load_api_workflow("api_regional_hierarchical.json")
    graph["8"]["inputs"]["sampler_name"] = sampler_name
    return graph


def _planner(planner: str) -> dict:
    graph = training_graph(TINY_CKPT_NAME, "", "unused")
    graph["3"] = {"class_type": "R2MoELayoutPlanner", "inputs": {
        "prompt": "a dog", "bank": ["2", 0], "width": 512, "height": 512, "planner": planner, "seed": 0}}
    graph["4"] = {"class_type": "R2MoELayoutPreview", "inputs": {"layout": ["3", 0]}}
    graph["5"] = {"class_type": "PreviewImage", "inputs": {"images": ["4", 0]}}
    return graph


@pytest.mark.parametrize(
    ("graph", "node", "expected"),
    [
        (lambda: _hierarchical("eulr"), "8", "sampler_name 'eulr' is not one of this ComfyUI's: euler"),
        (lambda: _planner("gpt"), "3", "planner must be one of rule-based, llm, got 'gpt'"),
        (lambda: training_graph(TINY_CKPT_NAME, "", "unused", optimizer="adamw"), "3",
         "optimizer must be one of AdamW, Adam, SGD"),
        (lambda: {"1": {"class_type": "R2MoELoadBank", "inputs": {"bank_name": "../../secrets.safetensors"}},
                  "2": {"class_type": "R2MoEBankInfo", "inputs": {"bank": ["1", 0]}}}, "1",
         "is not a bank in models/r2moe"),
        (lambda: {**training_graph(TINY_CKPT_NAME, "", "unused"),
                  "3": {"class_type": "R2MoEMergeBanks", "inputs": {"bank_a": ["2", 0], "bank_b": ["2", 0],
                                                                    "on_clash": "overwrite"}},
                  "4": {"class_type": "R2MoESaveBank", "inputs": {"bank": ["3", 0], "name": "never"}}}, "3",
         "on_clash must be one of refuse, rename incoming, got 'overwrite'"),
        (lambda: {**training_graph(TINY_CKPT_NAME, "", "unused"),
                  "3": {"class_type": "R2MoEImportLoRA", "inputs": {
                      "clip": ["1", 1], "bank": ["2", 0], "lora_name": "../../secret.safetensors",
                      "concept_name": "x", "trigger_token": "<x1>", "class_word": "", "example_prompts": "",
                      "strength": 1.0, "prune_threshold": 0.4}},
                  "4": {"class_type": "R2MoESaveBank", "inputs": {"bank": ["3", 0], "name": "never"}}}, "3",
         "is not in models/loras"),
    ],
    ids=["sampler", "planner", "optimizer", "bank-name", "merge-clash", "lora-name"],
)
def test_posted_values_outside_a_list_are_refused_when_queued(server, graph, node, expected):
    """The pinned host does not check combo values itself: an API client's typo is named before anything runs."""
    status, answer = server.submit(graph())
    assert status == 400
    details = " ".join(e.get("details", "") for e in answer["node_errors"].get(node, {}).get("errors", []))
    assert expected in details, answer["node_errors"]
    assert server.alive()
