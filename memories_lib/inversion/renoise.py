"""ReNoise inversion (Garibi et al. 2024) on a DDIM schedule, batched.

A DDIM inversion step from level t-1 to level t needs eps(z_t, t) but only has z_{t-1};
plain DDIM uses eps(z_{t-1}, t). ReNoise refines the estimate of z_t by fixed-point
iterations: evaluate the noise at the current estimate of z_t and redo the inversion step
from z_{t-1} with it, ``num_renoise_steps`` times. The step may use the mean of the noise
predictions of a range of iterations, and the predictions may be pulled towards Gaussian
statistics ("noise regularisation", from pix2pix-zero).

The defaults of :class:`ReNoiseConfig` are the run of the official "Memories of Forgotten
Concepts" code, which sets 50 inversion and 50 inference steps, 5 renoise iterations, no
noise correction and seed 42 on a DDIM scheduler, and leaves every other ReNoise setting
at ReNoise's own default:

- averaging over iterations [0, 5) for timesteps below 250 and [8, 10) from 250 on (which
  never happens with 5 iterations, so late steps keep the last iterate);
- noise regularisation on: 4 rounds of a patch-wise KL step (lambda 0.065, gradients
  clipped to [-100, 100]) and 5 auto-correlation steps (lambda 20, divided among the 5
  rolls), applied to every iterate and to the averaged noise of the steps that average,
  hence only below timestep 250;
- the KL term's target is the UNet's noise prediction at z_0 itself at the step's timestep:
  the official pipeline replaces the scheduler's ``add_noise`` with the identity, so its
  "forward-noised" latent is z_0 (``noise_regularization_target="z0"``);
- z_0 is a sample of the VAE posterior (mean + std * eps), not its mean, drawn with a
  generator seeded 42 that is created afresh for every image (``posterior="sample"``,
  ``seed=42``);
- guidance 0 during inversion (the conditional caption only), reconstruction at guidance 1.

Randomness. Every image has its own ``torch.Generator`` (CPU), seeded with the config's
``seed``; it gives, in the official pipeline's order, (1) the posterior sample's eps
(drawn at encoding, :func:`memories_lib.core.models.encode_images`), (2) the img2img noise
the official pipeline draws and discards, (3) the forward noise of the KL target (used
only with ``noise_regularization_target="noised"``), (4) the random shifts of the
auto-correlation term, one per channel and pyramid level and roll. So an image gives the
same seed alone or in any batch, and the random shifts follow the official run's for the
same seed. (Iterates whose step the averaged step replaces are still regularised when
regularisation is on, as officially, because their shifts advance the generator.)

:meth:`ReNoiseConfig.plain` is ReNoise without regularisation, from the posterior mean:
deterministic, and what this project used before it followed the official run.

The auto-correlation term averages over the latent's h*w entries, so its step per entry
is (64*64)/(h*w) times larger on a small latent than on Stable Diffusion's 64x64, and the
iteration can explode. On the mini shapes world (8x8 latents) the official setting gave
non-finite seeds for 18 of 96 images (64 reference, 32 erased-set images), and none with
``noise_regularization_scale_with_latent`` (lambda_ac times (h*w)/(64*64)), which is off by
default because the official run does not do it. ``inversion.invert`` flags such seeds
(``InversionResult.diverged``).

The official code itself gives the same seeds, NaN included: ``tools/check_official_renoise.py``
runs a checkout of it beside this module on the mini world (on the first 32 reference images, the
same 4 seeds are non-finite on both sides, and the others agree to about 1e-5 of the official seed's
standard deviation, against 0.02 between two seeds of the official code from the same z_0).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from ..core.models import LDM
from ..core.progress import tqdm
from ..core.sampling import ddim_schedule, ddim_step, empty_prompt_embeds, predict_noise, uses_cfg, working_dtype

#: The latent side of Stable Diffusion 1.x at 512x512, on which ReNoise's lambdas were set.
SD_LATENT_SIDE = 64
POSTERIORS = ("sample", "mean")
TARGETS = ("z0", "noised")


@dataclass(frozen=True)
class ReNoiseConfig:
    """The knobs of ReNoise; the defaults are the official Memories run (see the module docstring).

    num_inversion_steps / num_inference_steps: DDIM steps of the inversion and of the
        reconstruction (official: 50 and 50; they must be equal for the reconstruction to
        retrace the inversion).
    guidance_scale: during inversion; <= 1 means the conditional caption only (official: 0).
    reconstruction_guidance: of the DDIM reconstruction (official: 1, conditional only).
    num_renoise_steps: renoise iterations after the first DDIM estimate of each step.
    max_num_renoise_steps_first_step: cap on the iterations for timesteps below
        ``first_step_max_timestep`` (official: 5, equal to num_renoise_steps).
    average_latent_estimations: step with the mean noise of an iteration range.
    average_first_step_range / average_step_range: [start, end) of the iterations averaged
        for timesteps below / from ``first_step_max_timestep`` on (iteration 0 is the plain
        DDIM estimate; iterations run 0 .. num_renoise_steps).
    noise_regularization_num_reg_steps: rounds of pix2pix-zero's pull of the noise
        predictions towards N(0, I) statistics (official: 4; 0 turns it off); each round is
        one patch-wise KL step and ``noise_regularization_num_ac_rolls`` auto-correlation steps.
    noise_regularization_lambda_kl / _lambda_ac / _num_ac_rolls: ReNoise's 0.065, 20, 5.
    noise_regularization_target: the KL term's target, the UNet's noise prediction at the
        step's timestep of "z0" (z_0 itself: the official run, whose ``add_noise`` is the
        identity) or "noised" (z_0 forward-noised to that timestep with the image's forward
        noise: what ReNoise intends where ``add_noise`` is left alone).
    noise_regularization_scale_with_latent: multiply lambda_ac by (h*w)/(64*64), so that the
        auto-correlation step per entry is what it is on Stable Diffusion's 64x64 latent
        (a remedy for small latents, where the official setting can explode; not official).
    posterior: how the image's z_0 is encoded: "sample" (mean + std * eps of the VAE
        posterior, eps from the image's generator; official) or "mean".
    seed: of every image's generator (official: 42, the same for every image).
    """

    num_inversion_steps: int = 50
    num_inference_steps: int = 50
    guidance_scale: float = 0.0
    reconstruction_guidance: float = 1.0
    num_renoise_steps: int = 5
    max_num_renoise_steps_first_step: int = 5
    first_step_max_timestep: int = 250
    average_latent_estimations: bool = True
    average_first_step_range: tuple[int, int] = (0, 5)
    average_step_range: tuple[int, int] = (8, 10)
    noise_regularization_num_reg_steps: int = 4
    noise_regularization_lambda_kl: float = 0.065
    noise_regularization_lambda_ac: float = 20.0
    noise_regularization_num_ac_rolls: int = 5
    noise_regularization_target: str = "z0"
    noise_regularization_scale_with_latent: bool = False
    posterior: str = "sample"
    seed: int = 42

    def __post_init__(self) -> None:
        if self.num_inversion_steps < 1 or self.num_inference_steps < 1:
            raise ValueError("ReNoiseConfig: the numbers of inversion and inference steps must be positive")
        if self.num_renoise_steps < 0 or self.max_num_renoise_steps_first_step < 0:
            raise ValueError("ReNoiseConfig: the numbers of renoise steps must be >= 0")
        for name in ("average_first_step_range", "average_step_range"):
            lo, hi = getattr(self, name)
            if not 0 <= lo <= hi:
                raise ValueError(f"ReNoiseConfig.{name} must be [start, end) with 0 <= start <= end, got {(lo, hi)}")
            object.__setattr__(self, name, (int(lo), int(hi)))
        if self.noise_regularization_num_reg_steps < 0:
            raise ValueError("ReNoiseConfig.noise_regularization_num_reg_steps must be >= 0")
        if self.noise_regularization_num_ac_rolls < 1:
            raise ValueError("ReNoiseConfig.noise_regularization_num_ac_rolls must be >= 1")
        if self.noise_regularization_target not in TARGETS:
            raise ValueError(f"ReNoiseConfig.noise_regularization_target must be one of {TARGETS}, "
                             f"got {self.noise_regularization_target!r}")
        if self.posterior not in POSTERIORS:
            raise ValueError(f"ReNoiseConfig.posterior must be one of {POSTERIORS}, got {self.posterior!r}")
        if isinstance(self.seed, bool) or int(self.seed) != self.seed:
            raise ValueError(f"ReNoiseConfig.seed must be an integer, got {self.seed!r}")

    @property
    def regularizes(self) -> bool:
        """Whether noise regularisation acts at all."""
        return self.noise_regularization_num_reg_steps > 0 and (
            self.noise_regularization_lambda_kl > 0 or self.noise_regularization_lambda_ac > 0)

    @classmethod
    def official_memories(cls, **changes) -> "ReNoiseConfig":
        """The official Memories run (the defaults), with ``changes``."""
        return dataclasses.replace(cls(), **changes)

    @classmethod
    def plain(cls, **changes) -> "ReNoiseConfig":
        """ReNoise without noise regularisation, from the posterior mean (deterministic), with ``changes``.

        Everything else is the official run's: 5 renoise iterations, the same averaging, guidance 0 / 1.
        """
        return dataclasses.replace(cls(noise_regularization_num_reg_steps=0, posterior="mean"), **changes)

    def with_steps(self, num_steps: int) -> "ReNoiseConfig":
        """A copy with ``num_steps`` inversion and inference steps."""
        return dataclasses.replace(self, num_inversion_steps=num_steps, num_inference_steps=num_steps)

    def lambda_ac_for(self, latent_hw: tuple[int, int]) -> float:
        """The auto-correlation weight used on latents of spatial size ``latent_hw``."""
        if not self.noise_regularization_scale_with_latent:
            return self.noise_regularization_lambda_ac
        h, w = latent_hw
        return self.noise_regularization_lambda_ac * (h * w) / (SD_LATENT_SIDE * SD_LATENT_SIDE)

    def generators(self, n: int) -> list[torch.Generator]:
        """``n`` CPU generators, each seeded with ``seed`` (one per image, as the official run makes them)."""
        return [torch.Generator().manual_seed(int(self.seed)) for _ in range(n)]


# --------------------------------------------------------------------------- regularisation


def _patch_kl(x: torch.Tensor, target: torch.Tensor, patch: int = 4) -> torch.Tensor:
    """Sum over 4x4 spatial patches and channels of |KL| between Gaussian fits of x and target.

    Each patch of each channel is fitted by its mean and unbiased variance (16 entries);
    a sum over images, so every image gets its own gradient.
    """
    eps = 1e-6

    def stats(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, c, h, w = z.shape
        if h % patch or w % patch:
            raise ValueError(f"noise regularisation needs latents divisible by {patch}, got {h}x{w}")
        p = z.reshape(b, c, h // patch, patch, w // patch, patch).permute(0, 2, 4, 1, 3, 5)
        p = p.reshape(-1, c, patch * patch)
        return p.mean(-1), p.var(-1)

    mu0, var0 = stats(x)
    mu1, var1 = stats(target)
    kl = torch.log((var1 + eps) / (var0 + eps)) + (var0 + (mu0 - mu1) ** 2) / (var1 + eps) - 1
    return kl.abs().sum()


def _auto_corr(x: torch.Tensor, generators: Sequence[torch.Generator | None] | None) -> torch.Tensor:
    """Squared auto-correlations at random shifts over a pyramid, summed over images and channels.

    For every image and channel, from the full resolution down by 2x2 average pooling until
    the side is 8 or less: one random shift s in [0, side // 2) from the image's generator,
    and the squared means of x * roll(x, s) along each spatial axis. The shifts are drawn image
    by image, channel by channel, level by level (the order of the official per-image loop),
    and the terms are computed for the whole batch at once.
    """
    generators = [None] * x.shape[0] if generators is None else generators
    if len(generators) != x.shape[0]:
        raise ValueError(f"got {len(generators)} generators for {x.shape[0]} images")
    sides = [x.shape[2]]
    while sides[-1] > 8:
        sides.append(sides[-1] // 2)
    draws = torch.tensor([[int(torch.randint(0, max(side // 2, 1), (1,), generator=generator))
                           for _ in range(x.shape[1]) for side in sides]
                          for generator in generators], device=x.device)
    shifts = draws.reshape(x.shape[0], x.shape[1], len(sides))  # (image, channel, level)
    loss = x.new_zeros(())
    level = x
    for index in range(len(sides)):
        if index:
            level = F.avg_pool2d(level, kernel_size=2)
        s = shifts[:, :, index, None]
        for dim in (2, 3):
            n = level.shape[dim]
            rows = (torch.arange(n, device=x.device) - s) % n  # roll by s: entry i takes entry i - s
            shape = (*rows.shape, 1) if dim == 2 else (*rows.shape[:2], 1, n)
            rolled = torch.gather(level, dim, rows.reshape(shape).expand_as(level))
            loss = loss + ((level * rolled).mean(dim=(2, 3)) ** 2).sum()
    return loss


def regularize_noise(
    eps: torch.Tensor,
    eps_target: torch.Tensor,
    config: ReNoiseConfig,
    generators: Sequence[torch.Generator | None] | None = None,
) -> torch.Tensor:
    """Gradient steps that pull ``eps`` towards N(0, I) statistics (identity when num_reg_steps = 0).

    ``noise_regularization_num_reg_steps`` rounds of: one step on the patch-wise KL towards
    ``eps_target`` (gradient clipped to [-100, 100], times lambda_kl), then ``num_ac_rolls``
    steps on the auto-correlation loss, each with lambda_ac / num_ac_rolls (lambda_ac scaled
    by :meth:`ReNoiseConfig.lambda_ac_for`). ``generators``: one per image, for the shifts.
    Every term is a sum over images, so each image of a batch gets its own gradient.
    """
    if config.noise_regularization_num_reg_steps == 0:
        return eps
    eps = eps.detach()
    lambda_kl = config.noise_regularization_lambda_kl
    lambda_ac = config.lambda_ac_for(tuple(eps.shape[-2:]))
    rolls = config.noise_regularization_num_ac_rolls
    with torch.enable_grad():
        for _ in range(config.noise_regularization_num_reg_steps):
            if lambda_kl > 0:
                var = eps.clone().requires_grad_(True)
                (grad,) = torch.autograd.grad(_patch_kl(var, eps_target), var)
                eps = eps - lambda_kl * grad.clamp(-100, 100)
            if lambda_ac > 0:
                for _ in range(rolls):
                    var = eps.clone().requires_grad_(True)
                    (grad,) = torch.autograd.grad(_auto_corr(var, generators), var)
                    eps = eps - lambda_ac * (grad / rolls)
    return eps.detach()


# --------------------------------------------------------------------------- inversion


@torch.no_grad()
def renoise_invert(
    ldm: LDM,
    latents: torch.Tensor,
    cond_embeds: torch.Tensor,
    config: ReNoiseConfig = ReNoiseConfig(),
    uncond_embeds: torch.Tensor | None = None,
    return_trajectory: bool = False,
    progress: bool = True,
    generators: Sequence[torch.Generator] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """ReNoise inversion of latents z_0 (B, C, h, w) into seeds z_T, with ``config.num_inversion_steps`` steps.

    ``generators``: one CPU generator per image, in the state after its posterior sample was
    drawn (what ``inversion.invert`` passes); None: fresh ones from ``config.seed`` (the same
    as ``invert`` with ``posterior="mean"``). Each first gives the two latent-sized normal
    draws of the official pipeline (the img2img noise, discarded; the forward noise of a
    "noised" KL target), then the auto-correlation shifts. Returns z_T and, when asked, the
    trajectory z_0 .. z_T, (N + 1, B, C, h, w).
    """
    schedule = ddim_schedule(ldm, config.num_inversion_steps)
    z0 = latents.to(ldm.device, working_dtype(latents))
    z = z0
    batch = z.shape[0]
    if generators is None:
        generators = config.generators(batch)
    generators = list(generators)
    if len(generators) != batch:
        raise ValueError(f"got {len(generators)} generators for {batch} latents")
    if uses_cfg(config.guidance_scale) and uncond_embeds is None:
        uncond_embeds = empty_prompt_embeds(ldm, batch)
    shape = (1, *z.shape[1:])
    forward_noise = []
    for generator in generators:
        torch.randn(shape, generator=generator)  # the official img2img noise: drawn, never used
        forward_noise.append(torch.randn(shape, generator=generator))
    forward_noise = torch.cat(forward_noise).to(z.device, z.dtype)
    regularize = config.regularizes

    def eps_at(sample: torch.Tensor, i: int) -> torch.Tensor:
        return predict_noise(ldm, sample, schedule.timesteps[i], cond_embeds, config.guidance_scale,
                             uncond_embeds, schedule.prediction_type, schedule.alphas[i])

    trajectory = [z] if return_trajectory else None
    for i in tqdm(range(len(schedule) - 1, -1, -1), desc="ReNoise inversion", disable=not progress, leave=False):
        t = int(schedule.timesteps[i])
        a_from, a_to = schedule.alphas_prev[i], schedule.alphas[i]
        early = t < config.first_step_max_timestep
        lo, hi = config.average_first_step_range if early else config.average_step_range
        n_renoise = min(config.max_num_renoise_steps_first_step, config.num_renoise_steps) if early \
            else config.num_renoise_steps

        target = None

        def regularized(eps: torch.Tensor) -> torch.Tensor:
            nonlocal target
            if target is None:  # the KL target, computed only at steps that regularise
                if config.noise_regularization_target == "z0":
                    target = eps_at(z0, i)  # eps(z_0, t): the official add_noise is the identity
                else:
                    target = eps_at(a_to.sqrt() * z0 + (1 - a_to).sqrt() * forward_noise, i)
            return regularize_noise(eps, target, config, generators)

        n_iter = n_renoise + 1
        uses_mean = config.average_latent_estimations and lo < min(hi, n_iter)
        if uses_mean and not regularize:
            # Iterates after the averaged range are replaced by the mean step: skip them. (With
            # regularisation they still run, as officially: their shifts advance the generators.)
            n_iter = min(n_iter, hi)
        estimate = z  # iteration 0 evaluates the noise at z_{t-1}: the plain DDIM step
        mean_eps, n_mean = None, 0
        for k in range(n_iter):
            # 1. eps_theta(z_t^(k), t): the noise at the current estimate of z_t.
            eps = eps_at(estimate, i)
            # 2. running mean over the iterations [lo, hi), of the unregularised predictions.
            if lo <= k < hi:
                mean_eps = eps.clone() if mean_eps is None else mean_eps * (n_mean / (n_mean + 1)) + eps / (n_mean + 1)
                n_mean += 1
            # 3. regularise the iterates from the averaged range's start on (or after the first
            #    one when not averaging): for the official ranges, only below timestep 250.
            if regularize and (k >= lo or (not config.average_latent_estimations and k > 0)):
                eps = regularized(eps)
            # 4. z_t^(k+1) = sqrt(a_t) * x0_pred(z_{t-1}, eps) + sqrt(1 - a_t) * eps.
            estimate = ddim_step(z, eps, a_from, a_to)
        if uses_mean:
            # 5. the step taken with the (regularised) mean of the averaged noise predictions.
            if regularize:
                mean_eps = regularized(mean_eps)
            estimate = ddim_step(z, mean_eps, a_from, a_to)
        z = estimate
        if trajectory is not None:
            trajectory.append(z)
    return z, (torch.stack(trajectory) if trajectory is not None else None)
