"""The checks every node runs before it uses a bank, and the training request built from a node's widgets."""

from __future__ import annotations

import pytest

import r2moe_core as core


def test_bank_file_name_rule():
    assert core.bank_file_name(" my concepts ") == "my concepts.safetensors"
    assert core.bank_file_name("dogs.safetensors") == "dogs.safetensors"
    for bad in ("", "../escape", "a/b", ".hidden"):
        with pytest.raises(core.InvalidInputError, match="plain file name"):
            core.bank_file_name(bad)


def test_token_width_is_checked_once_a_bank_has_tokens_or_learns_one(empty_bank):
    core.check_token_width(empty_bank, 1024)  # an empty bank samples with any CLIP
    with pytest.raises(core.InvalidInputError, match=r"1024-wide token embeddings.*16 wide"):
        core.check_token_width(empty_bank, 1024, new_concept=True)
    core.check_token_width(empty_bank, 16, new_concept=True)


def test_bank_fits_only_its_own_layers(empty_bank, layers):
    assert core.check_bank_fits(empty_bank, layers, empty_bank.fingerprint) == []
    with pytest.raises(core.BankMismatchError, match="Connect the checkpoint the bank was made for"):
        core.check_bank_fits(empty_bank, layers[:-1], empty_bank.fingerprint)


def test_new_concept_clashes_are_refused_before_training(empty_bank):
    empty_bank.check_new_concept("dog", "<dog1>")
    for name, token, match in (("", "<a>", "non-empty name"), ("dog", "two words", "one word")):
        with pytest.raises(core.InvalidInputError, match=match):
            empty_bank.check_new_concept(name, token)


def test_concept_request_from_widget_values():
    request = core.ConceptRequest.from_options(
        {"concept_name": " mug ", "trigger_token": "<mug1>", "class_word": "mug", "steps": 5, "lr_token": 0.01,
         "resolution": 64, "prune_threshold": 0.3, "folder": None}
    )
    assert (request.name, request.token) == ("mug", "<mug1>")
    assert (request.settings.steps, request.settings.lr_token) == (5, 0.01)
    assert request.resolution == 64 and request.prune_threshold == 0.3 and request.folder == ""
    with pytest.raises(core.InvalidInputError, match="Unknown training option"):
        core.ConceptRequest.from_options({"concept_name": "a", "trigger_token": "<a>", "class_word": "x", "stepz": 3})
    with pytest.raises(core.InvalidInputError, match="steps and batch size"):
        core.ConceptRequest.from_options({"concept_name": "a", "trigger_token": "<a>", "class_word": "x", "steps": 0})
