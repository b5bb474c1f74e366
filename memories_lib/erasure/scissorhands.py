"""Scissorhands (Wu and Harandi, ECCV 2024): trim the weights most connected to the concept, then repair.

1. Connection sensitivity (SNIP). Over ``prune_batches`` forget batches the absolute gradients of the
   denoising loss of the forget set under its own prompts are summed, ``G = sum_b |grad L_b|``, and
   every UNet weight scores ``s = |G * w|``.
2. Trimming. The weights whose score lies above the k-th smallest, k = int(sparsity * N) over all N
   UNet weights together, are re-initialised: the top fraction 1 - sparsity (0.5% at the official
   0.995). A re-initialised entry takes its value from a fresh initialisation of its tensor:
   Kaiming-uniform (ReLU gain, bound sqrt(6 / fan_in)) for matrices and convolutions, zero for
   biases (and one for a normalisation scale).
3. Repair. Adam fine-tunes on ``L_r + lam L_f`` (see :mod:`~memories_lib.erasure.unlearning`:
   denoising on the retain set, the concept's prompt predicting like the pseudo prompt).

Which weights may be re-initialised (``reinit_layers``, parameter-name prefixes; None: every UNet
weight, as the paper describes trimming). The released nudity script ranks all UNet weights but
re-initialises only those of the self-attention (``attn1``) of CompVis ``output_blocks.4`` and
``output_blocks.7``: in diffusers names ``up_blocks.1.attentions.1`` and ``up_blocks.2.attentions.1``
(the default; a prefix absent from a smaller UNet is skipped, but at least one must match).
Its first release re-initialised every cross-attention weight with a truncated normal (std 0.02)
and offered a gradient projection (GEM) in the repair; the current one neither.

Official code: JingWu321/Scissorhands, ``SD/shs_nsfw.py`` and its command in ``SD/train_shs.sh``:
sparsity 0.995, lam 0.1, 10 SNIP batches, 5 epochs, batch size 16, Adam at lr 1e-5, ``train_method``
full (the whole UNet). (The object script ``shs_cls.py`` differs: sparsity 0.999, lr 2e-5, 3 epochs,
SNIP on the guided loss at 7.5, a truncated-normal re-initialisation and gradient *ascent* on the
forget denoising loss, ``L_r - lam L_u``, instead of a pseudo prompt.)

Departures from the official code: the SNIP batches and every training batch are drawn from a fresh
random order (the official loops take ``next(iter(loader))``, the first batch of an unshuffled loader,
every time: one forget and one retain batch are all they ever see); the images are the base model's
generations; ties of the score are broken by position; every random draw is seeded.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..core.models import LDM
from .training import finish, trainable_copy
from .unlearning import (
    UnlearningParams,
    UnlearningResult,
    UnlearningSets,
    denoising_loss,
    forget_loss,
    global_top,
    index_batches,
    run_steps,
    steps_per_epoch,
    trained_names,
    unlearning_sets,
)

#: The layers the released nudity script re-initialises (CompVis output_blocks.4/.7 self-attention).
RELEASED_REINIT_LAYERS = (
    "up_blocks.1.attentions.1.transformer_blocks.0.attn1.",
    "up_blocks.2.attentions.1.transformer_blocks.0.attn1.",
)


@dataclass(frozen=True)
class ScissorhandsParams(UnlearningParams):
    """Scissorhands' settings (official nudity run on Stable Diffusion 1.4; see the module docstring).

    sparsity:      the fraction of weights kept; the top 1 - sparsity by connection sensitivity are trimmed;
    prune_batches: forget batches the sensitivity is summed over;
    reinit_layers: parameter-name prefixes whose trimmed weights are re-initialised (None: the whole UNet);
    lam:           the weight of the forget loss in the repair.
    """

    METHOD = "scissorhands"

    batch_size: int = 16
    sparsity: float = 0.995
    prune_batches: int = 10
    reinit_layers: list[str] | None = field(default_factory=lambda: list(RELEASED_REINIT_LAYERS))
    lam: float = 0.1

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.sparsity < 1:
            raise ValueError(f"scissorhands sparsity (the fraction of weights kept) must be in [0, 1), "
                             f"got {self.sparsity}")
        if self.prune_batches < 1:
            raise ValueError(f"scissorhands prune_batches must be >= 1, got {self.prune_batches}")
        if self.reinit_layers is not None and not list(self.reinit_layers):
            raise ValueError("scissorhands reinit_layers must name at least one prefix (or be None: the whole UNet)")
        if self.lam < 0:
            raise ValueError(f"scissorhands lam must be >= 0, got {self.lam}")


def reinit_names(unet: torch.nn.Module, layers: list[str] | None) -> list[str]:
    """The UNet parameters whose trimmed entries are re-initialised: those under ``layers`` (None: all)."""
    names = [n for n, _ in unet.named_parameters()]
    if layers is None:
        return names
    chosen = [n for n in names if n.startswith(tuple(layers))]
    if not chosen:
        raise ValueError(f"scissorhands reinit_layers {list(layers)} match no parameter of this UNet")
    return chosen


def connection_sensitivity(unet: torch.nn.Module, sets: UnlearningSets, ldm: LDM, *, batches: int,
                           batch_size: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """SNIP scores |G * w| of every UNet parameter, G the summed |gradient| of the forget denoising loss."""
    named = dict(unet.named_parameters())
    params = list(named.values())
    with torch.enable_grad():
        flags = [p.requires_grad for p in params]
        for p in params:
            p.requires_grad_(True)
        total = [torch.zeros_like(p) for p in params]
        order = index_batches(len(sets.forget), batch_size, generator)
        for _ in range(batches):
            z0, cond, _ = sets.forget_batch(next(order))
            loss = denoising_loss(unet, ldm, z0, cond, generator)  # of the forget set, under its own prompts
            for acc, grad in zip(total, torch.autograd.grad(loss, params, allow_unused=True)):
                if grad is not None:
                    acc += grad.abs()
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)
    return {n: (acc * p.detach()).abs() for (n, p), acc in zip(named.items(), total)}


def trim_mask(scores: dict[str, torch.Tensor], sparsity: float) -> dict[str, torch.Tensor]:
    """The trimmed weights: the N - int(sparsity * N) of all N with the largest scores."""
    total = sum(s.numel() for s in scores.values())
    return global_top(scores, total - int(sparsity * total), largest=True)


def fresh_init(name: str, like: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A newly initialised tensor for parameter ``name``: Kaiming-uniform (ReLU) for >= 2 dims, else 0 (bias) or 1."""
    if like.dim() >= 2:
        out = torch.empty(like.shape, dtype=torch.float32)
        torch.nn.init.kaiming_uniform_(out, a=0, nonlinearity="relu", generator=generator)
        return out.to(like.device, like.dtype)
    return torch.full_like(like, 0.0 if name.endswith("bias") else 1.0)


