"""A tiny procedural text-to-image world for the offline lifelong-learning benchmark (issue 4).

Plain Python/NumPy/PIL: scenes of shapes with colours, textures, positions and counts on named backgrounds,
their captions, and concepts (new shapes the base world never shows) defined by JSON generator parameters.
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
