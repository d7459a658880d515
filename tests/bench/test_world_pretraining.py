"""World pretraining stops and continues: a run cut into chunks writes the same weights as one run straight
through, and a work directory refuses a run with other settings."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[2]
# a few steps of both stages with every part of the v3 recipe (composites, VAE crops and edge loss, capped-v
# loss, offset noise, an EMA that must survive the stops): every random draw and every piece of state is exercised
QUICK = ["--quick", "--composites", "0.3", "--vae-crop", "32", "--threads", "1", "--vae-edge", "1",
         "--loss", "capped-v", "--offset-noise", "0.1", "--ema", "0.9", "--class-objects", "0.2"]  # 3+3 steps


def pretrain(*extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "bench" / "pretrain_world.py"), *QUICK, *extra],
                          capture_output=True, text=True, timeout=600)


def test_a_chunked_run_writes_the_weights_of_a_straight_run(tmp_path) -> None:
    straight, chunked = tmp_path / "straight.safetensors", tmp_path / "chunked.safetensors"
    assert pretrain("--out", str(straight)).returncode == 0
    work = tmp_path / "work"
    stops = 0
    while (run := pretrain("--out", str(chunked), "--work", str(work), "--max-steps", "2")).returncode == 75:
        stops += 1
        assert "run the same command again" in run.stderr
        assert not chunked.exists(), "nothing is written before the run ends"
    assert run.returncode == 0, run.stderr
    assert stops == 2  # 6 steps in chunks of 2: stopped inside the VAE stage, inside the UNet stage, then done
    a, b = load_file(str(straight)), load_file(str(chunked))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "the chunked run drew other weights"


def test_a_work_directory_refuses_other_settings(tmp_path) -> None:
    work = tmp_path / "work"
    assert pretrain("--out", str(tmp_path / "a.safetensors"), "--work", str(work), "--max-steps", "1").returncode == 75
    other = pretrain("--out", str(tmp_path / "b.safetensors"), "--work", str(work), "--seed", "1")
    assert other.returncode == 2 and "seed" in other.stderr and "another --work directory" in other.stderr
    assert "--work" in pretrain("--max-minutes", "5").stderr  # a time limit without a place to keep the state


def test_the_capped_v_weighting_moves_weight_to_low_noise() -> None:
    sys.path.insert(0, str(REPO / "bench"))
    from pretrain_world import loss_weight_of
    from world.sampler import ddpm_sigmas

    sigma = ddpm_sigmas()
    v, capped = loss_weight_of(sigma, "v", 5.0), loss_weight_of(sigma, "capped-v", 5.0)
    low = sigma < 2
    assert torch.equal(v[low], capped[low]) and capped.max() == 5.0
    share = lambda w: float(w[sigma < 5].sum() / w.sum())  # noqa: E731
    assert share(v) < 0.25 < 0.6 < share(capped)  # v puts most of its weight on σ > 5, capped-v most below


def test_class_objects_show_fresh_members_of_the_concept_classes_named_by_their_class_word() -> None:
    sys.path.insert(0, str(REPO / "bench"))
    from pretrain_world import scene_pool
    from world.concepts import CLASS_WORDS, class_scene, load_concepts

    images, captions = scene_pool(60, 3, 64, composites=0.3, class_objects=0.5)
    named = [c for c in captions if c.startswith("photo of a ")]
    assert 15 <= len(named) <= 45 and len(images) == 60
    assert {c.split()[3] for c in named} <= set(CLASS_WORDS)
    plain, plain_captions = scene_pool(60, 3, 64, composites=0.3)
    assert not any(c.startswith("photo of a ") for c in plain_captions) and not torch.equal(images, plain)
    shipped = {s.polygon for s in load_concepts(REPO / "bench" / "world" / "concepts_10.json")}
    rng = random.Random(3)
    assert not {class_scene(rng).objects[0].polygon for _ in range(200)} & shipped, "no shipped concept is pretrained"


def test_a_world_records_its_size_and_is_refused_at_another(tmp_path) -> None:
    """A 128 px world read by a benchmark running at 64 px would be evaluated near chance without a word: the file
    records the size it was trained at and loading it at another size says which setting to use."""
    import pytest
    from pretrain_world import save_checkpoint
    from world.checkpoint import load_world, trained_size
    from world.text import random_text_encoder
    from world.unet import UNet
    from world.vae import WorldVAE

    path = tmp_path / "world_128.safetensors"
    unet = UNet()
    save_checkpoint(path, unet, random_text_encoder(0, 2), WorldVAE(), 0, 2, size=128)
    assert trained_size(path) == 128
    with pytest.raises(ValueError, match="R2MOE_WORLD_SIZE=128"):
        load_world(path, 64)
    assert isinstance(load_world(path, 128)[0], UNet)
