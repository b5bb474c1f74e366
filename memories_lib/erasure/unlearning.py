"""What SalUn, EraseDiff and Scissorhands share: a forget set, a retain set, pseudo prompts and two losses.

The three methods come from machine unlearning and fine-tune the UNet on two sets of images:

- the *forget set* D_f: images of the concept with their prompts. Here, as everywhere in this
  package, these are the base model's own generations from the concept's prompts
  (:func:`~memories_lib.erasure.training.sample_latents`);
- the *retain set* D_r: images that must still come out right, here generations from the
  concept's ``preserve`` prompts. An empty list is refused: the methods cannot run without it.

and combine two losses (z_t the forward process of a latent at a uniform training timestep t):

- retain: ``L_r = ||eps_theta(z_t, c_r, t) - eps||^2``, the ordinary denoising loss on D_r;
- forget: ``L_f = ||eps_theta(z_t, c_f, t) - sg[eps_theta(z_t, c_p, t)]||^2`` on D_f: prompted with
  the concept, the model is trained to predict what it itself predicts, on the same noisy latent,
  for a *pseudo prompt* c_p (sg: no gradient; the target is recomputed by the current model at
  every step). SalUn calls this "random labelling", EraseDiff "ambiguous labels".

The pseudo prompt of each official Stable Diffusion script: SalUn remaps an Imagenette class to
the *next* class, "an image of a {class i+1 mod 10}" (``train-scripts/random_label.py``; tench ->
English springer, church -> French horn, parachute -> tench), and "a photo of a nude person" to
"a photo of a person wearing clothes" (``nsfw_removal.py``); EraseDiff remaps everything to "a
photo of a pokemon" (``erasediff_nsfw.py``, ``erasediff_cls.py``); Scissorhands remaps nudity to
"a photo of a person wearing clothes" (``shs_nsfw.py``). None of them uses a "harmless" or empty
prompt. Here the pseudo prompt of ``prompts[i]`` is ``guides[i]``, the concept's own guide, or one
string given for every prompt (e.g. ``"a photo of a pokemon"`` for EraseDiff's choice).

Which UNet parameters are trained (``train_method``, the official scripts' names): ``full`` every
one; ``noxattn`` all but cross-attention, the time embedding and the output head (ESD-u's set);
``xattn`` cross-attention only (ESD-x's set).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch

from ..core.models import LDM, encode_prompts
from ..core.progress import tqdm
from .esd import esd_parameter_names
from .training import TrainingLatents, add_noise, noise_loss, paired_guides, sample_latents

TRAIN_METHODS = ("full", "noxattn", "xattn")


@dataclass(frozen=True)
class UnlearningParams:
    """What SalUn, EraseDiff and Scissorhands share. Each method subclasses it with its official defaults.

    guides:    the pseudo prompts: one per concept prompt, or one string for all (None: the concept's guides);
    preserve:  the retain set's prompts (None: the concept's; empty: refused);
    forget_samples, retain_samples: how many images the base model generates for each set (800 each
               in SalUn's nudity run); ``sample_steps`` DDIM steps at guidance ``sample_guidance`` (this
               project's choice; EraseDiff's generation script uses 100 LMS steps at 7.5);
    seed:      every random draw (the sets, batches, timesteps, noise, re-initialisation).
    """

    METHOD = "unlearning"

    guides: str | list[str] | None = None
    preserve: list[str] | None = None
    train_method: str = "full"
    lr: float = 1e-5
    epochs: int = 5
    batch_size: int = 8
    forget_samples: int = 800
    retain_samples: int = 800
    sample_steps: int = 50
    sample_guidance: float = 7.5
    seed: int = 0

    def __post_init__(self) -> None:
        name = self.METHOD
        if self.preserve is not None and not list(self.preserve):
            raise ValueError(f"{name} needs prompts to preserve (its retain set), but preserve is empty: "
                             f"give preserve=[...] or a concept with prompts to preserve")
        if self.guides is not None and not isinstance(self.guides, str) and not list(self.guides):
            raise ValueError(f"{name} guides (its pseudo prompts) must be a string or a non-empty list, got []")
        if self.train_method not in TRAIN_METHODS:
            raise ValueError(f"{name} train_method must be one of {TRAIN_METHODS}, got {self.train_method!r}")
        if not self.lr > 0:
            raise ValueError(f"{name} lr must be positive, got {self.lr}")
        counts = {k: getattr(self, k) for k in ("epochs", "batch_size", "forget_samples", "retain_samples",
                                                  "sample_steps")}
        bad = {k: v for k, v in counts.items() if v < 1}
        if bad:
            raise ValueError(f"{name} needs {sorted(bad)} >= 1, got {bad}")


def trained_names(unet: torch.nn.Module, train_method: str) -> list[str]:
    """Names of the UNet parameters ``train_method`` ("full", "noxattn", "xattn") trains."""
    if train_method == "full":
        return [name for name, _ in unet.named_parameters()]
    if train_method in ("noxattn", "xattn"):
        return esd_parameter_names(unet, "esd-u" if train_method == "noxattn" else "esd-x")
    raise ValueError(f"train_method must be one of {TRAIN_METHODS}, got {train_method!r}")


@dataclass(frozen=True)
class UnlearningSets:
    """The forget set, the retain set and, per forget prompt, its pseudo prompt's text embedding."""

    forget: TrainingLatents
    retain: TrainingLatents
    pseudo: torch.Tensor  # (len(forget.prompts), L, D)
    pseudo_prompts: tuple[str, ...]

    def forget_batch(self, pick: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Forget latents ``pick``, their prompts' and their pseudo prompts' embeddings: (z_0, c_f, c_p)."""
        index = self.forget.index[pick]
        return self.forget.latents[pick], self.forget.embeds[index], self.pseudo[index]

    def retain_batch(self, pick: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Retain latents ``pick`` and their prompts' embeddings: (z_0, c_r)."""
        return self.retain.latents[pick], self.retain.embeds[self.retain.index[pick]]


def unlearning_sets(base: LDM, prompts: Sequence[str], params: UnlearningParams,
                    generator: torch.Generator) -> UnlearningSets:
    """The forget set (generations from ``prompts``), the retain set (from ``params.preserve``), the pseudo prompts."""
    if params.preserve is None or params.guides is None:
        raise ValueError(f"{params.METHOD} needs preserve and guides (the concept's, when erased through the registry)")
    pseudo = paired_guides(params.METHOD, prompts, params.guides, "pseudo prompt")
    sample = dict(generator=generator, num_steps=params.sample_steps, guidance_scale=params.sample_guidance)
    forget = sample_latents(base, prompts, params.forget_samples, **sample)
    retain = sample_latents(base, params.preserve, params.retain_samples, **sample)
    with torch.no_grad():
        embeds = encode_prompts(base, pseudo)
    return UnlearningSets(forget, retain, embeds, tuple(pseudo))


def _predict(unet: torch.nn.Module, z_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
    device, dtype = unet.device, unet.dtype
    return unet(z_t.to(device, dtype), t.to(device), encoder_hidden_states=cond.to(device, dtype)).sample


def forget_loss(unet: torch.nn.Module, ldm: LDM, z0: torch.Tensor, cond: torch.Tensor, pseudo: torch.Tensor,
                generator: torch.Generator) -> torch.Tensor:
    """L_f: the prediction for the concept's prompt against the (gradient-free) prediction for the pseudo prompt."""
    z_t, t, _ = add_noise(ldm, z0, generator)
    with torch.no_grad():
        target = _predict(unet, z_t, t, pseudo)
    return noise_loss(unet, z_t, t, cond, target)


def denoising_loss(unet: torch.nn.Module, ldm: LDM, z0: torch.Tensor, cond: torch.Tensor,
                generator: torch.Generator) -> torch.Tensor:
    """The denoising loss of latents under their own prompts (L_r on the retain set)."""
    z_t, t, eps = add_noise(ldm, z0, generator)
    return noise_loss(unet, z_t, t, cond, eps)


def index_batches(n: int, size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Endless batches of the indices 0..n-1: pass after pass, each in a fresh random order (its last batch short)."""
    while True:
        yield from torch.randperm(n, generator=generator, device=generator.device).cpu().split(size)


def steps_per_epoch(n: int, size: int) -> int:
    """Batches in one pass over ``n`` items (the official loops run one step per forget batch)."""
    return math.ceil(n / size)


def global_top(scores: Mapping[str, torch.Tensor], count: int, *, largest: bool = True) -> dict[str, torch.Tensor]:
    """Boolean masks selecting exactly ``count`` entries of all ``scores`` together: the largest (or smallest).

    One ranking over every tensor (as the official masks are), ties broken by position (a stable sort).
    """
    total = sum(s.numel() for s in scores.values())
    if not 0 <= count <= total:
        raise ValueError(f"cannot select {count} of {total} entries")
    flat = torch.cat([s.detach().flatten().float() for s in scores.values()])
    chosen = torch.zeros(total, dtype=torch.bool, device=flat.device)
    chosen[torch.argsort(flat, descending=largest, stable=True)[:count]] = True
    masks, start = {}, 0
    for name, s in scores.items():
        masks[name] = chosen[start:start + s.numel()].view(s.shape)
        start += s.numel()
    return masks


def run_steps(optimizer: torch.optim.Optimizer, steps: int, loss_fn: Callable[[], torch.Tensor], *,
              before_step: Callable[[], None] | None = None, progress: bool = False, desc: str = "") -> list[float]:
    """``steps`` optimiser steps on ``loss_fn()`` (``before_step`` may edit the gradients); the losses."""
    losses = []
    bar = tqdm(range(steps), desc=desc, disable=not progress)
    for _ in bar:
        loss = loss_fn()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if before_step is not None:
            before_step()
        optimizer.step()
        losses.append(float(loss.detach()))
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
    return losses


@dataclass
class UnlearningResult:
    """A fine-tuned copy of the UNet (the base model's is untouched), what it trained and diagnostics.

    selected: the weights the method singled out, name -> boolean mask (SalUn's saliency mask,
              Scissorhands' trimmed weights), None for EraseDiff.
    """

    unet: torch.nn.Module
    trained: list[str]
    details: dict[str, Any] = field(default_factory=dict)
    selected: dict[str, torch.Tensor] | None = None


__all__ = [
    "TRAIN_METHODS", "UnlearningParams", "UnlearningResult", "UnlearningSets", "denoising_loss", "forget_loss",
    "global_top", "index_batches", "run_steps", "steps_per_epoch", "trained_names",
    "unlearning_sets",
]
