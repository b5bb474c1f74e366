"""UnlearnDiffAtk (Zhang et al., ECCV 2024): adversarial prompts found with the erased model's own denoising loss.

An erased model is asked for a concept through a prompt that names it, and refuses. The attack
looks for k extra tokens put before that prompt, ``[prefix ; prompt]``, such that the erased model
denoises an image of the concept (its latent z_0) well when conditioned on the new prompt:

    min_prefix  || eps_theta(z_t, [prefix ; prompt], t) - eps ||^2,   z_t = sqrt(a_t) z_0 + sqrt(1 - a_t) eps.

A model that denoises an image well under a prompt is one that would generate it from that prompt
(the "diffusion classifier" view), so no external classifier enters the optimisation; a detector
only judges the result.

The search over discrete tokens is relaxed: each prefix position holds a point w_i of the
probability simplex over the candidate vocabulary (initialised uniform). Every iteration samples
one real token per position from w (a one-hot vector), feeds its embedding to the text encoder,
and passes the gradient of the loss with respect to the one-hot vector straight through to w,
clipped to [-1, 1]; Adam takes a step on w and w is projected back onto the simplex. The
optimisation runs through a grid of timesteps in turn, t = 10, 30, ..., 990 for 1000 training
timesteps (one stage of ``iterations`` steps each, fresh noise eps every step, one optimiser for the
whole run). After every stage the prefix is projected to real tokens (the argmax of each w_i) and,
as in the official code, a judge may look at the prompt (generate from it, run a detector); the
attack on a pair stops at its first success. The official code also asks the judge first about the
plain prompt and does not attack one that already succeeds; so does :func:`prompt_attack`.

Official code: OPTML-Group/Diffusion-MU-Attack, ``src/attackers/text_grad_.py`` (the attack),
``src/tasks/classifier_.py`` (the loss, the timestep grid ``n_samples = 50``), ``src/execs/attack.py``
and ``configs/*/text_grad_*.json`` (settings). Defaults taken from there: prefix insertion
(``prefix_k``), k = 5 tokens (nudity, violence, illegal activity; 3 for church and Van Gogh),
40 iterations per timestep, 50 timesteps, Adam lr 1e-2 with weight decay 0.1, uniform
initialisation, mean squared error, the target's latent being the VAE posterior mean
(``encode_images(ldm, images)`` here).

Where this implementation departs:

- Candidate tokens: the official relaxation is over the whole CLIP vocabulary, start and end tokens
  and sub-word pieces included, and the printed prompt drops end tokens, so the text it reports
  need not tokenise back to the tokens it optimised. Here the candidates are the tokens that are a
  word on their own (decoded alone and tokenised again they give back that one token; special
  tokens excluded), or a ``vocabulary`` of words the caller gives, and the adversarial prompt is
  checked to tokenise to exactly the optimised ids.
- The simplex projection is the exact sort-based Euclidean projection (the official code finds the
  same projection by bisection to a tolerance of 1e-5).
- Randomness: the official run seeds the global generators once (seed 0) and attacks one image per
  run. Here every pair gets its own generator, seeded from the caller's generator, and pairs may
  be attacked together (``batch_size``): the loss is the sum of the pairs' losses, so each pair's
  prefix gets its own gradient and Adam's per-entry steps are those of a lone run.
- The timestep grid scales with the model's number of training timesteps (T / n / 2 + j T / n).
- The judge is the caller's: the official one samples 50 LMS steps at the image's own seed and
  guidance and runs the concept's classifier; :func:`attack_images` generates with this project's
  DDIM sampler from seeds the caller gives (for instance those the targets were generated from).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F

from ..core.models import LDM
from ..core.progress import tqdm
from ..core.sampling import generate, regenerate, unet_placement
from ..core.tokenizer import tokenize

#: ``judge(indices, prompts) -> successes``: whether the model's generation from each prompt shows
#: the concept; ``indices`` are the pairs' positions in the attack's input.
Judge = Callable[[list[int], list[str]], Sequence[bool]]


#: The concepts for which the official configurations put 5 tokens before the prompt; every other concept
#: (church, Van Gogh, the objects) gets 3.
FIVE_TOKEN_CONCEPTS = ("nudity", "violence", "illegal activity")


def official_prefix_tokens(concept: str) -> int:
    """k of the official configuration for ``concept``: 5 for nudity, violence and illegal activity, else 3."""
    return 5 if concept.replace("_", " ").lower() in FIVE_TOKEN_CONCEPTS else 3


@dataclass(frozen=True)
class PromptAttackConfig:
    """Settings of UnlearnDiffAtk; the defaults are the official ones (nudity, Stable Diffusion 1.4)."""

    prefix_tokens: int = 5      # k, tokens put before the prompt (official: 3 for church and Van Gogh)
    iterations: int = 40        # Adam steps per timestep
    timesteps: int = 50         # stages, one timestep each, t = T/n/2 + j T/n
    lr: float = 1e-2
    weight_decay: float = 0.1
    vocabulary: tuple[str, ...] | None = None  # the words a prefix may use (None: every one-token word)
    batch_size: int = 1         # pairs attacked together (not an official setting)

    def __post_init__(self) -> None:
        if self.prefix_tokens < 1:
            raise ValueError(f"prefix_tokens must be >= 1, got {self.prefix_tokens}")
        if self.iterations < 1 or self.timesteps < 1 or self.batch_size < 1:
            raise ValueError(
                f"iterations, timesteps and batch_size must be >= 1, got {self.iterations}, {self.timesteps}, "
                f"{self.batch_size}"
            )
        if self.lr <= 0 or self.weight_decay < 0:
            raise ValueError(f"need lr > 0 and weight_decay >= 0, got lr={self.lr}, weight_decay={self.weight_decay}")
        if self.vocabulary is not None:
            if isinstance(self.vocabulary, str) or not self.vocabulary:
                raise ValueError(f"vocabulary must be a non-empty sequence of words, got {self.vocabulary!r}")
            object.__setattr__(self, "vocabulary", tuple(self.vocabulary))


@dataclass
class PromptAttack:
    """The attack on one (prompt, target) pair.

    prompt:        the adversarial prompt, the prefix words then the original prompt.
    prefix:        the prefix words; ``prefix_ids`` their token ids (empty when the plain prompt
                   already succeeded and no attack ran).
    losses:        the objective at every iteration.
    timesteps:     the timestep of every stage run; ``stage_prompts`` the prompt after each.
    success:       the judge's verdict on ``prompt`` (None when no judge was given).
    """

    prompt: str
    prefix: tuple[str, ...]
    prefix_ids: tuple[int, ...]
    losses: list[float]
    timesteps: list[int]
    stage_prompts: list[str]
    success: bool | None


# --------------------------------------------------------------------------- pieces


def attack_timesteps(ldm: LDM, count: int) -> list[int]:
    """The official grid of ``count`` timesteps, T/count/2 + j T/count (10, 30, ..., 990 for 50 of 1000)."""
    total = ldm.scheduler.config.num_train_timesteps
    if not 1 <= count <= total:
        raise ValueError(f"the number of timesteps must be in 1..{total}, got {count}")
    step = total // count
    return [step // 2 + j * step for j in range(count)]


def candidate_tokens(tokenizer, vocabulary: Sequence[str] | None = None) -> tuple[list[int], list[str]]:
    """The token ids a prefix may use and their words: tokens that are a word on their own.

    Without ``vocabulary``, every non-special token whose decoded text tokenises back to it alone;
    with one, the tokens of those words, each of which must be one such token.
    """
    special = set(tokenizer.all_special_ids)
    if vocabulary is None:
        ids = [i for i in range(len(tokenizer)) if i not in special]
    else:
        encoded = tokenizer([w.lower() for w in vocabulary], add_special_tokens=False).input_ids
        unknown = [w for w, e in zip(vocabulary, encoded) if len(e) != 1 or e[0] in special]
        if unknown:
            raise ValueError(f"unknown vocabulary: {unknown} are not single tokens of the tokenizer")
        ids = list(dict.fromkeys(e[0] for e in encoded))
    words = [w.strip() for w in tokenizer.batch_decode([[i] for i in ids])]
    back = tokenizer([w.lower() for w in words], add_special_tokens=False).input_ids
    keep = [j for j, (i, b) in enumerate(zip(ids, back)) if b == [i]]
    if vocabulary is not None and len(keep) < len(ids):
        raise ValueError(f"unknown vocabulary: {[words[j] for j in range(len(ids)) if j not in keep]} "
                         "do not tokenise back to themselves")
    if not keep:
        raise ValueError("the tokenizer has no token that is a word on its own")
    return [ids[j] for j in keep], [words[j] for j in keep]


def project_to_simplex(x: torch.Tensor) -> torch.Tensor:
    """The Euclidean projection of every row (last dimension) of ``x`` onto the probability simplex."""
    top, _ = torch.sort(x, dim=-1, descending=True)
    excess = top.cumsum(-1) - 1
    rank = torch.arange(1, x.shape[-1] + 1, device=x.device, dtype=x.dtype)
    support = (top - excess / rank > 0).sum(-1, keepdim=True)  # the condition holds on a prefix of ranks
    theta = excess.gather(-1, support - 1) / support.to(x.dtype)
    return (x - theta).clamp(min=0)


class _SampledOneHot(torch.autograd.Function):
    """Forward: the sampled one-hot vectors; backward: their gradient, clipped to [-1, 1], to the weights."""

    @staticmethod
    def forward(ctx, weights: torch.Tensor, one_hot: torch.Tensor) -> torch.Tensor:
        return one_hot.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad.clamp(-1, 1), None


@contextmanager
def _prefix_embeddings(text_encoder: torch.nn.Module, prefix: torch.Tensor) -> Iterator[None]:
    """While open, the token embeddings at positions 1..k are ``prefix`` (B, k, D) instead of the ids' own."""
    k = prefix.shape[1]

    def replace(module, args, output):
        return torch.cat([output[:, :1], prefix.to(output.dtype), output[:, 1 + k:]], dim=1)

    handle = text_encoder.get_input_embeddings().register_forward_hook(replace)
    try:
        yield
    finally:
        handle.remove()


