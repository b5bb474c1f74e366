"""Judging the shapes world's generations with its classifier, and the VAE's reconstructions.

``judge_generations`` samples images from prompts that name shape, colour and background
(or a subset) and asks the classifier what it sees; the result's ``accuracy`` is the share
of generations in which the classifier finds what the prompt named, per attribute.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Iterable, Sequence

import pandas as pd
import torch

from ...core.judging import judged_generations
from ...core.models import LDM, decode_latents, encode_images
from ...core.store import Store
from .classifier import HEADS, ShapesClassifier
from .data import BACKGROUNDS, COLOURS, SHAPES, prompt

Attributes = tuple[str | None, str | None, str | None]  # (shape, colour, background); None = not named


def prompt_grid(
    shapes: Iterable[str | None] | None = None,
    colours: Iterable[str | None] | None = None,
    backgrounds: Iterable[str | None] | None = None,
) -> list[tuple[str, Attributes]]:
    """Every combination of the given shapes, colours and backgrounds as (prompt, attributes).

    ``None`` for a whole argument means all of that attribute's values; a ``None`` inside
    a list leaves the attribute out of the prompt (``colours=[None]``: colour-free prompts).
    """
    shapes = SHAPES if shapes is None else tuple(shapes)
    colours = COLOURS if colours is None else tuple(colours)
    backgrounds = BACKGROUNDS if backgrounds is None else tuple(backgrounds)
    return [(prompt(s, c, b), (s, c, b)) for s, c, b in itertools.product(shapes, colours, backgrounds)]


@dataclass
class GenerationJudgement:
    """Generations from prompts and what the classifier saw in them.

    images: (n, 3, H, W) in [0, 1]; table: one row per image with the prompt, the named
    attributes (None when not named), the predicted labels and their probabilities.
    """

    images: torch.Tensor
    table: pd.DataFrame

    def correct(self, head: str) -> pd.Series:
        """Per image: whether the classifier's ``head`` label is the one the prompt named (NaN if not named)."""
        named = self.table[head]
        hit = (self.table[f"pred_{head}"] == named).astype(float)
        return hit.where(named.notna())

    def accuracy(self) -> dict[str, float]:
        """Share of generations showing the named shape, colour and background (and all named at once)."""
        out = {head: float(self.correct(head).mean()) for head in HEADS}
        hits = pd.concat([self.correct(h) for h in HEADS], axis=1)
        out["all"] = float(hits.fillna(1.0).all(axis=1).mean())
        return out

    def accuracy_by(self, attribute: str) -> pd.DataFrame:
        """Accuracy of each head, grouped by a named attribute's value (e.g. by "shape")."""
        frame = pd.DataFrame({h: self.correct(h) for h in HEADS})
        return frame.groupby(self.table[attribute].rename(f"by {attribute}")).mean()


def judge_generations(
    ldm: LDM,
    classifier: ShapesClassifier,
    prompts: Sequence[tuple[str, Attributes]],
    n_per_prompt: int,
    seed: int,
    num_steps: int = 50,
    guidance_scale: float = 4.0,
    batch_size: int | None = None,
    store: Store | None = None,
    progress: bool = True,
) -> GenerationJudgement:
    """Generate ``n_per_prompt`` images per (prompt, attributes) and compare the classifier's verdicts with them.

    The generating, classifying and caching are :func:`memories_lib.core.judging.judged_generations`
    (seeds from ``torch.Generator().manual_seed(seed)``, the images in ``store``); this adds
    which attributes each prompt named, so that accuracy can be counted per attribute.
    """

    if n_per_prompt < 1:
        raise ValueError(f"n_per_prompt must be at least 1, got {n_per_prompt}")
    if not prompts:
        raise ValueError("judge_generations needs at least one prompt")
    texts = [p for p, _ in prompts for _ in range(n_per_prompt)]
    attrs = [a for _, a in prompts for _ in range(n_per_prompt)]
    judged = judged_generations(ldm, classifier, texts, seed=seed, num_steps=num_steps,
                                guidance_scale=guidance_scale, batch_size=batch_size, store=store,
                                progress=progress)
    table = pd.DataFrame({"prompt": texts})
    for i, head in enumerate(HEADS):
        table[head] = [a[i] for a in attrs]
        table[f"pred_{head}"] = judged.labels[head]
        table[f"p_{head}"] = judged.proba[head].max(-1).values.numpy()
    return GenerationJudgement(images=judged.images, table=table)


@torch.no_grad()
def vae_reconstruct(ldm: LDM, images01: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Encode (posterior mean) and decode images: what the VAE alone keeps of them."""
    out = [decode_latents(ldm, encode_images(ldm, images01[s : s + batch_size]))
           for s in range(0, images01.shape[0], batch_size)]
    return torch.cat(out)