@torch.no_grad()
def reinitialise(unet: torch.nn.Module, trim: dict[str, torch.Tensor], names: list[str],
                 generator: torch.Generator) -> int:
    """Re-initialise, in place, the trimmed entries of the parameters ``names``; how many entries changed."""
    params = dict(unet.named_parameters())
    count = 0
    for name in names:
        where = trim[name]
        if where.any():
            p = params[name]
            p.copy_(torch.where(where.to(p.device), fresh_init(name, p, generator), p))
            count += int(where.sum())
    return count


def scissorhands_erase(base: LDM, prompts: list[str], params: ScissorhandsParams, *,
                       progress: bool = False) -> UnlearningResult:
    """A copy of ``base.unet`` with the concept of ``prompts`` unlearned by Scissorhands (``base`` is untouched)."""
    generator = torch.Generator().manual_seed(int(params.seed))
    sets = unlearning_sets(base, prompts, params, generator)
    names = trained_names(base.unet, params.train_method)
    layers = reinit_names(base.unet, params.reinit_layers)
    student, trained = trainable_copy(base.unet, names)
    scores = connection_sensitivity(student, sets, base, batches=params.prune_batches,
                                    batch_size=params.batch_size, generator=generator)
    trim = trim_mask(scores, params.sparsity)
    del scores
    reinitialised = reinitialise(student, trim, layers, generator)
    trimmed = sum(int(m.sum()) for m in trim.values())

    forget_it = index_batches(len(sets.forget), params.batch_size, generator)
    retain_it = index_batches(len(sets.retain), params.batch_size, generator)

    def loss() -> torch.Tensor:
        zr, cr = sets.retain_batch(next(retain_it))
        z0, cond, pseudo = sets.forget_batch(next(forget_it))
        return denoising_loss(student, base, zr, cr, generator) + \
            params.lam * forget_loss(student, base, z0, cond, pseudo, generator)

    optimizer = torch.optim.Adam(trained, lr=params.lr)
    steps = params.epochs * steps_per_epoch(len(sets.forget), params.batch_size)
    losses = run_steps(optimizer, steps, loss, progress=progress, desc=f"Scissorhands '{prompts[0]}'")
    details = {"losses": losses, "trimmed": trimmed, "reinitialised": reinitialised,
               "pseudo_prompts": list(sets.pseudo_prompts)}
    return UnlearningResult(finish(student), names, details, selected=trim)


def scissorhands_parameter_names(unet: torch.nn.Module, params: ScissorhandsParams) -> list[str]:
    """What Scissorhands may change: the trained parameters and those it may re-initialise."""
    names = trained_names(unet, params.train_method)
    extra = set(reinit_names(unet, params.reinit_layers)) - set(names)
    return names + [n for n, _ in unet.named_parameters() if n in extra]


__all__ = [
    "RELEASED_REINIT_LAYERS", "ScissorhandsParams", "connection_sensitivity", "fresh_init", "reinit_names",
    "reinitialise", "scissorhands_erase", "scissorhands_parameter_names", "trim_mask",
]
