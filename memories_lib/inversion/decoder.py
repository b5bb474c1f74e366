"""Decoder inversion: the VAE latent z whose decoding D(z) reproduces a target image, by gradient descent.

The first stage of the paper's Sequential Inversion Block (section 4.2). Given target images x in
[0, 1] and starting latents z (default: the encoder's posterior mean of x), Adam minimises

    L(z) = MSE(D(z) / 2 + 0.5, x)

over ``num_steps`` steps at learning rate ``lr``, z in the VAE's *unscaled* latent space (the
space ``vae.decode`` reads; multiply by ``vae.config.scaling_factor`` for a diffusion model's z_0).
As in the official code (``src/vae_inversion_tools.py``, called with the reconstruction scale 1 and
the L2 and Gaussian terms at 0): Adam with torch's defaults, lr 1e-2, the decoded image is not
clamped inside the loss, the MSE is the mean over pixels and channels of one image, and the latent
returned is the one after the last update.

Batching: many latents are optimised at once, one decoder call per step. The loss of a batch is
the *sum* of the per-image MSEs, so each latent receives exactly the gradient it would receive
alone, and Adam acts entry by entry: a batch of B latents follows the B single-image runs of the
official code (up to the floating-point differences of batched convolutions), at the cost of one
run on a parallel device.

Speed, measured on the 2-core machine (2026-11-27, a VAE of the mini world's size, 32x32 images,
random weights, while other jobs shared the machine): at one torch thread a batch of 10 latents runs
13 to 16 steps/s (3000 steps: 3 to 4 minutes), a batch of 55 about 160 to 200 latent-steps/s; two
threads were slower. The official SIB of one concept (5 queries, 10 supports: 55 latents from the
encoder means, then 50 towards the queries) is about 315,000 latent-steps, half an hour on one core.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ..core import throughput
from ..core.progress import tqdm

#: The official SIB settings (``many_memories_of_an_ablated_image.py``: Adam, lr 1e-2, 3000 steps).
DEFAULT_STEPS = 3000
DEFAULT_LR = 1e-2


@dataclass(frozen=True)
class DecoderInversion:
    """The result of :func:`decoder_invert` for a batch of B targets.

    latents: the optimised unscaled latents z (B, C, h, w), float32 on the CPU.
    start: the latents the optimisation started from (B, C, h, w), float32 on the CPU.
    losses: (B, num_steps + 1) float32: the MSE of each latent after k updates (k = 0 .. num_steps;
        column 0 is the start's, the last column the returned latent's).
    num_steps, lr: the settings used.
    """

    latents: torch.Tensor
    start: torch.Tensor
    losses: torch.Tensor
    num_steps: int
    lr: float

    def __len__(self) -> int:
        return self.latents.shape[0]

    @property
    def mse(self) -> torch.Tensor:
        """(B,) the final MSE of each latent (unclamped decoding against the target)."""
        return self.losses[:, -1]


def _check_images(images01: torch.Tensor, name: str) -> None:
    if not isinstance(images01, torch.Tensor) or images01.dim() != 4 or images01.shape[1] != 3:
        shape = tuple(images01.shape) if isinstance(images01, torch.Tensor) else type(images01).__name__
        raise ValueError(f"{name} must be images (B, 3, H, W) in [0, 1], got {shape}")


def check_settings(num_steps: int, lr: float) -> None:
    """ValueError unless ``num_steps`` is a positive integer and ``lr`` a positive finite number."""
    if isinstance(num_steps, bool) or int(num_steps) != num_steps or num_steps < 1:
        raise ValueError(f"decoder inversion needs a positive integer number of steps, got {num_steps!r}")
    if isinstance(lr, bool) or not float(lr) > 0 or not torch.isfinite(torch.tensor(float(lr))):
        raise ValueError(f"decoder inversion needs a positive learning rate, got {lr!r}")


def _vae_device(vae: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    param = next(vae.parameters())
    return param.device, param.dtype


@torch.no_grad()
def encoder_mean(vae: torch.nn.Module, images01: torch.Tensor) -> torch.Tensor:
    """The VAE posterior's mean for images (B, 3, H, W) in [0, 1]: unscaled latents (B, C, h, w), float32 on the CPU."""
    _check_images(images01, "images01")
    device, dtype = _vae_device(vae)
    x = images01.to(device, dtype) * 2 - 1
    return vae.encode(x).latent_dist.mean.float().cpu()


@torch.no_grad()
def decode_unscaled(vae: torch.nn.Module, latents: torch.Tensor) -> torch.Tensor:
    """Unscaled latents (B, C, h, w) -> images D(z) / 2 + 0.5 clamped to [0, 1], (B, 3, H, W) float32 on the CPU."""
    device, dtype = _vae_device(vae)
    x = vae.decode(latents.to(device, dtype)).sample
    return ((x.float() + 1) / 2).clamp(0, 1).cpu()


