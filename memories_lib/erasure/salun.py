"""SalUn (Saliency Unlearning; Fan et al., ICLR 2024): fine-tuning of the weights salient to the concept only.

1. Weight saliency. The gradient of a forget loss is summed over one pass of the forget set D_f,

       g = sum_batches grad_theta [ -||eps - ((1 + w) eps_theta(z_t, c_f) - w eps_theta(z_t, ""))||^2 ],

   with the classifier-free-guided prediction at w = 7.5; the mask keeps the fraction
   ``threshold`` (0.5) of the trained weights with the largest |g|, ranked over all of them together.
2. Masked fine-tuning. The loss ``L_f + alpha L_r`` (see :mod:`~memories_lib.erasure.unlearning`:
   the concept's prompt predicts like the pseudo prompt, "random labelling"; L_r the denoising loss
   on the retain set) is minimised with Adam, the gradient multiplied by the mask before every step,
   so the weights outside the mask never change.

Official code: OPTML-Group/Unlearn-Saliency, ``SD/train-scripts/generate_mask.py`` (the mask) and
``random_label.py`` / ``nsfw_removal.py`` (the training). Defaults used here: mask guidance 7.5,
threshold 0.5, batch size 8, Adam at lr 1e-5, ``train_method`` full (the whole UNet); alpha 0.5 and
5 epochs from the README's object command (the scripts' own defaults are alpha 0.1, and 1 epoch for
nudity); 800 forget and 800 retain images (the README's nudity sets).

Which weights the mask keeps (``mask_rule``). The paper keeps the *most* salient weights. The mask
code as first released (commits 9576623 to 2b0a8a1, October to December 2023) ranked |g| in
ascending order and kept the first half, the *least* salient weights; commit b874ee9 (17 December
2023) negated the scores, and the current code keeps the most salient ones, as the paper says.
``mask_rule="most-salient"`` (default) follows the paper and the current code,
``"least-salient"`` the first release. (Which one made the published checkpoints is not recorded.)

Departures from the official code: the images are the base model's generations (the object runs
use Imagenette photos); batches are drawn from a fresh random order each pass (the official forget
loader is not shuffled); the mask ranks only the trained weights (the official one ranks the whole
UNet whatever ``train_method`` is: the same for the default ``full``); ties in |g| are broken by
position; every random draw is seeded.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..core.models import LDM, encode_prompts
from .training import add_noise, finish, trainable_copy
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

#: The paper's (and the current code's) rule, and the rule of the mask code as first released.
MASK_RULES = ("most-salient", "least-salient")


@dataclass(frozen=True)
class SalUnParams(UnlearningParams):
    """SalUn's settings (official defaults for Stable Diffusion 1.4; see the module docstring)."""

    METHOD = "salun"

    alpha: float = 0.5
    threshold: float = 0.5
    mask_rule: str = "most-salient"
    mask_guidance: float = 7.5

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mask_rule not in MASK_RULES:
            raise ValueError(f"salun mask_rule must be one of {MASK_RULES}, got {self.mask_rule!r}")
        if not 0 < self.threshold <= 1:
            raise ValueError(f"salun threshold (the fraction of weights the mask keeps) must be in (0, 1], "
                             f"got {self.threshold}")
        if self.alpha < 0:
            raise ValueError(f"salun alpha must be >= 0, got {self.alpha}")


def saliency_gradients(unet: torch.nn.Module, names: list[str], sets: UnlearningSets, ldm: LDM, *,
                       batch_size: int, guidance: float, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """|g| per parameter ``names``: the gradient of the guided forget loss summed over one pass of D_f."""
    params = dict(unet.named_parameters())
    chosen = [params[n] for n in names]
    total = [torch.zeros_like(p) for p in chosen]
    with torch.no_grad():
        null = encode_prompts(ldm, [""])
    batches = index_batches(len(sets.forget), batch_size, generator)
    for _ in range(steps_per_epoch(len(sets.forget), batch_size)):
        z0, cond, _ = sets.forget_batch(next(batches))
        z_t, t, eps = add_noise(ldm, z0, generator)
        both = unet(torch.cat([z_t, z_t]).to(unet.device, unet.dtype), torch.cat([t, t]).to(unet.device),
                    encoder_hidden_states=torch.cat([cond, null.expand_as(cond)]).to(unet.device, unet.dtype)).sample
        e_c, e_0 = both.float().chunk(2)
        guided = (1 + guidance) * e_c - guidance * e_0
        loss = -torch.nn.functional.mse_loss(guided, eps.to(guided.device))
        for acc, grad in zip(total, torch.autograd.grad(loss, chosen)):
            acc += grad
    return {n: acc.abs() for n, acc in zip(names, total)}


def saliency_mask(gradients: dict[str, torch.Tensor], threshold: float = 0.5,
                  rule: str = "most-salient") -> dict[str, torch.Tensor]:
    """The weights SalUn fine-tunes: the ``int(threshold * N)`` of all N with the largest (or smallest) |g|."""
    if rule not in MASK_RULES:
        raise ValueError(f"mask_rule must be one of {MASK_RULES}, got {rule!r}")
    total = sum(g.numel() for g in gradients.values())
    scores = {n: g.abs() for n, g in gradients.items()}
    return global_top(scores, int(total * threshold), largest=rule == "most-salient")


def salun_erase(base: LDM, prompts: list[str], params: SalUnParams, *, progress: bool = False) -> UnlearningResult:
    """A copy of ``base.unet`` with the concept of ``prompts`` unlearned by SalUn (``base`` is untouched)."""
    generator = torch.Generator().manual_seed(int(params.seed))
    sets = unlearning_sets(base, prompts, params, generator)
    names = trained_names(base.unet, params.train_method)
    student, trained = trainable_copy(base.unet, names)
    grads = saliency_gradients(student, names, sets, base, batch_size=params.batch_size,
                               guidance=params.mask_guidance, generator=generator)
    mask = saliency_mask(grads, params.threshold, params.mask_rule)
    del grads
    frozen = [~mask[n].to(p.device) for n, p in zip(names, trained)]

    def apply_mask() -> None:
        for p, outside in zip(trained, frozen):
            p.grad.masked_fill_(outside, 0)

    forget_it = index_batches(len(sets.forget), params.batch_size, generator)
    retain_it = index_batches(len(sets.retain), params.batch_size, generator)

    def loss() -> torch.Tensor:
        z0, cond, pseudo = sets.forget_batch(next(forget_it))
        zr, cr = sets.retain_batch(next(retain_it))
        return forget_loss(student, base, z0, cond, pseudo, generator) + \
            params.alpha * denoising_loss(student, base, zr, cr, generator)

    optimizer = torch.optim.Adam(trained, lr=params.lr)
    steps = params.epochs * steps_per_epoch(len(sets.forget), params.batch_size)
    losses = run_steps(optimizer, steps, loss, before_step=apply_mask, progress=progress,
                       desc=f"SalUn '{prompts[0]}'")
    total = sum(m.numel() for m in frozen)
    details = {"losses": losses, "mask_kept": total - sum(int(m.sum()) for m in frozen), "mask_total": total,
               "pseudo_prompts": list(sets.pseudo_prompts)}
    return UnlearningResult(finish(student), names, details, selected=mask)


__all__ = ["MASK_RULES", "SalUnParams", "salun_erase", "saliency_gradients", "saliency_mask"]
