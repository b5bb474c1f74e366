"""Training of the shapes world's models, cached by a hash of the training config.

Four stages, each written atomically into the cache folder and skipped when present:

``vae``          an ``AutoencoderKL``; its ``scaling_factor`` is measured (1 / std of the latents);
``unet``         a word tokenizer, a small ``CLIPTextModel`` and a ``UNet2DConditionModel``
                 trained jointly (epsilon loss with min-SNR weighting, EMA, empty captions
                 for classifier-free guidance), saved with the VAE and a ``DDIMScheduler``
                 in the diffusers layout (folder ``ldm/``, loadable by ``models.load_ldm``);
``classifier``   the concept classifier (:class:`~memories_lib.worlds.shapes.classifier.ShapesClassifier`);
``contrastive``  the CLIP stand-in (:class:`~memories_lib.worlds.shapes.contrastive.ShapesCLIP`).

The cache root is ``$MEMORIES_MINI_CACHE`` if set, else ``models.cache_dir() / "mini"``;
a config's folder is ``<root>/<config_hash(config)>``. Training is deterministic given the
config's seed (on one device and thread count). ``memories train-mini`` calls :func:`main`.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import fcntl
import json
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ...core.models import save_ldm
from ...core.paths import cache_dir
from ...core.tokenizer import SPECIAL_TOKENS, build_word_tokenizer, tokenize
from .classifier import HEADS, ShapesClassifier
from .config import config_hash, resolve_config
from .contrastive import ShapesCLIP
from .data import BACKGROUNDS, COLOURS, SHAPES, ShapeSpec, labels, make_dataset, prompt, vocabulary

STAGES: tuple[str, ...] = ("vae", "unet", "classifier", "contrastive")
METRICS_FILE = "training.json"

# Stable Diffusion 1.x's noise schedule, used for training and (as DDIM) for sampling.
NOISE_SCHEDULE = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
                  "beta_schedule": "scaled_linear"}


class TrainingError(RuntimeError):
    """A training stage that cannot run (e.g. a missing earlier stage in a broken cache)."""


# --------------------------------------------------------------------------- cache layout


def mini_cache_root() -> Path:
    """``$MEMORIES_MINI_CACHE`` or ``models.cache_dir() / "mini"``."""
    root = os.environ.get("MEMORIES_MINI_CACHE")
    path = Path(root) if root else cache_dir() / "mini"
    path.mkdir(parents=True, exist_ok=True)
    return path


def cache_folder(config: Mapping[str, Any] | str | None) -> Path:
    """The folder holding every trained stage of ``config`` (it may not exist yet)."""
    return mini_cache_root() / config_hash(config)


def stage_path(config: Mapping[str, Any] | str | None, stage: str) -> Path:
    """Where a stage's result lives; ``"unet"`` is the full diffusers folder ``ldm/``."""
    if stage not in STAGES:
        raise ValueError(f"unknown training stage {stage!r}; stages: {STAGES}")
    return cache_folder(config) / ("ldm" if stage == "unet" else stage)


def missing_stages(config: Mapping[str, Any] | str | None, stages: Sequence[str] = STAGES) -> list[str]:
    """The stages of ``stages`` that are not in the cache yet."""
    return [s for s in stages if not stage_path(config, s).is_dir()]


