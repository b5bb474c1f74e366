"""Unified Concept Editing (UCE; Gandikota et al., WACV 2024): a closed-form edit of cross-attention.

Every cross-attention layer of a Stable-Diffusion-style UNet reads the text through two
linear maps, ``attn2.to_k`` and ``attn2.to_v``. UCE replaces each such weight ``W_old`` by the
minimiser of

    lambda ||W - W_old||^2 + sum_i ||W c_i - v*_i||^2 + s_p sum_j ||W c_j - W_old c_j||^2,

whose closed form is (eq. 7 of the UCE paper)

    W = (lambda W_old + sum_i v*_i c_i^T + s_p sum_j W_old c_j c_j^T)
        (lambda I + sum_i c_i c_i^T + s_p sum_j c_j c_j^T)^-1.

``c_i`` are text-encoder token embeddings of the edited prompts and ``c_j`` those of the
preserved prompts. The target ``v*_i`` decides what the edit does:

* erase:     ``v*_i = W_old c_guide``, the old output for a guide prompt;
* moderate:  erasing with the empty prompt as guide;
* debias:    ``v*_i = W_old (c_i + sum_k alpha_k a_k)``, the attribute embeddings ``a_k`` mixed
             in with weights found by iterating against a measured attribute ratio.

Which token embeddings stand for a prompt follows the official code: the current scripts take
the *last* token of the prompt (the one before the end token; for the empty prompt that is the
start token), the first release took the last word and every token after it (``"tail"``).
All three choices are offered through ``token``. The functions never modify their inputs:
they edit a deep copy of the UNet and report which weights changed.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch
from diffusers import UNet2DConditionModel

from ..core.progress import tqdm

#: How a prompt becomes key vectors: the last token before the end token (official default),
#: that token and every token after it, or every position of the padded sequence.
TOKEN_MODES = ("last", "tail", "all")

#: Defaults of the official script (``trainscripts/uce_sd_erase.py``).
DEFAULT_LAMBDA = 0.5
DEFAULT_ERASE_SCALE = 1.0
DEFAULT_PRESERVE_SCALE = 1.0


@dataclass
class UCEResult:
    """An edited copy of a UNet.

    unet:    the edited UNet (a new object; the input UNet is untouched).
    edited:  parameter name -> new weight (on the CPU), exactly the weights that changed;
             the layout of UCE's published ``.safetensors`` files.
    method:  "erase", "moderate" or "debias".
    info:    the prompts and settings used, and per-layer diagnostics.
    history: for debiasing, one entry per measurement (ratios, alphas); empty otherwise.
    """

    unet: UNet2DConditionModel
    edited: dict[str, torch.Tensor]
    method: str
    info: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)


# --------------------------------------------------------------------------- embeddings


def cross_attention_projections(
    unet: torch.nn.Module, projections: Sequence[str] = ("to_k", "to_v")
) -> dict[str, torch.nn.Linear]:
    """Module name -> linear layer, for every cross-attention (``attn2``) key/value projection."""
    unknown = sorted(set(projections) - {"to_k", "to_v"})
    if unknown or not projections:
        raise ValueError(f"projections must be a non-empty subset of ('to_k', 'to_v'), got {tuple(projections)}")
    found = {}
    for name, module in unet.named_modules():
        parts = name.split(".")
        if len(parts) >= 2 and parts[-2] == "attn2" and parts[-1] in projections:
            if not isinstance(module, torch.nn.Linear):
                raise ValueError(f"{name} is a {type(module).__name__}, not a Linear layer")
            found[name] = module
    if not found:
        raise ValueError("the UNet has no cross-attention (attn2) key/value projections to edit")
    return found


@torch.no_grad()
def token_embeddings(
    text_encoder: torch.nn.Module, tokenizer, prompts: Sequence[str]
) -> tuple[torch.Tensor, list[int]]:
    """Encoder hidden states (B, L, D) of ``prompts`` and, per prompt, the index of its last token.

    The last token is the one just before the end token (attention-mask length minus 2), as in
    the official code; for the empty prompt it is the start token.
    """
    batch = tokenizer(
        [p.lower() for p in prompts],
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    )
    if "attention_mask" not in batch:
        raise ValueError("the tokenizer returns no attention_mask; cannot locate each prompt's last token")
    device = next(text_encoder.parameters()).device
    hidden = text_encoder(batch["input_ids"].to(device))[0]
    last = [max(int(n) - 2, 0) for n in batch["attention_mask"].sum(dim=1)]
    return hidden, last


def token_rows(hidden: torch.Tensor, last: int, token: str) -> torch.Tensor:
    """The key vectors (n, D) that stand for one encoded prompt."""
    if token == "last":
        return hidden[last : last + 1]
    if token == "tail":
        return hidden[last:]
    return hidden


def _check_token(token: str) -> None:
    if token not in TOKEN_MODES:
        raise ValueError(f"token must be one of {TOKEN_MODES}, got {token!r}")


def paired_rows(
    text_encoder, tokenizer, prompts: Sequence[str], partners: Sequence[str], token: str
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Key rows of each prompt and of its partner, with equal row counts.

    For ``"tail"`` the two suffixes start at different positions; both are cut to the shorter
    length (the official first release aligned them the same way).
    """
    hidden_a, last_a = token_embeddings(text_encoder, tokenizer, prompts)
    hidden_b, last_b = token_embeddings(text_encoder, tokenizer, partners)
    rows_a, rows_b = [], []
    for i in range(len(prompts)):
        a = token_rows(hidden_a[i], last_a[i], token)
        b = token_rows(hidden_b[i], last_b[i], token)
        n = min(len(a), len(b))
        rows_a.append(a[:n])
        rows_b.append(b[:n])
    return rows_a, rows_b


