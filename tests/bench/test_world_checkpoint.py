"""The world pretraining pipeline writes a checkpoint the stock ComfyUI loader takes, and ComfyUI then computes
what the plain-PyTorch world computes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch
from comfy_inprocess import REPO, call_node
from safetensors.torch import load_file
from world.checkpoint import assemble
from world.text import TextEncoder
from world.unet import UNet

from r2moe_testkit.sampling import encode, sample


def test_quick_pretraining_loads_through_checkpoint_loader_simple(host, tmp_path):
    import folder_paths

    shipped = tmp_path / "world_quick.safetensors"  # UNet + VAE; the text encoder is rebuilt from its seed
    subprocess.run([sys.executable, str(REPO / "bench" / "pretrain_world.py"), "--quick", "--out", str(shipped)],
                   check=True, capture_output=True)
    assert not any(k.startswith("cond_stage_model.") for k in load_file(str(shipped)))
    target = assemble(shipped, Path(folder_paths.get_folder_paths("checkpoints")[0]) / "world_quick.safetensors")
    folder_paths.filename_list_cache.clear()
    model, clip, vae = call_node("CheckpointLoaderSimple", ckpt_name=target.name)
    saved = {k: v.float() for k, v in load_file(str(target)).items()}

    text = TextEncoder()
    text.load_comfy_state_dict(saved)
    prompt = "two red striped squares on the left, grass background"
    with torch.no_grad():
        ours = text([prompt])
    assert torch.allclose(encode(clip, prompt)[0][0].float(), ours, atol=1e-2)

    unet = UNet.from_state_dict({k[len("model.diffusion_model."):]: v for k, v in saved.items()
                                 if k.startswith("model.diffusion_model.")})
    assert unet.model_channels == 64, "the pretraining script builds the 64-channel world"
    x, t = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor([500.0])
    with torch.no_grad():
        theirs = model.model.diffusion_model(x.to(model.model.get_dtype()), t, context=ours.to(model.model.get_dtype()))
        assert torch.allclose(unet(x, t, ours), theirs.float(), atol=1e-2)
    assert torch.isfinite(sample(model, clip, prompt, steps=2, size=64)).all()
    assert vae.first_stage_model.vae_scale.item() != 1.0, "the VAE's latent scale is calibrated by pretraining"


def test_world_v3_loads_through_the_stock_loader_and_keeps_128_px_scenes(host, tmp_path):
    """The 128 px world (bench/world/weights/world_v3.safetensors) is a checkpoint the stock loader takes, and its
    VAE, run by ComfyUI, gives back a 128 px scene with its shapes (the v2 VAE's blur-pool start does not)."""
    import random

    import folder_paths
    import numpy as np
    from world.checkpoint import WEIGHTS
    from world.scenes import random_scene, render

    source = REPO / "bench" / "world" / "weights" / WEIGHTS[128]
    target = assemble(source, Path(folder_paths.get_folder_paths("checkpoints")[0]) / "world_v3_test.safetensors")
    folder_paths.filename_list_cache.clear()
    _, _, vae = call_node("CheckpointLoaderSimple", ckpt_name=target.name)
    rng = random.Random(7)
    scenes = np.stack([render(random_scene(rng), 128) for _ in range(8)])
    pixels = torch.from_numpy(scenes).float() / 255.0
    with torch.inference_mode():  # as ComfyUI runs its VAE
        latents = vae.encode(pixels)
        back = vae.decode(latents).reshape(pixels.shape)
    assert latents.shape[-2:] == (16, 16)
    error = float((back - pixels).square().mean())
    blurred = torch.nn.functional.interpolate(torch.nn.functional.avg_pool2d(pixels.permute(0, 3, 1, 2), 8),
                                              scale_factor=8).permute(0, 2, 3, 1)
    assert error < 0.5 * float((blurred - pixels).square().mean()), "the v3 VAE keeps more than 8x average pooling"