def training_report(config: Mapping[str, Any] | str | None) -> dict[str, dict[str, Any]]:
    """The metrics (time, losses, quality) that each trained stage recorded, by stage."""
    report = {}
    for stage in STAGES:
        file = stage_path(config, stage) / METRICS_FILE
        if file.is_file():
            report[stage] = json.loads(file.read_text())
    return report


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """An exclusive lock on the folder, so two processes never train the same config at once."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _write_stage(target: Path, write: Callable[[Path], None], metrics: Mapping[str, Any]) -> None:
    """Run ``write(tmp)`` into a fresh temporary folder, add the metrics, move it to ``target``."""
    tmp_parent = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        tmp = tmp_parent / target.name
        write(tmp)
        (tmp / METRICS_FILE).write_text(json.dumps(dict(metrics), indent=2, sort_keys=True))
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp_parent, ignore_errors=True)


def default_threads() -> int:
    """Torch CPU threads for training: ``$MEMORIES_THREADS``, else every core of the machine.

    The count is fixed rather than read from the machine's load, because floating-point
    results are bit-for-bit reproducible only for a given thread count. On a machine that
    other processes keep busy, set ``MEMORIES_THREADS=1``: oversubscribed threads wait on
    each other and can make every step several times slower.
    """
    value = os.environ.get("MEMORIES_THREADS", "").strip()
    if value:
        try:
            threads = int(value)
        except ValueError:
            raise ValueError(f"MEMORIES_THREADS must be a positive integer, got {value!r}") from None
        if threads < 1:
            raise ValueError(f"MEMORIES_THREADS must be a positive integer, got {value!r}")
        return threads
    return os.cpu_count() or 1


@contextlib.contextmanager
def _torch_threads(threads: int | None) -> Iterator[None]:
    old = torch.get_num_threads()
    torch.set_num_threads(max(1, threads or default_threads()))
    try:
        yield
    finally:
        torch.set_num_threads(old)


# --------------------------------------------------------------------------- helpers


def _seed(cfg: Mapping[str, Any], stage: str) -> int:
    """A per-stage seed derived from the config's seed (stages do not share random streams)."""
    return int(cfg["seed"]) * 1000 + 1 + STAGES.index(stage)


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@contextlib.contextmanager
def _init_seed(seed: int) -> Iterator[None]:
    """Seed the global torch RNG for model construction only; its previous state comes back after."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _warmup_cosine(warmup: int, steps: int, floor: float = 0.1) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        progress = (step - warmup) / max(1, steps - warmup)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _random_dihedral(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Flip and rotate each image of (B, C, H, W) by one of the 8 symmetries of the square."""
    k = torch.randint(0, 8, (x.shape[0],), generator=generator)
    out = torch.empty_like(x)
    for code in range(8):
        sel = k == code
        if sel.any():
            y = torch.rot90(x[sel], code % 4, dims=(2, 3))
            out[sel] = torch.flip(y, dims=(3,)) if code >= 4 else y
    return out


def _psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    mse = ((a.float() - b.float()) ** 2).flatten(1).mean(1).clamp_min(1e-12)
    return 10 * torch.log10(1.0 / mse)


@dataclass
class _Data:
    """The training and held-out images (uint8) of a config, made on first use."""

    cfg: dict[str, Any]
    progress: bool = True
    _train: tuple[torch.Tensor, list[ShapeSpec]] | None = field(default=None, repr=False)
    _eval: tuple[torch.Tensor, list[ShapeSpec]] | None = field(default=None, repr=False)

    def _make(self, n: int, stream: int) -> tuple[torch.Tensor, list[ShapeSpec]]:
        rng = np.random.default_rng([int(self.cfg["seed"]), stream])
        images, specs = make_dataset(n, self.cfg["image_size"], rng, progress=self.progress)
        return (images * 255).round().to(torch.uint8), specs

    @property
    def train(self) -> tuple[torch.Tensor, list[ShapeSpec]]:
        if self._train is None:
            self._train = self._make(self.cfg["dataset_size"], 0)
        return self._train

    @property
    def eval(self) -> tuple[torch.Tensor, list[ShapeSpec]]:
        if self._eval is None:
            self._eval = self._make(self.cfg["eval_size"], 1)
        return self._eval


def _to01(batch_u8: torch.Tensor, device: str) -> torch.Tensor:
    return batch_u8.to(device).float() / 255.0


# --------------------------------------------------------------------------- stage: VAE


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
        x = _to01(images_u8[s : s + batch_size], device) * 2 - 1
        out.append(vae.encode(x).latent_dist.mean.float().cpu())
    return torch.cat(out)


