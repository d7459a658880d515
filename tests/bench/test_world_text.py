"""The benchmark's text encoder reproduces ComfyUI's CLIP conditioning with the same weights."""

from __future__ import annotations

import torch
from world.text import TextEncoder

from r2moe_testkit.sampling import encode


def test_same_weights_same_conditioning_as_comfyui(host, tiny):
    clip = tiny[1]
    ours = TextEncoder()
    ours.load_comfy_state_dict({k: v.float() for k, v in clip.cond_stage_model.state_dict().items()})
    for prompt in ("two red striped squares on the left, grass background", "a photo of a dog"):
        with torch.no_grad():
            got = ours([prompt])
        expected = encode(clip, prompt)[0][0].float()
        assert torch.allclose(got, expected, atol=1e-4), (prompt, (got - expected).abs().max())


def test_trigger_tokens_take_their_vectors(host, tiny):
    ours = TextEncoder()
    ours.load_comfy_state_dict({k: v.float() for k, v in tiny[1].cond_stage_model.state_dict().items()})
    table = ours.text_model.embeddings.token_embedding.weight
    cat = table[ours.tokenizer("cat", add_special_tokens=False)["input_ids"]]
    with torch.no_grad():
        assert torch.allclose(ours(["a <new1> toy"], {"<new1>": cat}), ours(["a cat toy"]), atol=1e-5)
