"""The paper's limitation experiment (its section 5, Fig. 10): images of a concept, scrambled, inverted and reassembled.

An image of the erased concept is cut into square patches that are shuffled (:mod:`~memories_lib.core.patches`);
the scrambled image is inverted with a model and regenerated from its seed, and the patches of the
regeneration are put back where they came from. If the model regenerates a scrambled image, a picture that
no prompt would produce, about as well as the image itself, then "the model can regenerate it" says little
about what the model knows: inversion reaches images far from anything the model would draw.

:func:`scramble_sweep` runs one model over several patch sizes; every patch size scrambles the images with
its own generator seeded by ``seed``, so every model is given exactly the same scrambled images. Inversions
go through the results store (:func:`~memories_lib.experiments.concept_memory.invert_sets`), one record per
image, so the unscrambled images (one patch) are the same records as chapter 4's inversions of them.
:func:`concept_scores` scores images as the paper does: the detector's probability of the concept and the
similarity model's score for the concept's name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from ..core.images import ImageSet
from ..core.judging import concept_head
from ..core.models import LDM
from ..core.patches import Scramble, patch_sizes, scramble, unscramble
from ..core.store import Store
from .concept_memory import SetInversion, invert_sets


@dataclass(frozen=True)
class ScrambledRun:
    """One patch size: the scrambled images, how they were scrambled, and their inversion with one model."""

    patch: int
    scrambled: ImageSet
    key: Scramble
    inversion: SetInversion

    @property
    def cells(self) -> int:
        """How many patches each image was cut into (1: the plain image)."""
        return self.key.cells

    @property
    def reassembled(self) -> torch.Tensor:
        """The regenerations with their patches put back where they came from (N, 3, H, W) in [0, 1]."""
        return unscramble(self.inversion.reconstructions.float(), self.key).clamp(0, 1)


def check_patches(ldm: LDM, patches: Sequence[int] | None) -> list[int]:
    """``patches`` (None: every size of :func:`patch_sizes` for the model), checked before any work.

    A patch side must tile the model's images and cover whole latent cells (a multiple of the VAE's
    downsampling factor); sizes come back largest first, without repeats, and always with the image side
    itself (one patch: the plain image, which every scramble is compared with).
    """
    size = ldm.image_size
    factor = size // ldm.latent_shape[1]
    allowed = patch_sizes(size, factor)
    if patches is None:
        return allowed
    chosen = []
    for p in patches:
        if isinstance(p, bool) or not isinstance(p, (int, np.integer)) or int(p) not in allowed:
            raise ValueError(f"patch size {p!r} does not tile {size}x{size} images in whole latent cells of "
                             f"{factor} pixels; choose from {allowed}")
        if int(p) not in chosen:
            chosen.append(int(p))
    if not chosen:
        raise ValueError(f"no patch size given; choose from {allowed}")
    return sorted({size, *chosen}, reverse=True)


def scramble_sweep(
    ldm: LDM,
    images: ImageSet,
    patches: Sequence[int] | None,
    store: Store,
    seed: int,
    *,
    method: str = "renoise",
    num_steps: int | None = None,
    options: Mapping[str, Any] | None = None,
    progress: bool = True,
) -> dict[int, ScrambledRun]:
    """``images`` scrambled at each patch size, inverted with ``ldm`` and regenerated: patch size -> run.

    Each image keeps its caption. Patch size ``p`` scrambles with ``torch.Generator().manual_seed(seed)``
    (the same scrambles for every model); all sizes go to the UNet together.
    """
    patches = check_patches(ldm, patches)
    sets, keys = {}, {}
    for p in patches:
        scrambled, keys[p] = scramble(images.images, p, torch.Generator().manual_seed(seed))
        sets[str(p)] = ImageSet(f"{images.name} in patches of {p}", scrambled, images.prompts,
                                info={**dict(images.info), "patch": p})
    inverted = invert_sets(ldm, sets, store, method=method, num_steps=num_steps, options=options,
                           desc=f"{images.name}: scrambled images", progress=progress)
    return {p: ScrambledRun(patch=p, scrambled=sets[str(p)], key=keys[p], inversion=inverted[str(p)])
            for p in patches}


def concept_scores(images: torch.Tensor, detector: Any, similarity: Any, concept: str, text: str) -> dict[str, np.ndarray]:
    """Per image: ``probability``, the detector's probability of ``concept`` (on the head that has it),
    ``detected``, whether it is the detector's top label there, and ``similarity``, the image-text score
    against ``text`` (the concept's name)."""
    head = concept_head(detector, concept)
    label = detector.label_names[head].index(concept)
    images = images.float().clamp(0, 1)
    proba = detector.predict_proba(images)[head].float()
    return {
        "probability": proba[:, label].numpy().astype(np.float64),
        "detected": (proba.argmax(-1) == label).numpy(),
        "similarity": similarity.similarity(images, [text])[:, 0].float().numpy().astype(np.float64),
    }


__all__ = ["ScrambledRun", "check_patches", "concept_scores", "scramble_sweep"]
