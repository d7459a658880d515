"""The lifelong grid picture: committed with every re-run, so it must stay small while each sample stays
recognisable (a 256-colour palette, close to the images it shows)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from world.plots import grid_image


def test_grid_is_a_small_palette_png_that_keeps_its_images(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    size, columns = 64, ["<a>", "<b>", "<c>"]
    noisy = {name: {c: [rng.integers(0, 256, (size, size, 3), dtype=np.uint8)] for c in columns}
             for name in ("r2moe", "textual_inversion")}
    references = [np.full((size, size, 3), (40 * k, 200 - 50 * k, 90), dtype=np.uint8) for k in range(3)]
    path = tmp_path / "grid.png"
    grid_image(noisy, references, columns, path)
    with Image.open(path) as image:
        assert image.mode == "P"
        rgb = np.asarray(image.convert("RGB")).astype(int)
    assert rgb.shape == (3 * size, 130 + 3 * size, 3)
    for k, ref in enumerate(references):  # flat colours survive the palette exactly
        assert np.abs(rgb[:size, 130 + k * size:130 + (k + 1) * size] - ref).max() <= 2
    noise = rgb[size:2 * size, 130:130 + size]
    assert np.abs(noise - noisy["r2moe"]["<a>"][0]).mean() < 20  # noise is approximated, not replaced
    raw = size * size * 3 * 9  # the 3x3 sample cells as 24-bit pixels
    assert path.stat().st_size < 0.6 * raw
