"""The result type shared by every inversion method (DDIM, ReNoise, null-text, EDICT), and divergence.

A seed z_T "diverged" when it is not finite, or when its mean square entry exceeds
:data:`DIVERGED_MEAN_SQUARE` (= 4: entries twice as spread as N(0, I)'s). For z ~ N(0, I_d)
the mean square is chi-square(d) / d, 1 +- sqrt(2 / d); 4 is 3 d / sqrt(2 d) = 3 sqrt(d / 2)
NLL standard deviations above the N(0, I) mean (34 at d = 256, 272 at d = 16384: never
reached by a Gaussian draw), while inverted seeds of ordinary and of unusual images stay
near 1 (their NLL differs from the N(0, I) band by a few standard deviations, which is the
paper's signal). The threshold only catches an inversion that blew up, such as ReNoise's
noise regularisation on small latents. Measured on the mini shapes world (d = 256, 96 images:
64 reference and 32 erased-set images, base model): the finite seeds of "renoise",
"renoise-plain" and "renoise" with ``noise_regularization_scale_with_latent`` had mean squares
between 0.68 and 1.19, and every seed that diverged ("renoise": 18 of 96) was non-finite.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

#: A seed whose mean square entry exceeds this (or that is not finite) has diverged.
DIVERGED_MEAN_SQUARE = 4.0


def diverged_seeds(seeds: torch.Tensor, threshold: float = DIVERGED_MEAN_SQUARE) -> torch.Tensor:
    """(B,) bool: whether each seed (B, ...) is non-finite or has mean square entry above ``threshold``."""
    z = seeds.detach().to("cpu", torch.float64).reshape(seeds.shape[0], -1)
    finite = torch.isfinite(z).all(dim=1)
    mean_square = (torch.where(torch.isfinite(z), z, torch.zeros_like(z)) ** 2).mean(dim=1)
    return ~finite | (mean_square > threshold)


@dataclass
class InversionResult:
    """What an inversion of a batch of B images returns.

    seeds:          z_T, the inverted seeds, (B, C, h, w), float32 on the CPU.
    latents:        z_0, the VAE latents the inversion started from (the posterior mean, or
                    the posterior sample the method drew), (B, C, h, w).
    reconstruction: the images regenerated from the seeds, in [0, 1], (B, 3, H, W),
                    float32 on the CPU (None when regeneration was not asked for; an image
                    whose seed diverged may be NaN).
    trajectory:     z_0 .. z_T, (T + 1, B, C, h, w), only when asked for.
    method:         the method's name ("ddim", "renoise", "renoise-plain", "nti", "nti-memories", "edict").
    info:           method-specific extras (e.g. optimised null-text embeddings).
    reconstruction_latents: the regenerated latents z_0' before decoding, (B, C, h, w),
                    float32 on the CPU (None when regeneration was not asked for);
                    z_0 vs z_0' is the inversion's own error, without the VAE's.
    diverged:       (B,) bool, seeds that are non-finite or exploded (:func:`diverged_seeds`).
    config:         the method's resolved configuration (``inversion.resolve``).
    """

    seeds: torch.Tensor
    latents: torch.Tensor
    reconstruction: torch.Tensor | None = None
    trajectory: torch.Tensor | None = None
    method: str = "ddim"
    info: dict[str, Any] = field(default_factory=dict)
    reconstruction_latents: torch.Tensor | None = None
    diverged: torch.Tensor | None = None
    config: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.diverged is None:
            self.diverged = diverged_seeds(self.seeds)

    def __len__(self) -> int:
        return self.seeds.shape[0]