def train_vae(cfg: Mapping[str, Any], data: _Data, device: str = "cpu", progress: bool = True):
    """Train the autoencoder (MSE + a small KL term); returns it with its scaling factor set, and metrics."""
    vc = cfg["vae"]
    start = time.perf_counter()
    images, _ = data.train
    with _init_seed(_seed(cfg, "vae")):
        vae = build_vae(cfg)
    vae.to(device).train()
    gen = _generator(_seed(cfg, "vae"))
    opt = torch.optim.AdamW(vae.parameters(), lr=vc["lr"], weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _warmup_cosine(vc["warmup"], vc["steps"]))
    losses = []
    bar = tqdm(range(vc["steps"]), desc="training VAE", disable=not progress)
    for _ in bar:
        idx = torch.randint(0, images.shape[0], (vc["batch_size"],), generator=gen)
        x = _random_dihedral(images[idx], gen)
        x = _to01(x, device) * 2 - 1
        posterior = vae.encode(x).latent_dist
        noise = torch.randn(posterior.mean.shape, generator=gen).to(device)
        z = posterior.mean + posterior.std * noise
        recon = vae.decode(z).sample
        mse = torch.nn.functional.mse_loss(recon, x)
        loss = mse + vc["kl_weight"] * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(mse.item())
        if len(losses) % 20 == 0:
            bar.set_postfix(mse=f"{np.mean(losses[-20:]):.4f}")
    vae.eval().requires_grad_(False)
    # scaling_factor: 1 / std of the latents over (a sample of) the training images.
    sample = images[: min(4096, images.shape[0])]
    std = float(encode_latents(vae, sample, device).std())
    vae.register_to_config(scaling_factor=1.0 / std)
    eval_images, _ = data.eval
    with torch.no_grad():
        x01 = _to01(eval_images, device)
        recon = ((vae.decode(vae.encode(x01 * 2 - 1).latent_dist.mean).sample + 1) / 2).clamp(0, 1)
        psnr = _psnr(recon.cpu(), x01.cpu())
    metrics = {
        "seconds": time.perf_counter() - start,
        "parameters": _count(vae),
        "final_mse": float(np.mean(losses[-50:])),
        "latent_std": std,
        "scaling_factor": 1.0 / std,
        "eval_psnr_mean": float(psnr.mean()),
        "eval_psnr_min": float(psnr.min()),
        "eval_images": int(eval_images.shape[0]),
    }
    return vae, metrics


# --------------------------------------------------------------------------- stage: text encoder + UNet


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
    channels, side, _ = _latent_dims(cfg)
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


def _latent_dims(cfg: Mapping[str, Any]) -> tuple[int, int, int]:
    side = cfg["image_size"] // 2 ** (len(cfg["vae"]["block_out_channels"]) - 1)
    return cfg["vae"]["latent_channels"], side, side


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


def _ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    with torch.no_grad():
        for p_ema, p in zip(ema.parameters(), model.parameters()):
            p_ema.lerp_(p, 1.0 - decay)


