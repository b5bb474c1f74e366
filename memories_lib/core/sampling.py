"""Deterministic DDIM sampling (Song et al. 2021): seeds z_T -> latents z_0 -> images, and generation from prompts.

The DDIM step, the schedule and the (guided) noise estimate are shared with the inversion
methods (``memories_lib.inversion``), which run the same step backwards.

Guidance, as in ``diffusers`` and the official "Memories of Forgotten Concepts" code:
``guidance_scale <= 1`` means *no* classifier-free guidance, the UNet sees the conditional
caption only (one forward per step), so 0 and 1 give the same result. The official
configuration inverts at "guidance 0" and reconstructs at guidance 1: both are the
conditional prediction alone. ``guidance_scale > 1`` is classifier-free guidance,
``eps = eps(uncond) + w * (eps(cond) - eps(uncond))``, with the empty prompt as the
unconditional embedding unless one is given (null-text inversion gives one per step).

Everything runs on a :class:`DDIMSchedule` built from a *copy* of ``ldm.scheduler``'s
config; the model's scheduler is never touched and nothing is stored on the ``ldm``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from diffusers import DDIMScheduler

from . import throughput
from .models import LDM, decode_latents, encode_prompts
from .progress import tqdm

UncondEmbeds = torch.Tensor | Sequence[torch.Tensor] | None


@dataclass(frozen=True)
class DDIMSchedule:
    """The N steps of a DDIM sampler, in sampling order (noisy to clean).

    timesteps:    (N,) the UNet's timestep t_i at step i, descending.
    alphas:       (N,) alpha_bar(t_i), the noise level a step starts from when sampling.
    alphas_prev:  (N,) alpha_bar of the next lower level t_{i+1}; after the last step the
                  scheduler's final level (``alphas_cumprod[0]`` for Stable Diffusion's
                  ``set_alpha_to_one=False``, else 1).
    prediction_type: what the UNet predicts ("epsilon" or "v_prediction").
    """

    timesteps: torch.Tensor
    alphas: torch.Tensor
    alphas_prev: torch.Tensor
    prediction_type: str = "epsilon"

    def __len__(self) -> int:
        return int(self.timesteps.shape[0])


def ddim_schedule(ldm_or_config, num_steps: int) -> DDIMSchedule:
    """The DDIM schedule of ``num_steps`` steps for an LDM (or a scheduler config), in float64."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be a positive integer, got {num_steps}")
    config = ldm_or_config.scheduler.config if isinstance(ldm_or_config, LDM) else ldm_or_config
    scheduler = DDIMScheduler.from_config(dict(config))  # a fresh copy: ldm.scheduler stays as it is
    if scheduler.config.prediction_type not in ("epsilon", "v_prediction"):
        raise ValueError(
            f"DDIM here supports prediction_type 'epsilon' or 'v_prediction', got {scheduler.config.prediction_type!r}"
        )
    scheduler.set_timesteps(num_steps)
    timesteps = scheduler.timesteps.clone().long()
    cumprod = scheduler.alphas_cumprod.double()
    alphas = cumprod[timesteps]
    # The level a sampling step lands on is the next timestep of the list, and after the
    # last one the scheduler's final level (what DDIMScheduler.step does for "leading"
    # and "trailing" spacing, where t_i - t_{i+1} is the step ratio).
    final = torch.as_tensor(scheduler.final_alpha_cumprod, dtype=torch.float64).reshape(1)
    alphas_prev = torch.cat([alphas[1:], final])
    return DDIMSchedule(timesteps, alphas, alphas_prev, scheduler.config.prediction_type)


def ddim_step(sample: torch.Tensor, eps: torch.Tensor, alpha_from, alpha_to) -> torch.Tensor:
    """Move ``sample`` from noise level alpha_bar ``alpha_from`` to ``alpha_to`` along ``eps``.

    The same deterministic DDIM update serves sampling (alpha_to > alpha_from) and
    inversion (alpha_to < alpha_from).
    """
    a_from = torch.as_tensor(alpha_from, dtype=sample.dtype, device=sample.device)
    a_to = torch.as_tensor(alpha_to, dtype=sample.dtype, device=sample.device)
    # (1) the clean latent that the current sample and noise estimate imply:
    #     x0_pred = (x_from - sqrt(1 - a_from) * eps) / sqrt(a_from)
    x0_pred = (sample - (1 - a_from).sqrt() * eps) / a_from.sqrt()
    # (2) re-noise it to the target level with the same noise:
    #     x_to = sqrt(a_to) * x0_pred + sqrt(1 - a_to) * eps
    return a_to.sqrt() * x0_pred + (1 - a_to).sqrt() * eps


