"""Reliable and Efficient Concept Erasure (RECE; Gong et al., ECCV 2024): UCE, then closed-form attack and repair.

UCE edits every cross-attention key/value projection so that the concept's *prompt* is mapped to
its guide; other text embeddings can still bring the concept back. RECE finds such an embedding
in closed form and edits it away too, and repeats:

1. Start from the UCE edit (:func:`~memories_lib.erasure.uce.uce_erase`, with UCE's own settings).
2. Attack: with W_l the original and W'_l the current (edited) projections, the embedding that
   the edited model maps closest to what the original made of the concept's embedding c is

       c' = argmin_x  sum_l ||W'_l x - W_l c||^2 + lambda ||x||^2
          = (lambda I + sum_l W'_l^T W'_l)^-1 (sum_l W'_l^T W_l) c,

   one linear map applied to every token row of c; the sum runs over all edited projections
   (to_k and to_v of every cross-attention layer). ``regular_scale`` is lambda: it keeps c' small,
   which the paper argues limits the harm its erasure does to unrelated concepts.
3. Repair: a UCE-style closed-form edit of the *current* weights W' that maps each row of c' to
   the current output of the guide's row at the same position, W' c_guide, and keeps the current
   output of the preserved prompts (the empty prompt always, then the concept's ``preserve``):

       W = (lambda_1 W' + s_e sum W' c_guide c'^T + s_p sum W' c_p c_p^T)
           (lambda_1 I + s_e sum c' c'^T + s_p sum c_p c_p^T)^-1,

   computed by UCE's own :func:`~memories_lib.erasure.uce.closed_form_weight`.
4. Steps 2-3 are one epoch; the next epoch attacks the repaired model.

Official code: ``CharlesGong12/RECE`` (``train_object.py``, ``train_artists.py``, ``train.py``;
``utils/embedding_calculation/close_form_emb.py``, ``close_form_emb_regzero``, the ``close_regzero``
default; ``erase_methods/uce.py``, ``edit_model_adversarial``). Its defaults, used here: the repair's
lambda_1 = 0.1 (``--lamb``), s_p = 0.1 (``--preserve_scale``), s_e = 1 (``--erase_scale``), the
``replace`` technique; lambda = 1e-3 and 1 epoch (the argparse defaults of ``train_object.py`` and
``train_artists.py``). The README's settings per concept: lambda 1e-3 for styles and objects UCE
finds hard (church, garbage truck), 1e-1 with 1 epoch for easy objects, 1e-1 with 3 epochs for
nudity (2 for other unsafe concepts). The embeddings are whole token sequences (all 77 positions,
``rece_token="all"``), both for c' and for the guide and the preserved prompts.

Where this implementation departs:

* the official scripts load a published UCE checkpoint (``preserve_false``, guide ``" "`` for
  objects); here the UCE edit is computed with this project's UCE and the concept's prompts,
  guides and preserved prompts, so RECE's first stage is exactly the project's ``uce`` method;
* the official object script attacks the concept's name only (``"Church"``); here every prompt of
  the concept is attacked, each repaired towards its own guide (as UCE pairs them);
* the official scripts generate and classify images after each epoch and stop early (saving only
  an epoch whose accuracy improved); nothing is measured here, every epoch runs;
* the linear algebra is done in float64 with ``solve`` rather than float32 with ``inverse``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from diffusers import UNet2DConditionModel

from ..core.progress import tqdm
from .uce import (
    DEFAULT_ERASE_SCALE,
    DEFAULT_LAMBDA,
    DEFAULT_PRESERVE_SCALE,
    TOKEN_MODES,
    EditPairs,
    apply_pairs,
    cross_attention_projections,
    paired_rows,
    token_embeddings,
    token_rows,
    uce_erase,
)

#: Defaults of the official scripts (``train_object.py`` / ``train_artists.py`` of CharlesGong12/RECE).
DEFAULT_EPOCHS = 1
DEFAULT_REGULAR_SCALE = 1e-3
DEFAULT_RECE_LAMBDA = 0.1
DEFAULT_RECE_ERASE_SCALE = 1.0
DEFAULT_RECE_PRESERVE_SCALE = 0.1


@dataclass(frozen=True)
class RECEParams:
    """RECE's settings: the UCE edit it starts from, then its own epochs of attack and repair.

    UCE stage (UCE's own defaults): ``guides`` None: each prompt's own guide (the concept's), else
    the empty prompt; ``preserve`` None: the concept's prompts to preserve (nothing without a
    concept); ``lamb``, ``preserve_scale``, ``erase_scale``, ``token``, ``projections`` as for UCE
    (the projections are also the ones RECE attacks and repairs).
    RECE stage (official defaults): ``epochs``; ``regular_scale``, the attack's lambda;
    ``rece_lamb``, ``rece_erase_scale``, ``rece_preserve_scale``, the repair's lambda_1, s_e, s_p;
    ``rece_token``, which token rows stand for a prompt in the attack and repair.
    """

    guides: str | list[str] | None = None
    preserve: list[str] | None = None
    lamb: float = DEFAULT_LAMBDA
    preserve_scale: float | None = None
    erase_scale: float = DEFAULT_ERASE_SCALE
    token: str = "last"
    projections: list[str] = field(default_factory=lambda: ["to_k", "to_v"])
    epochs: int = DEFAULT_EPOCHS
    regular_scale: float = DEFAULT_REGULAR_SCALE
    rece_lamb: float = DEFAULT_RECE_LAMBDA
    rece_erase_scale: float = DEFAULT_RECE_ERASE_SCALE
    rece_preserve_scale: float = DEFAULT_RECE_PRESERVE_SCALE
    rece_token: str = "all"

    def __post_init__(self) -> None:
        if isinstance(self.epochs, bool) or not isinstance(self.epochs, int) or self.epochs < 1:
            raise ValueError(f"RECE epochs must be a positive integer, got {self.epochs!r}")
        for name in ("regular_scale", "rece_lamb", "lamb", "rece_preserve_scale"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"RECE {name} must be non-negative, got {getattr(self, name)!r}")
        if not self.rece_erase_scale > 0:
            raise ValueError(f"RECE rece_erase_scale must be positive, got {self.rece_erase_scale!r}")
        for name in ("token", "rece_token"):
            if getattr(self, name) not in TOKEN_MODES:
                raise ValueError(f"RECE {name} must be one of {TOKEN_MODES}, got {getattr(self, name)!r}")


@dataclass
class RECEResult:
    """A RECE-edited copy of a UNet.

    unet:        the edited UNet (a new object; the input is untouched);
    edited:      parameter name -> new weight (on the CPU), the cross-attention weights it changed;
    adversarial: the embeddings c' of the last epoch's attack, one (rows, D) tensor per prompt;
    history:     per epoch, how close the attack came to the concept and how far c' was from the
                 guide's output before and after the repair (relative squared distances).
    """

    unet: UNet2DConditionModel
    edited: dict[str, torch.Tensor]
    adversarial: list[torch.Tensor]
    history: list[dict[str, Any]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- the attack


def adversarial_embedding(
    concept: torch.Tensor,
    edited: Sequence[torch.Tensor],
    original: Sequence[torch.Tensor],
    regular_scale: float,
) -> torch.Tensor:
    """The rows x minimising sum_l ||W'_l x - W_l c||^2 + lambda ||x||^2, one per row c of ``concept``.

    concept: (n, D) token rows; edited, original: the weights W'_l, W_l (out_l, D), paired;
    regular_scale: lambda. Returns (n, D) in float64:
    x = (lambda I + sum W'^T W')^-1 (sum W'^T W) c.
    """
    if len(edited) != len(original) or not edited:
        raise ValueError(f"need as many edited weights as original ones, got {len(edited)} and {len(original)}")
    dim = concept.shape[-1]
    device = edited[0].device
    gram = regular_scale * torch.eye(dim, dtype=torch.float64, device=device)
    cross = torch.zeros(dim, dim, dtype=torch.float64, device=device)
    for w_new, w_old in zip(edited, original):
        w_new = w_new.detach().double()
        gram += w_new.T @ w_new
        cross += w_new.T @ w_old.detach().to(device, torch.float64)
    c = concept.detach().to(device, torch.float64)
    try:
        return torch.linalg.solve(gram, cross @ c.T).T
    except torch.linalg.LinAlgError:
        raise ValueError("the attack's normal equations are singular: use a positive regular_scale") from None


def _weights(unet: torch.nn.Module, projections: Sequence[str]) -> dict[str, torch.Tensor]:
    return {name: layer.weight for name, layer in cross_attention_projections(unet, projections).items()}


def _relative_gap(outputs: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]) -> float:
    """sum_l ||outputs_l - targets_l||^2 / sum_l ||targets_l||^2."""
    num = sum(float((outputs[k] - targets[k]).pow(2).sum()) for k in targets)
    den = sum(float(targets[k].pow(2).sum()) for k in targets)
    return num / max(den, 1e-30)


def _apply(weights: dict[str, torch.Tensor], rows: torch.Tensor) -> dict[str, torch.Tensor]:
    return {k: rows.to(w.device, torch.float64) @ w.detach().double().T for k, w in weights.items()}


# --------------------------------------------------------------------------- RECE


def rece_erase(
    unet: UNet2DConditionModel,
    text_encoder: torch.nn.Module,
    tokenizer,
    concepts: str | Sequence[str],
    params: RECEParams = RECEParams(),
    *,
    progress: bool = True,
) -> RECEResult:
    """Erase ``concepts`` with UCE, then run ``params.epochs`` rounds of closed-form attack and repair."""
    start = uce_erase(
        unet, text_encoder, tokenizer, concepts,
        guides="" if params.guides is None else params.guides, preserve=params.preserve,
        lamb=params.lamb, erase_scale=params.erase_scale,
        preserve_scale=DEFAULT_PRESERVE_SCALE if params.preserve_scale is None else params.preserve_scale,
        token=params.token, projections=params.projections,
    )
    concepts, guides, preserve = start.info["concepts"], start.info["guides"], start.info["preserve"]
    concept_rows, guide_rows = paired_rows(text_encoder, tokenizer, concepts, guides, params.rece_token)
    retain = [""] + [p for p in preserve if p != ""]
    hidden, last = token_embeddings(text_encoder, tokenizer, retain)
    retain_rows = [token_rows(hidden[i], last[i], params.rece_token) for i in range(len(retain))]
    original = _weights(unet, params.projections)
    names = list(original)

    current, edited = start.unet, start.edited
    adversarial: list[torch.Tensor] = []
    history: list[dict[str, Any]] = []
    for epoch in tqdm(range(params.epochs), desc="RECE", disable=not progress):
        weights = _weights(current, params.projections)
        adversarial = [
            adversarial_embedding(c, [weights[k] for k in names], [original[k] for k in names], params.regular_scale)
            for c in concept_rows
        ]
        pairs = EditPairs()
        for adv, g in zip(adversarial, guide_rows):
            pairs.add(adv, g, params.rece_erase_scale, "adversarial")
        for rows in retain_rows:
            pairs.add(rows, rows, params.rece_preserve_scale, "preserve")
        adv_rows, target_rows = torch.cat(adversarial), torch.cat(guide_rows)
        targets = _apply(weights, target_rows)
        record = {
            "epoch": epoch,
            "attack_gap": _relative_gap(_apply(weights, adv_rows), _apply(original, torch.cat(concept_rows))),
            "guide_gap_before": _relative_gap(_apply(weights, adv_rows), targets),
        }
        current, edited, _ = apply_pairs(current, pairs, params.rece_lamb, params.projections)
        record["guide_gap_after"] = _relative_gap(_apply(_weights(current, params.projections), adv_rows), targets)
        history.append(record)
    info = {"uce": {k: v for k, v in start.info.items() if k != "layers"}, "retain": retain}
    return RECEResult(unet=current, edited=edited, adversarial=adversarial, history=history, info=info)
