from __future__ import annotations

import torch

from r2moe_core.bank.trigger_tokens import embedding_name, lookup_embedding, substitute_triggers


def test_trigger_becomes_host_embedding_syntax_as_a_whole_word():
    text, found = substitute_triggers("a photo of <dog1>, on the beach", ["<dog1>", "<dog10>"])
    assert found == ["<dog1>"]
    assert f"embedding:{embedding_name('<dog1>')} ," in text and "<dog1>" not in text


def test_longer_token_is_not_split_by_a_shorter_one():
    text, found = substitute_triggers("<dog10> and <dog1>", ["<dog1>", "<dog10>"])
    assert set(found) == {"<dog1>", "<dog10>"}
    assert embedding_name("<dog10>") in text and embedding_name("<dog1>") in text


def test_weighted_syntax_and_plain_word_tokens():
    text, found = substitute_triggers("(sks:1.2) dog, asks nothing", ["sks"])
    assert found == ["sks"] and text.count(embedding_name("sks")) == 1 and "asks" in text


def test_lookup_only_answers_reserved_names():
    vectors = {embedding_name("<a>"): torch.ones(1, 4)}
    assert lookup_embedding(embedding_name("<a>"), vectors) is not None
    assert lookup_embedding("my_user_embedding", vectors) is None
