"""What a user sees on the nodes: tooltips everywhere, fixed seeds where re-running would re-train, node help that
matches the schemas, planner warnings for unknown tokens, and the gate and expert maps."""

from __future__ import annotations

import json
import logging
import sys

import numpy as np
import pytest
import torch
from comfy_inprocess import REPO, call_node
from make_node_docs import node_doc

from r2moe_testkit.banks import add_random_concept


def schemas(host):
    return [cls.define_schema() for cls in sys.modules[host.pack.__name__ + ".nodes"].ALL_NODES]


@pytest.fixture(scope="module")
def bank(host, tiny):
    empty = call_node("R2MoENewBank", model=tiny[0], rank=4, top_k=3, prune_threshold=0.4, distill_lambda=1e-5)[0]
    with_dog = add_random_concept(host.core, empty, "dog", "<dog1>", seed=1)
    return add_random_concept(host.core, with_dog, "cat", "<cat1>", seed=2)


def test_every_input_and_output_has_a_tooltip(host):
    missing = [
        f"{s.node_id}.{getattr(item, 'id', None) or item.display_name}"
        for s in schemas(host)
        for item in [*s.inputs, *s.outputs]
        if not getattr(item, "tooltip", None)
    ]
    assert not missing, missing


def test_training_and_planning_seeds_stay_fixed_after_a_queue(host):
    for schema in schemas(host):
        if schema.node_id in ("R2MoETrainConcept", "R2MoELayoutPlanner"):
            seed = next(i for i in schema.inputs if i.id == "seed")
            assert seed.control_after_generate is False, schema.node_id


def test_node_help_files_match_the_schemas(host):
    for schema in schemas(host):
        path = REPO / "web" / "docs" / f"{schema.node_id}.md"
        assert path.is_file(), f"no node help for {schema.node_id}: run scripts/make_node_docs.py"
        assert path.read_text() == node_doc(schema), f"{path.name} is stale: run scripts/make_node_docs.py"


def test_planner_refuses_a_prompt_whose_tokens_are_all_unknown(host, bank):
    with pytest.raises(host.core.InvalidInputError, match=r"<dgo1>.*not concepts of the connected bank.*<dog1>"):
        call_node("R2MoELayoutPlanner", prompt="<dgo1> on a beach", bank=bank, width=512, height=512,
                  planner="rule-based", seed=0)


def test_planner_warns_about_an_unknown_token_beside_known_ones(host, bank, caplog):
    with caplog.at_level(logging.WARNING, logger="r2moe"):
        layout, _ = call_node("R2MoELayoutPlanner", prompt="<dog1> and <cta1> on a beach", bank=bank, width=512,
                              height=512, planner="rule-based", seed=0)
    assert [r.tokens for r in layout.regions] == [("<dog1>",)]
    assert "<cta1> not in the bank" in caplog.text


def test_gate_map_shows_the_mixture_the_bank_uses_for_the_prompt(host, tiny, bank):
    image, text = call_node("R2MoEGateMap", clip=tiny[1], bank=bank, prompt="a photo of <dog1> dog")
    assert image.ndim == 4 and image.shape[0] == 1 and image.shape[-1] == 3 and image.shape[2] > 400
    assert "1: <dog1>" in text and "2: <cat1>" in text
    clip = sys.modules[host.pack.__name__ + ".nodes.host.clip_tokens"].clip_with_concepts(tiny[1], bank)
    with torch.inference_mode():
        context = clip.encode_from_tokens(clip.tokenize("a photo of <dog1> dog")).float()
    weights = host.core.prompt_gate_weights(bank, context)
    assert weights.shape == (bank.num_experts, len(bank.layers), 2)
    torch.testing.assert_close(weights.sum(0), torch.ones(len(bank.layers), 2))


def test_expert_map_has_a_legend(host, bank):
    image = host.core.expert_map(bank)
    legend = (image[-32:] * 255).round().astype(np.int16)
    for colour in ((90, 200, 120), (80, 150, 230)):
        assert (np.abs(legend - np.array(colour)).sum(-1) == 0).any(), f"legend lacks {colour}"


def test_newer_schema_fields_are_sent_only_to_hosts_that_take_them(host, monkeypatch):
    """`search_aliases` (node search) and `advanced` inputs exist on newer ComfyUI only; the pinned host's io.Schema
    would reject them, so they are feature-detected."""
    import dataclasses
    import types as pytypes

    types = sys.modules[host.pack.__name__ + ".nodes.types"]
    assert types.schema_extras(["dreambooth"]) == {} and types.advanced_input() == {}, "0.3.75 has neither"

    @dataclasses.dataclass
    class NewerSchema:
        node_id: str
        search_aliases: list = dataclasses.field(default_factory=list)

    class NewerFloat:
        class Input:
            def __init__(self, id, advanced=False, **kwargs):
                self.advanced = advanced

    monkeypatch.setattr(types, "io", pytypes.SimpleNamespace(Schema=NewerSchema, Float=NewerFloat))
    assert types.schema_extras(["dreambooth"]) == {"search_aliases": ["dreambooth"]}
    assert types.advanced_input() == {"advanced": True}


WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")


def widget_order(schema) -> list[str]:
    """The order the frontend saves a node's widget values in: required inputs, then optional ones."""
    def widgets(optional: bool) -> list[str]:
        return [item.id for item in schema.inputs if bool(getattr(item, "optional", False)) == optional
                and str(getattr(item, "io_type", "")) in WIDGET_TYPES]
    return widgets(False) + widgets(True)


def test_workflows_saved_by_earlier_releases_keep_their_widget_values_in_place(host):
    """A saved workflow stores widget values by position: a new input must come after every released one."""
    released = json.loads((REPO / "tests" / "host" / "released_widget_order.json").read_text())
    now = {s.node_id: widget_order(s) for s in schemas(host)}
    moved = {node: now.get(node, [])[: len(order)] for node, order in released.items()
             if now.get(node, [])[: len(order)] != order}
    assert not moved, f"widgets moved or removed (append new ones last): {moved}"
    unrecorded = set(now) - set(released)
    assert not unrecorded, f"record the new nodes' widget order in released_widget_order.json: {unrecorded}"
