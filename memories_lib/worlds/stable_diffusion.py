"""Stable Diffusion 1.4 (or any model of its layout) as a world: placeholder until the world lands."""

from __future__ import annotations

from dataclasses import dataclass

from .base import World


@dataclass(frozen=True)
class StableDiffusionSpec:
    base_model: str = ""


class StableDiffusionWorld(World):
    kind = "stable-diffusion"
    Spec = StableDiffusionSpec
