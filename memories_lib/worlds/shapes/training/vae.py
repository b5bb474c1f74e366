"""Stage ``vae``: the shapes world's autoencoder (an ``AutoencoderKL`` at toy widths) and its scaling factor."""

from __future__ import annotations

import time
from typing import Any, Mapping

import numpy as np
import torch

from ....core.metrics import psnr
from ....core.progress import tqdm
from .dataset import TrainingData, random_dihedral, to01
from .loop import generator, init_seed, parameter_count, stage_seed, train_loop


def build_vae(cfg: Mapping[str, Any]):
    """An untrained ``AutoencoderKL`` of the config's size (SD's block types at toy widths)."""
    from diffusers import AutoencoderKL

    vc = cfg["vae"]
    levels = len(vc["block_out_channels"])
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=tuple(vc["block_out_channels"]),
        layers_per_block=vc["layers_per_block"],
        latent_channels=vc["latent_channels"],
        norm_num_groups=vc["norm_num_groups"],
        sample_size=cfg["image_size"],
    )


@torch.no_grad()
def encode_latents(vae, images_u8: torch.Tensor, device: str, batch_size: int = 256,
                   progress: bool = False) -> torch.Tensor:
    """Unscaled posterior means of uint8 images, (N, C, h, w), float32 on the CPU."""
    out = []
    for s in tqdm(range(0, images_u8.shape[0], batch_size), desc="encoding latents", disable=not progress,
                  leave=False):
        x = to01(images_u8[s : s + batch_size], device) * 2 - 1
        out.append(vae.encode(x).latent_dist.mean.float().cpu())
    return torch.cat(out)


def train_vae(cfg: Mapping[str, Any], data: TrainingData, device: str = "cpu",
              progress: bool = True) -> tuple[Any, dict[str, Any]]:
    """Train the autoencoder (MSE + a small KL term); returns it with its scaling factor set, and metrics."""
    vc = cfg["vae"]
    start = time.perf_counter()
    images, _ = data.train
    with init_seed(stage_seed(cfg, "vae")):
        vae = build_vae(cfg)
    vae.to(device).train()
    gen = generator(stage_seed(cfg, "vae"))

    def step(_: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.randint(0, images.shape[0], (vc["batch_size"],), generator=gen)
        x = to01(random_dihedral(images[idx], gen), device) * 2 - 1
        posterior = vae.encode(x).latent_dist
        noise = torch.randn(posterior.mean.shape, generator=gen).to(device)
        z = posterior.mean + posterior.std * noise
        mse = torch.nn.functional.mse_loss(vae.decode(z).sample, x)
        return mse + vc["kl_weight"] * posterior.kl().mean(), mse

    mses = train_loop(vae.parameters(), step, steps=vc["steps"], lr=vc["lr"], warmup=vc["warmup"],
                      desc="training VAE", shown="mse", progress=progress)
    vae.eval().requires_grad_(False)
    # scaling_factor: 1 / std of the latents over (a sample of) the training images.
    sample = images[: min(4096, images.shape[0])]
    std = float(encode_latents(vae, sample, device).std())
    vae.register_to_config(scaling_factor=1.0 / std)
    eval_images, _ = data.eval
    with torch.no_grad():
        x01 = to01(eval_images, device)
        recon = ((vae.decode(vae.encode(x01 * 2 - 1).latent_dist.mean).sample + 1) / 2).clamp(0, 1)
    eval_psnr = psnr(recon.cpu(), x01.cpu())
    metrics = {
        "seconds": time.perf_counter() - start,
        "parameters": parameter_count(vae),
        "final_mse": float(np.mean(mses[-50:])),
        "latent_std": std,
        "scaling_factor": 1.0 / std,
        "eval_psnr_mean": float(eval_psnr.mean()),
        "eval_psnr_min": float(eval_psnr.min()),
        "eval_images": int(eval_images.shape[0]),
    }
    return vae, metrics
