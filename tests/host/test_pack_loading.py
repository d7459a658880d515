from __future__ import annotations

NODE_IDS = {
    "R2MoENewBank", "R2MoELoadBank", "R2MoESaveBank", "R2MoEApplyBank", "R2MoEBankInfo", "R2MoEPruneBank",
    "R2MoETrainConcept",
}


def test_pack_registers_every_node_through_the_v3_entrypoint(host):
    assert set(host.nodes.NODE_CLASS_MAPPINGS) >= NODE_IDS
    assert not hasattr(host.pack, "NODE_CLASS_MAPPINGS"), "would make ComfyUI ignore comfy_entrypoint"
    assert host.pack.WEB_DIRECTORY == "./web"
    assert "r2moe" in host.nodes.EXTENSION_WEB_DIRS.get("r2moe", "") or any(
        p.endswith("web") for p in host.nodes.EXTENSION_WEB_DIRS.values()
    )


def test_bank_folder_is_registered(host):
    import folder_paths

    assert folder_paths.get_folder_paths("r2moe")[0].endswith("models/r2moe")


def test_tiny_checkpoint_loads_with_the_stock_loader(tiny):
    model, clip, vae = tiny
    names = [n for n, _ in model.model.diffusion_model.named_modules() if n.endswith("attn2")]
    assert len(names) == 16
    assert clip.cond_stage_model is not None and vae is not None
