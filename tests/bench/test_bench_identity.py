"""The concept-identity embedding: each family member differs from its concept in exactly one attribute (so no
single attribute tells the classes apart), and the embedding is trained once per code and settings, then read
back from the cache unchanged."""

from __future__ import annotations

from dataclasses import fields

import torch
from world.identity import IdentitySettings, cached_identity, family_concepts

FIELDS = {"marking", "polygon", "texture", "colour"}


def test_each_family_varies_every_attribute_once() -> None:
    specs = family_concepts(4, "test")
    assert len(specs) == 20
    for start in range(0, 20, 5):
        head, members = specs[start], specs[start + 1:start + 5]
        changed = [[f.name for f in fields(head) if getattr(head, f.name) != getattr(m, f.name)] for m in members]
        assert all(len(c) == 1 for c in changed), changed
        assert {c[0] for c in changed} == FIELDS


def test_the_embedding_is_trained_once_then_read_from_the_cache(tmp_path) -> None:
    settings = IdentitySettings(families=3, scenes=2, epochs=1)
    first, report = cached_identity(tmp_path, settings)
    assert len(list(tmp_path.glob("identity_*.pkl"))) == 1
    again, report_again = cached_identity(tmp_path, settings)
    x = torch.rand(2, 3, 128, 128) * 2 - 1
    assert torch.equal(first.embed(x), again.embed(x)) and report == report_again
    assert 0.0 <= report.retrieval <= 1.0
    assert torch.allclose(first.embed(x).norm(dim=-1), torch.ones(2))
