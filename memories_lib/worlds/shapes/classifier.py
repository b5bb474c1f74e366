"""The shapes world's concept classifier: a small CNN with a shape, a colour and a background head.

It stands in for the paper's concept detectors (ResNet-50 for objects, NudeNet): it tells
which shape, colour and background style an image shows. Saved as ``config.json`` plus
``model.safetensors`` in a folder, like a Hugging Face model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from ...core.models import hash_modules
from .data import BACKGROUNDS, COLOURS, SHAPES
from .saving import load_module, save_module

#: The classifier's heads and the label names of each; a head is named like a ShapeSpec field.
HEADS: dict[str, tuple[str, ...]] = {"shape": SHAPES, "colour": COLOURS, "background": BACKGROUNDS}


def conv_trunk(channels: Sequence[int], image_size: int, groups: int = 4) -> tuple[nn.Sequential, int]:
    """Conv-GroupNorm-SiLU blocks, each halving the resolution, then a linear layer over the whole map.

    Flattening the final map (rather than averaging it) keeps where the features are,
    which shapes need: averaged features learn squares against circles much more slowly.
    Returns the trunk and the size of its output features.
    """
    layers: list[nn.Module] = []
    c_in = 3
    for c in channels:
        g = groups if c % groups == 0 else 1
        layers += [
            nn.Conv2d(c_in, c, 3, padding=1),
            nn.GroupNorm(g, c),
            nn.SiLU(),
            nn.Conv2d(c, c, 3, padding=1),
            nn.GroupNorm(g, c),
            nn.SiLU(),
            nn.AvgPool2d(2),
        ]
        c_in = c
    side = image_size // 2 ** len(channels)
    if side < 1:
        raise ValueError(f"{len(channels)} halvings leave nothing of a {image_size}-pixel image")
    features = 2 * c_in
    layers += [nn.Flatten(), nn.Linear(c_in * side * side, features), nn.SiLU()]
    return nn.Sequential(*layers), features


class ShapesClassifier(nn.Module):
    """Predicts shape, colour and background style of images in [0, 1], (B, 3, H, W)."""

    def __init__(self, channels: Sequence[int] = (16, 32, 64), image_size: int = 32) -> None:
        super().__init__()
        self.channels = [int(c) for c in channels]
        self.image_size = int(image_size)
        self.trunk, features = conv_trunk(self.channels, self.image_size)
        self.heads = nn.ModuleDict({name: nn.Linear(features, len(labels)) for name, labels in HEADS.items()})

    @property
    def label_names(self) -> dict[str, tuple[str, ...]]:
        """The label names of every head (the detector interface of a world)."""
        return HEADS

    def identity(self) -> str:
        """A content hash of the weights (what tells two classifiers apart)."""
        return hash_modules(self)

    def forward(self, images01: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits of every head, ``{"shape": (B, 5), "colour": (B, 6), "background": (B, 3)}``."""
        if images01.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(
                f"the classifier takes {self.image_size}x{self.image_size} images, got {tuple(images01.shape[-2:])}"
            )
        features = self.trunk(images01 * 2 - 1)
        return {name: head(features) for name, head in self.heads.items()}

    @torch.no_grad()
    def predict_proba(self, images01: torch.Tensor, batch_size: int = 256) -> dict[str, torch.Tensor]:
        """Class probabilities of every head, float32 on the CPU."""
        device = next(self.parameters()).device
        chunks: dict[str, list[torch.Tensor]] = {name: [] for name in HEADS}
        for start in range(0, images01.shape[0], batch_size):
            logits = self(images01[start : start + batch_size].to(device, torch.float32))
            for name, value in logits.items():
                chunks[name].append(value.softmax(-1).float().cpu())
        return {name: torch.cat(parts) if parts else torch.zeros(0, len(HEADS[name])) for name, parts in chunks.items()}

    def predict(self, images01: torch.Tensor) -> dict[str, np.ndarray]:
        """Label names of every head, e.g. ``{"shape": array(["star", ...]), ...}``."""
        proba = self.predict_proba(images01)
        return {name: np.asarray(HEADS[name])[p.argmax(-1).numpy()] for name, p in proba.items()}

    def save(self, folder: str | Path) -> Path:
        """Write ``config.json`` and ``model.safetensors`` into ``folder``."""
        config = {"class": "ShapesClassifier", "channels": self.channels, "image_size": self.image_size,
                  "heads": HEADS}
        return save_module(folder, self, config)

    @classmethod
    def load(cls, folder: str | Path, device: str = "cpu") -> "ShapesClassifier":
        """A saved classifier; its heads must be this library's."""

        def build(config: dict) -> "ShapesClassifier":
            heads = {k: tuple(v) for k, v in config.get("heads", {}).items()}
            if heads != HEADS:
                raise ValueError(f"classifier in {folder} has heads {heads}, this library expects {HEADS}")
            return cls(config["channels"], config["image_size"])

        return load_module(folder, "classifier", build, device)


def attribute_of(concept: str) -> str:
    """The classifier head that judges ``concept``: ``"triangle"`` -> ``"shape"``, ``"stripes"`` -> ``"background"``."""
    for name, labels in HEADS.items():
        if concept in labels:
            return name
    known = [label for labels in HEADS.values() for label in labels]
    raise ValueError(f"unknown concept {concept!r}; the shapes world knows {known}")
