"""The demo's training workflow for any number of concepts, built from the shipped two-concept template: each
concept is learned in turn into one bank, then sampled with the bank and, for comparison, with the base model
alone and with its trigger token learned alone (textual inversion: the same node and settings with the experts'
and router's learning rates at 0, into a bank of its own), same prompt, seed and settings."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

NEGATIVE = "blurry, low quality"


@dataclass(frozen=True)
class DemoConcept:
    name: str
    folder: Path
    class_word: str
    token: str
    prompt: str  # what the demo samples it with


@dataclass(frozen=True)
class ConceptNodes:
    """Ids of the nodes whose outputs the report reads for one concept."""

    train: str
    after: str  # SaveImage of the bank's image
    base: str  # SaveImage of the base model's image
    loss: str  # SaveImage of the loss curve
    token_only: str | None = None  # SaveImage of the token-alone image


def training_graph(template: dict[str, Any], ckpt_name: str, concepts: list[DemoConcept],
                   train_inputs: dict[str, Any], size: int, batch: int, sample_steps: int | None,
                   token_only: bool = False, negative: str = NEGATIVE, cfg: float | None = None
                   ) -> tuple[dict[str, Any], list[ConceptNodes]]:
    """The template's loader, bank, save, apply and info nodes, with one training chain link and one pair of
    samplers (bank / base model) per concept, and with `token_only` a token-alone run and its sampler too.
    `sample_steps` and `cfg` None keep the template's sampler settings."""
    graph = {k: copy.deepcopy(template[k]) for k in ("1", "2", "5", "6", "9", "10", "19", "20")}
    graph["1"]["inputs"]["ckpt_name"] = ckpt_name
    graph["10"]["inputs"].update(width=size, height=size, batch_size=batch)
    graph["9"]["inputs"]["text"] = negative
    graph["90"] = {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": negative}}
    sampler = copy.deepcopy(template["11"])
    if sample_steps is not None:
        sampler["inputs"]["steps"] = sample_steps
    if cfg is not None:
        sampler["inputs"]["cfg"] = cfg
    previous = ["2", 0]
    nodes = []
    for i, concept in enumerate(concepts):
        ids = [str(100 + 10 * i + k) for k in range(10)]
        train = copy.deepcopy(template["3"])
        train["inputs"].update(bank=previous, concept_name=concept.name, trigger_token=concept.token,
                               class_word=concept.class_word, folder=str(concept.folder), **train_inputs)
        graph[ids[0]] = train
        previous = [ids[0], 0]
        for model, clip, negative, offset, label in ((["6", 0], ["6", 1], ["9", 0], 1, "after"),
                                                     (["1", 0], ["1", 1], ["90", 0], 5, "base")):
            encode, sample, decode, save = ids[offset:offset + 4]
            graph[encode] = {"class_type": "CLIPTextEncode", "inputs": {"clip": clip, "text": concept.prompt}}
            graph[sample] = copy.deepcopy(sampler)
            graph[sample]["inputs"].update(model=model, positive=[encode, 0], negative=negative,
                                           latent_image=["10", 0])
            graph[decode] = {"class_type": "VAEDecode", "inputs": {"samples": [sample, 0], "vae": ["1", 2]}}
            graph[save] = {"class_type": "SaveImage", "inputs": {"images": [decode, 0],
                                                                  "filename_prefix": f"r2moe_demo_{label}_{i}"}}
        graph[ids[9]] = {"class_type": "SaveImage", "inputs": {"images": [ids[0], 1],
                                                                "filename_prefix": f"r2moe_demo_loss_{i}"}}
        alone = token_only_chain(graph, train, sampler, concept, i) if token_only else None
        nodes.append(ConceptNodes(train=ids[0], after=ids[4], base=ids[8], loss=ids[9], token_only=alone))
    for node in ("5", "6", "19"):
        graph[node]["inputs"]["bank"] = previous
    return graph, nodes


def token_only_chain(graph: dict[str, Any], train: dict[str, Any], sampler: dict[str, Any], concept: DemoConcept,
                     index: int) -> str:
    """The concept's token learned alone from the empty bank (experts start at zero and keep a learning rate of 0,
    so they add nothing) on the uniform timestep draw (it did no better with a bias), applied and sampled like the
    bank; returns the id of its SaveImage."""
    ids = [str(500 + 10 * index + k) for k in range(6)]
    alone = copy.deepcopy(train)
    alone["inputs"].update(bank=["2", 0], lr_experts=0.0, lr_router=0.0, timestep_bias=0.0)
    graph[ids[0]] = alone
    graph[ids[1]] = {"class_type": "R2MoEApplyBank", "inputs": {**graph["6"]["inputs"], "bank": [ids[0], 0]}}
    graph[ids[2]] = {"class_type": "CLIPTextEncode", "inputs": {"clip": [ids[1], 1], "text": concept.prompt}}
    graph[ids[3]] = copy.deepcopy(sampler)
    graph[ids[3]]["inputs"].update(model=[ids[1], 0], positive=[ids[2], 0], negative=["90", 0],
                                   latent_image=["10", 0])
    graph[ids[4]] = {"class_type": "VAEDecode", "inputs": {"samples": [ids[3], 0], "vae": ["1", 2]}}
    graph[ids[5]] = {"class_type": "SaveImage", "inputs": {"images": [ids[4], 0],
                                                            "filename_prefix": f"r2moe_demo_token_only_{index}"}}
    return ids[5]
