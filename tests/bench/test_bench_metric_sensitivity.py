"""The metric-sensitivity check: each changed concept differs from the original in exactly the named attribute, a
feature that sees only colour reports a colour drop and no marking drop, and bad options stop before any work."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import numpy as np
import torch
from metric_sensitivity import changed, measure
from world.concepts import load_concepts

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "bench" / "metric_sensitivity.py"
SPECS = load_concepts(REPO / "bench" / "world" / "concepts_30.json")
FIELD = {"marking": "marking", "outline": "polygon", "texture": "texture", "colour": "colour"}


def test_each_variant_changes_only_its_attribute() -> None:
    for spec, other in zip(SPECS, SPECS[7:] + SPECS[:7], strict=True):
        for name, variant in changed(spec, other).items():
            differ = [f.name for f in fields(spec) if getattr(spec, f.name) != getattr(variant, f.name)]
            assert differ == [FIELD[name]], (spec.name, name, differ)


def object_colour(images: list[np.ndarray]) -> torch.Tensor:
    """A feature blind to everything but the object's mean colour: the pixels far from the frame's median colour
    (the background), averaged, centred on mid-grey."""
    rows = []
    for im in images:
        frame = np.concatenate([im[:4].reshape(-1, 3), im[-4:].reshape(-1, 3)])
        far = np.abs(im.astype(float) - np.median(frame, axis=0)).sum(-1) > 90
        rows.append(im[far].mean(0) if far.any() else np.full(3, 127.5))
    return torch.nn.functional.normalize(torch.tensor(np.stack(rows), dtype=torch.float32) - 127.5, dim=1)


def test_a_colour_only_feature_sees_colour_and_not_marking() -> None:
    readings = measure(SPECS[:6], object_colour, images=3)
    assert readings["drop"]["colour"]["mean"] < readings["drop"]["marking"]["mean"]
    assert abs(readings["drop"]["marking"]["mean"]) < abs(readings["drop"]["colour"]["mean"]) / 3


def test_a_bad_image_count_stops_the_script_before_any_work(tmp_path) -> None:
    done = subprocess.run([sys.executable, str(SCRIPT), "--images", "40", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "--images takes 1 to 16" in done.stderr
    assert not any(tmp_path.iterdir()), "nothing is written or trained"
