"""R2MoESAMLoader and R2MoESAMRefine on the real host, with a tiny random SAM in models/sams."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from comfy_inprocess import call_node

from r2moe_testkit.sam import TINY, TINY_SAM_NAME, build_tiny_sam, write_tiny_sam

H, W = 96, 128  # not square and not SAM's input size: boxes must be scaled per axis
LEFT, RIGHT = [0.0, 0.25, 0.5, 1.0], [0.5, 0.0, 1.0, 0.75]


@pytest.fixture(scope="module")
def sams_dir(host):
    import folder_paths

    folder = host.base_dir / "models" / "sams"
    write_tiny_sam(folder / TINY_SAM_NAME)
    torch.save(build_tiny_sam(seed=1).state_dict(), folder / "tiny_plain.pth")
    folder_paths.filename_list_cache.clear()
    return folder


@pytest.fixture(scope="module")
def sam(sams_dir):
    return call_node("R2MoESAMLoader", sam_name=TINY_SAM_NAME)[0]


@pytest.fixture(scope="module")
def layout(host):
    data = {"width": W, "height": H, "background": "a garden",
            "regions": [{"prompt": "a dog", "box": LEFT}, {"prompt": "a cat", "box": RIGHT}]}  # fmt: skip
    return call_node("R2MoELayoutFromJSON", layout_json=json.dumps(data))[0]


@pytest.fixture(scope="module")
def image():
    return torch.rand(1, H, W, 3, generator=torch.Generator().manual_seed(0))


def refine(image, layout, sam, **options):
    return call_node("R2MoESAMRefine", image=image, layout=layout, sam=sam, **options)[0]


def test_sams_folder_is_registered_and_listed(host, sams_dir):
    import folder_paths

    assert folder_paths.get_folder_paths("sams")[0].endswith("models/sams")
    schema = host.nodes.NODE_CLASS_MAPPINGS["R2MoESAMLoader"].INPUT_TYPES()
    kind, info = schema["required"]["sam_name"][:2]
    options = info["options"] if kind == "COMBO" else kind
    assert {TINY_SAM_NAME, "tiny_plain.pth"} <= set(options)


def test_loader_rebuilds_the_tiny_sam_from_its_weights(sam):
    assert sam.variant == "custom"
    assert (sam.config.embed_dim, sam.config.depth, sam.config.num_heads) == (32, 2, 2)
    assert sam.config.global_attn_indexes == (1,) and sam.config.window_size == TINY["window_size"]
    assert sam.config.img_size == TINY["img_size"] and sam.config.decoder_heads == TINY["decoder_heads"]
    reference = build_tiny_sam().state_dict()
    loaded = sam.model.state_dict()
    assert reference.keys() == loaded.keys()
    assert all(torch.equal(reference[k], loaded[k]) for k in reference)


def test_plain_pth_loads_with_weights_only(sams_dir):
    loaded = call_node("R2MoESAMLoader", sam_name="tiny_plain.pth")[0]
    assert loaded.variant == "custom" and loaded.config.decoder_heads == 8  # not in the weights: published value
    assert torch.equal(loaded.model.state_dict()["image_encoder.pos_embed"],
                       build_tiny_sam(seed=1).state_dict()["image_encoder.pos_embed"])  # fmt: skip


def test_official_variants_are_recognised_from_shapes():
    from segment_anything import sam_model_registry

    from r2moe_core.compose.masks.sam_loader import infer_config, variant_of

    for variant in ("vit_b", "vit_l", "vit_h"):
        with torch.device("meta"):
            state = sam_model_registry[variant]().state_dict()
        assert variant_of(infer_config(state)) == variant


def test_refine_gives_one_binary_mask_per_region_at_image_size(image, layout, sam):
    masks = refine(image, layout, sam, min_coverage=0.0)
    assert masks.shape == (2, H, W) and masks.dtype == torch.float32
    assert set(masks.unique().tolist()) <= {0.0, 1.0}
    boxes = call_node("R2MoELayoutPreview", layout=layout)[1]  # layout canvas == image size here
    assert torch.all(masks <= boxes), "clip_to_box keeps every mask inside its box"
    grown = refine(image, layout, sam, min_coverage=0.0, clip_to_box=False, dilate=3)
    assert grown.sum() >= masks.sum()


def test_each_box_prompt_reaches_sam_in_image_pixels(monkeypatch, image, layout, sam):
    from segment_anything import SamPredictor

    seen = []
    original = SamPredictor.predict

    def spy(self, *args, **kwargs):
        seen.append(kwargs["box"].tolist())
        return original(self, *args, **kwargs)

    monkeypatch.setattr(SamPredictor, "predict", spy)
    refine(image, layout, sam)
    expected = [[x0 * W, y0 * H, x1 * W, y1 * H] for x0, y0, x1, y1 in (LEFT, RIGHT)]
    assert torch.allclose(torch.tensor(seen), torch.tensor(expected))


def test_empty_sam_mask_falls_back_to_the_box(image, layout, sam, caplog):
    boxes = call_node("R2MoELayoutPreview", layout=layout)[1]
    sam.model.mask_threshold = float("inf")  # every logit below: SAM answers "nothing here"
    try:
        with caplog.at_level(logging.WARNING, logger="r2moe"):
            masks = refine(image, layout, sam)
    finally:
        del sam.model.mask_threshold
    assert torch.equal(masks, boxes)
    assert "keep their box mask" in caplog.text


def test_missing_sam_file_names_the_folder_and_the_expected_files(host, sams_dir):
    loader = host.nodes.NODE_CLASS_MAPPINGS["R2MoESAMLoader"]
    message = loader.validate_inputs(sam_name="sam_vit_b_01ec64.pth")
    assert isinstance(message, str)
    for part in ("models/sams", str(sams_dir), "sam_vit_b_01ec64.pth", "sam_vit_l_0b3195.pth", "sam_vit_h_4b8939.pth"):
        assert part in message
    with pytest.raises(host.core.InvalidInputError, match=r"sam_vit_h_4b8939\.pth"):
        call_node("R2MoESAMLoader", sam_name="sam_vit_b_01ec64.pth")


def test_a_file_that_is_not_sam_is_refused_clearly(host, sams_dir):
    import folder_paths
    from safetensors.torch import save_file

    save_file({"weight": torch.zeros(2, 2)}, str(sams_dir / "not_a_sam.safetensors"))
    folder_paths.filename_list_cache.clear()
    with pytest.raises(host.core.InvalidInputError, match="not a Segment Anything checkpoint"):
        call_node("R2MoESAMLoader", sam_name="not_a_sam.safetensors")


def test_regional_apply_takes_masks_shaped_like_other_packs_do():
    from r2moe_core.compose.regional_attention import check_masks

    assert check_masks(torch.ones(2, 1, 8, 8, dtype=torch.bool), 2).shape == (2, 8, 8)
