"""A tiny procedural text-to-image world for the offline lifelong-learning benchmark.

Scenes of shapes with colours, textures, positions and counts on named backgrounds and their captions, drawn
with NumPy/PIL; concepts (new shapes the base world never shows) defined by JSON generator parameters; and, in
PyTorch, the world's text encoder, VAE and UNet in ComfyUI's SD1.x layout, its sampler and its evaluators.
"""

from .concepts import ConceptSpec, concept_images, load_concepts
from .evaluators import WorldEvaluator, image_alignment, train_evaluator
from .scenes import Scene, WorldObject, caption, random_scene, render

__all__ = [
    "ConceptSpec",
    "Scene",
    "WorldEvaluator",
    "WorldObject",
    "caption",
    "concept_images",
    "image_alignment",
    "load_concepts",
    "random_scene",
    "render",
    "train_evaluator",
]
