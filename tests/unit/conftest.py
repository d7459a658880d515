from __future__ import annotations

import pytest

import r2moe_core as core
from r2moe_testkit.small import small_layers, weights_for


@pytest.fixture
def layers() -> list:
    return small_layers()


@pytest.fixture
def empty_bank(layers):
    fingerprint = core.compute_fingerprint(layers, weights_for(layers))
    return core.ExpertBank.empty(core.BankConfig(rank=2, top_k=2), layers, fingerprint, token_dim=16)
