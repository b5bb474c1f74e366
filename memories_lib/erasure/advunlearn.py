"""AdvUnlearn (Zhang et al., NeurIPS 2024): the text encoder unlearns a concept under adversarial prompts.

AdvUnlearn is ESD with adversarial training, and it trains the *text encoder* (the UNet stays
as it is). Each iteration has two steps:

1. Attack (inner): ``k`` free token embeddings ``p`` (the "prefix", after the start token) are
   optimised so that the current model, prompted with ``p`` + the concept prompt c, predicts what
   the original model predicts for c:  min_p || eps(z_t, E_theta([p, c]), t) - eps(z_t, E_0(c), t) ||^2.
   That is the attacker's goal: to bring the erased concept back through the prompt.
2. Defence (outer): the text encoder E_theta is trained with ESD's loss on that adversarial prompt
   plus a utility term on prompts to keep,

       || eps(z_t, E_theta([p, c]), t) - [eps_0 - eta (eps(z_t, E_0(c), t) - eps_0)] ||^2
         + gamma || eps(z_r, E_theta(r), t) - eps(z_r, E_0(r), t) ||^2,

   eps_0 the prediction for the empty prompt, E_0 the original text encoder, r the retain prompts.

The first ``warmup_iterations`` train on the plain prompt, without an attack.

Official defaults (``train-scripts/AdvUnlearn.py``, ``utils/attack_util.py``, ``utils/get_loss.py``,
``utils/util.py`` of OPTML-Group/AdvUnlearn, and the training command of its README): the text
encoder's transformer layers and its final layer norm train (``text_encoder_full``, component
``all``; the token and position embeddings stay), Adam, lr 1e-5, 1000 iterations, ESD's eta 1 and
start guidance 3 with 50 DDIM steps; the attack is ``pgd``: 30 Adam steps of lr 1e-3 on one prefix
token embedding (``prefix_k``, ``adv_prompt_num`` 1), started from the embeddings of random
vocabulary tokens (the README's ``--attack_init random``), renewed every iteration
(``adv_prompt_update_step`` 1) after 200 warm-up iterations; ``fast_at`` takes the sign of the
gradient before the Adam step. The official "PGD" projects nothing: the prefix is an
unconstrained embedding. The retain term is the README's ``--retain_train reg`` with
``--retain_loss_w 0.3`` on 5 prompts of a COCO object prompt set (``coco_object``) per iteration.
(The script's own argument defaults differ from the README command: ``attack_init`` latest,
retain_train ``iter``, weight 1.)

Where this implementation departs from the official code:

- Training latents: the official code samples, every attack and training step, a fresh partial
  DDIM trajectory (50 steps, guidance 3) of the concept prompt (or of the retain prompts) and
  takes the loss at a timestep of the next bin. Here (as for every fine-tuning method of this
  package, see :mod:`~memories_lib.erasure.training`) the latents are ``samples`` generations of
  the base model from the concept's prompts and from the retain prompts, noised to uniformly
  drawn timesteps (drawn apart for the forget and retain batches).
- Retain prompts: the concept's ``preserve`` prompts (drawn with replacement), not a COCO prompt
  set; a concept without any (or ``retain_weight`` 0) trains without the retain term.
- The prefix displaces the last ``k`` positions of the padded sequence (the official code drops
  the ``k`` positions right after the prompt, which with CLIP's padding is the end token; the
  following padding is the same token, so the two agree for Stable Diffusion).
- Several concept prompts: one is drawn per attack (as the official script draws one of its words).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Sequence

import torch
import torch.nn.functional as F

from ..core.models import LDM, encode_prompts
from ..core.progress import tqdm
from ..core.tokenizer import tokenize
from .training import TrainingLatents, add_noise, check_prompts, finish, sample_latents, trainable_copy

ATTACK_METHODS = ("pgd", "fast_at")
ATTACK_INITS = ("random", "latest")
COMPONENTS = ("all", "attn", "ffn")


@dataclass(frozen=True)
class AdvUnlearnParams:
    """Settings of an AdvUnlearn run; the defaults are the official ones for Stable Diffusion 1.4.

    preserve: the retain prompts (None: the concept's own prompts to preserve);
    samples:  how many base-model generations of the concept's prompts (and of the retain prompts)
              are the training latents.
    """

    iterations: int = 1000
    lr: float = 1e-5
    negative_guidance: float = 1.0
    start_guidance: float = 3.0
    ddim_steps: int = 50
    samples: int = 16
    component: str = "all"
    retain_weight: float = 0.3
    retain_batch: int = 5
    warmup_iterations: int = 200
    attack_method: str = "pgd"
    attack_init: str = "random"
    attack_steps: int = 30
    attack_lr: float = 1e-3
    attack_every: int = 1
    prefix_tokens: int = 1
    preserve: list[str] | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        for name, allowed in (("attack_method", ATTACK_METHODS), ("attack_init", ATTACK_INITS),
                              ("component", COMPONENTS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"AdvUnlearn {name} must be one of {allowed}, got {getattr(self, name)!r}")
        counts = {"ddim_steps": self.ddim_steps, "samples": self.samples, "retain_batch": self.retain_batch,
                  "attack_every": self.attack_every, "prefix_tokens": self.prefix_tokens}
        low = sorted(name for name, value in counts.items() if value < 1)
        if low:
            raise ValueError(f"AdvUnlearn needs {low} >= 1, got {[counts[n] for n in low]}")
        negative = {"iterations": self.iterations, "warmup_iterations": self.warmup_iterations,
                    "attack_steps": self.attack_steps, "retain_weight": self.retain_weight,
                    "negative_guidance": self.negative_guidance}
        low = sorted(name for name, value in negative.items() if value < 0)
        if low:
            raise ValueError(f"AdvUnlearn needs {low} >= 0, got {[negative[n] for n in low]}")
        if not (self.lr > 0 and self.attack_lr > 0):
            raise ValueError(f"AdvUnlearn needs lr > 0 and attack_lr > 0, got {self.lr}, {self.attack_lr}")


def advunlearn_parameter_names(text_encoder: torch.nn.Module, component: str = "all") -> list[str]:
    """The text encoder's parameters AdvUnlearn trains: its transformer layers (all, or only their
    self-attention or MLPs) and, for ``all``, the final layer norm; never the embeddings."""
    if component not in COMPONENTS:
        raise ValueError(f"AdvUnlearn component must be one of {COMPONENTS}, got {component!r}")
    names = []
    for name, _ in text_encoder.named_parameters():
        if "encoder.layers." in name:
            if component == "all" or (component == "attn" and ".self_attn." in name) or (
                    component == "ffn" and ".mlp." in name):
                names.append(name)
        elif "final_layer_norm." in name and component == "all":
            names.append(name)
    if not names:
        raise ValueError("the text encoder has no transformer layers (encoder.layers.*) for AdvUnlearn to train")
    return names


def with_prefix(token_embeds: torch.Tensor, prefix: torch.Tensor) -> torch.Tensor:
    """Token embeddings (B, L, D) with the ``k`` rows of ``prefix`` (k, D) after the start token, cut to L."""
    k, length = prefix.shape[0], token_embeds.shape[1]
    if k >= length - 1:
        raise ValueError(f"a prefix of {k} tokens does not fit a sequence of {length}")
    batch = token_embeds.shape[0]
    return torch.cat([token_embeds[:, :1], prefix.expand(batch, -1, -1).to(token_embeds.dtype),
                      token_embeds[:, 1:length - k]], dim=1)


def encode_token_embeddings(text_encoder: torch.nn.Module, ids: torch.Tensor,
                            token_embeds: torch.Tensor) -> torch.Tensor:
    """The encoder's hidden states (B, L, D) when its token embeddings are ``token_embeds`` instead of
    the table's rows for ``ids`` (the text encoder runs its own forward; only the lookup is replaced)."""
    table = text_encoder.get_input_embeddings()
    handle = table.register_forward_hook(lambda _m, _args, out: token_embeds.to(out.device, out.dtype))
    try:
        return text_encoder(ids.to(table.weight.device))[0]
    finally:
        handle.remove()


