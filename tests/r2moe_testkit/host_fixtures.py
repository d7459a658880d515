"""Session fixtures for the tiers that run ComfyUI in this process (host and bench); imported by their conftests."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session")
def host(tmp_path_factory):
    """ComfyUI in this process, with the pack loaded from custom_nodes like a user's install (booted once)."""
    from comfy_inprocess import boot

    # R2MOE_TEST_DEVICE=gpu runs this tier on CUDA (a manual check; CI has no GPU).
    return boot(tmp_path_factory.mktemp("comfy_base"), gpu=os.environ.get("R2MOE_TEST_DEVICE") == "gpu")


@pytest.fixture(scope="session")
def tiny(host):
    """The tiny checkpoint through the stock CheckpointLoaderSimple: (MODEL, CLIP, VAE)."""
    from comfy_inprocess import call_node

    return call_node("CheckpointLoaderSimple", ckpt_name=host.checkpoint.name)