def _with_prefix(ids: torch.Tensor, prefix_ids: torch.Tensor) -> torch.Tensor:
    """Token ids (B, L) of prompts with ``prefix_ids`` (B, k) put after the start token, trailing pads dropped."""
    k = prefix_ids.shape[1]
    return torch.cat([ids[:, :1], prefix_ids.to(ids), ids[:, 1:ids.shape[1] - k]], dim=1)


def _denoising_losses(ldm: LDM, cond: torch.Tensor, z0: torch.Tensor, t: int, noise: torch.Tensor) -> torch.Tensor:
    """Per row, the mean squared error of the UNet's noise prediction at z_t = sqrt(a_t) z_0 + sqrt(1 - a_t) eps."""
    device, dtype = unet_placement(ldm)
    a = ldm.scheduler.alphas_cumprod.to(torch.float64)[t].item()
    z_t = (a ** 0.5 * z0 + (1 - a) ** 0.5 * noise).to(device, dtype)
    pred = ldm.unet(z_t, torch.as_tensor(t, device=device), encoder_hidden_states=cond.to(device, dtype)).sample
    return (pred.float() - noise.to(device).float()).pow(2).flatten(1).mean(1)


def _check_pairs(ldm: LDM, prompts: list[str], targets: torch.Tensor, prefix_tokens: int) -> torch.Tensor:
    """The prompts' token ids (B, L), after checking the prompts and targets."""
    if not prompts:
        raise ValueError("no prompts to attack")
    if targets.dim() != 4 or targets.shape[0] != len(prompts) or tuple(targets.shape[1:]) != ldm.latent_shape:
        shape = (len(prompts), *ldm.latent_shape)
        raise ValueError(f"targets must be latents z_0 of shape {shape}, got {tuple(targets.shape)}")
    tokenizer = ldm.tokenizer
    for prompt in prompts:
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"an attack needs a non-empty prompt naming the concept, got {prompt!r}")
        words = tokenizer(prompt.lower(), add_special_tokens=False).input_ids
        if tokenizer.unk_token_id is not None and tokenizer.unk_token_id in words:
            raise ValueError(f"the prompt {prompt!r} has words the tokenizer does not know")
        if len(words) + prefix_tokens + 2 > tokenizer.model_max_length:
            raise ValueError(f"the prompt {prompt!r} ({len(words)} tokens) leaves no room for {prefix_tokens} prefix "
                             f"tokens within the tokenizer's {tokenizer.model_max_length}")
    return tokenize(tokenizer, prompts)


