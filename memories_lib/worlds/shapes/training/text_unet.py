"""Stage ``unet``: a word tokenizer, a small ``CLIPTextModel`` and a ``UNet2DConditionModel`` trained jointly.

Epsilon prediction with min-SNR-gamma loss weights, an EMA of both models, and training captions
of which some are empty (for classifier-free guidance) and some leave out an attribute.
"""

from __future__ import annotations

import copy
import time
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from ....core.tokenizer import SPECIAL_TOKENS, build_word_tokenizer, tokenize
from ..config import latent_shape
from ..data import ShapeSpec, prompt, vocabulary
from .dataset import TrainingData
from .loop import generator, init_seed, parameter_count, stage_seed, train_loop
from .vae import encode_latents

# Stable Diffusion 1.x's noise schedule, used for training and (as DDIM) for sampling.
NOISE_SCHEDULE = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
                  "beta_schedule": "scaled_linear"}


def build_text_model(cfg: Mapping[str, Any]):
    """The word tokenizer over the world's vocabulary and an untrained ``CLIPTextModel``."""
    from transformers import CLIPTextConfig, CLIPTextModel

    tc = cfg["text_encoder"]
    tokenizer = build_word_tokenizer(vocabulary(), max_length=tc["max_length"])
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=tc["hidden_size"],
        intermediate_size=tc["intermediate_size"],
        num_hidden_layers=tc["num_hidden_layers"],
        num_attention_heads=tc["num_attention_heads"],
        max_position_embeddings=tc["max_length"],
        pad_token_id=SPECIAL_TOKENS["<pad>"],
        bos_token_id=SPECIAL_TOKENS["<bos>"],
        eos_token_id=SPECIAL_TOKENS["<eos>"],
    )
    return tokenizer, CLIPTextModel(config)


def build_unet(cfg: Mapping[str, Any]):
    """An untrained ``UNet2DConditionModel`` whose cross-attention reads the text encoder's states."""
    from diffusers import UNet2DConditionModel

    uc = cfg["unet"]
    channels, side, _ = latent_shape(cfg)
    return UNet2DConditionModel(
        sample_size=side,
        in_channels=channels,
        out_channels=channels,
        block_out_channels=tuple(uc["block_out_channels"]),
        layers_per_block=uc["layers_per_block"],
        down_block_types=tuple(uc["down_block_types"]),
        up_block_types=tuple(uc["up_block_types"]),
        cross_attention_dim=cfg["text_encoder"]["hidden_size"],
        attention_head_dim=uc["attention_head_dim"],
        norm_num_groups=uc["norm_num_groups"],
    )


def build_scheduler():
    """The sampling scheduler: DDIM on Stable Diffusion 1.4's noise schedule."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(**NOISE_SCHEDULE, clip_sample=False, set_alpha_to_one=False, steps_offset=1)


def training_captions(specs: Sequence[ShapeSpec], draws: torch.Tensor, captions_cfg: Mapping[str, float]) -> list[str]:
    """Captions for a batch: full ones, some left empty (CFG) and some without colour, background or shape.

    ``draws`` is (B, 4) uniform in [0, 1), one row per spec.
    """
    out = []
    for spec, (u_empty, u_colour, u_bg, u_shape) in zip(specs, draws.tolist()):
        if u_empty < captions_cfg["uncond_prob"]:
            out.append("")
            continue
        out.append(
            prompt(
                None if u_shape < captions_cfg["drop_shape"] else spec.shape,
                None if u_colour < captions_cfg["drop_colour"] else spec.colour,
                None if u_bg < captions_cfg["drop_background"] else spec.background,
            )
        )
    return out


def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """``ema <- decay * ema + (1 - decay) * model``, parameter by parameter."""
    with torch.no_grad():
        for p_ema, p in zip(ema.parameters(), model.parameters()):
            p_ema.lerp_(p, 1.0 - decay)


def train_text_unet(cfg: Mapping[str, Any], vae, data: TrainingData, device: str = "cpu",
                    progress: bool = True) -> tuple[Any, Any, Any, dict[str, Any]]:
    """Train the text encoder and the UNet jointly on the VAE's latents.

    Returns (unet, text_encoder, tokenizer, metrics), the models being the EMA copies.
    """
    from diffusers import DDPMScheduler

    uc = cfg["unet"]
    start = time.perf_counter()
    images, specs = data.train
    vae = vae.to(device)
    latents = encode_latents(vae, images, device, progress=progress) * vae.config.scaling_factor
    with init_seed(stage_seed(cfg, "unet")):
        tokenizer, text_encoder = build_text_model(cfg)
        unet = build_unet(cfg)
    text_encoder.to(device).train()
    unet.to(device).train()
    ema_text, ema_unet = copy.deepcopy(text_encoder).requires_grad_(False), copy.deepcopy(unet).requires_grad_(False)
    alphas_cumprod = DDPMScheduler(**NOISE_SCHEDULE).alphas_cumprod.float()
    snr = alphas_cumprod / (1 - alphas_cumprod)
    weights = snr.clamp(max=uc["snr_gamma"]) / snr  # min-SNR-gamma for epsilon prediction
    gen = generator(stage_seed(cfg, "unet"))

    def step(_: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.randint(0, latents.shape[0], (uc["batch_size"],), generator=gen)
        z0 = latents[idx].to(device)
        captions = training_captions([specs[i] for i in idx.tolist()], torch.rand(len(idx), 4, generator=gen),
                                     cfg["captions"])
        t = torch.randint(0, alphas_cumprod.shape[0], (len(idx),), generator=gen)
        noise = torch.randn(z0.shape, generator=gen).to(device)
        a = alphas_cumprod[t].view(-1, 1, 1, 1).to(device)
        noisy = a.sqrt() * z0 + (1 - a).sqrt() * noise
        states = text_encoder(tokenize(tokenizer, captions).to(device))[0]
        pred = unet(noisy, t.to(device), encoder_hidden_states=states).sample
        per_sample = ((pred - noise) ** 2).flatten(1).mean(1)
        return (per_sample * weights[t].to(device)).mean(), per_sample.mean()

    def update_ema(i: int) -> None:
        decay = min(uc["ema_decay"], (1 + i) / (10 + i))
        ema_update(ema_unet, unet, decay)
        ema_update(ema_text, text_encoder, decay)

    losses = train_loop(list(unet.parameters()) + list(text_encoder.parameters()), step, steps=uc["steps"],
                        lr=uc["lr"], warmup=uc["warmup"], max_grad_norm=1.0, after_step=update_ema,
                        desc="training text encoder + UNet", progress=progress)
    metrics = {
        "seconds": time.perf_counter() - start,
        "unet_parameters": parameter_count(ema_unet),
        "text_encoder_parameters": parameter_count(ema_text),
        "final_loss": float(np.mean(losses[-100:])),
        "latent_shape": list(latents.shape[1:]),
    }
    return ema_unet.eval(), ema_text.eval(), tokenizer, metrics
