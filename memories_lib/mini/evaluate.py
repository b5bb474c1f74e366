"""Judging the shapes world's generations with its classifier, and the VAE's reconstructions.

``judge_generations`` samples images from prompts that name shape, colour and background
(or a subset) and asks the classifier what it sees; the result's ``accuracy`` is the share
of generations in which the classifier finds what the prompt named, per attribute.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
import torch

from ..models import LDM, decode_latents, encode_images, hash_modules
from ..store import Store, default_store
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

    images: (n, 3, H, W) in [0, 1]; seeds: (n, C, h, w); table: one row per image with
    the prompt, the named attributes (None when not named), the predicted labels and
    their probabilities.
    """

    images: torch.Tensor
    seeds: torch.Tensor
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
    batch_size: int = 64,
    store: Store | None = None,
    progress: bool = True,
) -> GenerationJudgement:
    """Generate ``n_per_prompt`` images per (prompt, attributes) and classify them.

    Seeds z_T come from ``torch.Generator().manual_seed(seed)``. The images and the
    classifier's probabilities are cached in ``store`` (default: the project's results
    store), keyed by both models' weights and everything else that determines them.
    """
    from ..inversion.api import generate

    if n_per_prompt < 1:
        raise ValueError(f"n_per_prompt must be at least 1, got {n_per_prompt}")
    if not prompts:
        raise ValueError("judge_generations needs at least one prompt")
    texts = [p for p, _ in prompts for _ in range(n_per_prompt)]
    attrs = [a for _, a in prompts for _ in range(n_per_prompt)]
    parts = {
        "kind": "mini/judge_generations",
        "model": ldm.weights_hash(),
        "classifier": hash_modules(classifier),
        "prompts": texts,
        "seed": int(seed),
        "num_steps": int(num_steps),
        "guidance_scale": float(guidance_scale),
    }

    def compute() -> tuple[dict[str, torch.Tensor], dict]:
        generator = torch.Generator().manual_seed(int(seed))
        seeds, images = generate(ldm, texts, generator, num_steps, guidance_scale, batch_size=batch_size,
                                 progress=progress)
        proba = classifier.predict_proba(images)
        return {"seeds": seeds, "images": images, **{f"p_{h}": p for h, p in proba.items()}}, {}

    entry = (store or default_store()).get_or_compute(parts, compute)
    table = pd.DataFrame({"prompt": texts})
    for i, head in enumerate(HEADS):
        p = entry.tensors[f"p_{head}"]
        table[head] = [a[i] for a in attrs]
        table[f"pred_{head}"] = np.asarray(HEADS[head])[p.argmax(-1).numpy()]
        table[f"p_{head}"] = p.max(-1).values.numpy()
    return GenerationJudgement(images=entry.tensors["images"], seeds=entry.tensors["seeds"], table=table)


@torch.no_grad()
def vae_reconstruct(ldm: LDM, images01: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Encode (posterior mean) and decode images: what the VAE alone keeps of them."""
    out = [decode_latents(ldm, encode_images(ldm, images01[s : s + batch_size]))
           for s in range(0, images01.shape[0], batch_size)]
    return torch.cat(out)