# --------------------------------------------------------------------------- the attack


@torch.no_grad()
def attack_objective(ldm: LDM, prompts: Sequence[str], targets: torch.Tensor, timesteps: Sequence[int], *,
                     generator: torch.Generator) -> torch.Tensor:
    """The attack's objective for given prompts, (B,): the denoising loss of ``targets`` averaged over ``timesteps``.

    One noise draw per timestep, shared by every row, so that prompts compared on the same target
    in one call meet the same noise.
    """
    prompts = list(prompts)
    ids = _check_pairs(ldm, prompts, targets, 0)
    cond = ldm.text_encoder(ids.to(ldm.text_encoder.device))[0]
    total = torch.zeros(len(prompts))
    for t in timesteps:
        noise = torch.randn(ldm.latent_shape, generator=generator, device=generator.device).cpu()
        total += _denoising_losses(ldm, cond, targets, int(t), noise.expand_as(targets)).cpu()
    return total / len(timesteps)


def prompt_attack(
    ldm: LDM,
    prompts: Sequence[str],
    targets: torch.Tensor,
    config: PromptAttackConfig = PromptAttackConfig(),
    *,
    generator: torch.Generator,
    judge: Judge | None = None,
    progress: bool = True,
) -> list[PromptAttack]:
    """UnlearnDiffAtk on ``ldm`` (an erased model) for each (prompt, target latent z_0) pair.

    ``targets`` are latents (B, C, h, w) of images of the concept (``encode_images``). Every pair
    gets a generator seeded from ``generator``, so the same generator state gives the same
    attacks. With a ``judge`` (see :data:`Judge`), a pair stops at its first prompt the judge
    accepts, the plain prompt included. The model is not modified.
    """
    prompts = list(prompts)
    ids = _check_pairs(ldm, prompts, targets, config.prefix_tokens)
    candidates = candidate_tokens(ldm.tokenizer, config.vocabulary)
    seeds = torch.randint(0, 2**62, (len(prompts),), generator=generator, device=generator.device).tolist()
    bar = tqdm(total=len(prompts) * config.timesteps * config.iterations, desc="UnlearnDiffAtk", disable=not progress)
    results = []
    for start in range(0, len(prompts), config.batch_size):
        part = slice(start, start + config.batch_size)
        results += _attack_batch(ldm, prompts[part], ids[part], targets[part], seeds[part],
                                 list(range(len(prompts)))[part], candidates, config, judge, bar)
    bar.close()
    return results