def train_text_unet(cfg: Mapping[str, Any], vae, data: _Data, device: str = "cpu", progress: bool = True):
    """Train the text encoder and the UNet jointly on the VAE's latents.

    Epsilon prediction with min-SNR-gamma loss weights. Returns (unet, text_encoder,
    tokenizer, metrics), the models being the EMA copies.
    """
    from diffusers import DDPMScheduler

    uc = cfg["unet"]
    start = time.perf_counter()
    images, specs = data.train
    vae = vae.to(device)
    latents = encode_latents(vae, images, device, progress=progress) * vae.config.scaling_factor
    with _init_seed(_seed(cfg, "unet")):
        tokenizer, text_encoder = build_text_model(cfg)
        unet = build_unet(cfg)
    text_encoder.to(device).train()
    unet.to(device).train()
    ema_text, ema_unet = copy.deepcopy(text_encoder).requires_grad_(False), copy.deepcopy(unet).requires_grad_(False)
    alphas_cumprod = DDPMScheduler(**NOISE_SCHEDULE).alphas_cumprod.float()
    snr = alphas_cumprod / (1 - alphas_cumprod)
    weights = snr.clamp(max=uc["snr_gamma"]) / snr  # min-SNR-gamma for epsilon prediction
    gen = _generator(_seed(cfg, "unet"))
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=uc["lr"], weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _warmup_cosine(uc["warmup"], uc["steps"]))
    losses = []
    bar = tqdm(range(uc["steps"]), desc="training text encoder + UNet", disable=not progress)
    for step in bar:
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
        loss = (per_sample * weights[t].to(device)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        decay = min(uc["ema_decay"], (1 + step) / (10 + step))
        _ema_update(ema_unet, unet, decay)
        _ema_update(ema_text, text_encoder, decay)
        losses.append(per_sample.mean().item())
        if len(losses) % 20 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
    metrics = {
        "seconds": time.perf_counter() - start,
        "unet_parameters": _count(ema_unet),
        "text_encoder_parameters": _count(ema_text),
        "final_loss": float(np.mean(losses[-100:])),
        "latent_shape": list(latents.shape[1:]),
    }
    return ema_unet.eval(), ema_text.eval(), tokenizer, metrics


# --------------------------------------------------------------------------- stage: classifier


def _augment(x01: torch.Tensor, gen: torch.Generator, noise: float) -> torch.Tensor:
    """Symmetries of the square, slight brightness changes, blur and pixel noise (robustness to generations)."""
    x = _random_dihedral(x01, gen)
    b = x.shape[0]
    scale = 1 + 0.1 * (torch.rand(b, 1, 1, 1, generator=gen) - 0.5)
    x = x * scale
    blurred = torch.nn.functional.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
    mix = (torch.rand(b, 1, 1, 1, generator=gen) < 0.3).float() * torch.rand(b, 1, 1, 1, generator=gen)
    x = x * (1 - mix) + blurred * mix
    sigma = noise * torch.rand(b, 1, 1, 1, generator=gen)
    return (x + sigma * torch.randn(x.shape, generator=gen)).clamp(0, 1)


def train_classifier(cfg: Mapping[str, Any], data: _Data, device: str = "cpu", progress: bool = True):
    """Train the shape/colour/background classifier; returns it and its held-out accuracy."""
    cc = cfg["classifier"]
    start = time.perf_counter()
    images, specs = data.train
    targets = labels(specs)
    with _init_seed(_seed(cfg, "classifier")):
        model = ShapesClassifier(cc["channels"], cfg["image_size"])
    model.to(device).train()
    gen = _generator(_seed(cfg, "classifier"))
    opt = torch.optim.AdamW(model.parameters(), lr=cc["lr"], weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _warmup_cosine(max(1, cc["steps"] // 20), cc["steps"], 0.02))
    losses = []
    bar = tqdm(range(cc["steps"]), desc="training classifier", disable=not progress)
    for _ in bar:
        idx = torch.randint(0, images.shape[0], (cc["batch_size"],), generator=gen)
        x = _augment(images[idx].float() / 255.0, gen, cc["noise"]).to(device)
        logits = model(x)
        loss = sum(torch.nn.functional.cross_entropy(logits[h], targets[h][idx].to(device)) for h in HEADS)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        if len(losses) % 20 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
    model.eval().requires_grad_(False)
    eval_images, eval_specs = data.eval
    predicted = model.predict(eval_images.float() / 255.0)
    metrics = {
        "seconds": time.perf_counter() - start,
        "parameters": _count(model),
        "final_loss": float(np.mean(losses[-50:])),
        "eval_images": len(eval_specs),
    }
    for head in HEADS:
        truth = np.asarray([getattr(s, head) for s in eval_specs])
        metrics[f"eval_accuracy_{head}"] = float((predicted[head] == truth).mean())
    return model, metrics


# --------------------------------------------------------------------------- stage: contrastive


def _partial_texts(specs: Sequence[ShapeSpec], gen: torch.Generator) -> tuple[list[str], list[tuple]]:
    """One text per spec that names a random non-empty subset of its shape, colour and background."""
    keep = torch.rand(len(specs), 3, generator=gen) < 0.7
    texts, named = [], []
    for spec, (k_shape, k_colour, k_bg) in zip(specs, keep.tolist()):
        if not (k_shape or k_colour or k_bg):
            k_shape = True
        attrs = (spec.shape if k_shape else None, spec.colour if k_colour else None,
                 spec.background if k_bg else None)
        texts.append(prompt(*attrs))
        named.append(attrs)
    return texts, named


def _matches(specs: Sequence[ShapeSpec], named: Sequence[tuple]) -> torch.Tensor:
    """M[i, j] = 1 when image i has every attribute that text j names."""
    def codes(rows: Sequence[tuple]) -> torch.Tensor:
        options = (SHAPES, COLOURS, BACKGROUNDS)
        return torch.tensor([[-1 if v is None else opts.index(v) for v, opts in zip(row, options)] for row in rows])

    have = codes([(s.shape, s.colour, s.background) for s in specs])  # (B, 3)
    want = codes(named)  # (T, 3), -1 where the text does not name the attribute
    ok = (want[None] == -1) | (want[None] == have[:, None])
    return ok.all(-1).float()


def train_contrastive(cfg: Mapping[str, Any], data: _Data, device: str = "cpu", progress: bool = True):
    """Train the CLIP stand-in with a multi-positive contrastive loss; returns it and held-out accuracies."""
    kc = cfg["contrastive"]
    start = time.perf_counter()
    images, specs = data.train
    with _init_seed(_seed(cfg, "contrastive")):
        model = ShapesCLIP(kc["channels"], kc["embed_dim"], cfg["image_size"])
    model.to(device).train()
    gen = _generator(_seed(cfg, "contrastive"))
    opt = torch.optim.AdamW(model.parameters(), lr=kc["lr"], weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _warmup_cosine(max(1, kc["steps"] // 20), kc["steps"], 0.02))
    losses = []
    bar = tqdm(range(kc["steps"]), desc="training contrastive model", disable=not progress)
    for _ in bar:
        idx = torch.randint(0, images.shape[0], (kc["batch_size"],), generator=gen)
        batch_specs = [specs[i] for i in idx.tolist()]
        texts, named = _partial_texts(batch_specs, gen)
        match = _matches(batch_specs, named).to(device)
        x = _augment(images[idx].float() / 255.0, gen, 0.05).to(device)
        logits = model.logit_scale.clamp(max=math.log(100)).exp() * model.encode_images(x) @ model.encode_texts(texts).T
        loss_i = -(match / match.sum(1, keepdim=True) * logits.log_softmax(1)).sum(1).mean()
        loss_t = -(match.T / match.T.sum(1, keepdim=True) * logits.T.log_softmax(1)).sum(1).mean()
        loss = (loss_i + loss_t) / 2
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        if len(losses) % 20 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
    model.eval().requires_grad_(False)
    eval_images, eval_specs = data.eval
    x = eval_images.float() / 255.0
    metrics = {
        "seconds": time.perf_counter() - start,
        "parameters": _count(model),
        "final_loss": float(np.mean(losses[-50:])),
        "eval_images": len(eval_specs),
    }
    # Zero-shot accuracy per attribute: the most similar of "a circle", "a square", ...
    for head, options in (("shape", SHAPES), ("colour", COLOURS), ("background", BACKGROUNDS)):
        texts = [prompt(**{head: o}) for o in options]
        best = model.similarity(x, texts).argmax(1).numpy()
        truth = np.asarray([options.index(getattr(s, head)) for s in eval_specs])
        metrics[f"eval_zero_shot_{head}"] = float((best == truth).mean())
    return model, metrics


# --------------------------------------------------------------------------- orchestration


def _run_stage(stage: str, cfg: dict[str, Any], folder: Path, data: _Data, device: str, progress: bool) -> None:
    target = folder / ("ldm" if stage == "unet" else stage)
    start = time.perf_counter()

    def context(metrics: dict[str, Any]) -> dict[str, Any]:
        # wall_seconds includes drawing the data set when this stage is the first to need it.
        return {**metrics, "wall_seconds": time.perf_counter() - start, "threads": torch.get_num_threads(),
                "device": str(device)}

    if stage == "vae":
        vae, metrics = train_vae(cfg, data, device, progress)
        _write_stage(target, lambda tmp: vae.to("cpu").save_pretrained(tmp), context(metrics))
    elif stage == "unet":
        from diffusers import AutoencoderKL

        if not (folder / "vae").is_dir():
            raise TrainingError(f"the unet stage needs the trained VAE in {folder / 'vae'}")
        vae = AutoencoderKL.from_pretrained(folder / "vae").eval().requires_grad_(False)
        unet, text_encoder, tokenizer, metrics = train_text_unet(cfg, vae, data, device, progress)

        def write(tmp: Path) -> None:
            save_ldm(tmp, vae=vae.to("cpu"), unet=unet.to("cpu"), text_encoder=text_encoder.to("cpu"),
                     tokenizer=tokenizer, scheduler=build_scheduler())

        _write_stage(target, write, context(metrics))
    elif stage == "classifier":
        model, metrics = train_classifier(cfg, data, device, progress)
        _write_stage(target, lambda tmp: model.to("cpu").save(tmp), context(metrics))
    elif stage == "contrastive":
        model, metrics = train_contrastive(cfg, data, device, progress)
        _write_stage(target, lambda tmp: model.to("cpu").save(tmp), context(metrics))
    else:
        raise ValueError(f"unknown training stage {stage!r}; stages: {STAGES}")


def ensure_trained(
    config: Mapping[str, Any] | str | None = None,
    stages: Sequence[str] = STAGES,
    device: str = "cpu",
    threads: int | None = None,
    progress: bool = True,
) -> Path:
    """Train whatever of ``stages`` is not cached yet; return the diffusers folder of the world's LDM.

    ``config`` is a preset name or a (partial) config mapping (see ``mini.config``).
    Each stage is written atomically and skipped when present, so an interrupted run
    resumes at the stage it was in. ``threads`` sets torch's CPU threads while training
    (default: :func:`default_threads`), restored afterwards; results are bit-for-bit
    reproducible for a given device and thread count.
    """
    cfg = resolve_config(config)
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ValueError(f"unknown training stage(s) {unknown}; stages: {STAGES}")
    needed = list(stages)
    if "unet" in needed and "vae" not in needed:
        needed.insert(0, "vae")  # the LDM cannot be trained without its autoencoder
    needed = [s for s in STAGES if s in needed]
    folder = cache_folder(cfg)
    if missing_stages(cfg, needed):
        with _locked(folder):  # another process may have trained meanwhile: look again under the lock
            todo = missing_stages(cfg, needed)
            if todo:
                (folder / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True))
                data = _Data(cfg, progress=progress)
                with _torch_threads(threads):
                    for stage in todo:
                        _run_stage(stage, cfg, folder, data, device, progress)
    return folder / "ldm"


def load_classifier(config: Mapping[str, Any] | str | None = None, device: str = "cpu",
                    progress: bool = True) -> ShapesClassifier:
    """The world's trained concept classifier (trained first if it is not cached)."""
    ensure_trained(config, stages=("classifier",), progress=progress)
    return ShapesClassifier.load(stage_path(config, "classifier"), device=device)


def load_contrastive(config: Mapping[str, Any] | str | None = None, device: str = "cpu",
                     progress: bool = True) -> ShapesCLIP:
    """The world's trained contrastive image-text model (trained first if it is not cached)."""
    ensure_trained(config, stages=("contrastive",), progress=progress)
    return ShapesCLIP.load(stage_path(config, "contrastive"), device=device)


def world_config(profile) -> dict[str, Any]:
    """The shapes-world training config a profile uses for its judges (classifier, contrastive model).

    ``profile.data["world"]`` when given (e.g. the ``tiny`` profile points at the ``tiny``
    preset), else the model's own config when the model is the shapes world.
    """
    if "world" in profile.data:
        return resolve_config(profile.data["world"])
    if profile.model.kind == "mini":
        return resolve_config(dict(profile.model.config))
    raise ValueError(
        f"profile {profile.name!r} names no shapes-world config: add data.world (a preset name or config) "
        "or use a model of kind 'mini'"
    )


# --------------------------------------------------------------------------- CLI


def _read_config_arg(value: str | None) -> Mapping[str, Any] | str | None:
    if value is None:
        return None
    path = Path(value)
    if path.suffix in (".yaml", ".yml", ".json"):
        if not path.is_file():
            raise SystemExit(f"no config file {path}")
        import yaml

        return yaml.safe_load(path.read_text())
    return value  # a preset name


def main(argv: Sequence[str] | None = None) -> int:
    """``memories train-mini``: train (or find in the cache) every model of the shapes world."""
    parser = argparse.ArgumentParser(prog="memories train-mini", description=main.__doc__)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--config", help="a preset name (full, tiny) or a YAML/JSON training config file")
    group.add_argument("--profile", help="take the training config of this profile (name or YAML path)")
    parser.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated subset of {','.join(STAGES)}")
    parser.add_argument("--device", default="cpu", help="torch device to train on (default cpu)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: $MEMORIES_THREADS or every core)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    if args.profile:
        from ...core.profile import load_profile

        config = world_config(load_profile(args.profile))
    else:
        config = _read_config_arg(args.config)
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    start = time.perf_counter()
    path = ensure_trained(config, stages=stages, device=args.device, threads=args.threads,
                          progress=not args.quiet)
    elapsed = time.perf_counter() - start
    print(f"shapes world ({config_hash(config)}): {path.parent}")
    for stage, metrics in training_report(config).items():
        shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(metrics.items()))
        print(f"  {stage}: {shown}")
    print(f"this call took {elapsed:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
