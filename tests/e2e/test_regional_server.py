"""HLAG over HTTP: the shipped hierarchical workflow, with a tiny SAM in the server's models/sams."""

from __future__ import annotations

from pathlib import Path

import pytest
from comfy_inprocess import CACHE, TINY_CKPT_NAME, make_base_dir, require_host
from comfy_server import ComfyServer, ensure_tiny_checkpoint

from r2moe_testkit.sam import TINY_SAM_NAME, write_tiny_sam
from r2moe_testkit.workflows import load_api_workflow, with_steps


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    require_host()
    checkpoint = ensure_tiny_checkpoint(CACHE / TINY_CKPT_NAME)
    base = make_base_dir(tmp_path_factory.mktemp("regional_server_base"), checkpoint)
    write_tiny_sam(base / "models" / "sams" / TINY_SAM_NAME)
    log = base / "server.log"
    with ComfyServer(base_dir=base, log_path=log, gpu=False) as srv:
        srv.base = base
        yield srv
    if any(b"IMPORT FAILED" in line and b"r2moe" in line for line in log.read_bytes().splitlines()):
        pytest.fail("ComfyUI logged IMPORT FAILED for the pack")


def test_hierarchical_workflow_over_http_writes_an_image(server):
    info = server.get("/object_info/R2MoEHierarchicalSampler")["R2MoEHierarchicalSampler"]
    assert info["output"] == ["LATENT", "MASK", "IMAGE"]
    assert TINY_SAM_NAME in server.get("/models/sams")
    graph = with_steps(load_api_workflow("api_regional_hierarchical.json"), steps=4, size=128)
    graph["8"]["inputs"]["steps"] = 4
    entry = server.run(graph, timeout=300)
    image = entry["outputs"]["10"]["images"][0]
    path = Path(server.base) / "output" / image["subfolder"] / image["filename"]
    assert path.is_file() and path.stat().st_size > 0
    assert len(entry["outputs"]["13"]["images"]) == 2, "one mask preview per layout region"
