"""The benchmark's procedural world: deterministic, captions that say what is drawn, checked concept files."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import numpy as np
import pytest
from world import concept_images, load_concepts, random_scene, render
from world.concepts import ConceptFileError
from world.scenes import caption
from world.vocab import BACKGROUNDS, POSITIONS, SIZE

WORLD = Path(__file__).resolve().parents[2] / "bench" / "world"


def test_scenes_are_deterministic_for_a_seed():
    a = [render(random_scene(random.Random(3))) for _ in range(2)]
    b = render(random_scene(random.Random(4)))
    assert np.array_equal(a[0], a[1]) and not np.array_equal(a[0], b)
    assert a[0].shape == (SIZE, SIZE, 3) and a[0].dtype == np.uint8


@pytest.mark.parametrize("seed", range(12))
def test_captions_say_what_is_drawn(seed):
    scene = random_scene(random.Random(seed))
    image = render(scene).astype(int)
    text = caption(scene)
    assert text.endswith(f"{scene.background} background") and scene.words["shape"] in text
    background = np.array(BACKGROUNDS[scene.background])
    assert np.abs(image[0, 0] - background).max() <= 2, "a corner shows the named background"
    ys, xs = np.nonzero(np.abs(image - background).max(-1) > 30)
    cx, cy = xs.mean() / SIZE, ys.mean() / SIZE
    px, py = POSITIONS[scene.position]
    assert abs(cx - px) < 0.12 and abs(cy - py) < 0.12, f"{text}: objects centred at ({cx:.2f}, {cy:.2f})"


def test_shipped_concept_sets_load_and_draw():
    for count in (10, 30):
        specs = load_concepts(WORLD / f"concepts_{count}.json")
        assert len(specs) == count and len({s.name for s in specs}) == count
    photos = concept_images(specs[0], count=5)
    assert len(photos) == 5 and all(re.fullmatch(r"photo of a <new1> \w+ (on|in) the \w+, \w+ background", c)
                                    for _, c in photos)
    assert not np.array_equal(photos[0][0], concept_images(specs[1], count=1)[0][0])
    assert np.array_equal(photos[0][0], concept_images(specs[0], count=1)[0][0]), "same seed, same photos"


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"texture": "furry"}, "texture 'furry'"),
        ({"polygon": [[0, 0], [1.5, 0], [0, 1]]}, r"point \[1.5, 0\]"),
        ({"polygon": [[0, 0], [1, 1]]}, "3 to 16"),
        ({"colour": [300, 0, 0]}, "'colour'"),
        ({"name": "two words"}, "'name'"),
    ],
)
def test_bad_concept_files_name_the_problem(tmp_path, row, message):
    good = {"name": "new1", "class": "toy", "polygon": [[0, 0], [1, 0], [0.5, 1]], "colour": [10, 20, 30]}
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"version": 1, "concepts": [good | row]}))
    with pytest.raises(ConceptFileError, match=message):
        load_concepts(path)


def test_duplicate_names_and_wrong_version_are_refused(tmp_path):
    good = {"name": "new1", "class": "toy", "polygon": [[0, 0], [1, 0], [0.5, 1]], "colour": [10, 20, 30]}
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"version": 1, "concepts": [good, good]}))
    with pytest.raises(ConceptFileError, match="duplicate"):
        load_concepts(path)
    path.write_text(json.dumps({"version": 2, "concepts": []}))
    with pytest.raises(ConceptFileError, match="version"):
        load_concepts(path)


def test_shipped_sets_are_what_the_generator_writes(tmp_path):
    from world.concepts import write_default_sets

    for path in write_default_sets(tmp_path):
        assert path.read_text() == (WORLD / path.name).read_text(), f"{path.name}: run bench/make_world_concepts.py"


@pytest.mark.parametrize("seed", range(8))
def test_two_and_three_object_scenes_draw_different_objects_where_their_caption_says(seed):
    from world.scenes import random_composite
    from world.vocab import COLOURS

    scene = random_composite(random.Random(seed), 2 + seed % 2)
    words = [p.words for p in scene.parts]
    assert len({w["shape"] for w in words}) == len({w["colour"] for w in words}) == len(words)
    text = caption(scene)
    assert text.count(" and a ") == len(words) - 1 and text.endswith(f"{scene.background} background")
    image = render(scene).astype(int)
    for part in scene.parts:
        if part.words["colour"] == "white" and any(p.words["texture"] != "plain" for p in scene.parts):
            continue  # textures are drawn in white too: the white object's pixels are not its own
        ys, xs = np.nonzero(np.abs(image - np.array(COLOURS[part.words["colour"]])).max(-1) <= 12)
        assert len(xs), f"{text}: no {part.words['colour']} pixels"
        px, py = POSITIONS[part.position]
        assert abs(xs.mean() / SIZE - px) < 0.12 and abs(ys.mean() / SIZE - py) < 0.12, text


def test_a_concept_alone_is_prompted_as_the_world_is_captioned():
    """Every world caption names a place and a background; a bare `photo of a <new1> toy` is not one, and world v3
    draws confetti for it, so image alignment would be read on noise. Backgrounds vary within and between
    concepts, the same on every call."""
    from world.protocol import ConceptData, alone_prompts

    concepts = [ConceptData(f"<new{i}>", "toy", [], []) for i in range(1, 5)]
    prompts = {c.token: alone_prompts(c, 3) for c in concepts}
    for token, rows in prompts.items():
        assert len(rows) == 3 and rows == alone_prompts(next(c for c in concepts if c.token == token), 3)
        for row in rows:
            match = re.fullmatch(rf"photo of a {token} toy in the center, (\w+) background", row)
            assert match and match.group(1) in BACKGROUNDS, row
        assert len(set(rows)) == 3, "one concept's images are drawn on different backgrounds"
    assert len({tuple(rows) for rows in prompts.values()}) > 1, "concepts do not all share the same backgrounds"
    base = alone_prompts(concepts[0], 3, token=False)
    assert base == [p.replace("<new1> ", "") for p in prompts["<new1>"]]
