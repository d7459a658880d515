"""Class-prior images for prior preservation: the frozen base model's own `photo of a {class}`, made once.

Custom Diffusion mixes such images into every batch so that fine-tuned K/V weights keep drawing the class as the
base model does. Here they pass through the new expert with the concept's own (detached) mixture: the expert
is taught to leave the class word's rows alone, so what it adds comes from the trigger token's rows, and the
gate is not pulled by them. Generating them is the expensive part, so latents are cached on disk per base model,
class word, resolution and sampler; image i always comes from seed i, so a later request for more images only
makes the missing ones, and a cancelled generation keeps the chunks it finished.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from ..bank.atomic_write import atomic_write_bytes
from ..errors import InvalidInputError
from ..log import LOGGER

PRIOR_PROMPT = "photo of a {class}"
CHUNK = 4


def prior_prompt(class_word: str) -> str:
    return PRIOR_PROMPT.replace("{class}", class_word.strip() or "object")


@dataclass(frozen=True)
class PriorKey:
    """What a cached class-prior latent depends on."""

    model_digest: str
    class_word: str
    resolution: int
    sampler: str

    def file_name(self) -> str:
        digest = hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]
        slug = re.sub(r"[^a-z0-9]+", "_", self.class_word.lower()).strip("_")[:32] or "class"
        return f"{slug}_{self.resolution}px_{digest}.safetensors"


@dataclass(frozen=True)
class PriorData:
    """Class-prior latents [P, C, h, w], their caption, and the weight of their loss."""

    latents: torch.Tensor
    caption: str
    weight: float = 1.0

    def __post_init__(self) -> None:
        if self.latents.ndim != 4 or self.latents.shape[0] == 0:
            shape = tuple(self.latents.shape)
            raise InvalidInputError(f"class-prior latents must be [P, C, h, w] with P >= 1, got {shape}")
        if not (math.isfinite(self.weight) and self.weight >= 0):
            raise InvalidInputError(f"prior_weight must be a number >= 0, got {self.weight}.")


class PriorCache:
    """Class-prior latents in one safetensors file per `PriorKey` under `folder`."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    def path(self, key: PriorKey) -> Path:
        return self.folder / key.file_name()

    def load(self, key: PriorKey) -> torch.Tensor | None:
        """The cached latents, or None when there are none (an unreadable file is ignored and replaced)."""
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            return load_file(str(path))["latents"]
        except (SafetensorError, KeyError, OSError) as err:
            LOGGER.warning("R2MoE: ignoring an unreadable class-prior cache %s (%s); it will be rebuilt", path, err)
            return None

    def get(
        self,
        key: PriorKey,
        count: int,
        generate: Callable[[int, int], torch.Tensor],
        on_progress: Callable[[int, int], None] | None = None,
    ) -> torch.Tensor:
        """The first `count` latents; `generate(first, n)` makes images first..first+n-1 (image i from seed i).

        Missing images are made in chunks of 4 and the file is rewritten atomically after each chunk."""
        if count < 1:
            raise InvalidInputError(f"the number of class-prior images must be >= 1, got {count}.")
        have = self.load(key)
        if have is not None and have.shape[0] >= count:
            LOGGER.info("R2MoE: %d class-prior images of '%s' from the cache", count, key.class_word)
            if on_progress is not None:
                on_progress(count, count)
            return have[:count].clone()
        latents = have
        made = 0 if have is None else have.shape[0]
        if made:
            LOGGER.info("R2MoE: %d class-prior images of '%s' cached, making %d more", made, key.class_word,
                        count - made)
        while made < count:
            n = min(CHUNK, count - made)
            chunk = generate(made, n).detach().float().cpu()
            if chunk.shape[0] != n or (latents is not None and chunk.shape[1:] != latents.shape[1:]):
                raise InvalidInputError(f"class-prior generation returned {tuple(chunk.shape)} for {n} images")
            latents = chunk if latents is None else torch.cat([latents, chunk])
            made += n
            metadata = {k: str(v) for k, v in asdict(key).items()}
            atomic_write_bytes(self.path(key), save({"latents": latents.contiguous()}, metadata), keep_versions=0)
            if on_progress is not None:
                on_progress(made, count)
        return latents[:count].clone()
