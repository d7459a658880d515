"""A concept's training images and captions: from a folder or an image batch, any size or orientation."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from ..errors import InvalidInputError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}
_PLACEHOLDER = re.compile(r"<new\d*>")  # CustomConcept101 / R2MoE caption files say `<new1> dog, ...`


def square_resize(image: torch.Tensor, resolution: int) -> torch.Tensor:
    """Center-crop [H, W, C] to a square and resize to resolution (antialiased): [res, res, 3] in [0, 1]."""
    if image.ndim != 3 or image.shape[-1] < 3:
        raise InvalidInputError(f"expected an RGB image [H, W, C], got {tuple(image.shape)}")
    h, w = image.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    crop = image[top : top + side, left : left + side, :3].permute(2, 0, 1)[None].float()
    out = torch.nn.functional.interpolate(crop, size=(resolution, resolution), mode="bicubic", antialias=True)
    return out[0].permute(1, 2, 0).clamp(0, 1)


def load_image(path: Path) -> torch.Tensor:
    """RGB float [H, W, 3] with the EXIF orientation applied (phone photos are often stored rotated)."""
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im).convert("RGB")
            return torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0)
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise _unreadable(path, err) from err


def _unreadable(path: Path, err: Exception) -> InvalidInputError:
    return InvalidInputError(f"{path.name} in {path.parent} is not a readable image ({str(err)[:120]}); remove it "
                             "or replace it with a JPEG, PNG or WebP photo.")


def concept_files(folder: str | Path) -> tuple[list[Path], list[str] | None]:
    """The folder's image files sorted by name (each checked to decode, without loading its pixels) and the lines
    of caption.txt (one per image) when present: cheap, so a bad folder is refused before any model loads."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise InvalidInputError(f"Concept folder not found: {folder}")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise InvalidInputError(f"No images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {folder}")
    for path in files:
        try:
            with Image.open(path) as im:
                im.verify()
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
            raise _unreadable(path, err) from err
    captions = None
    caption_file = folder / "caption.txt"
    if caption_file.is_file():
        captions = [line.strip() for line in caption_file.read_text(encoding="utf-8").splitlines() if line.strip()]
        if len(captions) != len(files):
            raise InvalidInputError(
                f"{caption_file} has {len(captions)} captions for {len(files)} images; write one line per image, "
                "in the order of the sorted file names."
            )
    return files, captions


def load_concept_folder(folder: str | Path) -> tuple[list[torch.Tensor], list[str] | None]:
    """Images sorted by name, plus the lines of caption.txt (one per image) when present."""
    files, captions = concept_files(folder)
    return [load_image(p) for p in files], captions


def make_captions(
    count: int, token: str, class_word: str, template: str, given: Sequence[str] | None = None
) -> list[str]:
    """One caption per image: given captions with `<newN>` replaced by the trigger token, or the template."""
    if given is None:
        if "{token}" not in template:
            raise InvalidInputError("The caption template must contain {token} (and may contain {class}).")
        return [template.replace("{token}", token).replace("{class}", class_word)] * count
    captions = [_PLACEHOLDER.sub(token, c) for c in given]
    return [c if token in c else f"{token} {class_word}, {c}" for c in captions]
