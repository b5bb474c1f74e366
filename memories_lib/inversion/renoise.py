"""ReNoise inversion (Garibi et al. 2024) on a DDIM schedule, batched.

A DDIM inversion step from level t-1 to level t needs eps(z_t, t) but only has z_{t-1};
plain DDIM uses eps(z_{t-1}, t). ReNoise refines the estimate of z_t by fixed-point
iterations: evaluate the noise at the current estimate of z_t and redo the inversion step
from z_{t-1} with it, ``num_renoise_steps`` times. Optionally the step uses the mean of
the noise predictions of a range of iterations, and the predictions are pulled towards
Gaussian statistics ("noise regularisation", from pix2pix-zero).

Defaults are those of the official "Memories of Forgotten Concepts" run: DDIM, 50
inversion and 50 inference steps, 5 renoise iterations (also for the first steps, whose
cap is 5), averaging over iterations [0, 5) for timesteps below 250 and [8, 10) otherwise (which
never happens with 5 iterations, so late steps keep the last iterate), no noise
correction, guidance 0 (the conditional caption only), reconstruction at guidance 1.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..core.models import LDM
from ..core.sampling import ddim_schedule, ddim_step, empty_prompt_embeds, predict_noise, uses_cfg, working_dtype


@dataclass(frozen=True)
class ReNoiseConfig:
    """The knobs of ReNoise, with the official Memories values (cf. ReNoise's ``src/config.py``).

    num_inversion_steps / num_inference_steps: DDIM steps of the inversion and of the
        reconstruction (the official run uses 50 for both; they must be equal for the
        reconstruction to retrace the inversion).
    guidance_scale: during inversion; <= 1 means the conditional caption only (official: 0).
    reconstruction_guidance: of the DDIM reconstruction (official: 1, conditional only).
    num_renoise_steps: renoise iterations after the first DDIM estimate of each step.
    max_num_renoise_steps_first_step: cap on the iterations for timesteps below
        ``first_step_max_timestep`` (the official run: 5, equal to num_renoise_steps).
    average_latent_estimations: step with the mean noise of an iteration range.
    average_first_step_range / average_step_range: [start, end) of the iterations averaged
        for timesteps below / from ``first_step_max_timestep`` on (iteration 0 is the plain
        DDIM estimate; iterations run 0 .. num_renoise_steps).
    noise_regularization_*: pix2pix-zero's pull of the noise predictions towards N(0, I)
        statistics (a patch-wise KL term towards the noise predicted at the forward-noised
        latent, and an auto-correlation term). OFF here by default (num_reg_steps = 0).
        NOTE: ReNoise's own default, which the official Memories run leaves unchanged,
        is 4 regularisation steps; :meth:`official_memories` gives that setting.
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
    noise_regularization_num_reg_steps: int = 0
    noise_regularization_lambda_kl: float = 0.065
    noise_regularization_lambda_ac: float = 20.0
    noise_regularization_num_ac_rolls: int = 5

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

    @classmethod
    def official_memories(cls, **changes) -> "ReNoiseConfig":
        """The settings of the official Memories run verbatim, noise regularisation included."""
        return dataclasses.replace(cls(noise_regularization_num_reg_steps=4), **changes)

    def with_steps(self, num_steps: int) -> "ReNoiseConfig":
        """A copy with ``num_steps`` inversion and inference steps."""
        return dataclasses.replace(self, num_inversion_steps=num_steps, num_inference_steps=num_steps)


# --------------------------------------------------------------------------- regularisation


def _patch_kl(x: torch.Tensor, target: torch.Tensor, patch: int = 4) -> torch.Tensor:
    """Sum over 4x4 spatial patches and channels of |KL| between Gaussian fits of x and target."""
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


def _auto_corr(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Squared auto-correlations at random shifts over a pyramid, summed over samples and channels."""
    loss = x.new_zeros(())
    for c in range(x.shape[1]):
        level = x[:, c : c + 1]
        while True:
            shift = int(torch.randint(0, max(level.shape[2] // 2, 1), (1,), generator=generator))
            for dim in (2, 3):
                loss = loss + ((level * torch.roll(level, shifts=shift, dims=dim)).mean(dim=(1, 2, 3)) ** 2).sum()
            if level.shape[2] <= 8:
                break
            level = F.avg_pool2d(level, kernel_size=2)
    return loss


def regularize_noise(
    eps: torch.Tensor, eps_target: torch.Tensor, config: ReNoiseConfig, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Gradient steps that pull ``eps`` towards N(0, I) statistics (identity when num_reg_steps = 0).

    Every term is a sum over samples, so each image of a batch gets its own gradient.
    """
    if config.noise_regularization_num_reg_steps == 0:
        return eps
    eps = eps.detach()
    with torch.enable_grad():
        for _ in range(config.noise_regularization_num_reg_steps):
            if config.noise_regularization_lambda_kl > 0:
                var = eps.clone().requires_grad_(True)
                (grad,) = torch.autograd.grad(_patch_kl(var, eps_target), var)
                eps = eps - config.noise_regularization_lambda_kl * grad.clamp(-100, 100)
            if config.noise_regularization_lambda_ac > 0:
                rolls = config.noise_regularization_num_ac_rolls
                for _ in range(rolls):
                    var = eps.clone().requires_grad_(True)
                    (grad,) = torch.autograd.grad(_auto_corr(var, generator), var)
                    eps = eps - config.noise_regularization_lambda_ac * grad / rolls
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
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """ReNoise inversion of latents z_0 (B, C, h, w) into seeds z_T, with ``config.num_inversion_steps`` steps.

    ``generator`` is used only by noise regularisation (the forward noise of the KL target
    and the random shifts of the auto-correlation term). Returns z_T and, when asked, the
    trajectory z_0 .. z_T, (N + 1, B, C, h, w).
    """
    schedule = ddim_schedule(ldm, config.num_inversion_steps)
    z0 = latents.to(ldm.device, working_dtype(latents))
    z = z0
    batch = z.shape[0]
    if uses_cfg(config.guidance_scale) and uncond_embeds is None:
        uncond_embeds = empty_prompt_embeds(ldm, batch)
    regularize = config.noise_regularization_num_reg_steps > 0
    if regularize:
        # The noise of the forward process q(z_t | z_0), drawn once per image; the noise
        # predicted at the forward-noised latent is the KL term's target. (The official
        # code patches add_noise to return z_0 unchanged, so its target is eps(z_0, t).)
        noise = torch.randn(z.shape, generator=generator, device=generator.device if generator else "cpu",
                            dtype=z.dtype).to(z.device)

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
            if target is None:  # computed only at steps that regularise
                target = eps_at(a_to.sqrt() * z0 + (1 - a_to).sqrt() * noise, i)
            return regularize_noise(eps, target, config, generator)

        n_iter = n_renoise + 1
        uses_mean = config.average_latent_estimations and lo < min(hi, n_iter)
        if uses_mean:  # iterates after the averaged range would be replaced by the mean step: skip them
            n_iter = min(n_iter, hi)
        estimate = z  # iteration 0 evaluates the noise at z_{t-1}: the plain DDIM step
        mean_eps, n_mean = None, 0
        for k in range(n_iter):
            # 1. eps_theta(z_t^(k), t): the noise at the current estimate of z_t.
            eps = eps_at(estimate, i)
            # 2. running mean over the iterations [lo, hi) (before regularisation, as officially).
            if lo <= k < hi:
                mean_eps = eps.clone() if mean_eps is None else mean_eps * (n_mean / (n_mean + 1)) + eps / (n_mean + 1)
                n_mean += 1
            if regularize and (k >= lo or (not config.average_latent_estimations and k > 0)):
                eps = regularized(eps)
            # 3. z_t^(k+1) = sqrt(a_t) * x0_pred(z_{t-1}, eps) + sqrt(1 - a_t) * eps.
            estimate = ddim_step(z, eps, a_from, a_to)
        if uses_mean:
            # 4. the step taken with the mean of the averaged noise predictions.
            if regularize:
                mean_eps = regularized(mean_eps)
            estimate = ddim_step(z, mean_eps, a_from, a_to)
        z = estimate
        if trajectory is not None:
            trajectory.append(z)
    return z, (torch.stack(trajectory) if trajectory is not None else None)