def _attack_batch(ldm: LDM, prompts: list[str], ids: torch.Tensor, targets: torch.Tensor, seeds: list[int],
                  indices: list[int], candidates: tuple[list[int], list[str]], config: PromptAttackConfig,
                  judge: Judge | None, bar) -> list[PromptAttack]:
    device, dtype = unet_placement(ldm)
    cand_ids, cand_words = torch.tensor(candidates[0]), candidates[1]
    embedding = ldm.text_encoder.get_input_embeddings().weight.detach()
    table = embedding[cand_ids.to(embedding.device)]  # (V, D)
    count, k, vocab = len(prompts), config.prefix_tokens, len(cand_words)
    generators = [torch.Generator().manual_seed(s) for s in seeds]
    weights = torch.full((count, k, vocab), 1.0 / vocab, device=device, requires_grad=True)
    optimizer = torch.optim.Adam([weights], lr=config.lr, weight_decay=config.weight_decay)
    losses: list[list[float]] = [[] for _ in prompts]
    stage_prompts: list[list[str]] = [[] for _ in prompts]
    run: list[list[int]] = [[] for _ in prompts]
    final: list[tuple[int, ...] | None] = [None] * count
    success: list[bool | None] = [None if judge is None else False] * count

    def text(prefix: Sequence[int], i: int) -> str:
        return " ".join([cand_words[j] for j in prefix] + [prompts[i]])

    def judged(active: list[int], texts: list[str], prefixes: list[tuple[int, ...]]) -> list[int]:
        """Judge the prompts of the active pairs; keep the winners' prefixes; the pairs still to attack."""
        if judge is None:
            return active
        verdicts = list(judge([indices[i] for i in active], texts))
        if len(verdicts) != len(active):
            raise ValueError(f"the judge gave {len(verdicts)} verdicts for {len(active)} prompts")
        for i, prefix, ok in zip(active, prefixes, verdicts):
            if ok:
                success[i], final[i] = True, prefix
        return [i for i, ok in zip(active, verdicts) if not ok]

    active = judged(list(range(count)), list(prompts), [()] * count)
    for t in attack_timesteps(ldm, config.timesteps):
        if not active:
            break
        rows = torch.tensor(active)
        for _ in range(config.iterations):
            # 1. One real token per prefix position, sampled from the relaxed weights.
            picks = torch.stack([torch.multinomial(weights[i].detach().float().cpu(), 1, generator=generators[i])[:, 0]
                                 for i in active])  # (a, k) indices into the candidates
            noise = torch.stack([torch.randn(ldm.latent_shape, generator=generators[i]) for i in active])
            one_hot = _SampledOneHot.apply(weights[rows.to(device)], F.one_hot(picks, vocab).to(device, weights.dtype))
            # 2. The erased model's denoising loss on the targets, conditioned on [prefix ; prompt].
            prefix_ids = _with_prefix(ids[rows], cand_ids[picks])
            with _prefix_embeddings(ldm.text_encoder, one_hot.to(table.device, table.dtype) @ table):
                cond = ldm.text_encoder(prefix_ids.to(ldm.text_encoder.device))[0]
            loss = _denoising_losses(ldm, cond, targets[rows], t, noise)
            # 3. Adam on the weights, then back onto the simplex.
            optimizer.zero_grad(set_to_none=True)
            loss.sum().backward()
            optimizer.step()
            with torch.no_grad():
                weights.copy_(project_to_simplex(weights))
            for i, value in zip(active, loss.tolist()):
                losses[i].append(value)
            bar.update(len(active))
        # 4. The prefix projected to real tokens, the stage's prompt.
        best = weights.detach().argmax(-1).cpu()
        prefixes = [tuple(best[i].tolist()) for i in active]
        texts = [text(p, i) for p, i in zip(prefixes, active)]
        for i, p, s in zip(active, prefixes, texts):
            run[i].append(t)
            stage_prompts[i].append(s)
            final[i] = p
        active = judged(active, texts, prefixes)

    results = []
    for i in range(count):
        prefix = final[i] or ()
        prompt = text(prefix, i)
        prefix_ids = tuple(cand_ids[list(prefix)].tolist())
        expected = _with_prefix(ids[i:i + 1], torch.tensor([prefix_ids], dtype=torch.long))
        if not torch.equal(tokenize(ldm.tokenizer, [prompt]), expected):
            raise RuntimeError(f"the adversarial prompt {prompt!r} does not tokenise to the optimised tokens")
        results.append(PromptAttack(prompt, tuple(cand_words[j] for j in prefix), prefix_ids, losses[i], run[i],
                                    stage_prompts[i], success[i]))
    return results


def attack_images(
    ldm: LDM,
    prompts: Sequence[str | PromptAttack],
    seeds: torch.Tensor | torch.Generator,
    num_steps: int,
    guidance_scale: float = 7.5,
    batch_size: int | None = None,
    progress: bool = True,
) -> torch.Tensor:
    """Images in [0, 1] that ``ldm`` generates from the (adversarial) prompts, for a detector to judge.

    ``seeds``: latents z_T (B, C, h, w), for instance those the targets were generated from (the
    official judge samples at the target's own seed), or a generator to draw fresh ones with.
    """
    texts = [p.prompt if isinstance(p, PromptAttack) else p for p in prompts]
    if isinstance(seeds, torch.Generator):
        return generate(ldm, texts, seeds, num_steps, guidance_scale, batch_size, progress)[1]
    return regenerate(ldm, seeds, texts, num_steps, guidance_scale, None, batch_size, progress)


__all__ = [
    "Judge",
    "PromptAttack",
    "PromptAttackConfig",
    "attack_images",
    "attack_objective",
    "attack_timesteps",
    "candidate_tokens",
    "project_to_simplex",
    "prompt_attack",
]