def quantize_8bit(images01: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1] rounded to the nearest of the 256 levels of an 8-bit image (what saving a PNG does)."""
    return (images01.clamp(0, 1) * 255).round() / 255


def decoder_row_bytes(vae: torch.nn.Module, latent_shape: tuple[int, int, int]) -> int:
    """Bytes one latent of a decoder-inversion step keeps alive: 3x the decoder's outputs for one latent.

    The decoder's module outputs for a batch of 1 (measured once, like
    :func:`memories_lib.core.throughput.row_bytes` for the UNet) are what autograd keeps for the
    backward pass; the factor 3 covers their gradients and the temporaries of the backward.
    """
    device, dtype = _vae_device(vae)
    zero = torch.zeros((1, *latent_shape), device=device, dtype=dtype)
    total = throughput.output_bytes(vae.decoder, lambda: vae.decode(zero))
    return max(1, 3 * total)


def decoder_batch_size(vae: torch.nn.Module, n: int, latent_shape: tuple[int, int, int],
                       budget: int | None = None) -> int:
    """How many of ``n`` latents to invert in one batch: all of them if they fit :func:`throughput.memory_budget`,
    else equal batches that do (:func:`throughput.batch_size` with :func:`decoder_row_bytes`)."""
    device, _ = _vae_device(vae)
    per_latent = decoder_row_bytes(vae, latent_shape)
    return throughput.batch_size(max(n, 1), 1, bytes_per_row=per_latent, budget=budget, device=device,
                                 target_rows=max(n, 1))


def decoder_invert(
    vae: torch.nn.Module,
    targets01: torch.Tensor,
    start: torch.Tensor | None = None,
    num_steps: int = DEFAULT_STEPS,
    lr: float = DEFAULT_LR,
    *,
    progress: bool = True,
    callback: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
) -> DecoderInversion:
    """Decoder inversion of a batch of targets (see the module docstring).

    targets01: (B, 3, H, W) images in [0, 1]; start: unscaled latents (B, C, h, w) to start from
    (None: :func:`encoder_mean` of the targets); num_steps: Adam steps (> 0); lr: Adam's learning
    rate. ``callback(step, z, mse)`` is called after every update with the step number (1 ..
    num_steps), the current latents (detached, on the VAE's device) and the (B,) MSE measured before
    that update. Deterministic on the CPU: no randomness is involved.
    """
    _check_images(targets01, "targets01")
    check_settings(num_steps, lr)
    num_steps, lr = int(num_steps), float(lr)
    device, dtype = _vae_device(vae)
    if start is None:
        start = encoder_mean(vae, targets01)
    if start.dim() != 4 or start.shape[0] != targets01.shape[0]:
        raise ValueError(f"start must be latents (B, C, h, w) for the {targets01.shape[0]} targets, "
                         f"got shape {tuple(start.shape)}")
    start = start.detach().to("cpu", torch.float32)
    target = targets01.detach().to(device, torch.float32)
    # The latent is optimised in float32 whatever the VAE's dtype (Adam's updates are lost in fp16).
    z = start.clone().to(device).requires_grad_(True)
    optimizer = torch.optim.Adam([z], lr=lr)
    losses = torch.empty(z.shape[0], num_steps + 1, dtype=torch.float32)

    def per_image_mse() -> torch.Tensor:
        decoded = vae.decode(z.to(dtype)).sample.float() / 2 + 0.5  # unclamped, as the official loss
        return ((decoded - target) ** 2).flatten(1).mean(dim=1)

    with torch.enable_grad(), throughput.threads_for_batch(z.shape[0], device):
        for step in tqdm(range(num_steps), desc="decoder inversion", disable=not progress, leave=False):
            optimizer.zero_grad(set_to_none=True)
            mse = per_image_mse()
            mse.sum().backward()  # each latent gets the gradient of its own image's MSE
            optimizer.step()
            losses[:, step] = mse.detach().cpu()
            if callback is not None:
                callback(step + 1, z.detach(), mse.detach())
        with torch.no_grad():
            losses[:, num_steps] = per_image_mse().cpu()
    return DecoderInversion(latents=z.detach().to("cpu", torch.float32), start=start, losses=losses,
                            num_steps=num_steps, lr=lr)


__all__ = [
    "DEFAULT_LR", "DEFAULT_STEPS", "DecoderInversion", "check_settings", "decode_unscaled", "decoder_batch_size",
    "decoder_invert", "decoder_row_bytes", "encoder_mean", "quantize_8bit",
]
