"""The concept drawn while it trains, on the host: decoded with the checkpoint's VAE, shown as the node's live
preview beside the loss curve, the last one kept for the node's IMAGE output, and its cost counted."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from ...r2moe_core.train.loss_plot import loss_curve

if TYPE_CHECKING:  # ComfyUI's own classes, for the annotations only
    from comfy.model_patcher import ModelPatcher
    from comfy.sd import VAE

PREVIEW_PIXELS = 768  # longest side of the live preview the browser receives
BUDGET = 0.10  # previews may take at most this share of the run's time so far; the final one is always drawn


class TrainingPreviews:
    """A `PreviewHook` for the core loop; `losses` is the loop's own list (read when a preview is shown)."""

    def __init__(self, model: ModelPatcher, vae: VAE, bar: Any, steps: int) -> None:
        self.model, self.vae, self.bar, self.steps = model, vae, bar, steps
        self.losses: list[float] = []
        self.last: torch.Tensor | None = None  # [1, H, W, 3] in [0, 1]
        self.count = 0
        self.skipped = 0  # previews left out to keep within BUDGET
        self.seconds = 0.0
        self.began = time.monotonic()

    def __call__(self, step: int, draw: Callable[[], torch.Tensor]) -> None:
        started = time.monotonic()
        if step < self.steps and self.seconds >= BUDGET * (started - self.began):
            self.skipped += 1
            return
        latent = draw()
        with torch.no_grad():
            image = self.vae.decode(self.model.model.process_latent_out(latent))
        image = image.reshape(-1, *image.shape[-3:])[:1].float().cpu().clamp(0, 1)
        self.last = image
        self.count += 1
        self.seconds += time.monotonic() - started
        self.bar.update_absolute(step, self.steps, ("JPEG", side_by_side(self.losses, image[0]), PREVIEW_PIXELS))

    def output(self) -> torch.Tensor:
        """The last preview as an IMAGE batch (a black 64 px square if none was drawn)."""
        return self.last if self.last is not None else torch.zeros(1, 64, 64, 3)


def side_by_side(losses: list[float], image: torch.Tensor) -> Image.Image:
    """The loss curve and the preview image in one picture, the image scaled to the curve's height."""
    curve = (loss_curve(losses) * 255).astype("uint8")
    picture = Image.fromarray((image.numpy() * 255).round().astype("uint8"))
    height = curve.shape[0]
    picture = picture.resize((max(1, round(picture.width * height / picture.height)), height),
                             Image.Resampling.NEAREST if picture.height < height else Image.Resampling.BILINEAR)
    joined = np.concatenate([curve, np.asarray(picture)], axis=1)
    return Image.fromarray(joined)