def working_dtype(latents: torch.Tensor) -> torch.dtype:
    """The dtype of the DDIM arithmetic: float64 for float64 latents, float32 otherwise (also for fp16 models)."""
    return torch.float64 if latents.dtype == torch.float64 else torch.float32


def empty_prompt_embeds(ldm: LDM, batch: int) -> torch.Tensor:
    """The empty prompt's text embeddings, (batch, L, D): the unconditional branch of CFG."""
    return encode_prompts(ldm, [""]).expand(batch, -1, -1)


def _batch_embeds(embeds: torch.Tensor, batch: int, name: str) -> torch.Tensor:
    if embeds.dim() != 3:
        raise ValueError(f"{name} must be (B, L, D) text embeddings, got shape {tuple(embeds.shape)}")
    if embeds.shape[0] == batch:
        return embeds
    if embeds.shape[0] == 1:
        return embeds.expand(batch, -1, -1)
    raise ValueError(f"{name} has {embeds.shape[0]} rows for a batch of {batch} latents (give B or 1)")


def unet_placement(ldm: LDM) -> tuple[torch.device, torch.dtype]:
    """The UNet's device and dtype, read from its first parameter.

    (``ldm.device`` / ``ldm.dtype`` walk the module and cost ~0.5 ms each, which is
    noticeable beside a small UNet's forward; this is what the loops call.)
    """
    param = next(ldm.unet.parameters())
    return param.device, param.dtype


def uses_cfg(guidance_scale: float) -> bool:
    """Whether ``guidance_scale`` means classifier-free guidance (> 1) or the conditional prediction only (<= 1)."""
    if guidance_scale < 0:
        raise ValueError(f"guidance_scale must be >= 0, got {guidance_scale}")
    return guidance_scale > 1.0


def predict_noise(
    ldm: LDM,
    sample: torch.Tensor,
    timestep: torch.Tensor | int,
    cond_embeds: torch.Tensor,
    guidance_scale: float = 1.0,
    uncond_embeds: torch.Tensor | None = None,
    prediction_type: str = "epsilon",
    alpha: torch.Tensor | float | None = None,
) -> torch.Tensor:
    """The (guided) noise estimate eps(sample, t), in ``sample``'s dtype.

    With ``guidance_scale > 1`` both branches go through the UNet as one batch of 2B.
    ``alpha`` (alpha_bar(t)) is needed only to turn a v-prediction into a noise estimate.
    """
    batch = sample.shape[0]
    device, dtype = unet_placement(ldm)
    cond = _batch_embeds(cond_embeds, batch, "cond_embeds").to(device, dtype)
    x = sample.to(device, dtype)
    t = torch.as_tensor(timestep, device=device)
    if uses_cfg(guidance_scale):
        if uncond_embeds is None:
            uncond_embeds = empty_prompt_embeds(ldm, batch)
        uncond = _batch_embeds(uncond_embeds, batch, "uncond_embeds").to(device, dtype)
        out = ldm.unet(torch.cat([x, x]), t, encoder_hidden_states=torch.cat([uncond, cond])).sample
        out = out.to(sample.dtype)
        out_uncond, out_cond = out.chunk(2)
        out = out_uncond + guidance_scale * (out_cond - out_uncond)
    else:
        out = ldm.unet(x, t, encoder_hidden_states=cond).sample.to(sample.dtype)
    if prediction_type == "v_prediction":
        if alpha is None:
            raise ValueError("a v-prediction model needs alpha_bar(t) to give a noise estimate")
        a = torch.as_tensor(alpha, dtype=sample.dtype, device=out.device)
        out = a.sqrt() * out + (1 - a).sqrt() * sample.to(out.device)  # eps = sqrt(a) v + sqrt(1 - a) x
    return out


def _uncond_at(uncond_embeds: UncondEmbeds, step: int) -> torch.Tensor | None:
    if uncond_embeds is None or isinstance(uncond_embeds, torch.Tensor):
        return uncond_embeds
    return uncond_embeds[step]


