"""One concept to learn, as the training node's widgets describe it, checked before anything expensive runs."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from ..errors import InvalidInputError
from .trainer import TrainSettings

DEFAULT_CAPTION_TEMPLATE = "photo of a {token} {class}"
MAX_VIEWS = 16
MAX_PRIOR_IMAGES = 1000
_RENAMED = {"concept_name": "name", "trigger_token": "token"}  # widget name -> field name
# Settings the bank owns (`BankConfig`: how it was made, reused by every later concept); a run may override them,
# and a widget value of BANK_VALUE (the default) leaves them to the bank.
BANK_OWNED = ("prune_threshold", "distill_lambda")
BANK_VALUE = -1.0


@dataclass(frozen=True)
class ConceptRequest:
    """Who the concept is, where its photos are, and how to train and prune it.

    `settings` holds what the core training loop reads; the other fields are for the host (photo loading and
    augmentation, class-prior images, pruning, memory, progress).
    """

    name: str
    token: str
    class_word: str
    settings: TrainSettings = field(default_factory=TrainSettings)
    folder: str = ""
    caption_template: str = DEFAULT_CAPTION_TEMPLATE
    resolution: int = 0  # 0: the model family's own (SD1.x 512, SD 2.x 768, SDXL 1024), see `at_resolution`
    prune_threshold: float | None = None  # None: the bank's (`BankConfig`, set when the bank was made)
    replace_existing: bool = False
    gradient_checkpointing: bool = True
    preview_every: int = 50
    augment_views: int = 3
    prior_images: int = 0
    prior_weight: float = 1.0
    checkpoint_every: int = 100  # steps between resume checkpoints (0: none)

    def __post_init__(self) -> None:
        for name in ("name", "token", "class_word", "folder"):
            object.__setattr__(self, name, str(getattr(self, name)).strip())
        object.__setattr__(self, "caption_template", self.caption_template or DEFAULT_CAPTION_TEMPLATE)
        if self.resolution < 0 or self.resolution % 8:
            raise InvalidInputError(
                f"resolution must be 0 (the model's own) or a multiple of 8 (the latent grid), got {self.resolution}."
            )
        if self.prune_threshold is not None and not (
            math.isfinite(self.prune_threshold) and 0.0 <= self.prune_threshold <= 1.0
        ):
            raise InvalidInputError(
                f"prune_threshold must lie in [0, 1] (or be -1, the bank's), got {self.prune_threshold}."
            )
        if self.preview_every < 0:
            raise InvalidInputError(f"preview_every must be >= 0, got {self.preview_every}.")
        if not 0 <= self.augment_views <= MAX_VIEWS:
            raise InvalidInputError(f"augment_views must lie in [0, {MAX_VIEWS}], got {self.augment_views}.")
        if not 0 <= self.prior_images <= MAX_PRIOR_IMAGES:
            raise InvalidInputError(f"prior_images must lie in [0, {MAX_PRIOR_IMAGES}], got {self.prior_images}.")
        if self.checkpoint_every < 0:
            raise InvalidInputError(f"checkpoint_every must be >= 0 (0: no checkpoints), got {self.checkpoint_every}.")
        if not (math.isfinite(self.prior_weight) and self.prior_weight >= 0):
            raise InvalidInputError(f"prior_weight must be a finite number >= 0, got {self.prior_weight}.")

    def at_resolution(self, native: int) -> ConceptRequest:
        """The request with resolution 0 resolved to the model family's own training resolution."""
        return self if self.resolution else replace(self, resolution=native)

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> ConceptRequest:
        """Build from widget values keyed by input name (`concept_name`, `steps`, `lr_token`, ...); None means
        the default. Unknown names are refused, so a renamed widget cannot be silently ignored."""
        given = {_RENAMED.get(k, k): v for k, v in options.items() if v is not None}
        for name in BANK_OWNED:  # the widgets' BANK_VALUE: leave the setting to the bank
            if isinstance(given.get(name), (int, float)) and given[name] == BANK_VALUE:
                del given[name]
        setting_names = {f.name for f in fields(TrainSettings)}
        own_names = {f.name for f in fields(cls)} - {"settings"}
        unknown = sorted(set(given) - setting_names - own_names)
        if unknown:
            raise InvalidInputError(f"Unknown training option(s): {', '.join(unknown)}.")
        settings = TrainSettings(**{k: v for k, v in given.items() if k in setting_names})
        return cls(settings=settings, **{k: v for k, v in given.items() if k in own_names})
