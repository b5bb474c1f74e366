"""The result type shared by every inversion method (DDIM, ReNoise, null-text, EDICT)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class InversionResult:
    """What an inversion of a batch of B images returns.

    seeds:          z_T, the inverted seeds, (B, C, h, w), float32 on the CPU.
    latents:        z_0, the VAE latents the inversion started from, (B, C, h, w).
    reconstruction: the images regenerated from the seeds, in [0, 1], (B, 3, H, W),
                    float32 on the CPU (None when regeneration was not asked for).
    trajectory:     z_0 .. z_T, (T + 1, B, C, h, w), only when asked for.
    method:         the method's name ("ddim", "renoise", "nti", "edict").
    info:           method-specific extras (e.g. optimised null-text embeddings).
    reconstruction_latents: the regenerated latents z_0' before decoding, (B, C, h, w),
                    float32 on the CPU (None when regeneration was not asked for);
                    z_0 vs z_0' is the inversion's own error, without the VAE's.
    """

    seeds: torch.Tensor
    latents: torch.Tensor
    reconstruction: torch.Tensor | None = None
    trajectory: torch.Tensor | None = None
    method: str = "ddim"
    info: dict[str, Any] = field(default_factory=dict)
    reconstruction_latents: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.seeds.shape[0]
