from __future__ import annotations

import pytest
import torch
from PIL import Image

import r2moe_core as core
from r2moe_core.train.concept_photos import load_concept_folder, make_captions, square_resize


def test_any_size_becomes_a_centered_square():
    image = torch.zeros(60, 100, 3)
    image[:, 20:80] = 1.0  # the central 60x60 square is white, the side bands black
    out = square_resize(image, 32)
    assert out.shape == (32, 32, 3) and out.min() > 0.95


def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (40, 20), (255, 0, 0))
    exif = image.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display": a portrait phone photo stored landscape
    image.save(tmp_path / "00.jpg", exif=exif)
    images, captions = load_concept_folder(tmp_path)
    assert images[0].shape[:2] == (40, 20) and captions is None


def test_caption_file_must_match_the_images(tmp_path):
    for i in range(2):
        Image.new("RGB", (8, 8)).save(tmp_path / f"{i}.png")
    (tmp_path / "caption.txt").write_text("<new1> dog\n")
    with pytest.raises(core.InvalidInputError, match="1 captions for 2 images"):
        load_concept_folder(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(core.InvalidInputError, match="No images"):
        load_concept_folder(tmp_path / "empty")


def test_captions_use_the_trigger_token():
    assert make_captions(2, "<dog1>", "dog", "photo of a {token} {class}") == ["photo of a <dog1> dog"] * 2
    given = make_captions(2, "<dog1>", "dog", "", ["<new1> dog on grass", "a dog, sitting"])
    assert given == ["<dog1> dog on grass", "<dog1> dog, a dog, sitting"]
    with pytest.raises(core.InvalidInputError, match=r"\{token\}"):
        make_captions(1, "<dog1>", "dog", "photo of a dog")
