"""The embedded shapes world: a procedural data set and the models this project trains on it.

``data``      deterministic images of coloured shapes on patterned backgrounds, with captions;
``training``  training of the world's latent diffusion model, classifier and contrastive model,
              each model cached by the sections of the training config it depends on (``ensure_trained``).
"""

from .data import (
    BACKGROUND_WORDS,
    BACKGROUNDS,
    COLOURS,
    SHAPES,
    ShapeSpec,
    caption,
    labels,
    make_dataset,
    prompt,
    render,
    sample_specs,
    vocabulary,
)

__all__ = [
    "BACKGROUND_WORDS",
    "BACKGROUNDS",
    "COLOURS",
    "SHAPES",
    "ShapeSpec",
    "caption",
    "labels",
    "make_dataset",
    "prompt",
    "render",
    "sample_specs",
    "vocabulary",
]