# --------------------------------------------------------------------------- closed form


def closed_form_weight(
    w_old: torch.Tensor,
    keys: torch.Tensor,
    targets: torch.Tensor,
    scales: torch.Tensor,
    lamb: float,
) -> torch.Tensor:
    """W = (lambda W_old + sum s_n v_n c_n^T)(lambda I + sum s_n c_n c_n^T)^-1, in float64.

    w_old: (out, in); keys: (N, in); targets: (N, out); scales: (N,) weights of each pair.
    """
    if lamb < 0:
        raise ValueError(f"lambda must be non-negative, got {lamb}")
    w = w_old.detach().double()
    c = keys.detach().to(w.device, torch.float64)
    v = targets.detach().to(w.device, torch.float64)
    s = scales.detach().to(w.device, torch.float64)[:, None]
    lhs = lamb * w + (v * s).T @ c                                 # (out, in)
    gram = lamb * torch.eye(w.shape[1], dtype=torch.float64, device=w.device) + (c * s).T @ c
    # W gram = lhs, and gram is symmetric, so W^T = gram^-1 lhs^T.
    return torch.linalg.solve(gram, lhs.T).T


@dataclass
class EditPairs:
    """Key rows and how to build each row's target from a layer's old weight."""

    keys: list[torch.Tensor] = field(default_factory=list)        # (n, D) each
    sources: list[torch.Tensor] = field(default_factory=list)     # (n, D): target = W_old @ source
    scales: list[float] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)

    def add(self, keys: torch.Tensor, sources: torch.Tensor, scale: float, kind: str) -> None:
        self.keys.append(keys.detach().float())
        self.sources.append(sources.detach().float())
        self.scales.append(float(scale))
        self.kinds.append(kind)


def apply_pairs(
    unet: UNet2DConditionModel,
    pairs: EditPairs,
    lamb: float,
    projections: Sequence[str],
) -> tuple[UNet2DConditionModel, dict[str, torch.Tensor], dict[str, dict[str, float]]]:
    """A deep copy of ``unet`` with every selected projection replaced by its closed-form edit."""
    layers = cross_attention_projections(unet, projections)
    dim = next(iter(layers.values())).in_features
    keys = torch.cat(pairs.keys)
    if keys.shape[1] != dim:
        raise ValueError(
            f"text embeddings have {keys.shape[1]} features but the cross-attention expects {dim}: "
            "the text encoder does not belong to this UNet"
        )
    sources = torch.cat(pairs.sources)
    scales = torch.cat([torch.full((len(k),), s) for k, s in zip(pairs.keys, pairs.scales)])
    new_unet = copy.deepcopy(unet)
    new_layers = cross_attention_projections(new_unet, projections)
    edited: dict[str, torch.Tensor] = {}
    stats: dict[str, dict[str, float]] = {}
    with torch.no_grad():
        for name, layer in layers.items():
            w_old = layer.weight
            targets = sources.to(w_old.device, torch.float64) @ w_old.double().T  # W_old @ source, row-wise
            w_new = closed_form_weight(w_old, keys, targets, scales, lamb)
            new_layers[name].weight.copy_(w_new.to(w_old.dtype))
            edited[f"{name}.weight"] = new_layers[name].weight.detach().to("cpu").clone()
            stats[name] = {
                "relative_change": float((w_new - w_old.double()).norm() / w_old.double().norm().clamp_min(1e-30)),
            }
    return new_unet, edited, stats


