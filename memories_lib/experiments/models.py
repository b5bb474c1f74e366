"""The models a chapter compares: the world's base model ("vanilla") and the profile's erased models.

A profile's ``erased_models`` names each erased model and says which method of the erasure
registry makes it, with which parameters (a published checkpoint is the method ``checkpoint``).
This module joins a world (its base model, its concepts' prompts) to the erasure registry; the
two know nothing of each other.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from ..core.models import LDM
from ..core.profile import ErasedModelSpec
from ..core import parallel
from ..erasure import ErasedModel, erase, get_method, resolve_params
from ..erasure.cache import is_cached
from ..worlds.base import World

#: The name of the unerased base model in every list of models.
VANILLA = "vanilla"


def erased_model_names(world: World) -> list[str]:
    """The erased models chapters 3 to 8 compare by default: the profile's ``book_models`` (else all of them)."""
    chosen = world.profile.book_models
    return list(world.profile.erased_models) if chosen is None else list(chosen)


def all_erased_model_names(world: World) -> list[str]:
    """Every erased model of the profile, in the profile's order (any of them may be asked for by name)."""
    return list(world.profile.erased_models)


def model_names(world: World) -> list[str]:
    """``vanilla`` and then the profile's erased models."""
    return [VANILLA, *erased_model_names(world)]


def spec_of(world: World, name: str) -> ErasedModelSpec:
    """The profile's entry ``name`` (ValueError listing the profile's erased models otherwise)."""
    try:
        return world.profile.erased_models[name]
    except KeyError:
        raise ValueError(
            f"the profile {world.profile.name!r} has no erased model {name!r}; "
            f"it has {all_erased_model_names(world)}"
        ) from None


def check_models(world: World, names: Sequence[str], concepts: Sequence[str], vanilla: bool = True) -> list[str]:
    """``names`` as a list, each checked before any work: known to the profile (or ``vanilla`` when
    allowed), its method registered and its parameters valid for every concept."""
    names = list(names)
    for name in names:
        if name == VANILLA and vanilla:
            continue
        if name == VANILLA:
            raise ValueError(f"{VANILLA!r} is not an erased model; the profile's are {all_erased_model_names(world)}")
        spec = spec_of(world, name)
        get_method(spec.method)
        for concept in concepts:
            full = resolve_params(spec.method, spec.params, world.concept_prompts(concept))
            if spec.method == "checkpoint":
                _check_checkpoint_file(name, concept, full)
    return names


def _check_checkpoint_file(name: str, concept: str, params: Mapping[str, Any]) -> None:
    """A published checkpoint's file (a UNet) or folder (a text encoder) exists, before any work."""
    path = Path(params["paths"][concept]).expanduser()
    if params["component"] == "text_encoder":
        folder = path / params["subfolder"] if params.get("subfolder") else path
        if not (folder / "config.json").is_file():
            raise ValueError(f"erased model {name!r} for {concept!r}: the text encoder folder {folder} does not exist "
                             "(or has no config.json); put the published text encoder there (transformers layout)")
    elif not path.is_file():
        raise ValueError(f"erased model {name!r} for {concept!r}: the checkpoint {path} does not exist; put the "
                         "published UNet weights there (.pt with diffusers names, or .safetensors)")


def params_of(world: World, name: str, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The profile's parameters of ``name`` (a plain dict), with ``overrides`` on top."""
    return {**{k: v for k, v in spec_of(world, name).params.items()}, **dict(overrides or {})}


def erased_model(world: World, name: str, concept: str, *, overrides: Mapping[str, Any] | None = None,
                 measure_ratio=None, progress: bool = False) -> ErasedModel:
    """The profile's erased model ``name`` for ``concept`` (computed and cached on first use)."""
    spec = spec_of(world, name)
    return erase(world.base_model(), spec.method, world.concept_prompts(concept), params_of(world, name, overrides),
                 measure_ratio=measure_ratio, progress=progress)


def compared_concepts(world: World) -> list[str]:
    """The concepts on which the chapter "Every method, three views" compares every erased model: the
    profile's parameter ``compared_concepts`` (else all of the profile's concepts)."""
    return world.check_concepts(list(world.profile.parameters.get("compared_concepts") or world.profile.concepts))


def book_pairs(world: World) -> list[tuple[str, str]]:
    """Every (erased model, concept) pair the book's chapters use: the book models on every concept of the
    profile, and every erased model on the compared concepts."""
    pairs = [(name, concept) for name in erased_model_names(world) for concept in world.profile.concepts]
    pairs += [(name, concept) for name in all_erased_model_names(world) for concept in compared_concepts(world)
              if (name, concept) not in pairs]
    return pairs


def check_pairs(world: World, pairs: Sequence[tuple[str, str]]) -> None:
    """Every erased model of ``pairs`` checked on its concepts (:func:`check_models`); no model is loaded or trained."""
    for name in dict.fromkeys(name for name, _ in pairs):
        check_models(world, [name], [c for n, c in pairs if n == name], vanilla=False)


def missing_erased_models(world: World, names: Sequence[str] | None = None,
                          concepts: Sequence[str] | None = None) -> list[tuple[str, str]]:
    """The (model name, concept) pairs of the book (:func:`book_pairs`), or of ``names`` x ``concepts``,
    not computed yet."""
    if names is None and concepts is None:
        pairs = book_pairs(world)
    else:
        names = list(names or erased_model_names(world))
        pairs = [(name, concept) for name in names for concept in (concepts or world.profile.concepts)]
    check_pairs(world, pairs)
    base = world.base_model()
    return [(name, concept) for name, concept in pairs
            if not is_cached(base, spec_of(world, name).method, world.concept_prompts(concept),
                             params_of(world, name))]


def prepare_erased_models(world: World, names: Sequence[str] | None = None, concepts: Sequence[str] | None = None,
                          *, workers: int | None = None, progress: bool = True) -> int:
    """Compute the erased models that are not cached yet, several at once; return how many were computed.

    Without ``names`` and ``concepts``: every pair the book uses (:func:`book_pairs`). An erasure method
    fine-tunes at a small batch (ESD: 4 latents a step), where a second torch thread gains nothing; so the
    models are computed in parallel processes, one per core
    (:func:`memories_lib.core.parallel.map_processes`), each into the cache that the chapters read.
    """
    todo = missing_erased_models(world, names, concepts)
    parallel.map_processes(_erase_one, [(world.profile, name, concept) for name, concept in todo], workers=workers,
                           label=lambda item: f"erased model {item[1]} for {item[2]!r}", quiet=not progress)
    return len(todo)


def _erase_one(item: tuple[str, str, str]) -> float:
    """Compute one erased model in a worker process (the world opened from the profile); its seconds."""
    from ..worlds import open_world

    profile, name, concept = item
    return float(erased_model(open_world(profile), name, concept).info.get("seconds", 0.0))


def load_model(world: World, name: str, concept: str) -> LDM:
    """The model ``name`` for ``concept``: the base model for ``vanilla``, else the erased one, loaded."""
    if name == VANILLA:
        return world.base_model()
    return erased_model(world, name, concept).load(world.load_model)
