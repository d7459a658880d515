"""The world's yardstick is a shipped file: the benchmarks and the demo must judge by it without training anything,
it must still read today's renders, and a damaged or mismatched file must say how to restore it."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from world import cache
from world.demo_settings import DEMO_EVALUATOR
from world.evaluators import BENCH_EVALUATOR, EvaluatorSettings, held_out_accuracy, to_tensor, train_evaluator
from world.scenes import random_scene, render
from world.shipped_evaluators import read_shipped, shipped_path, write_shipped

SHIPPED = (BENCH_EVALUATOR, DEMO_EVALUATOR)
FOLDER_OF_CONCEPTS = Path(__file__).resolve().parents[2] / "bench" / "world"
TINY = EvaluatorSettings(images=160, epochs=1, size=64)


@pytest.fixture(scope="module")
def tiny():
    torch.set_num_threads(2)
    return train_evaluator(train_images=TINY.images, test_images=100, epochs=TINY.epochs, size=TINY.size)[0]


@pytest.mark.parametrize("settings", SHIPPED, ids=["bench", "demo"])
def test_the_benchmarks_and_the_demo_judge_by_the_shipped_file_without_training(settings, monkeypatch):
    monkeypatch.setattr(cache, "train_evaluator", lambda **_: pytest.fail("trained instead of reading the file"))
    model, report = cache.world_evaluator(None, settings)
    assert model.size == settings.size and not model.training
    assert (report.train_images, report.epochs) == (settings.images, settings.epochs)
    assert min(report.accuracy.values()) > 0.5, report.accuracy  # chance is 1/6 to 1/3


@pytest.mark.parametrize("settings", SHIPPED, ids=["bench", "demo"])
def test_the_shipped_evaluators_still_read_todays_renders(settings):
    """Fails when the renders or the vocabulary changed under the file: reship it (bench/ship_evaluators.py)."""
    model, report = read_shipped(settings)
    now = held_out_accuracy(model, images=300, seed=424242)  # renders the file never saw, drawn by today's code
    for attribute, recorded in report.accuracy.items():
        assert now[attribute] >= recorded - 0.1, f"{attribute}: {now[attribute]:.2f} now, {recorded:.2f} recorded"


def test_a_written_evaluator_reads_back_as_the_rounded_model_with_its_own_report(tiny, tmp_path):
    report = write_shipped(tiny, TINY, tmp_path, trained_by="test")
    model, read = read_shipped(TINY, tmp_path)
    assert read.accuracy == report.accuracy and (read.train_images, read.epochs) == (TINY.images, TINY.epochs)
    images = to_tensor([render(random_scene(random.Random(i)), TINY.size) for i in range(8)])
    with torch.no_grad():
        a, b = tiny.embed(images), model.embed(images)
    assert torch.allclose(a, b, atol=2e-2) and not torch.equal(a, b)  # fp16 weights: close, not the same bits
    assert report.accuracy == {k: round(v, 4) for k, v in held_out_accuracy(model).items()}  # the rounded model's
    assert read_shipped(EvaluatorSettings(TINY.images, TINY.epochs + 1, TINY.size), tmp_path) is None


def test_a_damaged_or_mismatched_file_says_how_to_restore_it(tiny, tmp_path):
    write_shipped(tiny, TINY, tmp_path)
    path = shipped_path(TINY, tmp_path)
    other = EvaluatorSettings(TINY.images + 1, TINY.epochs, TINY.size)
    shutil.copy(path, shipped_path(other, tmp_path))  # right bytes under another settings' name
    with pytest.raises(ValueError, match=r"does not hold a world evaluator.*ship_evaluators"):
        read_shipped(other, tmp_path)
    path.write_bytes(path.read_bytes()[:200])  # cut short
    with pytest.raises(ValueError, match=r"not a readable safetensors file.*git checkout"):
        read_shipped(TINY, tmp_path)


def test_settings_with_no_shipped_file_are_trained_and_cached(tmp_path, monkeypatch):
    calls = []

    def train(**kwargs):
        calls.append(kwargs)
        return train_evaluator(**kwargs, test_images=50)

    monkeypatch.setattr(cache, "train_evaluator", train)
    quick = EvaluatorSettings(images=64, epochs=1, size=64)
    assert not shipped_path(quick).is_file()
    first, _ = cache.world_evaluator(tmp_path, quick)
    again, _ = cache.world_evaluator(tmp_path, quick)
    assert len(calls) == 1 and all(torch.equal(a, b) for a, b in zip(first.state_dict().values(),
                                                                      again.state_dict().values(), strict=True))


def test_the_ship_script_writes_what_the_benchmarks_read(tiny, tmp_path, monkeypatch):
    import ship_evaluators

    monkeypatch.setattr(ship_evaluators, "SHIPPED", {"tiny": TINY})
    monkeypatch.setattr(ship_evaluators, "trained_evaluator", lambda cache_dir, settings: (tiny, None))
    ship_evaluators.main(["--folder", str(tmp_path), "--cache", ""])
    _, report = read_shipped(TINY, tmp_path)
    assert set(report.accuracy) == {"shape", "colour", "texture", "background", "position", "count"}
    with safe_open(str(shipped_path(TINY, tmp_path)), framework="pt") as handle:
        assert "one thread" in handle.metadata()["trained_by"]
    with pytest.raises(SystemExit):
        ship_evaluators.main(["--only", "nonesuch", "--folder", str(tmp_path)])
    assert not shipped_path(TINY).is_file()  # the test wrote nothing into the shipped folder


def test_the_demo_reads_image_alignment_by_its_shipped_evaluator(tmp_path, monkeypatch):
    """`make demo`'s alignment column: a concept's own new renders read closer to its references than another's."""
    from demo import world_alignment
    from PIL import Image
    from world import concept_images, load_concepts

    monkeypatch.setattr(cache, "train_evaluator", lambda **_: pytest.fail("the demo trained an evaluator"))
    a, b = load_concepts(FOLDER_OF_CONCEPTS / "concepts_10.json")[:2]

    def saved(spec, seed: int) -> list:
        paths = []
        for i, (image, _) in enumerate(concept_images(spec, 4, seed=seed, size=128)):
            paths.append(tmp_path / f"{spec.name}_{seed}_{i}.png")
            Image.fromarray(image).save(paths[-1])
        return paths

    (row,) = world_alignment([(saved(a, 0), {"own": saved(a, 1), "other": saved(b, 1)})], tmp_path / ".cache")
    assert row["own"] > row["other"] + 5, row  # x100 cosines
    assert not (tmp_path / ".cache").exists()  # nothing trained, nothing cached
