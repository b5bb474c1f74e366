"""The erasure registry: every method by name, its parameters (a dataclass of defaults) and how it runs.

A method either *computes* an erased model from the base model and a concept's prompts (UCE,
ESD: the result is cached as a diffusers folder, see :mod:`memories_lib.erasure.cache`) or
*loads* a published checkpoint (``checkpoint``: a UNet state dict or a replacement text encoder
per concept, applied to the base model). A method receives a
:class:`~memories_lib.core.concepts.ConceptPrompts` and never looks a concept up itself.

Adding a method is one module with its algorithm and one :class:`ErasureMethod` entry here; the
registry's contract test (``tests/test_erasure_registry.py``) then runs it on a tiny model.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Mapping

import torch

from ..core.concepts import ConceptPrompts
from ..core.models import LDM
from ..core.profile import thaw
from ..core.store import content_key
from .advunlearn import AdvUnlearnParams, advunlearn_erase, advunlearn_parameter_names
from .ac import ACParams, ac_erase, ac_parameter_names
from .checkpoints import apply_text_encoder, apply_unet_checkpoint
from .erasediff import EraseDiffParams, erasediff_erase
from .esd import ESDConfig, esd_erase, esd_parameter_names
from .rece import RECEParams, rece_erase
from .salun import SalUnParams, salun_erase
from .scissorhands import ScissorhandsParams, scissorhands_erase, scissorhands_parameter_names
from .spm import SPMParams, spm_erase, spm_layer_names
from .fmn import FMNParams, fmn_erase, fmn_parameter_names
from .uce import (
    DEFAULT_ERASE_SCALE,
    DEFAULT_LAMBDA,
    DEFAULT_PRESERVE_SCALE,
    cross_attention_projections,
    uce_debias,
    uce_erase,
)
from .training import check_prompts
from .unlearning import trained_names

# --------------------------------------------------------------------------- parameters


@dataclass(frozen=True)
class _UCEShared:
    """What every UCE edit takes; defaults of the official script. ``preserve`` None: the concept's own
    prompts to preserve (the world's rule); ``preserve_scale`` None: the concept's own scale, else the
    official default."""

    preserve: list[str] | None = None
    lamb: float = DEFAULT_LAMBDA
    preserve_scale: float | None = None
    token: str = "last"
    projections: list[str] = field(default_factory=lambda: ["to_k", "to_v"])


@dataclass(frozen=True)
class UCEModerateParams(_UCEShared):
    """UCE moderation: the concept's prompts edited towards the empty prompt."""

    erase_scale: float = DEFAULT_ERASE_SCALE


@dataclass(frozen=True)
class UCEParams(UCEModerateParams):
    """UCE erasure (``uce_erase``). ``guides`` None: each prompt's own guide (the concept's)."""

    guides: str | list[str] | None = None


@dataclass(frozen=True)
class UCEDebiasParams(_UCEShared):
    """UCE debiasing of the concept's shortest prompt over ``attributes``; needs a ``measure_ratio`` callback.

    ``measure`` describes that measurement (classifier, prompts, samples) and is part of the cache key.
    """

    attributes: list[str] | None = None
    measure: str | None = None
    desired_ratios: list[float] | None = None
    edit_scale: float = DEFAULT_ERASE_SCALE
    max_iterations: int = 30
    max_diff: float = 0.05
    step_size: float = 1.0

    REQUIRED = ("attributes", "measure")


@dataclass(frozen=True)
class ESDParams:
    """ESD (see :class:`~memories_lib.erasure.esd.ESDConfig`; official SD 1.4 defaults) and its seed."""

    iterations: int = ESDConfig.iterations
    lr: float = ESDConfig.lr
    negative_guidance: float = ESDConfig.negative_guidance
    start_guidance: float = ESDConfig.start_guidance
    ddim_steps: int = ESDConfig.ddim_steps
    batch_size: int = ESDConfig.batch_size
    seed: int = 0


@dataclass(frozen=True)
class CheckpointParams:
    """A published erased model: one file (or folder) per concept.

    paths:     concept -> a UNet state dict (``.pt``/``.safetensors``) or a text encoder folder;
    component: ``unet`` or ``text_encoder``;
    partial:   for a UNet file, whether it may hold only some weights (None: by suffix);
    subfolder: for a text encoder, the subfolder of the concept's path (AdvUnlearn's layout).
    """

    paths: Mapping[str, str] | None = None
    component: str = "unet"
    partial: bool | None = None
    subfolder: str | None = None

    REQUIRED = ("paths",)
    COMPONENTS = ("unet", "text_encoder")


# --------------------------------------------------------------------------- what a method does


@dataclass(frozen=True)
class Computed:
    """What a computing method returns: the new UNet (and text encoder, for a method that trains it; None
    keeps the base model's) and diagnostics for the cache's record."""

    unet: torch.nn.Module
    details: dict[str, Any] = field(default_factory=dict)
    text_encoder: torch.nn.Module | None = None


def _uce_kwargs(params: Mapping[str, Any]) -> dict[str, Any]:
    return {k: params[k] for k in ("lamb", "preserve_scale", "token", "projections")}


def _uce(base: LDM, prompts: list[str], params: Mapping[str, Any], **_: Any) -> Computed:
    result = uce_erase(base.unet, base.text_encoder, base.tokenizer, prompts, guides=params["guides"],
                       preserve=params["preserve"], erase_scale=params["erase_scale"], **_uce_kwargs(params))
    return Computed(result.unet, {"edited": sorted(result.edited), "layers": result.info["layers"]})


def _uce_moderate(base: LDM, prompts: list[str], params: Mapping[str, Any], **_: Any) -> Computed:
    return _uce(base, prompts, {**params, "guides": ""})


def _uce_debias(base: LDM, prompts: list[str], params: Mapping[str, Any], *,
                measure_ratio: Callable | None, progress: bool) -> Computed:
    if measure_ratio is None:
        raise ValueError("uce-debias needs a measure_ratio callback")
    result = uce_debias(
        base.unet, base.text_encoder, base.tokenizer, prompts, params["attributes"], measure_ratio,
        desired_ratios=params["desired_ratios"], preserve=params["preserve"], edit_scale=params["edit_scale"],
        max_iterations=params["max_iterations"], max_diff=params["max_diff"], step_size=params["step_size"],
        progress=progress, **_uce_kwargs(params),
    )
    return Computed(result.unet, {"edited": sorted(result.edited), "history": result.history,
                                  "converged": result.info["converged"]})


def _esd(method: str) -> Callable[..., Computed]:
    def compute(base: LDM, prompts: list[str], params: Mapping[str, Any], *, progress: bool, **_: Any) -> Computed:
        # Several prompts are trained on in turn, one drawn at random per iteration.
        config = ESDConfig(method=method, **{k: v for k, v in params.items() if k != "seed"})
        generator = torch.Generator(device="cpu").manual_seed(int(params["seed"]))
        result = esd_erase(base.unet, base.text_encoder, base.tokenizer, base.scheduler, prompts, config,
                           generator=generator, progress=progress)
        return Computed(result.unet, {"trained": len(result.trained), "losses": result.losses, "steps": result.steps})

    return compute


def _rece(base: LDM, prompts: list[str], params: Mapping[str, Any], *, progress: bool, **_: Any) -> Computed:
    result = rece_erase(base.unet, base.text_encoder, base.tokenizer, prompts, RECEParams(**params), progress=progress)
    return Computed(result.unet, {"edited": sorted(result.edited), "history": result.history})


def _unlearning(erase_fn: Callable[..., Any], params_class: type) -> Callable[..., Computed]:
    """The registry's compute function of an unlearning method (SalUn, EraseDiff, Scissorhands)."""

    def compute(base: LDM, prompts: list[str], params: Mapping[str, Any], *, progress: bool, **_: Any) -> Computed:
        result = erase_fn(base, prompts, params_class(**params), progress=progress)
        return Computed(result.unet, {"trained": len(result.trained), **result.details})

    return compute


def _spm(base: LDM, prompts: list[str], params: Mapping[str, Any], *, progress: bool, **_: Any) -> Computed:
    result = spm_erase(base, prompts, SPMParams(**params), progress=progress)
    return Computed(result.unet, {"layers": len(result.layers), "losses": result.losses})


def _advunlearn(base: LDM, prompts: list[str], params: Mapping[str, Any], *, progress: bool, **_: Any) -> Computed:
    # The UNet is the base model's own; only the text encoder is new.
    result = advunlearn_erase(base, prompts, AdvUnlearnParams(**params), progress=progress)
    return Computed(base.unet, {"trained": len(result.trained), "losses": result.losses, "attacks": result.attacks},
                    text_encoder=result.text_encoder)


def _fmn(base: LDM, prompts: list[str], params: Mapping[str, Any], *, progress: bool, **_: Any) -> Computed:
    result = fmn_erase(base, prompts, FMNParams(**params), progress=progress)
    return Computed(result.unet, {"trained": len(result.trained), "losses": result.losses, "tokens": result.tokens})


def _ac(base: LDM, prompts: list[str], params: Mapping[str, Any], *, progress: bool, **_: Any) -> Computed:
    result = ac_erase(base, prompts, ACParams(**params), progress=progress)
    return Computed(result.unet, {"trained": len(result.trained), "losses": result.losses,
                                  "prior_losses": result.prior_losses, "anchors": result.info["anchors"]})


def _load_checkpoint(base: LDM, concept: ConceptPrompts, params: Mapping[str, Any]) -> LDM:
    path = params["paths"][concept.concept]  # resolve_params has checked that it is there
    if params["component"] == "unet":
        return apply_unet_checkpoint(base, path, partial=params["partial"])
    return apply_text_encoder(base, path, params["subfolder"])


def _uce_parameters(unet: torch.nn.Module, params: Mapping[str, Any]) -> list[str]:
    return [f"{name}.weight" for name in cross_attention_projections(unet, params["projections"])]


def _checkpoint_parameters(ldm: LDM, params: Mapping[str, Any]) -> list[str]:
    module = ldm.unet if params["component"] == "unet" else ldm.text_encoder
    return [name for name, _ in module.named_parameters()]


@dataclass(frozen=True)
class ErasureMethod:
    """A registered erasure method.

    params:     the dataclass of its parameters, with the official defaults;
    prompts:    which of the concept's prompts it erases: ``"all"`` or ``"shortest"``;
    concept_defaults: parameters that default to the concept's own values (``guides``, ``preserve``,
                ``preserve_scale``);
    compute:    ``compute(base, prompts, params, *, measure_ratio, progress) -> Computed`` for a method
                whose result is computed and cached (None for a loader);
    load:       ``load(base, concept, params) -> LDM`` for a published checkpoint (None otherwise);
    changes:    ``changes(ldm, params) -> names`` of the parameters the method may change, prefixed
                with the component (``unet.`` or ``text_encoder.``);
    description: one line for tables.
    """

    name: str
    params: type
    description: str
    changes: Callable[[LDM, Mapping[str, Any]], list[str]]
    compute: Callable[..., Computed] | None = None
    load: Callable[[LDM, ConceptPrompts, Mapping[str, Any]], LDM] | None = None
    prompts: str = "all"
    concept_defaults: tuple[str, ...] = ()

    @property
    def cached(self) -> bool:
        return self.compute is not None

    def defaults(self) -> dict[str, Any]:
        """The parameters and their defaults."""
        return {f.name: _default(f) for f in fields(self.params)}


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory()  # type: ignore[misc]


def _prefixed(component: str, names: list[str]) -> list[str]:
    return [f"{component}.{n}" for n in names]


METHODS: dict[str, ErasureMethod] = {
    m.name: m
    for m in (
        ErasureMethod(
            "uce", UCEParams, "UCE: closed-form edit of every cross-attention K/V towards the prompts' guides",
            changes=lambda ldm, p: _prefixed("unet", _uce_parameters(ldm.unet, p)),
            compute=_uce, concept_defaults=("guides", "preserve", "preserve_scale"),
        ),
        ErasureMethod(
            "uce-moderate", UCEModerateParams, "UCE moderation: the concept's prompts edited towards the empty prompt",
            changes=lambda ldm, p: _prefixed("unet", _uce_parameters(ldm.unet, p)),
            compute=_uce_moderate, concept_defaults=("preserve", "preserve_scale"),
        ),
        ErasureMethod(
            "uce-debias", UCEDebiasParams, "UCE debiasing: attribute embeddings mixed into the concept's prompt",
            changes=lambda ldm, p: _prefixed("unet", _uce_parameters(ldm.unet, p)),
            compute=_uce_debias, prompts="shortest", concept_defaults=("preserve", "preserve_scale"),
        ),
        ErasureMethod(
            "esd-x", ESDParams, "ESD-x: cross-attention fine-tuned with negative guidance",
            changes=lambda ldm, p: _prefixed("unet", esd_parameter_names(ldm.unet, "esd-x")),
            compute=_esd("esd-x"),
        ),
        ErasureMethod(
            "esd-u", ESDParams,
            "ESD-u: every UNet weight but cross-attention, the time embedding and the output layers fine-tuned "
            "with negative guidance",
            changes=lambda ldm, p: _prefixed("unet", esd_parameter_names(ldm.unet, "esd-u")),
            compute=_esd("esd-u"),
        ),
        ErasureMethod(
            "checkpoint", CheckpointParams, "a published erased model: a UNet state dict or a text encoder per concept",
            changes=lambda ldm, p: _prefixed(p["component"], _checkpoint_parameters(ldm, p)),
            load=_load_checkpoint,
        ),
        ErasureMethod(
            "rece", RECEParams, "RECE: UCE, then closed-form adversarial embeddings edited towards the guides",
            changes=lambda ldm, p: _prefixed("unet", _uce_parameters(ldm.unet, p)),
            compute=_rece, concept_defaults=("guides", "preserve", "preserve_scale"),
        ),
        ErasureMethod(
            "salun", SalUnParams, "SalUn: the UNet weights salient to the concept fine-tuned towards the guides",
            changes=lambda ldm, p: _prefixed("unet", trained_names(ldm.unet, p["train_method"])),
            compute=_unlearning(salun_erase, SalUnParams), concept_defaults=("guides", "preserve"),
        ),
        ErasureMethod(
            "erasediff", EraseDiffParams, "EraseDiff: first-order constrained unlearning (guides as pseudo prompts)",
            changes=lambda ldm, p: _prefixed("unet", trained_names(ldm.unet, p["train_method"])),
            compute=_unlearning(erasediff_erase, EraseDiffParams), concept_defaults=("guides", "preserve"),
        ),
        ErasureMethod(
            "scissorhands", ScissorhandsParams, "Scissorhands: the weights most connected to the concept "
            "re-initialised, then repaired",
            changes=lambda ldm, p: _prefixed("unet", scissorhands_parameter_names(ldm.unet, ScissorhandsParams(**p))),
            compute=_unlearning(scissorhands_erase, ScissorhandsParams), concept_defaults=("guides", "preserve"),
        ),
        ErasureMethod(
            "spm", SPMParams, "SPM: a rank-1 membrane beside every layer of the UNet's transformer blocks, "
            "ESD's loss plus latent anchoring, merged",
            changes=lambda ldm, p: [f"unet.{name}.weight" for name in spm_layer_names(ldm.unet)],
            compute=_spm, concept_defaults=("guides", "preserve"),
        ),
        ErasureMethod(
            "advunlearn", AdvUnlearnParams, "AdvUnlearn: the text encoder trained with ESD's loss on adversarial "
            "prefix prompts, plus a retain term",
            changes=lambda ldm, p: _prefixed("text_encoder",
                                             advunlearn_parameter_names(ldm.text_encoder, p["component"])),
            compute=_advunlearn, concept_defaults=("preserve",),
        ),
        ErasureMethod(
            "fmn", FMNParams, "FMN: the UNet fine-tuned to stop attending to the concept's tokens",
            changes=lambda ldm, p: _prefixed("unet", fmn_parameter_names(ldm.unet, p["parameters"])),
            compute=_fmn, concept_defaults=("guides",),
        ),
        ErasureMethod(
            "ac", ACParams, "AC: cross-attention K/V fine-tuned so the concept's prompts predict their anchors' noise",
            changes=lambda ldm, p: _prefixed("unet", ac_parameter_names(ldm.unet)),
            compute=_ac, concept_defaults=("guides",),
        ),
    )
}


def get_method(name: str) -> ErasureMethod:
    """The registered method ``name`` (ValueError listing the methods otherwise)."""
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown erasure method {name!r}; the methods are {sorted(METHODS)}") from None


def resolve_params(method: str, params: Mapping[str, Any] | None, concept: ConceptPrompts | None = None) -> dict[str, Any]:
    """``params`` with the method's defaults filled in (and the concept's own prompts where they default to it).

    Unknown parameters, missing required ones and invalid values raise ValueError naming them.
    """
    spec = get_method(method)
    params = dict(params or {})
    defaults = spec.defaults()
    unknown = sorted(set(params) - set(defaults))
    if unknown:
        raise ValueError(f"unknown parameter(s) {unknown} for {method}; its parameters are {sorted(defaults)}")
    full = _as_declared({**defaults, **params}, spec.params)
    missing = sorted(k for k in getattr(spec.params, "REQUIRED", ()) if full[k] is None)
    if missing:
        raise ValueError(f"{method} needs the parameter(s) {missing}")
    if concept is not None:
        own = {"guides": list(concept.guides), "preserve": list(concept.preserve),
               "preserve_scale": concept.preserve_scale}
        for name in spec.concept_defaults:
            if full[name] is None:
                full[name] = own[name]
    if "preserve_scale" in full and full["preserve_scale"] is None:  # neither the profile nor the concept set it
        full["preserve_scale"] = DEFAULT_PRESERVE_SCALE
    _check_values(method, full, concept)
    spec.params(**{k: v for k, v in full.items()})  # the dataclass's own checks
    full = thaw(full)
    content_key(params=full)  # a value that cannot key a cached model fails here, before any work
    return full


def _as_declared(full: dict[str, Any], params_class: type) -> dict[str, Any]:
    """Whole numbers given for float settings as floats, so that ``erase_scale: 4`` and ``4.0`` (the same
    model) share one cache key."""
    for f in dataclasses.fields(params_class):
        value = full.get(f.name)
        if str(f.type).split("|")[0].strip() == "float" and isinstance(value, int) and not isinstance(value, bool):
            full[f.name] = float(value)
    return full


#: Methods that need one training latent per erased prompt at least (``samples`` of them).
_SAMPLES_PER_PROMPT = {"spm": "SPM", "advunlearn": "AdvUnlearn"}


def _check_values(method: str, full: Mapping[str, Any], concept: ConceptPrompts | None) -> None:
    if method in _SAMPLES_PER_PROMPT and concept is not None:  # refused here, before any model is trained
        check_prompts(_SAMPLES_PER_PROMPT[method], erase_prompts(method, concept), full["samples"])
    if method.startswith("esd"):
        ESDConfig(method=method, **{k: v for k, v in full.items() if k != "seed"})
    if method == "checkpoint":
        if full["component"] not in CheckpointParams.COMPONENTS:
            raise ValueError(
                f"checkpoint component must be one of {CheckpointParams.COMPONENTS}, got {full['component']!r}"
            )
        if concept is not None and concept.concept not in full["paths"]:
            raise ValueError(f"the checkpoint entry has no file for the concept {concept.concept!r}; "
                             f"it has {sorted(full['paths'])}")


def erase_prompts(method: str, concept: ConceptPrompts) -> list[str]:
    """The prompts ``method`` erases for ``concept``: all of them, or the shortest only."""
    spec = get_method(method)
    return [concept.prompt] if spec.prompts == "shortest" else list(concept.prompts)


__all__ = [
    "CheckpointParams", "Computed", "ESDParams", "ErasureMethod", "METHODS", "UCEDebiasParams",
    "UCEModerateParams", "UCEParams", "erase_prompts", "get_method", "resolve_params",
]
