"""Erased variants of a base model, computed once and cached as diffusers folders.

``erased_model(base, "uce", ["triangle"], {...})`` erases with the project's own UCE or ESD
and saves the result as a full LDM folder in the diffusers layout under
``cache_dir()/"erased"/<method>-<concepts>-<key>``, loadable by path with
:func:`memories_lib.models.load_ldm`. The key hashes everything that determines the result:
the base model's weights hash, the method, the concepts and every parameter after defaults
are filled in (so a changed default makes a new variant, never a stale hit). Next to the
weights, ``erasure.json`` records what was done and how long it took; a folder without it is
treated as incomplete and recomputed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from .. import __version__
from ..core.models import LDM, save_ldm
from ..core.paths import cache_dir
from .esd import ESDConfig, esd_erase
from .uce import DEFAULT_ERASE_SCALE, DEFAULT_LAMBDA, DEFAULT_PRESERVE_SCALE, uce_debias, uce_erase

#: Bump when an erasure algorithm changes in a way that changes its output.
VARIANT_FORMAT = 1

INFO_FILE = "erasure.json"

_UCE_COMMON = {
    "preserve": [],
    "lamb": DEFAULT_LAMBDA,
    "preserve_scale": DEFAULT_PRESERVE_SCALE,
    "token": "last",
    "projections": ["to_k", "to_v"],
}
_ESD_DEFAULTS = {k: v for k, v in asdict(ESDConfig()).items() if k != "method"} | {"seed": 0}

#: Every method and its parameters with their defaults (None = required).
METHOD_DEFAULTS: dict[str, dict[str, Any]] = {
    "uce": {"guides": "", "erase_scale": DEFAULT_ERASE_SCALE, **_UCE_COMMON},
    "uce-moderate": {"erase_scale": DEFAULT_ERASE_SCALE, **_UCE_COMMON},
    "uce-debias": {
        "attributes": None,
        "measure": None,  # a description of the measurement (classifier, prompts, samples): part of the key
        "desired_ratios": None,
        "edit_scale": DEFAULT_ERASE_SCALE,
        "max_iterations": 30,
        "max_diff": 0.05,
        "step_size": 1.0,
        **_UCE_COMMON,
    },
    "esd-x": dict(_ESD_DEFAULTS),
    "esd-u": dict(_ESD_DEFAULTS),
}
METHODS = tuple(METHOD_DEFAULTS)
_REQUIRED = {"attributes", "measure"}


@dataclass(frozen=True)
class ErasedVariant:
    """A cached erased model: its folder and what produced it.

    info holds the record written at creation (method, concepts, full parameters, base hash,
    seconds, method-specific diagnostics such as ESD losses or the debiasing history).
    from_cache is True when this call found the variant already computed.
    """

    path: Path
    key: str
    method: str
    concepts: tuple[str, ...]
    params: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    from_cache: bool = False


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    raise ValueError(f"parameter value {value!r} of type {type(value).__name__} cannot key a cached variant")


def resolve_params(method: str, params: Mapping[str, Any] | None) -> dict[str, Any]:
    """``params`` with the method's defaults filled in; unknown or missing required keys raise ValueError."""
    if method not in METHOD_DEFAULTS:
        raise ValueError(f"unknown erasure method {method!r}; known methods are {METHODS}")
    defaults = METHOD_DEFAULTS[method]
    params = dict(params or {})
    unknown = sorted(set(params) - set(defaults))
    if unknown:
        raise ValueError(f"unknown parameter(s) {unknown} for {method}; known: {sorted(defaults)}")
    full = {**defaults, **params}
    missing = sorted(k for k in _REQUIRED & set(full) if full[k] is None)
    if missing:
        raise ValueError(f"{method} needs the parameter(s) {missing}")
    return _jsonable(full)


