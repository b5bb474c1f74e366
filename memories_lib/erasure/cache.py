"""Erased models, computed once and cached as diffusers folders, or loaded from published checkpoints.

``erase(base, "uce", concept_prompts, {...})`` runs a computing method of the registry on the base
model and saves the result as a full LDM folder in the diffusers layout under
``cache_dir()/"erased"/<method>-<concept>-<key>``, loadable with
:func:`memories_lib.core.models.load_ldm`. The key (:func:`~memories_lib.core.store.content_key`)
is made of everything that determines the result: the base model's weights hash, the method,
the prompts it erases and every parameter after defaults are filled in (so a changed default
makes a new model, never a stale hit). Next to the weights, ``erasure.json`` records what was
done and how long it took; a folder without it is treated as incomplete and recomputed. A
``checkpoint`` method is not cached: its files are applied to the base model each time.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from .. import __version__
from ..core.concepts import ConceptPrompts
from ..core.models import LDM, save_ldm
from ..core.progress import note
from ..core.store import keyed_folder, locked
from .registry import erase_prompts, get_method, resolve_params

#: Bump when an erasure algorithm changes in a way that changes its output.
VARIANT_FORMAT = 1

INFO_FILE = "erasure.json"


@dataclass(frozen=True)
class ErasedModel:
    """An erased model: where it is (a cached folder) or what it is (a checkpoint applied to the base).

    info holds the record written at creation (method, prompts, full parameters, base hash, seconds,
    method-specific diagnostics such as ESD losses or the debiasing history).
    from_cache is True when this call found the model already computed.
    """

    method: str
    concept: str
    params: dict[str, Any]
    path: Path | None = None
    ldm: LDM | None = None
    info: dict[str, Any] = field(default_factory=dict)
    from_cache: bool = False

    def load(self, load_model: Callable[[Path], LDM]) -> LDM:
        """The model itself: ``load_model(path)`` for a cached folder, else the applied checkpoint."""
        return self.ldm if self.ldm is not None else load_model(self.path)


def erased_path(base: LDM, method: str, concept: ConceptPrompts, params: Mapping[str, Any] | None = None) -> Path:
    """Where :func:`erase` keeps (or would keep) this erased model."""
    full = resolve_params(method, params, concept)
    return _folder(base.weights_hash(), method, concept, full)


def _folder(base_hash: str, method: str, concept: ConceptPrompts, full: Mapping[str, Any]) -> Path:
    parts = {
        "kind": "erased-model",
        "format": VARIANT_FORMAT,
        "base": base_hash,
        "method": method,
        "prompts": erase_prompts(method, concept),
        "params": dict(full),
    }
    return keyed_folder("erased", f"{method}-{concept.concept}", parts)


def read_info(path: str | Path) -> dict[str, Any]:
    """The record ``erasure.json`` of a cached erased model."""
    file = Path(path) / INFO_FILE
    if not file.is_file():
        raise FileNotFoundError(f"{path} has no {INFO_FILE}: not a complete erased model")
    return json.loads(file.read_text())


def _complete(path: Path) -> bool:
    return (path / "model_index.json").is_file() and (path / INFO_FILE).is_file()


def is_cached(base: LDM, method: str, concept: ConceptPrompts, params: Mapping[str, Any] | None = None) -> bool:
    """Whether :func:`erase` would read this model from the cache (a method that loads a checkpoint: always)."""
    spec = get_method(method)
    if spec.load is not None:
        return True
    return _complete(_folder(base.weights_hash(), method, concept, resolve_params(method, params, concept)))


def erase(
    base: LDM,
    method: str,
    concept: ConceptPrompts,
    params: Mapping[str, Any] | None = None,
    *,
    measure_ratio: Callable | None = None,
    progress: bool = True,
) -> ErasedModel:
    """``base`` with ``concept`` erased by ``method`` (computed and saved on first use, then read from the cache).

    ``params``: the method's settings (see ``registry.METHODS[method].params``); the defaults are the
    official ones, and ``guides``/``preserve`` default to the concept's own. ``measure_ratio``: the
    measurement ``uce-debias`` iterates against.
    """
    spec = get_method(method)
    full = resolve_params(method, params, concept)
    if spec.load is not None:
        return ErasedModel(method, concept.concept, full, ldm=spec.load(base, concept, full),
                           info={"method": method, "params": full})
    base_hash = base.weights_hash()
    path = _folder(base_hash, method, concept, full)
    if _complete(path):
        return ErasedModel(method, concept.concept, full, path=path, info=read_info(path), from_cache=True)
    with locked(path):  # two processes never compute the same model (different models go on in parallel)
        if _complete(path):  # another process finished it meanwhile
            return ErasedModel(method, concept.concept, full, path=path, info=read_info(path), from_cache=True)
        note(f"erasing {concept.concept!r} with {method}", disable=not progress)
        start = time.perf_counter()
        prompts = erase_prompts(method, concept)
        computed = spec.compute(base, prompts, full, measure_ratio=measure_ratio, progress=progress)
        seconds = time.perf_counter() - start
        text_encoder = computed.text_encoder if computed.text_encoder is not None else base.text_encoder
        save_ldm(path, vae=base.vae, unet=computed.unet, text_encoder=text_encoder,
                 tokenizer=base.tokenizer, scheduler=base.scheduler)
        info = {
            "method": method,
            "concept": concept.concept,
            "prompts": prompts,
            "params": full,
            "base_hash": base_hash,
            "base_source": base.source,
            "seconds": seconds,
            "library_version": __version__,
            **json.loads(json.dumps(computed.details)),
        }
        tmp = path / f".{INFO_FILE}.tmp"
        tmp.write_text(json.dumps(info, indent=2))
        os.replace(tmp, path / INFO_FILE)
    return ErasedModel(method, concept.concept, full, path=path, info=info, from_cache=False)