def _predict(unet: torch.nn.Module, z_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
    device, dtype = unet.device, unet.dtype
    return unet(z_t.to(device, dtype), t.to(device), encoder_hidden_states=cond.to(device, dtype)).sample.float()


def adversarial_prefix(
    unet: torch.nn.Module,
    text_encoder: torch.nn.Module,
    ids: torch.Tensor,
    token_embeds: torch.Tensor,
    init: torch.Tensor,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    *,
    lr: float,
    method: str = "pgd",
) -> tuple[torch.Tensor, list[float]]:
    """The attack: a prefix (k, D), from ``init``, that makes the model's prediction for prefix + prompt
    match each batch's target; one Adam step per batch ``(z_t, t, target)``.

    ``ids``/``token_embeds``: the prompt's token ids (1, L) and token embeddings (1, L, D). ``pgd``
    steps on the gradient, ``fast_at`` on its sign. Only the prefix gets gradients. Returns the
    prefix (detached) and the objective before each step.
    """
    if method not in ATTACK_METHODS:
        raise ValueError(f"attack method must be one of {ATTACK_METHODS}, got {method!r}")
    prefix = init.detach().clone().float().requires_grad_(True)
    optimizer = torch.optim.Adam([prefix], lr=lr)
    losses = []
    for z_t, t, target in batches:
        cond = encode_token_embeddings(text_encoder, ids, with_prefix(token_embeds, prefix))
        loss = F.mse_loss(_predict(unet, z_t, t, cond.expand(len(z_t), -1, -1)), target.float())
        (grad,) = torch.autograd.grad(loss, [prefix])
        prefix.grad = grad.sign() if method == "fast_at" else grad
        optimizer.step()
        losses.append(float(loss.detach()))
    return prefix.detach(), losses


@dataclass
class AdvUnlearnResult:
    """A trained copy of a text encoder.

    text_encoder: the AdvUnlearn text encoder (a new object; the base model is untouched);
    trained:      the names of its parameters that were trained;
    losses:       per iteration, the total loss, the ESD loss and the retain loss;
    attacks:      per attack, the objective before its first and before its last step.
    """

    text_encoder: torch.nn.Module
    trained: list[str]
    losses: dict[str, list[float]]
    attacks: list[tuple[float, float]]
    params: AdvUnlearnParams
    info: dict[str, Any] = field(default_factory=dict)


def _draw(data: TrainingLatents, size: int, generator: torch.Generator,
          prompt: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``size`` latents drawn with replacement (from one prompt's, or from all) and their prompt indices."""
    rows = torch.arange(len(data)) if prompt is None else (data.index == prompt).nonzero().flatten()
    pick = rows[torch.randint(0, len(rows), (size,), generator=generator)]
    return data.latents[pick], data.index[pick]


def advunlearn_erase(ldm: LDM, prompts: Sequence[str], params: AdvUnlearnParams = AdvUnlearnParams(), *,
                     progress: bool = True) -> AdvUnlearnResult:
    """Train a copy of ``ldm.text_encoder`` to erase ``prompts`` under adversarial prompts (see the module).

    ``ldm`` (its UNet included, which is used frozen) is not modified. Every random draw comes
    from a generator seeded with ``params.seed``.
    """
    prompts = check_prompts("AdvUnlearn", prompts, params.samples)
    generator = torch.Generator(device="cpu").manual_seed(int(params.seed))
    unet, frozen = ldm.unet, ldm.text_encoder
    retain_prompts = list(params.preserve or ()) if params.retain_weight > 0 else []
    forget = sample_latents(ldm, prompts, params.samples, generator=generator, num_steps=params.ddim_steps,
                            guidance_scale=params.start_guidance)
    retain = sample_latents(ldm, retain_prompts, params.samples, generator=generator, num_steps=params.ddim_steps,
                            guidance_scale=params.start_guidance) if retain_prompts else None
    ids = tokenize(ldm.tokenizer, prompts)
    retain_ids = tokenize(ldm.tokenizer, retain_prompts) if retain_prompts else None
    uncond = encode_prompts(ldm, [""])
    table = frozen.get_input_embeddings().weight.detach()
    token_embeds = table[ids.to(table.device)]  # the embeddings are never trained, so these stay valid

    trained = advunlearn_parameter_names(frozen, params.component)
    encoder, weights = trainable_copy(frozen, trained)
    optimizer = torch.optim.Adam(weights, lr=params.lr)

    def attack_batches(j: int, n: int):
        for _ in range(n):
            z0, _ = _draw(forget, 1, generator, j)
            z_t, t, _ = add_noise(ldm, z0, generator)
            with torch.no_grad():
                target = _predict(unet, z_t, t, forget.embeds[j:j + 1])
            yield z_t, t, target  # outside no_grad: a suspended generator would keep gradients off

    losses: dict[str, list[float]] = {"loss": [], "erase": [], "retain": []}
    attacks: list[tuple[float, float]] = []
    prefix: torch.Tensor | None = None
    j = 0
    start = time.perf_counter()
    bar = tqdm(range(params.iterations), desc=f"AdvUnlearn '{prompts[0]}'", disable=not progress)
    for i in bar:
        attacked = i >= params.warmup_iterations
        if i % params.attack_every == 0:
            # 1. Attack: a concept prompt, and a prefix that brings it back against the current encoder.
            j = int(torch.randint(0, len(prompts), (1,), generator=generator))
            if attacked:
                if prefix is None or params.attack_init == "random":
                    words = torch.randint(0, table.shape[0], (params.prefix_tokens,), generator=generator)
                    prefix = table[words.to(table.device)]
                encoder.eval()
                prefix, trace = adversarial_prefix(unet, encoder, ids[j:j + 1], token_embeds[j:j + 1], prefix,
                                                   attack_batches(j, params.attack_steps), lr=params.attack_lr,
                                                   method=params.attack_method)
                encoder.train()
                if trace:
                    attacks.append((trace[0], trace[-1]))
        # 2. Defence: ESD's loss on the (adversarial) prompt, plus the retain term.
        z0, _ = _draw(forget, 1, generator, j)
        z_t, t, _ = add_noise(ldm, z0, generator)
        with torch.no_grad():
            e_0 = _predict(unet, z_t, t, uncond)
            e_c = _predict(unet, z_t, t, forget.embeds[j:j + 1])
        embeds = token_embeds[j:j + 1]
        if attacked and prefix is not None:
            embeds = with_prefix(embeds, prefix)
        cond = encode_token_embeddings(encoder, ids[j:j + 1], embeds)
        erase = F.mse_loss(_predict(unet, z_t, t, cond), e_0 - params.negative_guidance * (e_c - e_0))
        kept = torch.zeros((), device=erase.device)
        if retain is not None:
            z0, which = _draw(retain, params.retain_batch, generator)
            z_r, t_r, _ = add_noise(ldm, z0, generator)
            with torch.no_grad():
                e_r = _predict(unet, z_r, t_r, retain.embeds[which])
            kept = F.mse_loss(_predict(unet, z_r, t_r, encoder(retain_ids[which].to(encoder.device))[0]), e_r)
        loss = erase + params.retain_weight * kept
        optimizer.zero_grad(set_to_none=True)
        loss.backward(inputs=weights)  # the frozen UNet collects no gradients
        optimizer.step()
        for key, value in (("loss", loss), ("erase", erase), ("retain", kept)):
            losses[key].append(float(value.detach()))
        bar.set_postfix(erase=f"{losses['erase'][-1]:.4f}", retain=f"{losses['retain'][-1]:.4f}")

    info = {"prompts": prompts, "retain": retain_prompts, "seconds": time.perf_counter() - start,
            "params": asdict(params)}
    return AdvUnlearnResult(text_encoder=finish(encoder), trained=trained, losses=losses, attacks=attacks,
                            params=params, info=info)


__all__ = [
    "AdvUnlearnParams", "AdvUnlearnResult", "advunlearn_erase", "advunlearn_parameter_names",
    "adversarial_prefix", "encode_token_embeddings", "with_prefix",
]
