"""Random rescales and flips of a concept's photos, with the caption word and the loss mask each rescale needs.

The rule is Custom Diffusion's: a view is drawn at a scale s in [res/3, res] with probability 0.66, else in
[1.2·res, 1.4·res]. A small view (s < 0.6·res) is pasted at a random place on a grey canvas, its caption starts
with "a far away" or "very small", and the loss counts only the photo's own pixels; a large one is a random
crop, captioned "zoomed in" or "close up". Every view may be mirrored. Views are made once, before training, so
the VAE encodes each one a single time.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..errors import InvalidInputError

FAR_WORDS = ("a far away", "very small")
CLOSE_WORDS = ("zoomed in", "close up")
SMALL_SHARE = 0.66
FAR_BELOW = 0.6


@dataclass(frozen=True)
class TrainingViews:
    """Pixels [V, res, res, 3] in [0, 1], loss masks [V, res, res] in {0, 1}, one caption per view."""

    pixels: torch.Tensor
    masks: torch.Tensor
    captions: list[str]

    def latent_masks(self, height: int, width: int) -> torch.Tensor:
        """The masks on the latent grid [V, 1, h, w]: the share of each latent cell covered by the photo."""
        return torch.nn.functional.interpolate(self.masks[:, None].float(), size=(height, width), mode="area")


def _resize(image: torch.Tensor, side: int) -> torch.Tensor:
    chw = image.permute(2, 0, 1)[None].float()
    out = torch.nn.functional.interpolate(chw, size=(side, side), mode="bicubic", antialias=True)
    return out[0].permute(1, 2, 0).clamp(0, 1)


def random_view(image: torch.Tensor, caption: str, rng: random.Random) -> tuple[torch.Tensor, torch.Tensor, str]:
    """One random rescale (and maybe a mirror) of a square photo [res, res, 3]: (pixels, mask, caption)."""
    res = image.shape[0]
    small = rng.random() < SMALL_SHARE
    side = rng.randint(res // 3, res) if small else rng.randint(int(1.2 * res), int(1.4 * res))
    side += side % 2
    scaled = _resize(image, side)
    if rng.random() < 0.5:
        scaled = scaled.flip(1)
    if side <= res:
        pixels = torch.full((res, res, 3), 0.5)
        mask = torch.zeros(res, res)
        top, left = rng.randint(0, res - side), rng.randint(0, res - side)
        pixels[top : top + side, left : left + side] = scaled
        mask[top : top + side, left : left + side] = 1.0
        if side < FAR_BELOW * res:
            caption = f"{rng.choice(FAR_WORDS)} {caption}"
        return pixels, mask, caption
    top, left = rng.randint(0, side - res), rng.randint(0, side - res)
    return scaled[top : top + res, left : left + res], torch.ones(res, res), f"{rng.choice(CLOSE_WORDS)} {caption}"


def augmented_views(
    frames: Sequence[torch.Tensor], captions: Sequence[str], per_image: int, seed: int = 0
) -> TrainingViews:
    """Each photo as it is, plus `per_image` random views of it (0: the photos alone). Deterministic per seed."""
    if len(frames) != len(captions):
        raise InvalidInputError(f"{len(frames)} images but {len(captions)} captions.")
    if per_image < 0:
        raise InvalidInputError(f"augment_views must be >= 0, got {per_image}.")
    rng = random.Random(seed)
    pixels, masks, texts = [], [], []
    for frame, caption in zip(frames, captions, strict=True):
        if frame.ndim != 3 or frame.shape[0] != frame.shape[1]:
            raise InvalidInputError(f"views need square images [res, res, 3], got {tuple(frame.shape)}")
        pixels.append(frame.float())
        masks.append(torch.ones(frame.shape[:2]))
        texts.append(caption)
        for _ in range(per_image):
            view, mask, text = random_view(frame, caption, rng)
            pixels.append(view)
            masks.append(mask)
            texts.append(text)
    return TrainingViews(torch.stack(pixels), torch.stack(masks), texts)