def _as_list(value: str | Sequence[str] | None, what: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    out = list(value)
    if not all(isinstance(v, str) for v in out):
        raise ValueError(f"{what} must be strings, got {out!r}")
    return out


# --------------------------------------------------------------------------- erase / moderate


def uce_erase(
    unet: UNet2DConditionModel,
    text_encoder: torch.nn.Module,
    tokenizer,
    concepts: str | Sequence[str],
    guides: str | Sequence[str] = "",
    preserve: str | Sequence[str] | None = None,
    *,
    lamb: float = DEFAULT_LAMBDA,
    erase_scale: float = DEFAULT_ERASE_SCALE,
    preserve_scale: float = DEFAULT_PRESERVE_SCALE,
    token: str = "last",
    projections: Sequence[str] = ("to_k", "to_v"),
) -> UCEResult:
    """Erase ``concepts`` by mapping their embeddings to the old outputs of ``guides``.

    One guide is used for every concept, or one guide per concept. The default guide is the
    empty prompt (the official default for objects; it makes this a moderation). ``preserve``
    prompts keep their old outputs with weight ``preserve_scale``.
    """
    _check_token(token)
    concepts = _as_list(concepts, "concepts")
    guides = _as_list(guides, "guides")
    preserve = _as_list(preserve, "preserve")
    if not concepts:
        raise ValueError("uce_erase needs at least one concept to erase")
    if len(guides) == 1:
        guides = guides * len(concepts)
    if len(guides) != len(concepts):
        raise ValueError(f"got {len(guides)} guides for {len(concepts)} concepts: give one guide or one per concept")
    overlap = sorted(set(concepts) & set(preserve))
    if overlap:
        raise ValueError(f"concepts {overlap} are both erased and preserved")

    pairs = EditPairs()
    erase_rows, guide_rows = paired_rows(text_encoder, tokenizer, concepts, guides, token)
    for c, g in zip(erase_rows, guide_rows):
        pairs.add(c, g, erase_scale, "erase")
    if preserve:
        hidden, last = token_embeddings(text_encoder, tokenizer, preserve)
        for i in range(len(preserve)):
            rows = token_rows(hidden[i], last[i], token)
            pairs.add(rows, rows, preserve_scale, "preserve")

    new_unet, edited, stats = apply_pairs(unet, pairs, lamb, projections)
    method = "moderate" if all(g == "" for g in guides) else "erase"
    info = {
        "concepts": concepts,
        "guides": guides,
        "preserve": preserve,
        "lamb": lamb,
        "erase_scale": erase_scale,
        "preserve_scale": preserve_scale,
        "token": token,
        "projections": list(projections),
        "layers": stats,
    }
    return UCEResult(unet=new_unet, edited=edited, method=method, info=info)


def uce_moderate(
    unet: UNet2DConditionModel,
    text_encoder: torch.nn.Module,
    tokenizer,
    concepts: str | Sequence[str],
    preserve: str | Sequence[str] | None = None,
    **kwargs: Any,
) -> UCEResult:
    """Moderation: erase ``concepts`` towards the empty prompt (UCE's guide-free erasure)."""
    return uce_erase(unet, text_encoder, tokenizer, concepts, guides="", preserve=preserve, **kwargs)


# --------------------------------------------------------------------------- debias

RatioMeasure = Callable[[UNet2DConditionModel], Mapping[str, Any]]


def _normalise_ratios(
    measured: Mapping[str, Any], concepts: list[str], attributes: list[str]
) -> dict[str, dict[str, float]]:
    """Accept {attribute: ratio} (one concept) or {concept: {attribute: ratio}}."""
    if not isinstance(measured, Mapping):
        raise ValueError(f"measure_ratio must return a dict, got {type(measured).__name__}")
    if measured and all(not isinstance(v, Mapping) for v in measured.values()):
        if len(concepts) != 1:
            raise ValueError(
                "measure_ratio returned {attribute: ratio} but several concepts are debiased: "
                "return {concept: {attribute: ratio}}"
            )
        measured = {concepts[0]: measured}
    out = {}
    for concept in concepts:
        if concept not in measured:
            raise ValueError(f"measure_ratio returned no ratios for the concept {concept!r}")
        per = measured[concept]
        missing = [a for a in attributes if a not in per]
        if missing:
            raise ValueError(f"measure_ratio returned no ratio for attribute(s) {missing} of {concept!r}")
        out[concept] = {a: float(per[a]) for a in attributes}
    return out


def uce_debias(
    unet: UNet2DConditionModel,
    text_encoder: torch.nn.Module,
    tokenizer,
    concepts: str | Sequence[str],
    attributes: Sequence[str],
    measure_ratio: RatioMeasure,
    desired_ratios: Sequence[float] | None = None,
    preserve: str | Sequence[str] | None = None,
    *,
    lamb: float = DEFAULT_LAMBDA,
    edit_scale: float = DEFAULT_ERASE_SCALE,
    preserve_scale: float = DEFAULT_PRESERVE_SCALE,
    max_iterations: int = 30,
    max_diff: float = 0.05,
    step_size: float = 1.0,
    token: str = "last",
    projections: Sequence[str] = ("to_k", "to_v"),
    progress: bool = True,
) -> UCEResult:
    """Debias ``concepts`` so that generations show ``attributes`` in ``desired_ratios`` (uniform by default).

    Iterates as the official script: measure the ratios of the current model with
    ``measure_ratio(unet)``; a concept whose every ratio is within ``max_diff`` of the desired
    one is left alone; otherwise each attribute's weight alpha_k grows by
    ``step_size * (desired_k - measured_k)`` and the edit is recomputed from the original
    weights with ``v* = W_old (c + sum_k alpha_k a_k)``. The official script accumulates these
    corrections with an effective step of 1 (its ``step_size`` argument is unused), which is the
    default here. ``history`` holds every measurement; its last entry describes the returned
    model (a final measurement is taken when the iterations run out).
    """
    _check_token(token)
    concepts = _as_list(concepts, "concepts")
    attributes = _as_list(list(attributes), "attributes")
    preserve = _as_list(preserve, "preserve")
    if not concepts or len(attributes) < 2:
        raise ValueError("uce_debias needs at least one concept and at least two attributes")
    if desired_ratios is None:
        desired_ratios = [1.0 / len(attributes)] * len(attributes)
    desired = [float(r) for r in desired_ratios]
    if len(desired) != len(attributes):
        raise ValueError(f"got {len(desired)} desired ratios for {len(attributes)} attributes")
    if abs(sum(desired) - 1.0) > 1e-6 or min(desired) < 0:
        raise ValueError(f"desired ratios must be non-negative and sum to 1, got {desired}")
    if max_iterations < 0:
        raise ValueError(f"max_iterations must be >= 0, got {max_iterations}")

    hidden, last = token_embeddings(text_encoder, tokenizer, concepts)
    concept_rows = [token_rows(hidden[i], last[i], token).float() for i in range(len(concepts))]
    a_hidden, a_last = token_embeddings(text_encoder, tokenizer, attributes)
    attribute_vecs = torch.stack([a_hidden[i, a_last[i]] for i in range(len(attributes))]).float()  # (K, D)
    preserve_rows = []
    if preserve:
        p_hidden, p_last = token_embeddings(text_encoder, tokenizer, preserve)
        preserve_rows = [token_rows(p_hidden[i], p_last[i], token).float() for i in range(len(preserve))]

    alphas = torch.zeros(len(concepts), len(attributes))
    current = unet
    edited: dict[str, torch.Tensor] = {}
    stats: dict[str, dict[str, float]] = {}
    history: list[dict[str, Any]] = []
    converged = False
    bar = tqdm(total=max_iterations, desc="UCE debiasing", disable=not progress)
    for iteration in range(max_iterations + 1):
        ratios = _normalise_ratios(measure_ratio(current), concepts, attributes)
        diffs = torch.tensor([[d - ratios[c][a] for a, d in zip(attributes, desired)] for c in concepts])
        within = diffs.abs().amax(dim=1) < max_diff
        history.append(
            {
                "iteration": iteration,
                "ratios": ratios,
                "alphas": {c: dict(zip(attributes, alphas[i].tolist())) for i, c in enumerate(concepts)},
                "max_abs_diff": float(diffs.abs().max()),
            }
        )
        bar.set_postfix(max_abs_diff=f"{float(diffs.abs().max()):.3f}")
        if bool(within.all()):
            converged = True
            break
        if iteration == max_iterations:
            break
        diffs[within] = 0.0
        alphas += step_size * diffs
        pairs = EditPairs()
        for i, rows in enumerate(concept_rows):
            pairs.add(rows, rows + alphas[i] @ attribute_vecs, edit_scale, "debias")
        for rows in preserve_rows:
            pairs.add(rows, rows, preserve_scale, "preserve")
        current, edited, stats = apply_pairs(unet, pairs, lamb, projections)
        bar.update(1)
    bar.close()
    if current is unet:  # already within tolerance: nothing was edited
        current = copy.deepcopy(unet)
    info = {
        "concepts": concepts,
        "attributes": attributes,
        "desired_ratios": desired,
        "preserve": preserve,
        "lamb": lamb,
        "edit_scale": edit_scale,
        "preserve_scale": preserve_scale,
        "max_iterations": max_iterations,
        "max_diff": max_diff,
        "step_size": step_size,
        "token": token,
        "projections": list(projections),
        "converged": converged,
        "layers": stats,
    }
    return UCEResult(unet=current, edited=edited, method="debias", info=info, history=history)

