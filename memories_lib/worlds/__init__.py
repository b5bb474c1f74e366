"""Worlds: one code path from a profile to every chapter.

``open_world(profile)`` reads the profile's ``world.kind`` (the only code that does) and opens the
registered :class:`~memories_lib.worlds.base.World` of that kind:

``shapes``            the embedded shapes world (``mini``) and its random-weight test version (``tiny``);
``stable-diffusion``  Stable Diffusion 1.4 (or any model of its layout) with data sets, detector and
                      CLIP from local folders.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ..core.profile import Profile, ProfileError, WorldSection, load_profile, thaw
from .base import Detector, SimilarityModel, World, WorldError
from .shapes.world import ShapesWorld
from .stable_diffusion import StableDiffusionWorld

#: Every kind of world, by the name a profile's ``world.kind`` uses.
WORLDS: dict[str, type[World]] = {cls.kind: cls for cls in (ShapesWorld, StableDiffusionWorld)}


def world_class(kind: str) -> type[World]:
    """The registered world class of ``kind`` (ProfileError listing the kinds otherwise)."""
    try:
        return WORLDS[kind]
    except KeyError:
        raise ProfileError(f"unknown world kind {kind!r}; the kinds are {sorted(WORLDS)}") from None


def open_world(profile: str | Path | Profile) -> World:
    """The world a profile (a name, a YAML path or a loaded :class:`Profile`) describes."""
    if not isinstance(profile, Profile):
        profile = load_profile(profile)
    return world_class(profile.world.kind)(profile)


def retrained(profile: str | Path | Profile, seed: int) -> Profile:
    """``profile`` with its world trained from ``seed`` (``world.training.seed``); nothing else changes.

    Only a world that this project trains (a ``world.training`` section) has a training seed.
    """
    if not isinstance(profile, Profile):
        profile = load_profile(profile)
    options = thaw(profile.world.options)
    training = options.get("training")
    if not isinstance(training, dict):
        raise WorldError(f"profile {profile.name!r}: its world ({profile.world.kind}) is not trained by this "
                         "project (no world.training section), so it has no training seed")
    options["training"] = {**training, "seed": int(seed)}
    return dataclasses.replace(profile, name=f"{profile.name}-train{int(seed)}",
                               world=WorldSection(profile.world.kind, options))


__all__ = ["Detector", "SimilarityModel", "WORLDS", "World", "WorldError", "open_world", "retrained", "world_class"]
