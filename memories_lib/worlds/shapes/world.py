"""The shapes world as a :class:`~memories_lib.worlds.base.World`: the book's embedded default.

Its concepts are the shapes (playing the paper's objects: church, parachute, ...) and the
background patterns (playing its styles: Van Gogh). The base model is the world's own trained
latent diffusion model (profile ``mini``), or a tiny random-weight one (profile ``tiny``, whose
numbers are not to be interpreted). Its detector is the shapes classifier, its similarity model
the contrastive stand-in for CLIP, both trained with the world.

Image sets, as chapter 4 of the book uses them:

* the erased set of a concept: the base model's generations from seeded random captions naming
  it, kept when the classifier sees the concept (the paper's concept sets were Stable Diffusion
  generations from prompt lists, kept when a detector agreed);
* the reference set: images drawn by the renderer (not the model) with none of the excluded
  concepts, with their captions (the paper's reference set is COCO with its first caption);
* the control set: the base model's generations from random captions naming none of the excluded
  concepts, kept when the classifier sees none of them (made like the erased set, so that it
  differs from it only in the concept; the renderer's reference set differs in its source too).

Concept prompts (what an erasure method receives) are every caption of the world's grammar that
names the concept: for "triangle", "a triangle", "a red triangle", "a triangle on a striped
background", ... (28 prompts); for "stripes" every caption with a striped background (42). The
guide of a prompt (UCE's target) is the same caption with the concept replaced by its kind's
*anchor*, the plainest member of the kind: a circle for a shape, a plain background for a pattern
("a red circle on a striped background", "a red triangle on a plain background"; the anchor of
circle is square, of plain dots), so the erased concept gives way to a neutral one and everything
else the prompt asks for stays. This plays the role of the official UCE guides for Stable
Diffusion ("art" for a style): a concept left out of the caption is no guide in this world,
because the model then draws any member of the kind, the erased concept among them, at the rate
it draws it unasked. The profile's ``world.guides: left-out`` keeps that rule ("a red shape on a
striped background", "a red triangle") as a named setting. The prompts kept are those of the other concepts of
the same kind. The official UCE and ESD scripts expand a concept into several prompts in the
same spirit (templates such as "image of {concept}"); here the grammar is small enough to take
all of it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from ...core.concepts import ConceptPrompts
from ...core.images import ImageSet, seeded_choice
from ...core.judging import judged_generations
from ...core.models import build_tiny_ldm
from ...core.profile import thaw
from ...core.store import Store, default_store, keyed_folder, locked
from ..base import World, WorldError
from .classifier import HEADS, ShapesClassifier, attribute_of
from .config import resolve_config
from .contrastive import ShapesCLIP
from .data import BACKGROUND_WORDS, BACKGROUNDS, COLOURS, SHAPES, caption, make_dataset, prompt, sample_specs
from .training import STAGES, ensure_trained, load_classifier, load_contrastive, missing_stages

#: A stable number per concept, for the seeds of its data (the order of the classifier's labels).
CONCEPT_IDS: tuple[str, ...] = SHAPES + BACKGROUNDS


def erased_set_seed(concept: str, seed: int, attempt: int = 0) -> int:
    """The generator seed of the z_T of ``concept``'s erased set, round ``attempt``: one stream per concept.

    The streams of two concepts, and the control set's (``seed + 7919 + attempt``), never share a
    seed for the same ``seed``, so no two sets start an image from the same z_T.
    """
    return int(seed) + 10_000 * (1 + CONCEPT_IDS.index(concept)) + int(attempt)


#: The heads of the classifier whose labels are concepts (colour is an attribute, not a concept).
CONCEPT_HEADS: tuple[str, ...] = ("shape", "background")

#: The anchor of each kind (the guide's concept), and the one used when the anchor itself is erased.
ANCHORS: dict[str, tuple[str, str]] = {"shape": ("circle", "square"), "background": ("plain", "dots")}

#: How a concept prompt's guide is made: the concept replaced by its kind's anchor, or left out.
GUIDE_RULES: tuple[str, ...] = ("anchor", "left-out")

BASE_MODELS = ("trained", "random")


@dataclass(frozen=True)
class ShapesSpec:
    """The ``world:`` section of a shapes-world profile.

    training:   the training config of the world's models (a preset name under ``preset`` plus
                overrides; ``memories_lib.worlds.shapes.config``);
    base_model: ``trained`` (the world's own LDM) or ``random`` (a tiny random-weight LDM of the
                same classes, built from ``model_seed``; its numbers are not to be interpreted);
    model_seed: the seed of the random base model;
    guides:     how the guide of a concept prompt is made: ``anchor`` (the concept replaced by its
                kind's anchor, the default) or ``left-out`` (see the module docstring).
    """

    training: Mapping[str, Any] = field(default_factory=lambda: {"preset": "full"})
    base_model: str = "trained"
    model_seed: int = 0
    guides: str = "anchor"

    def __post_init__(self) -> None:
        if self.base_model not in BASE_MODELS:
            raise ValueError(f"base_model must be one of {BASE_MODELS}, got {self.base_model!r}")
        if self.guides not in GUIDE_RULES:
            raise ValueError(f"guides must be one of {GUIDE_RULES}, got {self.guides!r}")
        resolve_config(thaw(self.training))  # an unknown preset or key fails when the profile is opened


def _slots(head: str, label: str | None) -> list[dict[str, str | None]]:
    """Every caption's slots whose ``head`` slot is ``label`` (None: left out), the other slots free."""
    options: dict[str, list[str | None]] = {
        "shape": [None, *SHAPES], "colour": [None, *COLOURS], "background": [None, *BACKGROUNDS],
    }
    options[head] = [label]
    return [{"shape": shape, "colour": colour, "background": background}
            for shape in options["shape"] for background in options["background"] for colour in options["colour"]]


def _captions(head: str, label: str | None) -> list[str]:
    """Every caption whose ``head`` slot is ``label`` (None: left out), the other slots free."""
    return [prompt(**slots) for slots in _slots(head, label)]


def anchor_of(concept: str) -> str:
    """The anchor that replaces ``concept`` in its guides: circle (square for circle), plain (dots for plain)."""
    first, second = ANCHORS[attribute_of(concept)]
    return second if concept == first else first


class ShapesWorld(World):
    """The embedded shapes world (see the module docstring)."""

    kind = "shapes"
    Spec = ShapesSpec
    ERASED_SET_TEXT = (
        "the erased set of a concept is generated by the unerased base model from random captions naming "
        "the concept, and an image is kept when the shapes classifier sees the concept in it."
    )
    REFERENCE_SET_TEXT = (
        "The reference set is drawn by the shapes world's renderer, not by the model: shapes and "
        "backgrounds other than the erased concepts, with their captions."
    )

    CONTROL_SET_TEXT = (
        "The control set is generated by the unerased base model, like the erased set, from random captions "
        "naming none of the erased concepts, and an image is kept when the shapes classifier sees none of them."
    )

    def __init__(self, profile):
        super().__init__(profile)
        self.training_config: dict[str, Any] = resolve_config(thaw(self.spec.training))
        self._judges: dict[str, Any] = {}

    @property
    def image_size(self) -> int:
        return int(self.training_config["image_size"])

    # ------------------------------------------------------------------ concepts

    def known_concepts(self) -> tuple[str, ...]:
        return tuple(label for head in CONCEPT_HEADS for label in HEADS[head])

    def concept_kind(self, concept: str) -> str:
        self.check_concepts([concept])
        return attribute_of(concept)

    def concept_text(self, concept: str) -> str:
        """The words naming ``concept`` in the world's grammar: "triangle", "striped background"."""
        if self.concept_kind(concept) == "background":
            return f"{BACKGROUND_WORDS[concept]} background"
        return concept

    def concept_prompts(self, concept: str) -> ConceptPrompts:
        head = self.concept_kind(concept)
        preserve = [p for other in self.rivals(concept) for p in _captions(head, other)]
        replacement = anchor_of(concept) if self.spec.guides == "anchor" else None
        guides = [prompt(**{**slots, head: replacement}) for slots in _slots(head, concept)]
        return ConceptPrompts(concept, tuple(_captions(head, concept)), tuple(guides), tuple(preserve))

    def naming_prompts(self, concept: str, n: int) -> list[str]:
        """``n`` full captions naming ``concept``, cycling through the attributes they leave free."""
        if self.concept_kind(concept) == "shape":
            return [prompt(concept, COLOURS[i % len(COLOURS)], BACKGROUNDS[(i // len(COLOURS)) % len(BACKGROUNDS)])
                    for i in range(n)]
        return [prompt(SHAPES[i % len(SHAPES)], COLOURS[(i // len(SHAPES)) % len(COLOURS)], concept)
                for i in range(n)]

    def caption_sample(self, concept: str, n: int, seed: int) -> list[str]:
        """``n`` captions of random drawings showing ``concept``, drawn with ``seed``."""
        if self.concept_kind(concept) == "shape":
            specs = sample_specs(n, seed, shapes=[concept])
        else:
            specs = sample_specs(n, seed, backgrounds=[concept])
        return [caption(s) for s in specs]

    def control_captions(self, n: int, seed: int, exclude: Sequence[str] = ()) -> list[str]:
        """``n`` captions of random drawings with none of the ``exclude`` shapes or backgrounds, drawn with ``seed``."""
        shapes, backgrounds = self._allowed(exclude)
        return [caption(s) for s in sample_specs(n, seed + 31, shapes=shapes, backgrounds=backgrounds)]

    def _allowed(self, exclude: Sequence[str]) -> tuple[list[str], list[str]]:
        self.check_concepts(exclude)
        shapes = [s for s in SHAPES if s not in exclude] or list(SHAPES)
        backgrounds = [b for b in BACKGROUNDS if b not in exclude] or list(BACKGROUNDS)
        return shapes, backgrounds

    # ------------------------------------------------------------------ models and judges

    def base_model_path(self, progress: bool = True) -> str | Path:
        if self.spec.base_model == "random":
            parts = {"kind": "random-ldm", "image_size": self.image_size, "seed": int(self.spec.model_seed)}
            path = keyed_folder("models", f"random-ldm-{self.image_size}", parts)
            if not (path / "model_index.json").is_file():
                with locked(path.parent):
                    if not (path / "model_index.json").is_file():
                        build_tiny_ldm(path, seed=int(self.spec.model_seed), image_size=self.image_size)
            return path
        return ensure_trained(self.training_config, progress=progress)

    def training_seed(self) -> int:
        return int(self.training_config["seed"])

    def is_prepared(self) -> bool:
        # A random base model is built in seconds from its seed: then only the trained judges count.
        stages = STAGES if self.spec.base_model == "trained" else ("classifier", "contrastive")
        return not missing_stages(self.training_config, stages)

    def detector(self) -> ShapesClassifier:
        if "detector" not in self._judges:
            self._judges["detector"] = load_classifier(self.training_config)
        return self._judges["detector"]

    def similarity(self) -> ShapesCLIP:
        if "similarity" not in self._judges:
            self._judges["similarity"] = load_contrastive(self.training_config)
        return self._judges["similarity"]

    # ------------------------------------------------------------------ image sets

    def erased_set(self, concept: str, n: int, seed: int, *, num_steps: int | None = None,
                   filtered: bool = True, store: Store | None = None, progress: bool = True,
                   attempts: int = 4) -> ImageSet:
        """Generations of the base model that the classifier judges to show ``concept``.

        Up to ``attempts`` rounds of 2n generations from seeded captions and seeds z_T of the
        concept's own stream (:func:`erased_set_seed`); a set that stays short
        is returned as it is (``info`` says how many were tried and kept). Without ``filtered``
        every generation is kept (for an untrained classifier).
        """
        head = self.concept_kind(concept)
        if n < 1:
            raise ValueError(f"an erased set needs n >= 1 images, got {n}")
        store = store or default_store()
        num_steps = int(num_steps or self.profile.num_inference_steps)
        kept_images: list[torch.Tensor] = []
        kept_prompts: list[str] = []
        tried = 0
        for attempt in range(attempts):
            m = 2 * n
            prompts = self.caption_sample(concept, m, seed + 1000 * attempt + 10 * CONCEPT_IDS.index(concept))
            judged = judged_generations(self.base_model(progress), self.detector(), prompts,
                                        seed=erased_set_seed(concept, seed, attempt),
                                        num_steps=num_steps, guidance_scale=self.profile.guidance_scale,
                                        store=store, progress=progress)
            ok = np.flatnonzero(judged.labels[head] == concept) if filtered else np.arange(m)
            kept_images += [judged.images[i] for i in ok]
            kept_prompts += [prompts[i] for i in ok]
            tried += m
            if len(kept_images) >= n:
                break
        if len(kept_images) < 2:
            raise WorldError(f"only {len(kept_images)} of {tried} generations of {concept!r} show it: too few for a set")
        k = min(n, len(kept_images))
        info = {"acceptance": len(kept_images) / tried, "tried": tried, "kept": len(kept_images)}
        return ImageSet(f"E[{concept}]", torch.stack(kept_images[:k]), kept_prompts[:k], info=info)

    def attribute_phrase(self, attributes: Mapping[str, str]) -> str:
        """The caption grammar's words for labels of the classifier's heads: {"colour": "red"} -> "a red shape",
        {"shape": "star", "background": "dots"} -> "a star on a dotted background"."""
        unknown = sorted(set(attributes) - set(HEADS))
        if unknown or not attributes:
            raise ValueError(f"attributes must name some of the heads {list(HEADS)}, got {dict(attributes)}")
        return prompt(**attributes)

    def drawn_set(self, n: int, seed: int, allowed: Mapping[str, Sequence[str]] | None = None) -> ImageSet:
        """``n`` images drawn by the renderer, each head's label uniform over ``allowed[head]`` (default: all)."""
        allowed = dict(allowed or {})
        unknown = sorted(set(allowed) - set(HEADS))
        if unknown:
            raise ValueError(f"unknown head(s) {unknown}; the shapes world's heads are {list(HEADS)}")
        if n < 0:
            raise ValueError(f"a drawn set needs n >= 0 images, got {n}")
        images, specs = make_dataset(n, self.image_size, seed=seed, shapes=allowed.get("shape"),
                                     colours=allowed.get("colour"), backgrounds=allowed.get("background"))
        labels = {head: [getattr(s, head) for s in specs] for head in HEADS}
        return ImageSet("drawn", images, [caption(s) for s in specs], info={"labels": labels})

    def reference_set(self, n: int, seed: int, exclude: Sequence[str] = ()) -> ImageSet:
        """``n`` rendered drawings with none of the ``exclude`` shapes or backgrounds, chosen with ``seed``."""
        shapes, backgrounds = self._allowed(exclude)
        images, specs = make_dataset(4 * n, self.image_size, seed=seed + 7, shapes=shapes, backgrounds=backgrounds)
        pick = seeded_choice(len(specs), n, torch.Generator().manual_seed(seed))
        info = {"shapes": shapes, "backgrounds": backgrounds}
        return ImageSet("R", images[pick], [caption(specs[i]) for i in pick], info=info)
