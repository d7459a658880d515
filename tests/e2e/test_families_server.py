"""SD 2.x (v-prediction) and SDXL through the real server over HTTP: train a concept from photos on each family's
tiny checkpoint, save it, load it back, sample it with the stock nodes, and refuse it on the other family."""

from __future__ import annotations

from pathlib import Path

import pytest
from comfy_inprocess import CACHE, make_base_dir, require_host
from comfy_server import ComfyServer, ensure_tiny_checkpoint

from r2moe_testkit.workflows import training_graph

CHECKPOINTS = {"sd2": "r2moe_tiny_sd21v.safetensors", "sdxl": "r2moe_tiny_sdxl.safetensors"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    require_host()
    base = tmp_path_factory.mktemp("families_base")
    for family, name in CHECKPOINTS.items():
        make_base_dir(base, ensure_tiny_checkpoint(CACHE / name, family))
    with ComfyServer(base_dir=base, log_path=base / "server.log", gpu=False) as srv:
        srv.base = base
        yield srv


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    from PIL import Image

    folder = tmp_path_factory.mktemp("mug")
    for i, colour in enumerate([(200, 40, 40), (190, 50, 45), (210, 35, 50)]):
        Image.new("RGB", (80 + 16 * i, 64), colour).save(folder / f"{i:02d}.png")
    return folder


def sampling_graph(checkpoint: str, bank_name: str) -> dict:
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": checkpoint}},
        "2": {"class_type": "R2MoELoadBank", "inputs": {"bank_name": bank_name}},
        "3": {"class_type": "R2MoEApplyBank", "inputs": {"model": ["1", 0], "clip": ["1", 1], "bank": ["2", 0],
                                                         "strength": 1.0}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["3", 1], "text": "a photo of <mug1> mug"}},
        "5": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["3", 1], "text": ""}},
        "6": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "7": {"class_type": "KSampler", "inputs": {
            "model": ["3", 0], "positive": ["4", 0], "negative": ["5", 0], "latent_image": ["6", 0], "seed": 0,
            "steps": 2, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["7", 0], "vae": ["1", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "family"}},
    }


@pytest.mark.parametrize("family", ["sd2", "sdxl"])
def test_a_concept_learned_saved_and_sampled_on_each_family(server, photos, family):
    entry = server.run(training_graph(CHECKPOINTS[family], str(photos), f"mug_{family}"), timeout=600)
    assert "learned 'mug' as <mug1>" in entry["outputs"]["3"]["text"][0]
    assert (Path(server.base) / "models" / "r2moe" / f"mug_{family}.safetensors").is_file()
    entry = server.run(sampling_graph(CHECKPOINTS[family], f"mug_{family}.safetensors"), timeout=300)
    image = entry["outputs"]["9"]["images"][0]
    assert (Path(server.base) / "output" / image["subfolder"] / image["filename"]).stat().st_size > 0


def test_a_bank_on_the_other_family_is_refused_naming_both(server, photos):
    if not (Path(server.base) / "models" / "r2moe" / "mug_sdxl.safetensors").is_file():
        server.run(training_graph(CHECKPOINTS["sdxl"], str(photos), "mug_sdxl"), timeout=600)
    with pytest.raises(RuntimeError, match=r"made for SDXL; the connected MODEL is SD 2\.x"):
        server.run(sampling_graph(CHECKPOINTS["sd2"], "mug_sdxl.safetensors"), timeout=300)
