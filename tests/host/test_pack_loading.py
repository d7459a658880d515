from __future__ import annotations

import sys
from pathlib import Path

from r2moe_testkit.pack_nodes import pack_node_ids

REPO = Path(__file__).resolve().parents[2]


def test_pack_registers_every_node_through_the_v3_entrypoint(host):
    all_nodes = sys.modules[host.pack.__name__ + ".nodes"].ALL_NODES
    ids = {cls.define_schema().node_id for cls in all_nodes}
    assert ids == pack_node_ids() and len(ids) == len(all_nodes), "node ids repeat, or the source scan disagrees"
    missing = ids - set(host.nodes.NODE_CLASS_MAPPINGS)
    assert not missing, f"nodes not registered with ComfyUI: {sorted(missing)}"
    assert all(host.nodes.NODE_CLASS_MAPPINGS[i].__module__.startswith(host.pack.__name__) for i in ids)
    assert not hasattr(host.pack, "NODE_CLASS_MAPPINGS"), "would make ComfyUI ignore comfy_entrypoint"


def test_web_folder_is_the_packs(host):
    assert host.pack.WEB_DIRECTORY == "./web"
    assert Path(host.nodes.EXTENSION_WEB_DIRS["r2moe"]).resolve() == (REPO / "web").resolve()


def test_bank_folder_is_registered(host):
    import folder_paths

    assert folder_paths.get_folder_paths("r2moe")[0].endswith("models/r2moe")


def test_test_models_are_not_part_of_the_pack(host):
    pack_modules = [m for m in sys.modules if m.startswith(host.pack.__name__ + ".")]
    assert pack_modules and not any("tiny" in m or "dev_models" in m for m in pack_modules)
    assert not (REPO / "nodes" / "tiny_models.py").exists()


def test_tiny_checkpoint_loads_with_the_stock_loader(tiny):
    model, clip, vae = tiny
    names = [n for n, _ in model.model.diffusion_model.named_modules() if n.endswith("attn2")]
    assert len(names) == 16
    assert clip.cond_stage_model is not None and vae is not None
