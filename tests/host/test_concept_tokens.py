"""A trigger token in a stock CLIPTextEncode gets the concept's learned embedding."""

from __future__ import annotations

import torch
from comfy_inprocess import call_node

from r2moe_testkit.banks import add_random_concept
from r2moe_testkit.sampling import encode


def _word_embedding(clip, word: str) -> torch.Tensor:
    token_id = clip.tokenizer.clip_l.tokenizer(word)["input_ids"][1]
    table = clip.cond_stage_model.clip_l.transformer.get_input_embeddings().weight
    return table[token_id].detach().float().clone()[None]


def _clip_knowing(host, tiny, token: str, word: str):
    """The CLIP R2MoEApplyBank returns for a bank whose concept `token` has `word`'s embedding."""
    model, clip, _ = tiny
    empty = call_node("R2MoENewBank", model=model, rank=4, top_k=3, prune_threshold=0.4, distill_lambda=1e-5)[0]
    bank = add_random_concept(host.core, empty, token.strip("<>"), token, seed=1, embedding=_word_embedding(clip, word))
    return call_node("R2MoEApplyBank", model=model, clip=clip, bank=bank, strength=1.0)[1]


def test_trigger_token_is_encoded_with_the_learned_embedding(host, tiny):
    clip = tiny[1]
    patched_clip = _clip_knowing(host, tiny, "<dog1>", "cat")

    with_token = encode(patched_clip, "a photo of <dog1> dog on the beach")[0][0]
    reference = encode(clip, "a photo of cat dog on the beach")[0][0]
    plain = encode(clip, "a photo of <dog1> dog on the beach")[0][0]
    assert torch.allclose(with_token, reference, atol=1e-5), "the learned vector must replace the trigger token"
    assert not torch.allclose(plain, reference, atol=1e-3), "the input CLIP must stay unchanged"
    assert torch.equal(encode(patched_clip, "a red car")[0][0], encode(clip, "a red car")[0][0])


def test_banks_applied_in_sequence_keep_each_others_tokens(host, tiny):
    model, clip, _ = tiny
    empty = call_node("R2MoENewBank", model=model, rank=4, top_k=3, prune_threshold=0.4, distill_lambda=1e-5)[0]
    bank_a = add_random_concept(host.core, empty, "a", "<a1>", seed=1, embedding=_word_embedding(clip, "cat"))
    bank_b = add_random_concept(host.core, empty, "b", "<b1>", seed=2, embedding=_word_embedding(clip, "car"))
    m1, c1 = call_node("R2MoEApplyBank", model=model, clip=clip, bank=bank_a, strength=1.0)
    _, c2 = call_node("R2MoEApplyBank", model=m1, clip=c1, bank=bank_b, strength=1.0)
    got = encode(c2, "<a1> and <b1>")[0][0]
    assert torch.allclose(got, encode(clip, "cat and car")[0][0], atol=1e-5)


class NewerHostTokenizer:
    """Newer ComfyUI (0.8+): `_try_get_embedding` returns (embed, name, leftover) instead of (embed, leftover)."""

    embedding_identifier = "embedding:"
    embedding_directory = None
    embedding_size = 4

    def _try_get_embedding(self, name):
        assert self.embedding_directory is not None, "must not be called without a directory (load_embed crashes)"
        return (None, name.split()[0], "")


def test_lookup_follows_the_hosts_return_shape(host):
    clip_tokens = __import__(host.pack.__name__ + ".nodes.host.clip_tokens", fromlist=["x"])
    name = host.core.embedding_name("<a1>")
    hooked = clip_tokens.with_bank_lookup(NewerHostTokenizer(), {name: torch.ones(1, 4)})
    vectors, got_name, leftover = hooked._try_get_embedding(f"{name} dog")
    assert got_name == name and leftover == "dog" and torch.equal(vectors, torch.ones(1, 4))
    assert hooked._try_get_embedding("user_embedding") == (None, "user_embedding", "")


def test_patched_clip_survives_clone_and_deepcopy(host, tiny):
    import copy

    patched = _clip_knowing(host, tiny, "<a1>", "cat")
    reference = encode(tiny[1], "a cat")[0][0]
    assert torch.allclose(encode(patched.clone(), "a <a1>")[0][0], reference, atol=1e-5)
    copied = copy.copy(patched)
    copied.tokenizer = copy.deepcopy(patched.tokenizer)
    assert torch.allclose(encode(copied, "a <a1>")[0][0], reference, atol=1e-5)


def test_concept_positions_find_the_trigger_tokens_vectors_in_the_encoded_prompt(host, tiny):
    """Attention masks read the columns of a region's concept: the trigger token's vectors, wherever the host's
    tokenizer puts them (after the start token and the words before it); a prompt without one gives its words."""
    clip_tokens = __import__(host.pack.__name__ + ".nodes.host.clip_tokens", fromlist=["x"])
    patched_clip = _clip_knowing(host, tiny, "<dog1>", "cat")
    assert clip_tokens.concept_positions(patched_clip, "a <dog1> dog") == (2,)
    assert clip_tokens.concept_positions(patched_clip, "photo of a <dog1>, grass") == (4,)
    words = clip_tokens.concept_positions(patched_clip, "a red car")
    assert words == (1, 2, 3), "no trigger: every word, never the start, end or padding tokens"
