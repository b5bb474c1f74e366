"""DDIM inversion (Song et al. 2021): latents z_0 -> seeds z_T, the DDIM step run backwards.

The step, the schedule and the noise estimate are the sampler's (``memories_lib.core.sampling``);
see that module for the guidance convention.
"""

from __future__ import annotations

import torch

from ..core.models import LDM
from ..core.progress import tqdm
from ..core.sampling import (
    ddim_schedule,
    ddim_step,
    empty_prompt_embeds,
    predict_noise,
    unet_placement,
    uses_cfg,
    working_dtype,
)


@torch.no_grad()
def ddim_invert(
    ldm: LDM,
    latents: torch.Tensor,
    cond_embeds: torch.Tensor,
    num_steps: int,
    guidance_scale: float = 0.0,
    uncond_embeds: torch.Tensor | None = None,
    return_trajectory: bool = False,
    progress: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """DDIM inversion of a batch of latents z_0 (B, C, h, w) into seeds z_T.

    ``guidance_scale`` 0 (the default, the official setting) or 1: conditional caption
    only; > 1: classifier-free guidance with ``uncond_embeds`` (default: empty prompt).
    Step i of the inversion undoes sampling step N-1-i: it evaluates the noise at the
    current (less noisy) sample with the timestep of the level it moves to, the usual
    approximation that makes DDIM inversion inexact.

    Returns z_T (in the working dtype, on the model's device) and, when asked, the
    trajectory z_0 .. z_T as (N + 1, B, C, h, w).
    """
    schedule = ddim_schedule(ldm, num_steps)
    x = latents.to(unet_placement(ldm)[0], working_dtype(latents))
    trajectory = [x] if return_trajectory else None
    if uses_cfg(guidance_scale) and uncond_embeds is None:
        uncond_embeds = empty_prompt_embeds(ldm, x.shape[0])
    for i in tqdm(range(len(schedule) - 1, -1, -1), desc="DDIM inversion", disable=not progress, leave=False):
        t = schedule.timesteps[i]
        # 1. eps_theta(x_t, t_{+1}, c): the noise estimate at the current sample.
        eps = predict_noise(
            ldm, x, t, cond_embeds, guidance_scale, uncond_embeds, schedule.prediction_type, schedule.alphas[i]
        )
        # 2. x_{t+1} = sqrt(a_{t+1}) * x0_pred + sqrt(1 - a_{t+1}) * eps, where
        #    x0_pred = (x_t - sqrt(1 - a_t) * eps) / sqrt(a_t)  (see ddim_step).
        x = ddim_step(x, eps, schedule.alphas_prev[i], schedule.alphas[i])
        if trajectory is not None:
            trajectory.append(x)
    return x, (torch.stack(trajectory) if trajectory is not None else None)
