"""EDICT (Wallace et al. 2023): exact diffusion inversion by coupled transformations.

Two latent sequences x and y start equal to z_0 (inversion) or to the seed (sampling).
A sampling step at timestep t updates each with the noise predicted from the *other*,

    x <- ddim_step(x, eps(y, t))      y <- ddim_step(y, eps(x, t))

(the order alternates between steps, "leapfrog"), then mixes them with weight p:

    x <- p x + (1 - p) y              y <- p y + (1 - p) x

Each update is affine in the sequence it changes, given the other, so it can be undone
exactly: the inversion runs the steps backwards, unmixing first. Reconstruction is exact
to the arithmetic's precision, so the UNet runs in float64 where the device allows it (CPU
and CUDA): the UNet is cast to float64 for the call and cast back afterwards (exactly: a
float32 or float16 weight survives the round trip through float64 unchanged).

Seeds: EDICT inverts an image into a *pair* (x_T, y_T). The seed reported is x_T (the
two differ by the coupling, typically by much less than a seed's norm); y_T is kept so
the exact reconstruction can start from the pair.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch

from ..core.models import LDM
from ..core.progress import tqdm
from ..core.sampling import ddim_schedule, ddim_step, empty_prompt_embeds, predict_noise, uses_cfg

DEFAULT_MIX = 0.93


def float64_supported(device: torch.device) -> bool:
    """Whether float64 convolutions run on ``device`` (CPU and CUDA yes; MPS no)."""
    return torch.device(device).type in ("cpu", "cuda")


@contextmanager
def unet_dtype(ldm: LDM, dtype: torch.dtype) -> Iterator[None]:
    """Run the block with ``ldm.unet`` in ``dtype``; its own dtype is restored on exit."""
    original = ldm.unet.dtype
    if dtype == original:
        yield
        return
    # torch.nn.Module.to: diffusers' own .to warns about fp32-kept modules this UNet lacks.
    torch.nn.Module.to(ldm.unet, dtype)
    try:
        yield
    finally:
        torch.nn.Module.to(ldm.unet, original)


def _precision(ldm: LDM, float64: bool | None) -> torch.dtype:
    if float64 is None:
        float64 = float64_supported(ldm.device)
    if float64 and not float64_supported(ldm.device):
        raise ValueError(f"float64 is not supported on {ldm.device}; pass float64=False")
    return torch.float64 if float64 else torch.float32


def _order(step: int, leapfrog: bool) -> tuple[int, int]:
    """Which sequence a sampling step updates first (0 = x, 1 = y)."""
    return (1, 0) if leapfrog and step % 2 else (0, 1)


def _check_mix(mix: float) -> None:
    if not 0 < mix <= 1:
        raise ValueError(f"the EDICT mixing weight must be in (0, 1], got {mix}")


@torch.no_grad()
def edict_invert(
    ldm: LDM,
    latents: torch.Tensor,
    cond_embeds: torch.Tensor,
    num_steps: int,
    mix: float = DEFAULT_MIX,
    guidance_scale: float = 1.0,
    uncond_embeds: torch.Tensor | None = None,
    leapfrog: bool = True,
    float64: bool | None = None,
    return_trajectory: bool = False,
    progress: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """EDICT inversion of latents z_0 (B, C, h, w): returns (x_T, y_T, trajectory of x or None).

    ``guidance_scale`` <= 1 is the conditional caption only (as the official Memories
    setting); > 1 classifier-free guidance. ``float64``: None = where the device allows.
    """
    _check_mix(mix)
    dtype = _precision(ldm, float64)
    schedule = ddim_schedule(ldm, num_steps)
    pair = [latents.to(ldm.device, dtype).clone(), latents.to(ldm.device, dtype).clone()]
    cond = cond_embeds.to(ldm.device, dtype)
    if uses_cfg(guidance_scale):
        uncond_embeds = empty_prompt_embeds(ldm, latents.shape[0]) if uncond_embeds is None else uncond_embeds
        uncond_embeds = uncond_embeds.to(ldm.device, dtype)
    trajectory = [pair[0]] if return_trajectory else None
    with unet_dtype(ldm, dtype):
        for i in tqdm(range(len(schedule) - 1, -1, -1), desc="EDICT inversion", disable=not progress, leave=False):
            t, a_t, a_prev = schedule.timesteps[i], schedule.alphas[i], schedule.alphas_prev[i]
            # 1. undo the mixing: y = (y - (1 - p) x) / p, then x = (x - (1 - p) y) / p.
            pair[1] = (pair[1] - (1 - mix) * pair[0]) / mix
            pair[0] = (pair[0] - (1 - mix) * pair[1]) / mix
            # 2. undo the two updates in reverse order; each uses the other sequence, unchanged.
            for k in reversed(_order(i, leapfrog)):
                eps = predict_noise(ldm, pair[1 - k], t, cond, guidance_scale, uncond_embeds,
                                    schedule.prediction_type, a_t)
                pair[k] = ddim_step(pair[k], eps, a_prev, a_t)
            if trajectory is not None:
                trajectory.append(pair[0])
    return pair[0], pair[1], (torch.stack(trajectory) if trajectory is not None else None)


@torch.no_grad()
def edict_sample(
    ldm: LDM,
    x_T: torch.Tensor,
    y_T: torch.Tensor | None,
    cond_embeds: torch.Tensor,
    num_steps: int,
    mix: float = DEFAULT_MIX,
    guidance_scale: float = 1.0,
    uncond_embeds: torch.Tensor | None = None,
    leapfrog: bool = True,
    float64: bool | None = None,
    progress: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """EDICT sampling from the pair (x_T, y_T) (``y_T`` None: a fresh seed, y_T = x_T): returns (x_0, y_0)."""
    _check_mix(mix)
    dtype = _precision(ldm, float64)
    schedule = ddim_schedule(ldm, num_steps)
    pair = [x_T.to(ldm.device, dtype).clone(), (x_T if y_T is None else y_T).to(ldm.device, dtype).clone()]
    cond = cond_embeds.to(ldm.device, dtype)
    if uses_cfg(guidance_scale):
        uncond_embeds = empty_prompt_embeds(ldm, x_T.shape[0]) if uncond_embeds is None else uncond_embeds
        uncond_embeds = uncond_embeds.to(ldm.device, dtype)
    with unet_dtype(ldm, dtype):
        for i in tqdm(range(len(schedule)), desc="EDICT sampling", disable=not progress, leave=False):
            t, a_t, a_prev = schedule.timesteps[i], schedule.alphas[i], schedule.alphas_prev[i]
            # 1. x <- ddim_step(x, eps(y, t)) and y <- ddim_step(y, eps(x, t)), in leapfrog order.
            for k in _order(i, leapfrog):
                eps = predict_noise(ldm, pair[1 - k], t, cond, guidance_scale, uncond_embeds,
                                    schedule.prediction_type, a_t)
                pair[k] = ddim_step(pair[k], eps, a_t, a_prev)
            # 2. mixing: x = p x + (1 - p) y, then y = p y + (1 - p) x.
            pair[0] = mix * pair[0] + (1 - mix) * pair[1]
            pair[1] = mix * pair[1] + (1 - mix) * pair[0]
    return pair[0], pair[1]
