"""The training loss as a picture: shown as the node's live preview and returned as its loss-curve image."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def loss_curve(losses: list[float], width: int = 512, height: int = 256) -> np.ndarray:
    """RGB float image [H, W, 3] of the training loss (raw, and a moving average) on a log-free linear axis."""
    image = Image.new("RGB", (width, height), (24, 24, 28))
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    if losses:
        values = np.asarray(losses, dtype=np.float64)
        window = max(1, len(values) // 20)
        smooth = np.convolve(values, np.ones(window) / window, mode="valid")
        low, high = float(values.min()), float(values.max())
        span = high - low or 1.0
        left, top, right, bottom = 40, 20, width - 10, height - 25

        def points(series: np.ndarray, offset: int) -> list[tuple[float, float]]:
            n = max(len(values) - 1, 1)
            return [
                (left + (i + offset) / n * (right - left), bottom - (v - low) / span * (bottom - top))
                for i, v in enumerate(series)
            ]

        draw.line(points(values, 0), fill=(90, 90, 110), width=1)
        draw.line(points(smooth, window - 1), fill=(90, 200, 120), width=2)
        draw.text((4, top - 14), f"{high:.4f}", fill=(200, 200, 200), font=font)
        draw.text((4, bottom - 6), f"{low:.4f}", fill=(200, 200, 200), font=font)
        draw.text((left, bottom + 6), f"loss over {len(values)} steps (green: moving average)", fill=(200, 200, 200),
                  font=font)
    return np.asarray(image, dtype=np.float32) / 255.0
