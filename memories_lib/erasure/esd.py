"""Erased Stable Diffusion (ESD; Gandikota et al., ICCV 2023): fine-tuning with negative guidance.

A copy of the UNet is trained so that, prompted with the concept c, it predicts the frozen
model's noise *steered away* from c:

    eps_esd(z_t, c, t)  ->  eps(z_t, t) - eta [eps(z_t, c, t) - eps(z_t, t)],   eta = 1,

where eps is the frozen original and eps(z_t, t) its prediction for the empty prompt. The
training latents z_t come, as in the official code, from the model being trained: DDIM
sampling (50 steps, guidance 3, prompted with c) from a fresh seed, stopped after a random
number of steps. ESD-x trains the cross-attention (``attn2``) parameters only; ESD-u everything
else except the time embedding and the output head (the official ``noxattn`` choice). The
official Stable Diffusion run uses Adam, lr 1e-5, 1000 iterations; small models need a larger lr
and fewer steps, so both are settings.

The timestep of the loss, here: k is drawn from 0..ddim_steps - 1, k DDIM steps are sampled
(k = 0: the pure-noise seed), and the loss is taken at the k-th timestep of the schedule, the
noise level the sampled latent actually has.

The official script (``train-scripts/train-esd.py`` of rohitgandikota/erasing, the CompVis code
behind the published checkpoints) pairs them differently. Its sampler has 50 steps on 1000
training timesteps, tau_j = 20 j + 1 (j = 49 is the noisiest), run from j = 49 down. It draws
t_enc from 0..49 and stops after the step of index j = t_enc - 1 (``till_T``), which leaves the
latent at the level of tau_{t_enc - 2} = 20 t_enc - 39 (for t_enc >= 2; t_enc 0 and 1 sample to
the end, the clean level). So at least two steps are sampled and pure noise is never used. The
loss is then taken at a training timestep drawn uniformly from [20 t_enc, 20 t_enc + 20): for
t_enc >= 2 that is 39 to 58 timesteps, two to three DDIM intervals, noisier than the latent the
UNet is given. This module keeps the latent and its timestep consistent instead.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, UNet2DConditionModel

from ..core.progress import tqdm
from ..core.tokenizer import tokenize
from .training import check_prompts

ESD_METHODS = ("esd-x", "esd-u")

#: Parameters ESD-u leaves frozen besides cross-attention (CompVis ``time_embed`` and ``out.``).
_ESD_U_FROZEN_PREFIXES = ("time_embedding.", "conv_norm_out.", "conv_out.")


@dataclass(frozen=True)
class ESDConfig:
    """Settings of an ESD run; the defaults are the official ones for Stable Diffusion 1.4."""

    method: str = "esd-x"
    iterations: int = 1000
    lr: float = 1e-5
    negative_guidance: float = 1.0   # eta
    start_guidance: float = 3.0      # classifier-free guidance while sampling training latents
    ddim_steps: int = 50
    batch_size: int = 1

    def __post_init__(self) -> None:
        if self.method not in ESD_METHODS:
            raise ValueError(f"ESD method must be one of {ESD_METHODS}, got {self.method!r}")
        if self.iterations < 0 or self.ddim_steps < 1 or self.batch_size < 1:
            raise ValueError(
                f"ESD needs iterations >= 0, ddim_steps >= 1 and batch_size >= 1, got {self.iterations}, "
                f"{self.ddim_steps}, {self.batch_size}"
            )
        if self.lr <= 0:
            raise ValueError(f"ESD learning rate must be positive, got {self.lr}")


@dataclass
class ESDResult:
    """A fine-tuned copy of a UNet.

    unet:    the ESD UNet (a new object; the input UNet is untouched).
    trained: names of the parameters that were trained.
    losses:  the loss of every iteration.
    steps:   per iteration, how many DDIM steps were sampled before the loss (0 = pure noise).
    """

    unet: UNet2DConditionModel
    trained: list[str]
    losses: list[float]
    steps: list[int]
    config: ESDConfig
    info: dict[str, Any] = field(default_factory=dict)


def esd_parameter_names(unet: torch.nn.Module, method: str) -> list[str]:
    """Names of the parameters that ``method`` ("esd-x" or "esd-u") trains."""
    if method not in ESD_METHODS:
        raise ValueError(f"ESD method must be one of {ESD_METHODS}, got {method!r}")
    names = []
    for name, _ in unet.named_parameters():
        cross = "attn2." in name
        if method == "esd-x" and cross:
            names.append(name)
        elif method == "esd-u" and not cross and not name.startswith(_ESD_U_FROZEN_PREFIXES):
            names.append(name)
    if not names:
        raise ValueError(f"the UNet has no parameters for {method} to train")
    return names


@torch.no_grad()
def _embed(text_encoder: torch.nn.Module, tokenizer, prompts: list[str], dtype: torch.dtype) -> torch.Tensor:
    device = next(text_encoder.parameters()).device
    return text_encoder(tokenize(tokenizer, prompts).to(device))[0].to(dtype)


def esd_erase(
    unet: UNet2DConditionModel,
    text_encoder: torch.nn.Module,
    tokenizer,
    scheduler: DDIMScheduler,
    concept: str | Sequence[str],
    config: ESDConfig = ESDConfig(),
    *,
    generator: torch.Generator,
    progress: bool = True,
) -> ESDResult:
    """Fine-tune a copy of ``unet`` to erase ``concept`` (ESD-x or ESD-u, see :class:`ESDConfig`).

    ``concept`` is one prompt or several; with several, every iteration trains on one drawn at
    random (as the official script does with its list of words). ``unet`` is the frozen teacher
    and is not modified. All randomness (the prompt, the number of sampling steps, the seeds of
    the training latents) comes from ``generator``.
    """
    prompts = check_prompts("ESD", [concept] if isinstance(concept, str) else concept)
    device, dtype = unet.device, unet.dtype
    frozen = unet
    student = copy.deepcopy(unet)
    student.requires_grad_(False)
    trained = esd_parameter_names(student, config.method)
    params = dict(student.named_parameters())
    for name in trained:
        params[name].requires_grad_(True)
    student.train()
    optimizer = torch.optim.Adam([params[n] for n in trained], lr=config.lr)

    batch = config.batch_size
    conds = _embed(text_encoder, tokenizer, prompts, dtype)
    uncond = _embed(text_encoder, tokenizer, [""], dtype).expand(batch, -1, -1)
    sampler = DDIMScheduler.from_config(scheduler.config)
    sampler.set_timesteps(config.ddim_steps, device=device)
    timesteps = sampler.timesteps
    shape = (batch, student.config.in_channels, student.config.sample_size, student.config.sample_size)

    losses: list[float] = []
    steps: list[int] = []
    start = time.perf_counter()
    bar = tqdm(range(config.iterations), desc=f"ESD ({config.method}) '{prompts[0]}'", disable=not progress)
    for _ in bar:
        j = int(torch.randint(0, len(prompts), (1,), generator=generator, device=generator.device)) if len(prompts) > 1 else 0
        cond = conds[j : j + 1].expand(batch, -1, -1)
        k = int(torch.randint(0, config.ddim_steps, (1,), generator=generator, device=generator.device))
        z = torch.randn(shape, generator=generator, device=generator.device).to(device, dtype)
        z = z * sampler.init_noise_sigma
        with torch.no_grad():
            # 1. Training latent: k DDIM steps of the current ESD model, guided towards the concept.
            for t in timesteps[:k]:
                eps_u, eps_c = student(
                    torch.cat([z, z]), t, encoder_hidden_states=torch.cat([uncond, cond])
                ).sample.chunk(2)
                eps = eps_u + config.start_guidance * (eps_c - eps_u)
                z = sampler.step(eps, t, z).prev_sample
            t = timesteps[k]
            # 2. Frozen teacher: unconditional and concept-conditioned noise at that point.
            e_0, e_c = frozen(torch.cat([z, z]), t, encoder_hidden_states=torch.cat([uncond, cond])).sample.chunk(2)
            target = e_0 - config.negative_guidance * (e_c - e_0)
        # 3. The student, prompted with the concept, regresses to the negatively guided target.
        pred = student(z, t, encoder_hidden_states=cond).sample
        loss = F.mse_loss(pred.float(), target.float())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        value = float(loss.detach())
        losses.append(value)
        steps.append(k)
        bar.set_postfix(loss=f"{value:.4f}", steps=k)

    student.eval()
    student.requires_grad_(False)
    info = {"prompts": prompts, "seconds": time.perf_counter() - start, "config": asdict(config)}
    return ESDResult(unet=student, trained=trained, losses=losses, steps=steps, config=config, info=info)
