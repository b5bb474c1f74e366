"""Load the pieces of a latent diffusion model (VAE, UNet, text encoder, tokenizer, scheduler).

Every world is loaded the same way: from a folder in the diffusers layout
(``vae/``, ``unet/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/``) or a hub id.
Tiny random-weight models of the same classes are built into such a folder by
:func:`build_tiny_ldm` (deterministic given a seed); a world prepares its own base model
(``memories_lib.worlds``).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from transformers import AutoTokenizer, CLIPTextConfig, CLIPTextModel

from .store import write_folder_atomically
from .tokenizer import SPECIAL_TOKENS, build_word_tokenizer, tokenize

SUBFOLDERS = ("vae", "unet", "text_encoder", "tokenizer", "scheduler")


class ModelLoadError(RuntimeError):
    """A model folder that is missing, incomplete or unreadable."""


@dataclass
class LDM:
    """The pieces of a text-conditioned latent diffusion model, on one device and dtype."""

    vae: AutoencoderKL
    unet: UNet2DConditionModel
    text_encoder: CLIPTextModel
    tokenizer: object
    scheduler: DDIMScheduler
    source: str = ""
    _hash: str | None = field(default=None, repr=False)
    _vae_hash: str | None = field(default=None, repr=False)

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device  # cheaper than ModelMixin.device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of a seed z_T for this model's image size."""
        size = self.unet.config.sample_size
        return (self.unet.config.in_channels, size, size)

    @property
    def image_size(self) -> int:
        return self.unet.config.sample_size * self.vae_scale

    @property
    def vae_scale(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def latent_dim(self) -> int:
        """d, the number of entries of a seed (16384 for SD 1.4 at 512x512)."""
        c, h, w = self.latent_shape
        return c * h * w

    def weights_hash(self) -> str:
        """A content hash of every weight (UNet, VAE, text encoder); keys the results store."""
        if self._hash is None:
            self._hash = hash_modules(self.unet, self.vae, self.text_encoder)
        return self._hash

    def vae_hash(self) -> str:
        """A content hash of the VAE's weights alone: keys what depends on the VAE only (decoder inversions),
        so that models sharing a VAE (a base model and its erased variants) share those results."""
        if self._vae_hash is None:
            self._vae_hash = hash_modules(self.vae)
        return self._vae_hash

    def invalidate_hash(self) -> None:
        """Forget the cached hashes (call after editing weights in place)."""
        self._hash = None
        self._vae_hash = None

    def to(self, device: str | torch.device, dtype: torch.dtype | None = None) -> "LDM":
        for module in (self.vae, self.unet, self.text_encoder):
            module.to(device=device, dtype=dtype)
        return self


def hash_modules(*modules: torch.nn.Module) -> str:
    """SHA-256 over the names, shapes, dtypes and bytes of every parameter and buffer."""
    digest = hashlib.sha256()
    for module in modules:
        for name, tensor in sorted(module.state_dict().items()):
            t = tensor.detach().to("cpu").contiguous()
            digest.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
            digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()[:16]


# --------------------------------------------------------------------------- loading


def load_ldm(source: str | Path, device: str = "cpu", dtype: torch.dtype = torch.float32) -> LDM:
    """Load an LDM from a diffusers-layout folder or a hub id (``HF_HUB_OFFLINE`` is honoured)."""
    source = str(source)
    local = Path(source).expanduser()
    if local.exists():
        missing = [s for s in SUBFOLDERS if not (local / s).is_dir()]
        if missing:
            raise ModelLoadError(f"model folder {local} lacks the subfolder(s) {missing} of the diffusers layout")
        source = str(local)
    try:
        vae = AutoencoderKL.from_pretrained(source, subfolder="vae", torch_dtype=dtype)
        unet = UNet2DConditionModel.from_pretrained(source, subfolder="unet", torch_dtype=dtype)
        text_encoder = CLIPTextModel.from_pretrained(source, subfolder="text_encoder", torch_dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(source, subfolder="tokenizer")
        scheduler = DDIMScheduler.from_pretrained(source, subfolder="scheduler")
    except (OSError, ValueError) as err:
        offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
        hint = " (HF_HUB_OFFLINE is set: only local folders and the hub cache are read)" if offline else ""
        raise ModelLoadError(f"cannot load the model {source!r}{hint}: {err}") from err
    for module in (vae, unet, text_encoder):
        module.requires_grad_(False).eval().to(device)
    return LDM(vae=vae, unet=unet, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler, source=source)


# --------------------------------------------------------------------------- tiny models

TINY_WORDS = (
    "a an the on of with background plain striped dotted "
    "red green blue yellow purple orange white black "
    "circle square triangle star cross shape picture photo"
).split()


def build_tiny_ldm(path: str | Path, seed: int = 0, image_size: int = 32, words=TINY_WORDS) -> Path:
    """Random-weight VAE, UNet, text encoder, word tokenizer and DDIM scheduler, saved at ``path``.

    The same classes as Stable Diffusion at toy sizes; deterministic given ``seed``.
    """
    path = Path(path)
    torch.manual_seed(seed)
    max_length = 16
    tokenizer = build_word_tokenizer(words, max_length=max_length)
    text_config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=max_length,
        pad_token_id=SPECIAL_TOKENS["<pad>"],
        bos_token_id=SPECIAL_TOKENS["<bos>"],
        eos_token_id=SPECIAL_TOKENS["<eos>"],
    )
    text_encoder = CLIPTextModel(text_config)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(16, 16, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=image_size,
    )
    unet = UNet2DConditionModel(
        sample_size=image_size // 4,
        in_channels=4,
        out_channels=4,
        block_out_channels=(16, 32),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=4,
        norm_num_groups=8,
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    save_ldm(path, vae=vae, unet=unet, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler)
    return path


def save_ldm(path: str | Path, *, vae, unet, text_encoder, tokenizer, scheduler) -> Path:
    """Write the pieces in the diffusers layout, atomically (a half-written folder is never seen)."""

    def write(tmp: Path) -> None:
        vae.save_pretrained(tmp / "vae")
        unet.save_pretrained(tmp / "unet")
        text_encoder.save_pretrained(tmp / "text_encoder")
        tokenizer.save_pretrained(tmp / "tokenizer")
        scheduler.save_pretrained(tmp / "scheduler")
        index = {
            "_class_name": "StableDiffusionPipeline",
            "vae": ["diffusers", "AutoencoderKL"],
            "unet": ["diffusers", "UNet2DConditionModel"],
            "text_encoder": ["transformers", "CLIPTextModel"],
            "tokenizer": ["transformers", type(tokenizer).__name__],
            "scheduler": ["diffusers", "DDIMScheduler"],
        }
        (tmp / "model_index.json").write_text(json.dumps(index, indent=2))

    return write_folder_atomically(path, write)


# --------------------------------------------------------------------------- helpers


@torch.no_grad()
def encode_prompts(ldm: LDM, prompts: list[str]) -> torch.Tensor:
    """Text-encoder hidden states for ``prompts``, shape (B, L, D)."""
    ids = tokenize(ldm.tokenizer, list(prompts)).to(ldm.text_encoder.device)
    return ldm.text_encoder(ids)[0].to(ldm.dtype)


@torch.no_grad()
def encode_images(ldm: LDM, images: torch.Tensor, generators: Sequence[torch.Generator] | None = None) -> torch.Tensor:
    """Images in [0, 1], (B, 3, H, W) -> scaled latents z_0: the posterior mean, or a posterior sample.

    With ``generators`` (one CPU generator per image) z_0 is a sample of the VAE posterior,
    ``(mean + std * eps) * scaling_factor`` with eps ~ N(0, I) of shape (1, C, h, w) drawn
    in float32 from the image's generator (what ``latent_dist.sample(generator)`` draws for
    one image with a CPU generator), so an image gets the same z_0 alone or in a batch.
    """
    x = images.to(ldm.vae.device, ldm.vae.dtype) * 2 - 1
    dist = ldm.vae.encode(x).latent_dist
    if generators is None:
        return dist.mean * ldm.vae.config.scaling_factor
    generators = list(generators)
    if len(generators) != x.shape[0]:
        raise ValueError(f"got {len(generators)} generators for {x.shape[0]} images")
    shape = (1, *dist.mean.shape[1:])
    eps = torch.cat([torch.randn(shape, generator=g, dtype=torch.float32) for g in generators])
    return (dist.mean + dist.std * eps.to(dist.mean.device, dist.mean.dtype)) * ldm.vae.config.scaling_factor


@torch.no_grad()
def decode_latents(ldm: LDM, latents: torch.Tensor) -> torch.Tensor:
    """Scaled latents -> images in [0, 1], (B, 3, H, W), float32 on the CPU."""
    x = ldm.vae.decode(latents.to(ldm.vae.dtype) / ldm.vae.config.scaling_factor).sample
    return ((x.float() + 1) / 2).clamp(0, 1).cpu()
