"""Fault-and-abuse tier: a real ComfyUI server on 127.0.0.1 (tiny model) with a test-only fault node beside the
pack, and loopback fake servers; every test checks the message a user sees and that the server still answers."""

from __future__ import annotations

from pathlib import Path

import pytest
from comfy_inprocess import CACHE, TINY_CKPT_NAME, make_base_dir, require_host
from comfy_server import ensure_tiny_checkpoint

from r2moe_testkit.faults import FaultServer

FAULT_NODES = Path(__file__).resolve().parent / "fault_nodes"


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> FaultServer:
    require_host()
    checkpoint = ensure_tiny_checkpoint(CACHE / TINY_CKPT_NAME)
    base = make_base_dir(tmp_path_factory.mktemp("faults_base"), checkpoint)
    (base / "custom_nodes" / "r2moe_test_faults").symlink_to(FAULT_NODES, target_is_directory=True)
    with FaultServer(base_dir=base, log_path=base / "server.log", gpu=False) as srv:
        srv.base = base
        yield srv