def variant_key(base_hash: str, method: str, concepts: Sequence[str], params: Mapping[str, Any]) -> str:
    """A hash of everything that determines an erased variant."""
    payload = {
        "format": VARIANT_FORMAT,
        "base": base_hash,
        "method": method,
        "concepts": list(concepts),
        "params": _jsonable(params),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _slug(concepts: Sequence[str]) -> str:
    text = "+".join(re.sub(r"[^a-z0-9]+", "_", c.lower()).strip("_") or "empty" for c in concepts)
    return text[:60]


def variant_path(base: LDM, method: str, concepts: str | Sequence[str], params: Mapping[str, Any] | None = None) -> Path:
    """Where :func:`erased_model` keeps (or would keep) this variant."""
    concepts = (concepts,) if isinstance(concepts, str) else tuple(concepts)
    full = resolve_params(method, params)
    key = variant_key(base.weights_hash(), method, concepts, full)
    return cache_dir() / "erased" / f"{method}-{_slug(concepts)}-{key}"


def read_variant_info(path: str | Path) -> dict[str, Any]:
    """The record ``erasure.json`` of a variant folder."""
    file = Path(path) / INFO_FILE
    if not file.is_file():
        raise FileNotFoundError(f"{path} has no {INFO_FILE}: not a complete erased variant")
    return json.loads(file.read_text())


def _compute(
    base: LDM,
    method: str,
    concepts: tuple[str, ...],
    params: dict[str, Any],
    measure_ratio: Callable | None,
    progress: bool,
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Run the erasure; returns the new UNet and method-specific diagnostics."""
    if method in ("uce", "uce-moderate", "uce-debias"):
        uce_kwargs = {k: params[k] for k in ("lamb", "preserve_scale", "token", "projections")}
    if method in ("uce", "uce-moderate"):
        guides = params["guides"] if method == "uce" else ""
        result = uce_erase(
            base.unet,
            base.text_encoder,
            base.tokenizer,
            list(concepts),
            guides=guides,
            preserve=params["preserve"],
            erase_scale=params["erase_scale"],
            **uce_kwargs,
        )
        return result.unet, {"edited": sorted(result.edited), "layers": result.info["layers"]}
    if method == "uce-debias":
        if measure_ratio is None:
            raise ValueError("uce-debias needs a measure_ratio callback")
        result = uce_debias(
            base.unet,
            base.text_encoder,
            base.tokenizer,
            list(concepts),
            params["attributes"],
            measure_ratio,
            desired_ratios=params["desired_ratios"],
            preserve=params["preserve"],
            edit_scale=params["edit_scale"],
            max_iterations=params["max_iterations"],
            max_diff=params["max_diff"],
            step_size=params["step_size"],
            progress=progress,
            **uce_kwargs,
        )
        return result.unet, {
            "edited": sorted(result.edited),
            "history": result.history,
            "converged": result.info["converged"],
        }
    # ESD: several prompts are trained on in turn, one drawn at random per iteration
    config = ESDConfig(method=method, **{k: v for k, v in params.items() if k != "seed"})
    generator = torch.Generator(device="cpu").manual_seed(int(params["seed"]))
    result = esd_erase(
        base.unet,
        base.text_encoder,
        base.tokenizer,
        base.scheduler,
        list(concepts),
        config,
        generator=generator,
        progress=progress,
    )
    return result.unet, {"trained": len(result.trained), "losses": result.losses, "steps": result.steps}


def erased_model(
    base: LDM,
    method: str,
    concepts: str | Sequence[str],
    params: Mapping[str, Any] | None = None,
    *,
    measure_ratio: Callable | None = None,
    progress: bool = True,
) -> ErasedVariant:
    """The erased variant of ``base`` (computed and saved on first use, then read from the cache).

    method:  "uce" (erase towards ``guides``), "uce-moderate" (towards the empty prompt),
             "uce-debias" (needs ``measure_ratio`` and ``params["measure"]``, a description of
             that measurement, which is part of the cache key), "esd-x" or "esd-u".
    concepts: the prompt(s) to erase (ESD draws one of them per iteration).
    params:  the method's settings, see ``METHOD_DEFAULTS``; defaults are the official ones.
    """
    concepts = (concepts,) if isinstance(concepts, str) else tuple(concepts)
    if not concepts:
        raise ValueError("erased_model needs at least one concept")
    full = resolve_params(method, params)
    base_hash = base.weights_hash()
    key = variant_key(base_hash, method, concepts, full)
    path = cache_dir() / "erased" / f"{method}-{_slug(concepts)}-{key}"
    if (path / "model_index.json").is_file() and (path / INFO_FILE).is_file():
        info = read_variant_info(path)
        return ErasedVariant(path, key, method, concepts, full, info, from_cache=True)

    start = time.perf_counter()
    unet, details = _compute(base, method, concepts, full, measure_ratio, progress)
    seconds = time.perf_counter() - start
    save_ldm(
        path,
        vae=base.vae,
        unet=unet,
        text_encoder=base.text_encoder,
        tokenizer=base.tokenizer,
        scheduler=base.scheduler,
    )
    info = {
        "method": method,
        "concepts": list(concepts),
        "params": full,
        "key": key,
        "base_hash": base_hash,
        "base_source": base.source,
        "seconds": seconds,
        "library_version": __version__,
        **_jsonable(details),
    }
    tmp = path / f".{INFO_FILE}.tmp"
    tmp.write_text(json.dumps(info, indent=2))
    os.replace(tmp, path / INFO_FILE)
    return ErasedVariant(path, key, method, concepts, full, info, from_cache=False)
