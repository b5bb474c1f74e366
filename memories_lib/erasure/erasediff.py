"""EraseDiff (Wu, Le, Hayat, Harandi; arXiv 2401.05779): unlearning as a constrained problem, solved first-order.

EraseDiff keeps the model good on the retain set subject to the forget loss being as low as it
can be: minimise ``L_r(theta)`` subject to ``q(theta) = L_f(theta) - min_phi L_f(phi) <= 0``, with L_f
the pseudo-prompt forget loss and L_r the denoising loss on the retain set (see
:mod:`~memories_lib.erasure.unlearning`). Following BOME's first-order method, every round (epoch)

1. saves theta_i and runs K passes of Adam on L_f over the forget set; the mean forget loss of the
   last pass stands for the value ``min L_f``, i.e. L_f(theta_i^K);
2. restores the parameters to theta_i;
3. runs one pass of Adam on ``L_r(theta) + lambda (L_f(theta) - L_f(theta_i^K))``.

The value L_f(theta_i^K) enters the outer loss as a constant (the official code detaches it, and
in BOME's gradient ``grad f(theta) - grad_x f(x, y^K)`` the second term vanishes, the lower-level
problem having no separate upper-level variable x). So the outer gradient is
``grad L_r(theta) + lambda grad L_f(theta)``; the inner passes set the constraint's value (recorded)
and, through the one Adam optimiser that both stages share in the official code, the moment
estimates the outer steps start from.

Official code: JingWu321/EraseDiff, ``sd/train_scripts/erasediff_nsfw.py`` and its command in
``train_nsfw.sh``: ``train_method`` noxattn (every UNet weight but cross-attention, the time
embedding and the output head), K = 2, lambda 1, 5 epochs, batch size 16, Adam at lr 1e-5 (the
object script ``train_cls.sh``: full UNet, K = 1, 2 epochs). Its adaptive lambda (``lambda_bome < 0``)
reads an ``eta_bome`` setting the script never defines, so only a fixed lambda >= 0 is offered.

Departures from the official code: the rounds are structured as in the official DDPM code (K inner
passes, restore, one outer pass); the SD scripts, by an indentation slip, run the outer pass
inside the loop over the K inner passes and restore theta_i before each, so every outer pass but
the last is thrown away. The official loops draw ``next(iter(loader))`` at every step, the first
batch of an unshuffled loader again and again; here each step takes the next batch of a fresh
random order. The images are the base model's generations; every random draw is seeded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch

from ..core.models import LDM
from .training import finish, trainable_copy
from .unlearning import (
    UnlearningParams,
    UnlearningResult,
    UnlearningSets,
    denoising_loss,
    forget_loss,
    index_batches,
    run_steps,
    steps_per_epoch,
    trained_names,
    unlearning_sets,
)


@dataclass(frozen=True)
class EraseDiffParams(UnlearningParams):
    """EraseDiff's settings (official nudity run on Stable Diffusion 1.4; see the module docstring).

    inner_steps: K, passes of the forget loss before the parameters are restored;
    lam:         lambda, the weight of the constraint q in the outer loss.
    """

    METHOD = "erasediff"

    train_method: str = "noxattn"
    batch_size: int = 16
    inner_steps: int = 2
    lam: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.inner_steps < 1:
            raise ValueError(f"erasediff inner_steps (K) must be >= 1, got {self.inner_steps}")
        if self.lam < 0:
            raise ValueError(f"erasediff lam must be >= 0 (the official adaptive lambda, lam < 0, is not "
                             f"runnable in the released script), got {self.lam}")


def inner_value(student: torch.nn.Module, trained: list[torch.nn.Parameter], optimizer: torch.optim.Optimizer,
                sets: UnlearningSets, ldm: LDM, *, inner_steps: int, steps: int, batches: Iterator[torch.Tensor],
                generator: torch.Generator) -> float:
    """L_f(theta^K): ``inner_steps`` passes of ``steps`` forget-loss steps, the mean loss of the last pass.

    The parameters are restored afterwards; the optimiser keeps its state (as in the official code).
    """
    saved = [p.detach().clone() for p in trained]

    def loss() -> torch.Tensor:
        return forget_loss(student, ldm, *sets.forget_batch(next(batches)), generator)

    for _ in range(inner_steps):
        losses = run_steps(optimizer, steps, loss)
    with torch.no_grad():
        for p, s in zip(trained, saved):
            p.copy_(s)
    return sum(losses) / len(losses)


def outer_loss(student: torch.nn.Module, ldm: LDM, sets: UnlearningSets, forget_pick: torch.Tensor,
               retain_pick: torch.Tensor, inner: float, lam: float, generator: torch.Generator) -> torch.Tensor:
    """``L_r + lambda (L_f - inner)`` on one retain and one forget batch (``inner`` a constant)."""
    l_r = denoising_loss(student, ldm, *sets.retain_batch(retain_pick), generator)
    l_f = forget_loss(student, ldm, *sets.forget_batch(forget_pick), generator)
    return l_r + lam * (l_f - inner)


def erasediff_erase(base: LDM, prompts: list[str], params: EraseDiffParams, *,
                    progress: bool = False) -> UnlearningResult:
    """A copy of ``base.unet`` with the concept of ``prompts`` unlearned by EraseDiff (``base`` is untouched)."""
    generator = torch.Generator().manual_seed(int(params.seed))
    sets = unlearning_sets(base, prompts, params, generator)
    names = trained_names(base.unet, params.train_method)
    student, trained = trainable_copy(base.unet, names)
    optimizer = torch.optim.Adam(trained, lr=params.lr)
    steps = steps_per_epoch(len(sets.forget), params.batch_size)
    forget_it = index_batches(len(sets.forget), params.batch_size, generator)
    retain_it = index_batches(len(sets.retain), params.batch_size, generator)
    inner_values, losses = [], []
    for epoch in range(params.epochs):
        inner = inner_value(student, trained, optimizer, sets, base, inner_steps=params.inner_steps, steps=steps,
                            batches=forget_it, generator=generator)
        inner_values.append(inner)
        losses += run_steps(
            optimizer, steps,
            lambda: outer_loss(student, base, sets, next(forget_it), next(retain_it), inner, params.lam, generator),
            progress=progress, desc=f"EraseDiff '{prompts[0]}' epoch {epoch + 1}/{params.epochs}",
        )
    details = {"losses": losses, "inner_values": inner_values, "pseudo_prompts": list(sets.pseudo_prompts)}
    return UnlearningResult(finish(student), names, details)


__all__ = ["EraseDiffParams", "erasediff_erase", "inner_value", "outer_loss"]
