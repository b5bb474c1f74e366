"""The images the shapes world's models train on, and their augmentations."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..data import ShapeSpec, make_dataset

Images = tuple[torch.Tensor, list[ShapeSpec]]


@dataclass
class TrainingData:
    """The training and held-out images (uint8, (N, 3, H, W)) of a config, drawn on first use."""

    cfg: dict[str, Any]
    progress: bool = True
    _train: Images | None = field(default=None, repr=False)
    _eval: Images | None = field(default=None, repr=False)

    def _make(self, n: int, stream: int) -> Images:
        rng = np.random.default_rng([int(self.cfg["seed"]), stream])
        images, specs = make_dataset(n, self.cfg["image_size"], rng, progress=self.progress)
        return (images * 255).round().to(torch.uint8), specs

    @property
    def train(self) -> Images:
        if self._train is None:
            self._train = self._make(self.cfg["dataset_size"], 0)
        return self._train

    @property
    def eval(self) -> Images:
        if self._eval is None:
            self._eval = self._make(self.cfg["eval_size"], 1)
        return self._eval


def to01(batch_u8: torch.Tensor, device: str) -> torch.Tensor:
    """uint8 images as floats in [0, 1] on ``device``."""
    return batch_u8.to(device).float() / 255.0


def random_dihedral(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Flip and rotate each image of (B, C, H, W) by one of the 8 symmetries of the square."""
    k = torch.randint(0, 8, (x.shape[0],), generator=generator)
    out = torch.empty_like(x)
    for code in range(8):
        sel = k == code
        if sel.any():
            y = torch.rot90(x[sel], code % 4, dims=(2, 3))
            out[sel] = torch.flip(y, dims=(3,)) if code >= 4 else y
    return out


def augment(x01: torch.Tensor, generator: torch.Generator, noise: float) -> torch.Tensor:
    """Symmetries of the square, slight brightness changes, blur and pixel noise (robustness to generations)."""
    x = random_dihedral(x01, generator)
    b = x.shape[0]
    scale = 1 + 0.1 * (torch.rand(b, 1, 1, 1, generator=generator) - 0.5)
    x = x * scale
    blurred = torch.nn.functional.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
    mix = (torch.rand(b, 1, 1, 1, generator=generator) < 0.3).float() * torch.rand(b, 1, 1, 1, generator=generator)
    x = x * (1 - mix) + blurred * mix
    sigma = noise * torch.rand(b, 1, 1, 1, generator=generator)
    return (x + sigma * torch.randn(x.shape, generator=generator)).clamp(0, 1)
