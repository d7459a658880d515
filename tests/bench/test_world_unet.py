"""The benchmark's plain-PyTorch UNet is ComfyUI's SD1.x UNet: same state-dict keys, same outputs."""

from __future__ import annotations

import torch
from world.unet import UNet


def test_state_dict_and_outputs_match_comfyui(host, tiny):
    comfy_unet = tiny[0].model.diffusion_model
    ours = UNet()
    theirs = {k: v.detach().clone().float() for k, v in comfy_unet.state_dict().items()}
    missing, unexpected = ours.load_state_dict(theirs, strict=False)
    assert not missing and not unexpected, f"missing {missing[:3]}, unexpected {unexpected[:3]}"
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 16, 24, generator=gen)  # non-square, to check the skip/upsample shapes
    t = torch.tensor([10.0, 700.0])
    context = torch.randn(2, 77, 768, generator=gen)
    with torch.no_grad():
        expected = comfy_unet(x, t, context=context)
        got = ours(x, t, context)
    assert torch.allclose(got, expected, atol=1e-4, rtol=1e-4), (got - expected).abs().max()
    names = {m.name for m in ours.modules() if hasattr(m, "to_k") and m.name.endswith("attn2")}
    assert names == {layer for layer, _ in comfy_unet.named_modules() if layer.endswith("attn2")}
