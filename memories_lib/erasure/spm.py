"""Concept-SemiPermeable Membrane (SPM; Lyu et al., CVPR 2024): a rank-1 adapter trained to erase a concept.

SPM freezes the model and adds, beside every linear and convolutional layer of the UNet's
transformer blocks (``Transformer2DModel``: ``proj_in``, the self- and cross-attention
projections ``attn1``/``attn2`` ``to_q``/``to_k``/``to_v``/``to_out.0``, the feed-forward
``ff.net.0.proj``/``ff.net.2`` and ``proj_out``), a one-dimensional "membrane"
``scale * up(down(x))``: ``down`` maps the layer's input to ``rank`` (= 1) channels, ``up`` back to
its output, ``scale = alpha / rank``; ``up`` starts at zero, so training starts from the base model.
Only the membranes train, on

    || eps_m(z_t, c, t) - [eps(z_t, t) - eta (eps(z_t, c, t) - eps(z_t, t))] ||^2
      + lambda_la * mean_a || eps_m(z_t, a, t) - eps(z_t, a, t) ||^2,

ESD's erase loss (``eps_m`` the model with its membranes, ``eps`` the frozen base, the empty prompt
as the neutral one) plus latent anchoring: the membrane model's predictions for anchor prompts
``a`` are held to the base model's. After training, each membrane is merged into its layer's
weight, ``W + scale * up @ down`` (for a convolution ``up``'s 1x1 kernel times ``down``'s kernel),
so the erased model is a plain UNet whose every trained weight moved by a rank-1 matrix.

Official defaults (``src/configs/config.py`` and ``configs/*/config.yaml``/``prompt.yaml`` of
Con6924/SPM, ``train_spm.py``): rank 1, alpha 1, 3000 iterations, batch 1, lr 1e-4, AdamW8bit,
cosine schedule with 3 hard restarts after 500 warm-up steps, erase guidance eta 1
(``guidance_scale``), anchoring strength ``la_strength`` 1000 with 4 anchors per iteration
(``sampling_batch_size``), training latents sampled with 30 DDIM steps (``max_denoising_steps``)
at guidance 3. The layers are every ``Linear``/``Conv2d`` inside a ``Transformer2DModel``
(``SPMNetwork.DEFAULT_TARGET_REPLACE``), not only the text-conditioned projections.

Where this implementation departs from the official code:

- Training latents: the official script samples, every iteration, a partial 30-step DDIM
  trajectory of the membrane model itself (guidance 3, the concept prompt) and takes the loss at
  the matching timestep. Here (as for every fine-tuning method of this package, see
  :mod:`~memories_lib.erasure.training`) the latents are ``samples`` generations of the base model
  from the concept's prompts (30 DDIM steps, guidance 3), noised to a uniformly drawn timestep.
  The official random resolution buckets (``dynamic_resolution``) are not used.
- Anchors: the official code draws random text embeddings (Gaussian directions at about the
  concept embedding's norm) and, because of how its batch is split into guidance halves,
  effectively anchors the empty prompt twice and two such embeddings per iteration. Here the
  anchors are real prompts: the empty prompt, the concept's prompts to preserve and its guides
  (``anchor_batch`` of them drawn per iteration).
- The optimiser is PyTorch's 32-bit AdamW (bitsandbytes' AdamW8bit has the same defaults, weight
  decay 1e-2) with the official schedule.
- Facilitated transport, the official inference rule that scales the membrane per prompt by its
  similarity to the erased concept (``infer_spm.py``), is left out: it depends on the prompt at
  generation time and cannot live in fixed weights. The merged model is the membrane at
  multiplier 1 for every prompt (the official ``--spm_multiplier 1``).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from diffusers.optimization import get_cosine_with_hard_restarts_schedule_with_warmup

from ..core.models import LDM, encode_prompts
from ..core.progress import tqdm
from .training import add_noise, check_prompts, finish, noise_loss, sample_latents

#: The module class whose Linear and Conv2d layers get a membrane (the official target).
TARGET_MODULE = "Transformer2DModel"


@dataclass(frozen=True)
class SPMParams:
    """Settings of an SPM run; the defaults are the official ones for Stable Diffusion 1.4.

    preserve, guides: the anchor prompts besides the empty prompt (None: the concept's own);
    samples: how many base-model generations of the concept's prompts are the training latents.
    """

    iterations: int = 3000
    lr: float = 1e-4
    rank: int = 1
    alpha: float = 1.0
    negative_guidance: float = 1.0
    anchor_strength: float = 1000.0
    anchor_batch: int = 4
    batch_size: int = 1
    lr_warmup_steps: int = 500
    lr_cycles: int = 3
    start_guidance: float = 3.0
    ddim_steps: int = 30
    samples: int = 16
    preserve: list[str] | None = None
    guides: list[str] | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        counts = {"rank": self.rank, "batch_size": self.batch_size, "anchor_batch": self.anchor_batch,
                  "lr_cycles": self.lr_cycles, "ddim_steps": self.ddim_steps, "samples": self.samples}
        low = sorted(name for name, value in counts.items() if value < 1)
        if low:
            raise ValueError(f"SPM needs {low} >= 1, got {[counts[n] for n in low]}")
        if self.iterations < 0 or self.lr_warmup_steps < 0:
            raise ValueError(f"SPM needs iterations >= 0 and lr_warmup_steps >= 0, got {self.iterations}, "
                             f"{self.lr_warmup_steps}")
        if self.iterations and self.lr_warmup_steps >= self.iterations:
            raise ValueError(f"SPM lr_warmup_steps ({self.lr_warmup_steps}) must be fewer than its iterations "
                             f"({self.iterations}); the official 500 go with 3000 iterations")
        if not (self.lr > 0 and self.alpha > 0):
            raise ValueError(f"SPM needs lr > 0 and alpha > 0, got lr={self.lr}, alpha={self.alpha}")
        if self.anchor_strength < 0 or self.negative_guidance < 0:
            raise ValueError(f"SPM needs anchor_strength >= 0 and negative_guidance >= 0, got "
                             f"{self.anchor_strength}, {self.negative_guidance}")
        if self.anchor_batch % self.batch_size:
            raise ValueError(f"SPM anchor_batch ({self.anchor_batch}) must be a multiple of batch_size "
                             f"({self.batch_size}): each latent is shared by anchor_batch / batch_size anchors")


class Membrane(torch.nn.Module):
    """A rank-``rank`` adapter beside one ``Linear`` or ``Conv2d`` layer: it adds ``scale * up(down(x))``.

    ``down`` has the layer's kernel (and stride, padding, dilation), ``up`` is 1x1; ``down`` is drawn
    as PyTorch's default (Kaiming-uniform, bound 1/sqrt(fan_in)) from ``generator``, ``up`` is zero.
    The parameters are float32 whatever the layer's dtype.
    """

    def __init__(self, layer: torch.nn.Module, rank: int, alpha: float, generator: torch.Generator) -> None:
        super().__init__()
        weight = layer.weight
        if isinstance(layer, torch.nn.Conv2d):
            if layer.groups != 1:
                raise ValueError(f"a membrane needs an ungrouped convolution, got groups={layer.groups}")
            down_shape, up_shape = (rank, *weight.shape[1:]), (weight.shape[0], rank, 1, 1)
        elif isinstance(layer, torch.nn.Linear):
            down_shape, up_shape = (rank, weight.shape[1]), (weight.shape[0], rank)
        else:
            raise ValueError(f"a membrane goes beside a Linear or Conv2d layer, not a {type(layer).__name__}")
        bound = 1 / math.sqrt(math.prod(down_shape[1:]))
        down = (torch.rand(down_shape, generator=generator, device=generator.device) * 2 - 1) * bound
        self.down = torch.nn.Parameter(down.to(weight.device))
        self.up = torch.nn.Parameter(torch.zeros(up_shape, device=weight.device))
        self.scale = alpha / rank
        # a convolution's geometry, kept as plain values (the layer itself is no part of the membrane)
        self.conv = (layer.stride, layer.padding, layer.dilation) if isinstance(layer, torch.nn.Conv2d) else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The membrane's own path, ``scale * up(down(x))``."""
        down, up = self.down.to(x.dtype), self.up.to(x.dtype)
        if self.conv is None:
            return F.linear(F.linear(x, down), up) * self.scale
        return F.conv2d(F.conv2d(x, down, None, *self.conv), up) * self.scale

    def delta(self) -> torch.Tensor:
        """The change of the layer's weight that the membrane amounts to (rank <= ``rank``), float32."""
        flat = self.up.flatten(1) @ self.down.flatten(1)
        return (flat * self.scale).view(*self.up.shape[:1], *self.down.shape[1:])


def spm_layer_names(unet: torch.nn.Module) -> list[str]:
    """Names of the UNet's layers that get a membrane: every Linear and Conv2d in a transformer block."""
    names = []
    for name, module in unet.named_modules():
        if type(module).__name__ == TARGET_MODULE:
            names += [f"{name}.{child}" for child, layer in module.named_modules()
                      if isinstance(layer, (torch.nn.Linear, torch.nn.Conv2d))]
    if not names:
        raise ValueError(f"the UNet has no {TARGET_MODULE} blocks for SPM's membranes")
    return names


@dataclass
class SPMResult:
    """A UNet with its membranes merged.

    unet:     the erased UNet (a new object; the base model is untouched);
    layers:   the names of the layers that got a membrane (their ``.weight`` changed, nothing else);
    losses:   per iteration, the total loss, the erase loss and the anchoring loss.
    """

    unet: torch.nn.Module
    layers: list[str]
    losses: dict[str, list[float]]
    params: SPMParams
    info: dict[str, Any] = field(default_factory=dict)


def anchor_prompts(params: SPMParams) -> list[str]:
    """The anchors: the empty prompt, then the prompts to preserve and the guides, each once."""
    return list(dict.fromkeys(["", *(params.preserve or ()), *(params.guides or ())]))


def _predict(unet: torch.nn.Module, z_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
    device, dtype = unet.device, unet.dtype
    return unet(z_t.to(device, dtype), t.to(device), encoder_hidden_states=cond.to(device, dtype)).sample.float()


def spm_erase(ldm: LDM, prompts: Sequence[str], params: SPMParams = SPMParams(), *,
              progress: bool = True) -> SPMResult:
    """Train SPM membranes on a copy of ``ldm.unet`` to erase ``prompts`` and merge them (see the module).

    Every random draw (training latents, membrane initialisation, batches, anchors) comes from a
    generator seeded with ``params.seed``. ``ldm`` is not modified.
    """
    prompts = check_prompts("SPM", prompts, params.samples)
    generator = torch.Generator(device="cpu").manual_seed(int(params.seed))
    base = ldm.unet
    forget = sample_latents(ldm, prompts, params.samples, generator=generator, num_steps=params.ddim_steps,
                            guidance_scale=params.start_guidance)
    anchors = anchor_prompts(params)
    anchor_embeds = encode_prompts(ldm, anchors)
    uncond = encode_prompts(ldm, [""])

    unet = copy.deepcopy(base).requires_grad_(False)  # only the membranes train
    layers = spm_layer_names(unet)
    modules = dict(unet.named_modules())
    membranes = {name: Membrane(modules[name], params.rank, params.alpha, generator) for name in layers}
    hooks = [modules[name].register_forward_hook(lambda _m, args, out, mem=mem: out + mem(args[0]))
             for name, mem in membranes.items()]
    trainable = [p for mem in membranes.values() for p in mem.parameters()]
    optimizer = torch.optim.AdamW(trainable, lr=params.lr)
    schedule = get_cosine_with_hard_restarts_schedule_with_warmup(
        optimizer, params.lr_warmup_steps, max(params.iterations, 1), params.lr_cycles)

    repeat = params.anchor_batch // params.batch_size
    losses: dict[str, list[float]] = {"loss": [], "erase": [], "anchor": []}
    start = time.perf_counter()
    bar = tqdm(range(params.iterations), desc=f"SPM '{prompts[0]}'", disable=not progress)
    try:
        for _ in bar:
            # 1. Erase: the membrane model, prompted with the concept, towards the negatively guided base.
            z0, cond = forget.batch(params.batch_size, generator)
            z_t, t, _ = add_noise(ldm, z0, generator)
            with torch.no_grad():
                e_c = _predict(base, z_t, t, cond)
                e_0 = _predict(base, z_t, t, uncond.expand(len(z_t), -1, -1))
            erase = noise_loss(unet, z_t, t, cond, e_0 - params.negative_guidance * (e_c - e_0))
            # 2. Latent anchoring: the anchors' predictions on the same latents held to the base model's.
            anchor = torch.zeros((), device=erase.device)
            if params.anchor_strength > 0:
                pick = torch.randint(0, len(anchors), (params.anchor_batch,), generator=generator)
                z_a, t_a, a = z_t.repeat(repeat, 1, 1, 1), t.repeat(repeat), anchor_embeds[pick]
                with torch.no_grad():
                    e_a = _predict(base, z_a, t_a, a)
                anchor = noise_loss(unet, z_a, t_a, a, e_a)
            loss = erase + params.anchor_strength * anchor
            optimizer.zero_grad(set_to_none=True)
            loss.backward(inputs=trainable)
            optimizer.step()
            schedule.step()
            for key, value in (("loss", loss), ("erase", erase), ("anchor", anchor)):
                losses[key].append(float(value.detach()))
            bar.set_postfix(erase=f"{losses['erase'][-1]:.4f}", anchor=f"{losses['anchor'][-1]:.2e}")
    finally:
        for hook in hooks:
            hook.remove()
    # 3. Merge: each layer's weight plus its membrane's rank-1 change.
    with torch.no_grad():
        for name, mem in membranes.items():
            weight = modules[name].weight
            weight += mem.delta().to(weight.device, weight.dtype)
    info = {"prompts": prompts, "anchors": anchors, "seconds": time.perf_counter() - start, "params": asdict(params)}
    return SPMResult(unet=finish(unet), layers=layers, losses=losses, params=params, info=info)


__all__ = ["Membrane", "SPMParams", "SPMResult", "anchor_prompts", "spm_erase", "spm_layer_names"]
