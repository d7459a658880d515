"""Training runs that fail or are cancelled after the models are loaded: nothing stays behind in the server."""

from __future__ import annotations

import logging
import time

import pytest
from comfy_inprocess import TINY_CKPT_NAME
from PIL import Image

from r2moe_testkit.faults import status_messages
from r2moe_testkit.workflows import training_graph

LEAK = "memory leak with model"
STEP_TIMING = "s per step, about"
LOG = logging.getLogger(__name__)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mug")
    for i, colour in enumerate([(200, 40, 40), (190, 50, 45), (210, 35, 50)]):
        Image.new("RGB", (64, 64), colour).save(folder / f"{i:02d}.png")
    return folder


def faulty_training(folder, steps: int, seed: int, fault_at: int | None = None) -> dict:
    graph = training_graph(TINY_CKPT_NAME, str(folder), "faults_training", steps=steps, seed=seed, batch_size=1,
                           gradient_checkpointing=False, preview_every=0, augment_views=0)
    if fault_at is not None:  # the bank passes through the fault node, which arms a failure at that step
        graph["9"] = {"class_type": "R2MoETestFaultAt", "inputs": {"bank": ["2", 0], "at_step": fault_at}}
        graph["3"]["inputs"]["bank"] = ["9", 0]
    return graph


def sampling_graph(seed: int) -> dict:
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": TINY_CKPT_NAME}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "a red mug"}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": ""}},
        "8": {"class_type": "KSampler", "inputs": {
            "model": ["1", 0], "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0], "seed": seed,
            "steps": 2, "cfg": 2.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "10": {"class_type": "PreviewImage", "inputs": {"images": ["11", 0]}},
        "11": {"class_type": "VAEDecode", "inputs": {"samples": ["8", 0], "vae": ["1", 2]}},
    }


def sampling_seconds(server, seeds: range) -> float:
    started = time.monotonic()
    for seed in seeds:
        entry = server.finished(server.submit(sampling_graph(seed))[1]["prompt_id"])
        assert entry["status"]["status_str"] == "success"
    return (time.monotonic() - started) / len(seeds)


def cancel_while_training(server, folder, seed: int) -> dict:
    timed = server.log_text().count(STEP_TIMING)
    _, answer = server.submit(faulty_training(folder, steps=100000, seed=seed))
    deadline = time.monotonic() + 120
    while server.log_text().count(STEP_TIMING) == timed:  # the steps are running
        assert time.monotonic() < deadline, "training never started"
        time.sleep(0.2)
    time.sleep(1.0)
    server.post("/interrupt")
    return server.finished(answer["prompt_id"], timeout=120)


def test_failed_and_cancelled_training_leave_no_model_behind(server, photos):
    """Before the fix, each failed run left a dead clone in ComfyUI's loaded-model list: a leak warning on every
    later load and a full garbage collection before each prompt."""
    clean = sampling_seconds(server, range(3))
    before = server.log_text().count(LEAK)
    for seed in range(3):
        entry = server.finished(server.submit(faulty_training(photos, steps=50, seed=seed, fault_at=3))[1]["prompt_id"])
        (error,) = status_messages(entry, "execution_error")
        assert "injected fault at training step 3" in error["exception_message"]
    for seed in range(10, 12):
        entry = cancel_while_training(server, photos, seed)
        assert status_messages(entry, "execution_interrupted"), entry["status"]
    after = sampling_seconds(server, range(3, 8))
    log = server.log_text()
    assert log.count(LEAK) == before, [line for line in log.splitlines() if LEAK in line][:3]
    assert "Potential memory leak" not in log
    assert server.alive()
    LOG.warning("sampling prompt %.2f s before, %.2f s after 3 failed and 2 cancelled runs", clean, after)
