"""Null-text inversion (Mokady et al. 2023), batched, in two variants.

Prompt-to-prompt's (method "nti", :class:`NullTextConfig` defaults):

1. DDIM inversion with the conditional caption alone (guidance 1) gives the pivot
   trajectory z*_0 .. z*_T.
2. Sampling from z_T at guidance w (7.5), step i: optimise the unconditional ("null-text")
   embedding with Adam so that the guided DDIM step from the current latent lands on the
   pivot z*_{t-1}; then take that step with the optimised embedding. The embedding found at
   step i starts step i+1. 10 inner steps, a fresh Adam per step with learning rate
   1e-2 * (1 - i / 100), early stop when the loss falls below 1e-5 + i * 2e-5.
3. The reconstruction samples from z_T at guidance w with the N optimised embeddings.

The official Memories code's (method "nti-memories", :meth:`NullTextConfig.official_memories`):

1. Its own DDIM inversion loop: z_0 (the scaled posterior mean) is taken as the latent at
   the schedule's lowest timestep t_{N-1} (1 for Stable Diffusion at 50 steps, alpha_bar
   0.9983, not the final level alpha_bar(0)); each of N - 1 steps evaluates the noise at
   the level it moves from. The seed is the end of this loop, at t_0 (981): a plain
   DDIM seed of 49 steps, which the optimisation never changes.
2. For the N - 1 steps from t_0 down: 50 Adam steps per timestep at a constant learning
   rate 1e-2 with one optimiser for the whole run (its moments carry over from timestep to
   timestep), no early stop; the next latent is the last Adam iteration's prediction,
   made before that iteration's update.
3. Its reconstruction samples the same N - 1 steps at guidance 1: the conditional caption
   alone, so the optimised embeddings go unused and the regeneration is plain DDIM
   sampling from the seed. ``reconstruction_guidance=None`` uses them at guidance 7.5.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from ..core.models import LDM
from ..core.progress import tqdm
from ..core.sampling import ddim_sample, ddim_schedule, ddim_step, empty_prompt_embeds, predict_noise
from .ddim import ddim_invert


PIVOTS = ("ddim", "memories")
NEXT_LATENTS = ("optimised", "last-forward")


@dataclass(frozen=True)
class NullTextConfig:
    """Null-text inversion settings; the defaults are prompt-to-prompt's, :meth:`official_memories` the Memories code's.

    guidance_scale: w of the guided sampling the embeddings are optimised for (> 1).
    num_inner_steps: Adam steps per timestep (at most, with early stop).
    lr, lr_decay: the learning rate at sampling step i is lr * (1 - lr_decay * i).
    early_stop: whether an image stops optimising at step i once its loss is below
        early_stop_epsilon + early_stop_growth * i.
    shared_optimizer: one Adam (one set of moment estimates) for all timesteps, instead of
        a fresh one per timestep.
    pivot: the trajectory the embeddings are fitted to. "ddim": this project's DDIM
        inversion, N steps from the scheduler's final level, the noise evaluated at the
        level a step moves to (prompt-to-prompt's). "memories": the official Memories
        loop, N - 1 steps over the N-step schedule starting from z_0 taken as the level of
        its lowest timestep t_{N-1} (1 for Stable Diffusion at 50 steps), the noise
        evaluated at the level a step moves from; the seed is its end, at t_0.
    next_latent: the latent the next timestep starts from: "optimised" (a step with the
        optimised embedding) or "last-forward" (the prediction of the last Adam iteration,
        made before that iteration's update: the official Memories loop).
    reconstruction_guidance: the guidance of the reconstruction; None: ``guidance_scale``
        with the optimised per-step embeddings; <= 1: the conditional caption alone, so the
        embeddings go unused (the official Memories reconstruction, at 1).
    """

    guidance_scale: float = 7.5
    num_inner_steps: int = 10
    lr: float = 1e-2
    lr_decay: float = 1e-2
    early_stop: bool = True
    early_stop_epsilon: float = 1e-5
    early_stop_growth: float = 2e-5
    shared_optimizer: bool = False
    pivot: str = "ddim"
    next_latent: str = "optimised"
    reconstruction_guidance: float | None = None

    def __post_init__(self) -> None:
        if self.guidance_scale <= 1:
            raise ValueError(f"null-text inversion needs guidance_scale > 1, got {self.guidance_scale}")
        if self.num_inner_steps < 0 or self.lr <= 0:
            raise ValueError("NullTextConfig: num_inner_steps must be >= 0 and lr > 0")
        if self.pivot not in PIVOTS:
            raise ValueError(f"NullTextConfig.pivot must be one of {PIVOTS}, got {self.pivot!r}")
        if self.next_latent not in NEXT_LATENTS:
            raise ValueError(f"NullTextConfig.next_latent must be one of {NEXT_LATENTS}, got {self.next_latent!r}")
        if self.reconstruction_guidance is not None and self.reconstruction_guidance < 0:
            raise ValueError(f"NullTextConfig.reconstruction_guidance must be >= 0, got {self.reconstruction_guidance}")

    @classmethod
    def official_memories(cls, **changes) -> "NullTextConfig":
        """The official Memories null-text run (``src/nti.py``), with ``changes``.

        50 Adam steps per timestep at a constant learning rate 1e-2, one optimiser for all
        timesteps, no early stop, guidance 7.5, the "memories" pivot (seed = plain DDIM of
        N - 1 steps from alpha(t_{N-1})), the next latent from the last Adam iteration, and
        the reconstruction at guidance 1 (conditional only: the embeddings are unused).
        """
        preset = cls(num_inner_steps=50, lr=1e-2, lr_decay=0.0, early_stop=False, shared_optimizer=True,
                     pivot="memories", next_latent="last-forward", reconstruction_guidance=1.0)
        return dataclasses.replace(preset, **changes)



@dataclass
class NullTextResult:
    """The outcome of null-text inversion of B latents on an N-step schedule, with n steps (N, or N - 1 for "memories").

    seeds: z_T (B, C, h, w) of the pivot DDIM inversion.
    uncond_embeds: the optimised embedding of every sampling step, (B, n, L, D).
    pivots: the pivot trajectory z*_0 .. z*_T, (n + 1, B, C, h, w).
    losses: each step's last loss per image, (B, n); inner_steps: Adam steps taken, (B, n).
    """

    seeds: torch.Tensor
    uncond_embeds: torch.Tensor
    pivots: torch.Tensor
    losses: torch.Tensor
    inner_steps: torch.Tensor


@torch.no_grad()
def memories_ddim_invert(
    ldm: LDM, latents: torch.Tensor, cond_embeds: torch.Tensor, num_steps: int, progress: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """The official Memories DDIM inversion: N - 1 steps of an N-step schedule, from z_0 taken at t_{N-1}.

    Step k moves from level t_{N-k} to t_{N-1-k} (k = 1 .. N - 1) with the conditional noise
    eps(z, t_{N-k}) evaluated at the level it moves from. Returns the seed (at t_0) and the
    trajectory, (N, B, C, h, w), z_0 first.
    """
    schedule = ddim_schedule(ldm, num_steps)
    x = latents.to(ldm.device, torch.float64 if latents.dtype == torch.float64 else torch.float32)
    trajectory = [x]
    for i in tqdm(range(len(schedule) - 1, 0, -1), desc="DDIM inversion", disable=not progress, leave=False):
        eps = predict_noise(ldm, x, schedule.timesteps[i], cond_embeds, 1.0, None, schedule.prediction_type,
                            schedule.alphas[i])
        x = ddim_step(x, eps, schedule.alphas[i], schedule.alphas[i - 1])
        trajectory.append(x)
    return x, torch.stack(trajectory)


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

    ``num_steps``: N, the DDIM schedule's length (the "memories" pivot takes N - 1 steps).
    ``uncond_init``: the starting null-text embedding (default: the empty prompt's).
    Each image has its own embedding and its own early stop, and Adam acts entry by entry,
    so a batch gives what its images give one at a time (the loss is a sum of per-image means).
    """
    batch = latents.shape[0]
    schedule = ddim_schedule(ldm, num_steps)
    if config.pivot == "memories":
        seeds, pivots = memories_ddim_invert(ldm, latents, cond_embeds, num_steps, progress)
    else:
        seeds, pivots = ddim_invert(ldm, latents, cond_embeds, num_steps, guidance_scale=1.0,
                                    return_trajectory=True, progress=progress)
    n = pivots.shape[0] - 1  # the steps taken
    init = empty_prompt_embeds(ldm, batch) if uncond_init is None else uncond_init.expand(batch, -1, -1)
    uncond = init.detach().to(ldm.device, torch.float32).clone().requires_grad_(True)
    w = config.guidance_scale
    x = seeds
    embeds, losses, inner = [], torch.zeros(batch, n), torch.zeros(batch, n, dtype=torch.long)
    optimizer = torch.optim.Adam([uncond], lr=config.lr) if config.shared_optimizer else None
    for i in tqdm(range(n), desc="null-text inversion", disable=not progress, leave=False):
        t, a_t, a_prev = schedule.timesteps[i], schedule.alphas[i], schedule.alphas_prev[i]
        target = pivots[n - 1 - i]  # z*_{t-1}: the pivot one level below x
        with torch.no_grad():
            eps_cond = predict_noise(ldm, x, t, cond_embeds, 1.0, None, schedule.prediction_type, a_t)
        lr = config.lr * (1.0 - config.lr_decay * i)
        if not config.shared_optimizer:  # prompt-to-prompt: a fresh Adam (fresh moments) per timestep
            optimizer = torch.optim.Adam([uncond], lr=lr)
        else:
            for group in optimizer.param_groups:
                group["lr"] = lr
        active = torch.ones(batch, dtype=torch.bool, device=uncond.device)
        threshold = config.early_stop_epsilon + config.early_stop_growth * i
        last_forward = None
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
                # 3. images that stopped early keep their embedding (and their last prediction).
                uncond[~active] = before[~active]
                if last_forward is None:
                    last_forward = x_prev.detach().clone()
                else:
                    last_forward[active] = x_prev.detach()[active]
                losses[active.cpu(), i] = per_image.detach().float().cpu()[active.cpu()]
                inner[active.cpu(), i] += 1
                if config.early_stop:
                    active &= per_image.detach() >= threshold
        with torch.no_grad():
            step_uncond = uncond.detach().clone()
            if config.next_latent == "last-forward" and last_forward is not None:
                # 4a. the last Adam iteration's prediction, made before its update (official Memories).
                x = last_forward.to(x.dtype)
            else:
                # 4b. the step with the optimised embedding: the next latent of the reconstruction.
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


@torch.no_grad()
def null_text_reconstruct(
    ldm: LDM,
    seeds: torch.Tensor,
    cond_embeds: torch.Tensor,
    uncond_embeds: torch.Tensor,
    guidance_scale: float = 7.5,
    progress: bool = True,
    num_schedule_steps: int | None = None,
) -> torch.Tensor:
    """DDIM sampling from ``seeds`` at ``guidance_scale`` with the per-step embeddings (B, n, L, D).

    The sampler takes the first n steps of the ``num_schedule_steps``-step schedule (default
    n: prompt-to-prompt's full schedule; the "memories" variant passes N and has n = N - 1,
    ending at the level of t_{N-1}). At ``guidance_scale`` <= 1 the embeddings go unused.
    """
    if uncond_embeds.dim() != 4 or uncond_embeds.shape[0] != seeds.shape[0]:
        raise ValueError(f"uncond_embeds must be (B, N, L, D) for B = {seeds.shape[0]}, got {tuple(uncond_embeds.shape)}")
    n = uncond_embeds.shape[1]
    num_schedule_steps = n if num_schedule_steps is None else num_schedule_steps
    if num_schedule_steps == n:
        per_step = [uncond_embeds[:, i] for i in range(n)]
        return ddim_sample(ldm, seeds, cond_embeds, n, guidance_scale, per_step, progress)
    if not 0 < n <= num_schedule_steps:
        raise ValueError(f"{n} per-step embeddings for a schedule of {num_schedule_steps} steps")
    schedule = ddim_schedule(ldm, num_schedule_steps)
    x = seeds.to(ldm.device, torch.float64 if seeds.dtype == torch.float64 else torch.float32)
    for i in tqdm(range(n), desc="DDIM sampling", disable=not progress, leave=False):
        eps = predict_noise(ldm, x, schedule.timesteps[i], cond_embeds, guidance_scale, uncond_embeds[:, i],
                            schedule.prediction_type, schedule.alphas[i])
        x = ddim_step(x, eps, schedule.alphas[i], schedule.alphas_prev[i])
    return x
