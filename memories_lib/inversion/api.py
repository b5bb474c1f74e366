"""One entry point for every inversion method: images -> seeds z_T -> regenerated images.

``invert`` encodes images with the VAE, inverts the latents with the chosen method,
regenerates them from the seeds the way that method reconstructs (DDIM, ReNoise:
plain DDIM sampling at guidance 1, the official setting; null-text: guidance 7.5 with
the optimised per-step embeddings; EDICT: its coupled exact sampler) and decodes.
Plain DDIM sampling from given or fresh seeds (``regenerate``, ``generate``) is
``memories_lib.core.sampling``.

Every method's ``info`` follows one convention so that batches can be concatenated:
tensor values have the batch as their first dimension; other values describe the
whole call and are taken from the first batch. The keys:

- all: ``num_steps``;
- ddim: ``guidance_scale`` (inversion), ``reconstruction_guidance``;
- renoise: ``config`` (the :class:`ReNoiseConfig` used);
- nti: ``config`` (:class:`NullTextConfig`), ``uncond_embeds`` (B, N, L, D), the optimised
  embedding of every sampling step, ``losses`` and ``inner_steps`` (B, N); its
  ``trajectory`` is the pivot DDIM inversion;
- edict: ``mix``, ``guidance_scale``, ``leapfrog``, ``float64``, and the float64 pair
  ``x_T``, ``y_T`` (B, C, h, w) the exact reconstruction starts from (seeds = x_T).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from typing import Any, Callable

import torch
from tqdm.auto import tqdm

from ..core.models import LDM, decode_latents, encode_images, encode_prompts
from .common import InversionResult
from ..core.sampling import ddim_sample
from .ddim import ddim_invert
from .edict import DEFAULT_MIX, edict_invert, edict_sample
from .nti import NullTextConfig, null_text_invert, null_text_reconstruct
from .renoise import ReNoiseConfig, renoise_invert


@dataclass
class Inverted:
    """What a method's ``invert`` returns for one batch (tensors on the model's device).

    seeds: z_T (B, C, h, w); trajectory: z_0 .. z_T (T + 1, B, C, h, w) or None;
    info: extras, tensors batch-first (what the method's ``reconstruct`` needs, among them).
    """

    seeds: torch.Tensor
    trajectory: torch.Tensor | None = None
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class InversionMethod:
    """A registered inversion method.

    invert(ldm, latents, cond_embeds, num_steps | None, *, return_trajectory, progress, generator,
           **options) -> Inverted (num_steps None: the method's default; info["num_steps"] says which)
    reconstruct(ldm, inverted, cond_embeds, *, progress) -> z_0 (B, C, h, w), as the method regenerates
    options: the names and defaults of the keyword options the method accepts.
    """

    name: str
    invert: Callable[..., Inverted]
    reconstruct: Callable[..., torch.Tensor]
    options: dict[str, Any]
    description: str


# --------------------------------------------------------------------------- adapters

DEFAULT_STEPS = 50  # the official Memories setting (inversion and reconstruction)
# Each adapter resolves num_steps None to its method's default and records the step
# count it used in info["num_steps"]; reconstruct reads what it needs from info.


def _ddim_invert(
    ldm, latents, cond, num_steps, *, return_trajectory, progress, generator,
    guidance_scale: float = 0.0, reconstruction_guidance: float = 1.0,
) -> Inverted:
    num_steps = DEFAULT_STEPS if num_steps is None else num_steps
    seeds, trajectory = ddim_invert(
        ldm, latents, cond, num_steps, guidance_scale=guidance_scale,
        return_trajectory=return_trajectory, progress=progress,
    )
    info = {"num_steps": num_steps, "guidance_scale": guidance_scale,
            "reconstruction_guidance": reconstruction_guidance}
    return Inverted(seeds, trajectory, info)


def _ddim_reconstruct(ldm, inverted, cond, *, progress) -> torch.Tensor:
    info = inverted.info
    return ddim_sample(ldm, inverted.seeds, cond, info["num_steps"], info["reconstruction_guidance"],
                       progress=progress)


_RENOISE_FIELDS = [f.name for f in fields(ReNoiseConfig) if f.name not in ("num_inversion_steps", "num_inference_steps")]


def _renoise_invert(
    ldm, latents, cond, num_steps, *, return_trajectory, progress, generator,
    config: ReNoiseConfig | None = None, **overrides,
) -> Inverted:
    config = dataclasses.replace(config or ReNoiseConfig(), **overrides)
    if num_steps is not None:
        config = config.with_steps(num_steps)
    seeds, trajectory = renoise_invert(ldm, latents, cond, config, return_trajectory=return_trajectory,
                                       progress=progress, generator=generator)
    return Inverted(seeds, trajectory, {"num_steps": config.num_inversion_steps, "config": config})


def _renoise_reconstruct(ldm, inverted, cond, *, progress) -> torch.Tensor:
    config: ReNoiseConfig = inverted.info["config"]
    return ddim_sample(ldm, inverted.seeds, cond, config.num_inference_steps, config.reconstruction_guidance,
                       progress=progress)


_NTI_FIELDS = [f.name for f in fields(NullTextConfig)]


def _nti_invert(
    ldm, latents, cond, num_steps, *, return_trajectory, progress, generator,
    config: NullTextConfig | None = None, **overrides,
) -> Inverted:
    config = dataclasses.replace(config or NullTextConfig(), **overrides)
    num_steps = DEFAULT_STEPS if num_steps is None else num_steps
    out = null_text_invert(ldm, latents, cond, num_steps, config, progress=progress)
    info = {"num_steps": num_steps, "config": config, "uncond_embeds": out.uncond_embeds,
            "losses": out.losses, "inner_steps": out.inner_steps}
    return Inverted(out.seeds, out.pivots if return_trajectory else None, info)


def _nti_reconstruct(ldm, inverted, cond, *, progress) -> torch.Tensor:
    info = inverted.info
    return null_text_reconstruct(ldm, inverted.seeds, cond, info["uncond_embeds"], info["config"].guidance_scale,
                                 progress)


def _edict_invert(
    ldm, latents, cond, num_steps, *, return_trajectory, progress, generator,
    mix: float = DEFAULT_MIX, guidance_scale: float = 1.0, leapfrog: bool = True, float64: bool | None = None,
) -> Inverted:
    num_steps = DEFAULT_STEPS if num_steps is None else num_steps
    x_T, y_T, trajectory = edict_invert(ldm, latents, cond, num_steps, mix, guidance_scale, None, leapfrog,
                                        float64, return_trajectory, progress)
    info = {"num_steps": num_steps, "mix": mix, "guidance_scale": guidance_scale, "leapfrog": leapfrog,
            "float64": x_T.dtype == torch.float64, "x_T": x_T, "y_T": y_T}
    return Inverted(x_T, trajectory, info)


def _edict_reconstruct(ldm, inverted, cond, *, progress) -> torch.Tensor:
    info = inverted.info
    x_0, _ = edict_sample(ldm, info["x_T"], info["y_T"], cond, info["num_steps"], info["mix"], info["guidance_scale"],
                          None, info["leapfrog"], info["float64"], progress)
    return x_0


def _registry() -> dict[str, InversionMethod]:
    return {
        "ddim": InversionMethod(
            "ddim", _ddim_invert, _ddim_reconstruct,
            {"guidance_scale": 0.0, "reconstruction_guidance": 1.0},
            "DDIM inversion with the caption (guidance 0 = conditional only), DDIM reconstruction at guidance 1",
        ),
        "renoise": InversionMethod(
            "renoise", _renoise_invert, _renoise_reconstruct,
            {"config": None, **{name: getattr(ReNoiseConfig(), name) for name in _RENOISE_FIELDS}},
            "ReNoise (official Memories settings; noise regularisation off unless asked): 5 renoise iterations "
            "per DDIM step, reconstruction at guidance 1",
        ),
        "nti": InversionMethod(
            "nti", _nti_invert, _nti_reconstruct,
            {"config": None, **{name: getattr(NullTextConfig(), name) for name in _NTI_FIELDS}},
            "null-text inversion: per-step null embeddings optimised for guidance 7.5 and used to reconstruct",
        ),
        "edict": InversionMethod(
            "edict", _edict_invert, _edict_reconstruct,
            {"mix": DEFAULT_MIX, "guidance_scale": 1.0, "leapfrog": True, "float64": None},
            "EDICT: coupled exact inversion (float64 where possible); seeds are the x sequence",
        ),
    }


METHODS: dict[str, InversionMethod] = _registry()


def get_method(name: str) -> InversionMethod:
    """The registered method called ``name`` (ValueError listing the methods otherwise)."""
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown inversion method {name!r}; the methods are {sorted(METHODS)}") from None


# --------------------------------------------------------------------------- helpers


def _check_images(images01: torch.Tensor, prompts: list[str]) -> None:
    if images01.dim() != 4 or images01.shape[1] != 3:
        raise ValueError(f"images must be (B, 3, H, W) in [0, 1], got shape {tuple(images01.shape)}")
    if len(prompts) != images01.shape[0]:
        raise ValueError(f"got {len(prompts)} prompts for {images01.shape[0]} images")


def _check_batch_size(batch_size: int) -> None:
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size}")


def _merge_info(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Concatenate batch-first tensors over batches; keep other values from the first batch."""
    merged: dict[str, Any] = {}
    for key, value in parts[0].items():
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            merged[key] = torch.cat([p[key].detach().cpu() for p in parts])
        else:
            merged[key] = value
    return merged


def _cpu32(x: torch.Tensor) -> torch.Tensor:
    return x.detach().to("cpu", torch.float32)


# --------------------------------------------------------------------------- public API


def invert(
    ldm: LDM,
    images01: torch.Tensor,
    prompts: list[str],
    method: str = "renoise",
    num_steps: int | None = None,
    regenerate: bool = True,
    return_trajectory: bool = False,
    generator: torch.Generator | None = None,
    batch_size: int = 16,
    progress: bool = True,
    **options: Any,
) -> InversionResult:
    """Invert images (B, 3, H, W) in [0, 1] captioned by ``prompts`` into seeds z_T.

    ``method``: one of ``METHODS`` ("ddim", "renoise", "nti", "edict"); ``num_steps``
    None is the method's default (50, the official setting; ReNoise: its config's);
    ``options`` are the method's own
    (see ``METHODS[name].options``; unknown ones raise ValueError). With ``regenerate``
    the seeds are sampled back the way the method reconstructs and decoded.
    Images are processed ``batch_size`` at a time.
    """
    spec = get_method(method)
    unknown = sorted(set(options) - set(spec.options))
    if unknown:
        raise ValueError(f"method {method!r} has no option(s) {unknown}; its options are {sorted(spec.options)}")
    _check_images(images01, prompts)
    _check_batch_size(batch_size)
    if num_steps is not None and int(num_steps) < 1:
        raise ValueError(f"num_steps must be a positive integer, got {num_steps}")

    seeds, latents, recon, recon_latents, trajectories, infos = [], [], [], [], [], []
    starts = range(0, images01.shape[0], batch_size)
    for start in tqdm(starts, desc=f"{method} inversion", disable=not progress or len(starts) < 2):
        images = images01[start:start + batch_size]
        batch_prompts = list(prompts[start:start + batch_size])
        z0 = encode_images(ldm, images)
        cond = encode_prompts(ldm, batch_prompts)
        out = spec.invert(
            ldm, z0, cond, num_steps, return_trajectory=return_trajectory, progress=progress,
            generator=generator, **options,
        )
        seeds.append(_cpu32(out.seeds))
        latents.append(_cpu32(z0))
        if out.trajectory is not None:
            trajectories.append(_cpu32(out.trajectory))
        infos.append(out.info)
        if regenerate:
            z0_rec = spec.reconstruct(ldm, out, cond, progress=progress)
            recon_latents.append(_cpu32(z0_rec))
            recon.append(decode_latents(ldm, z0_rec))

    info = _merge_info(infos)
    return InversionResult(
        seeds=torch.cat(seeds),
        latents=torch.cat(latents),
        reconstruction=torch.cat(recon) if regenerate else None,
        trajectory=torch.cat(trajectories, dim=1) if trajectories else None,
        method=method,
        info=info,
        reconstruction_latents=torch.cat(recon_latents) if regenerate else None,
    )


__all__ = ["METHODS", "InversionMethod", "Inverted", "get_method", "invert"]
