"""Null-text inversion (Mokady et al. 2023), batched.

1. DDIM inversion with the conditional caption alone (guidance 1) gives the pivot
   trajectory z*_0 .. z*_T.
2. Sampling from z_T at guidance w (7.5), step i: optimise the unconditional ("null-text")
   embedding with Adam so that the guided DDIM step from the current latent lands on the
   pivot z*_{t-1}; then take that step with the optimised embedding. The embedding found at
   step i starts step i+1. Prompt-to-prompt's defaults: 10 inner steps, learning rate
   1e-2 * (1 - i / 100), early stop when the loss falls below 1e-5 + i * 2e-5.
3. The reconstruction samples from z_T at guidance w with the N optimised embeddings.

The official Memories code optimises the embeddings and then reconstructs at guidance 1,
where the unconditional branch drops out, so its optimised embeddings go unused. Here the
reconstruction uses them (see ``null_text_reconstruct``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from ..core.models import LDM
from ..core.sampling import ddim_sample, ddim_schedule, ddim_step, empty_prompt_embeds, predict_noise
from .ddim import ddim_invert


@dataclass(frozen=True)
class NullTextConfig:
    """Prompt-to-prompt's null-text inversion settings.

    guidance_scale: w of the guided sampling the embeddings are optimised for (> 1).
    num_inner_steps: Adam steps per timestep at most.
    lr, lr_decay: the learning rate at sampling step i is lr * (1 - lr_decay * i).
    early_stop_epsilon, early_stop_growth: an image stops optimising at step i once its
        loss is below early_stop_epsilon + early_stop_growth * i.
    """

    guidance_scale: float = 7.5
    num_inner_steps: int = 10
    lr: float = 1e-2
    lr_decay: float = 1e-2
    early_stop_epsilon: float = 1e-5
    early_stop_growth: float = 2e-5

    def __post_init__(self) -> None:
        if self.guidance_scale <= 1:
            raise ValueError(f"null-text inversion needs guidance_scale > 1, got {self.guidance_scale}")
        if self.num_inner_steps < 0 or self.lr <= 0:
            raise ValueError("NullTextConfig: num_inner_steps must be >= 0 and lr > 0")


@dataclass
class NullTextResult:
    """The outcome of null-text inversion of B latents with N steps.

    seeds: z_T (B, C, h, w) of the pivot DDIM inversion.
    uncond_embeds: the optimised embedding of every sampling step, (B, N, L, D).
    pivots: the pivot trajectory z*_0 .. z*_T, (N + 1, B, C, h, w).
    losses: each step's last loss per image, (B, N); inner_steps: Adam steps taken, (B, N).
    """

    seeds: torch.Tensor
    uncond_embeds: torch.Tensor
    pivots: torch.Tensor
    losses: torch.Tensor
    inner_steps: torch.Tensor


def null_text_invert(
    ldm: LDM,
    latents: torch.Tensor,
    cond_embeds: torch.Tensor,
    num_steps: int,
    config: NullTextConfig = NullTextConfig(),
    uncond_init: torch.Tensor | None = None,
    progress: bool = True,
) -> NullTextResult:
    """Null-text inversion of latents z_0 (B, C, h, w) with captions' embeddings (B, L, D).

    ``uncond_init``: the starting null-text embedding (default: the empty prompt's).
    Each image has its own embedding and its own early stop, so a batch gives what its
    images give one at a time (the loss is a sum of per-image means).
    """
    batch = latents.shape[0]
    schedule = ddim_schedule(ldm, num_steps)
    seeds, pivots = ddim_invert(ldm, latents, cond_embeds, num_steps, guidance_scale=1.0,
                                return_trajectory=True, progress=progress)
    init = empty_prompt_embeds(ldm, batch) if uncond_init is None else uncond_init.expand(batch, -1, -1)
    uncond = init.detach().to(ldm.device, torch.float32).clone().requires_grad_(True)
    w = config.guidance_scale
    x = seeds
    embeds, losses, inner = [], torch.zeros(batch, num_steps), torch.zeros(batch, num_steps, dtype=torch.long)
    for i in tqdm(range(num_steps), desc="null-text inversion", disable=not progress, leave=False):
        t, a_t, a_prev = schedule.timesteps[i], schedule.alphas[i], schedule.alphas_prev[i]
        target = pivots[num_steps - 1 - i]  # z*_{t-1}: the pivot one level below x
        with torch.no_grad():
            eps_cond = predict_noise(ldm, x, t, cond_embeds, 1.0, None, schedule.prediction_type, a_t)
        optimizer = torch.optim.Adam([uncond], lr=config.lr * (1.0 - config.lr_decay * i))
        active = torch.ones(batch, dtype=torch.bool, device=uncond.device)
        threshold = config.early_stop_epsilon + config.early_stop_growth * i
        for _ in range(config.num_inner_steps):
            if not active.any():
                break
            with torch.enable_grad():
                # 1. eps = eps(x, t, null) + w * (eps(x, t, c) - eps(x, t, null)), null being optimised.
                eps_uncond = predict_noise(ldm, x, t, uncond, 1.0, None, schedule.prediction_type, a_t)
                eps = eps_uncond + w * (eps_cond - eps_uncond)
                # 2. the guided DDIM step and its distance to the pivot, per image.
                x_prev = ddim_step(x, eps, a_t, a_prev)
                per_image = ((x_prev - target) ** 2).flatten(1).mean(1)
                optimizer.zero_grad(set_to_none=True)
                per_image.sum().backward()
            before = uncond.detach().clone()
            optimizer.step()
            with torch.no_grad():
                # 3. images that stopped early keep their embedding.
                uncond[~active] = before[~active]
                losses[active.cpu(), i] = per_image.detach().float().cpu()[active.cpu()]
                inner[active.cpu(), i] += 1
                active &= per_image.detach() >= threshold
        with torch.no_grad():
            step_uncond = uncond.detach().clone()
            # 4. the step with the optimised embedding: the next latent of the reconstruction.
            eps_uncond = predict_noise(ldm, x, t, step_uncond, 1.0, None, schedule.prediction_type, a_t)
            x = ddim_step(x, eps_uncond + w * (eps_cond - eps_uncond), a_t, a_prev)
        embeds.append(step_uncond)
    return NullTextResult(
        seeds=seeds,
        uncond_embeds=torch.stack(embeds, dim=1),
        pivots=pivots,
        losses=losses,
        inner_steps=inner,
    )


def null_text_reconstruct(
    ldm: LDM,
    seeds: torch.Tensor,
    cond_embeds: torch.Tensor,
    uncond_embeds: torch.Tensor,
    guidance_scale: float = 7.5,
    progress: bool = True,
) -> torch.Tensor:
    """DDIM sampling from ``seeds`` at ``guidance_scale`` with the per-step embeddings (B, N, L, D)."""
    if uncond_embeds.dim() != 4 or uncond_embeds.shape[0] != seeds.shape[0]:
        raise ValueError(f"uncond_embeds must be (B, N, L, D) for B = {seeds.shape[0]}, got {tuple(uncond_embeds.shape)}")
    num_steps = uncond_embeds.shape[1]
    per_step = [uncond_embeds[:, i] for i in range(num_steps)]
    return ddim_sample(ldm, seeds, cond_embeds, num_steps, guidance_scale, per_step, progress)
