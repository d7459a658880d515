"""Model families in the core: read off the layers, kept in the file, refused across families, token layout."""

from __future__ import annotations

import json

import pytest
import torch

import r2moe_core as core
from r2moe_core.bank.model_family import family_of_layers, require_family
from r2moe_core.moe.concept_export import embedding_tensors
from r2moe_core.train.request import ConceptRequest
from r2moe_testkit.banks import add_random_concept
from r2moe_testkit.small import small_layers, weights_for


def family_bank(context: int, **kw):
    layers = small_layers(in_dim=context)
    return core.ExpertBank.empty(core.BankConfig(rank=2, top_k=2), layers,
                                 core.compute_fingerprint(layers, weights_for(layers)), **kw)


@pytest.mark.parametrize(("context", "family", "token_dim"), [(768, "sd1", 768), (1024, "sd2", 1024),
                                                               (2048, "sdxl", 2048)])
def test_the_family_and_token_width_follow_the_text_context(context, family, token_dim):
    bank = family_bank(context)
    assert (bank.family, bank.token_dim) == (family, token_dim)
    assert sum(width for _, width in bank.token_encoders) == token_dim


def test_a_model_of_no_known_family_is_refused_with_the_supported_ones_named():
    assert family_of_layers(small_layers(in_dim=1280)) is None
    with pytest.raises(core.InvalidInputError, match=r"1280-wide text context.*SDXL \(2048\)"):
        require_family(small_layers(in_dim=1280))
    assert family_bank(16, token_dim=16).token_encoders == (("", 16),)  # a script's toy model still works


def test_the_family_survives_the_file_and_old_files_read_as_sd1():
    sdxl = add_random_concept(core, family_bank(2048), "dog", "<dog1>", seed=1)
    again = core.bank_from_bytes(core.bank_to_bytes(sdxl))
    assert again.family == "sdxl" and torch.equal(again.concepts[0].embedding, sdxl.concepts[0].embedding)
    # A bank written before families were stored: no "family" in its metadata.
    data = core.bank_to_bytes(family_bank(768))
    header_len = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + header_len])
    info = json.loads(header["__metadata__"]["r2moe"])
    del info["family"], info["token_encoders"]
    header["__metadata__"]["r2moe"] = json.dumps(info)
    raw = json.dumps(header).encode()
    raw += b" " * (header_len - len(raw))  # same length keeps the tensor offsets
    assert core.bank_from_bytes(data[:8] + raw + data[8 + header_len :]).family == "sd1"


def test_a_bank_is_refused_on_another_family_with_both_named():
    sd1, sdxl = family_bank(768), family_bank(2048)
    with pytest.raises(core.BankMismatchError, match=r"made for SD1\.x; the connected MODEL is SDXL"):
        core.check_bank_fits(sd1, list(sdxl.layers), sdxl.fingerprint)
    with pytest.raises(core.BankMismatchError, match=r"made for SDXL; the connected MODEL is SD 2\.x"):
        core.check_bank_fits(sdxl, list(family_bank(1024).layers), sdxl.fingerprint)


def test_an_sdxl_token_exports_one_tensor_per_text_encoder():
    bank = add_random_concept(core, family_bank(2048), "dog", "<dog1>", seed=1)
    vectors = bank.concepts[0].embedding
    out = embedding_tensors(bank, "dog")
    assert set(out) == {"clip_l", "clip_g"}
    assert torch.equal(torch.cat([out["clip_l"], out["clip_g"]], dim=1), vectors)
    assert set(embedding_tensors(add_random_concept(core, family_bank(768), "c", "<c1>", seed=2), "c")) == {
        "emb_params"}


def test_resolution_zero_means_the_familys_own():
    request = ConceptRequest(name="dog", token="<dog1>", class_word="dog")
    assert request.resolution == 0 and request.at_resolution(1024).resolution == 1024
    assert ConceptRequest(name="d", token="<d>", class_word="d", resolution=256).at_resolution(1024).resolution == 256
    with pytest.raises(core.InvalidInputError, match="0 \\(the model's own\\) or a multiple of 8"):
        ConceptRequest(name="d", token="<d>", class_word="d", resolution=100)