@torch.no_grad()
def ddim_sample(
    ldm: LDM,
    z_T: torch.Tensor,
    cond_embeds: torch.Tensor,
    num_steps: int,
    guidance_scale: float = 1.0,
    uncond_embeds: UncondEmbeds = None,
    progress: bool = True,
) -> torch.Tensor:
    """Deterministic DDIM sampling (eta = 0) of seeds z_T (B, C, h, w) into latents z_0.

    ``guidance_scale`` <= 1: conditional only (the official reconstruction uses 1);
    > 1: classifier-free guidance. ``uncond_embeds`` is one (B or 1, L, D) tensor for every
    step, or a sequence of N of them, one per sampling step (null-text inversion).
    Returns z_0 in the working dtype, on the model's device.
    """
    schedule = ddim_schedule(ldm, num_steps)
    if uncond_embeds is not None and not isinstance(uncond_embeds, torch.Tensor):
        if len(uncond_embeds) != len(schedule):
            raise ValueError(f"got {len(uncond_embeds)} per-step uncond_embeds for {len(schedule)} steps")
    x = z_T.to(unet_placement(ldm)[0], working_dtype(z_T))
    if uses_cfg(guidance_scale) and uncond_embeds is None:
        uncond_embeds = empty_prompt_embeds(ldm, x.shape[0])
    for i in tqdm(range(len(schedule)), desc="DDIM sampling", disable=not progress, leave=False):
        t = schedule.timesteps[i]
        # 1. eps_theta(x_t, t, c), guided when guidance_scale > 1.
        eps = predict_noise(
            ldm, x, t, cond_embeds, guidance_scale, _uncond_at(uncond_embeds, i),
            schedule.prediction_type, schedule.alphas[i],
        )
        # 2. x_{t-1} = sqrt(a_{t-1}) * x0_pred + sqrt(1 - a_{t-1}) * eps.
        x = ddim_step(x, eps, schedule.alphas[i], schedule.alphas_prev[i])
    return x


def regenerate(
    ldm: LDM,
    seeds: torch.Tensor,
    prompts: list[str],
    num_steps: int,
    guidance_scale: float = 1.0,
    uncond_embeds: torch.Tensor | None = None,
    batch_size: int | None = None,
    progress: bool = True,
) -> torch.Tensor:
    """Images in [0, 1] (B, 3, H, W) sampled by DDIM from ``seeds`` (B, C, h, w) with ``prompts``.

    ``guidance_scale`` <= 1: conditional only (the official reconstruction uses 1); > 1:
    classifier-free guidance against ``uncond_embeds`` (default: the empty prompt). ``batch_size``
    seeds at a time (None: :mod:`.throughput`'s rule), each batch with that rule's CPU threads.
    """
    if seeds.dim() != 4 or len(prompts) != seeds.shape[0]:
        raise ValueError(f"need (B, C, h, w) seeds and B prompts, got {tuple(seeds.shape)} and {len(prompts)}")
    rows = 2 if uses_cfg(guidance_scale) else 1
    if batch_size is None:
        batch_size = throughput.unet_batch_size(ldm, seeds.shape[0], rows)
    _check_batch_size(batch_size)
    device, _ = unet_placement(ldm)
    images = []
    starts = range(0, seeds.shape[0], batch_size)
    for start in tqdm(starts, desc="regenerate", disable=not progress or len(starts) < 2):
        batch = seeds[start:start + batch_size]
        with throughput.threads_for_batch(rows * batch.shape[0], device):
            cond = encode_prompts(ldm, list(prompts[start:start + batch_size]))
            uncond = None
            if uncond_embeds is not None:
                uncond = uncond_embeds if uncond_embeds.shape[0] == 1 else uncond_embeds[start:start + batch_size]
            z0 = ddim_sample(ldm, batch, cond, num_steps, guidance_scale, uncond, progress)
            images.append(decode_latents(ldm, z0))
    return torch.cat(images)


def sample_seeds(ldm: LDM, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``n`` seeds from N(0, I), (n, C, h, w), float32 on the CPU (drawn on the generator's device)."""
    device = generator.device if generator is not None else torch.device("cpu")
    return torch.randn((n, *ldm.latent_shape), generator=generator, device=device).cpu()


def generate(
    ldm: LDM,
    prompts: list[str],
    generator: torch.Generator | None,
    num_steps: int,
    guidance_scale: float = 7.5,
    batch_size: int | None = None,
    progress: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fresh seeds from N(0, I) (with ``generator``) and the images they give: (seeds, images01).

    Classifier-free guidance against the empty prompt when ``guidance_scale`` > 1.
    """
    seeds = sample_seeds(ldm, len(prompts), generator)
    images = regenerate(ldm, seeds, prompts, num_steps, guidance_scale, None, batch_size, progress)
    return seeds, images




def _check_batch_size(batch_size: int) -> None:
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
