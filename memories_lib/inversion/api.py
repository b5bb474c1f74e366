"""One entry point for every inversion method: images -> seeds z_T -> regenerated images.

``invert`` resolves the method's configuration (:func:`resolve`), encodes the images with
the VAE (posterior mean, or a posterior sample drawn with each image's own generator when
the configuration asks for one), inverts the latents with the chosen method, regenerates
them from the seeds the way that method reconstructs (DDIM, ReNoise: plain DDIM sampling at
guidance 1, the official setting; null-text: guidance 7.5 with the optimised per-step
embeddings, or guidance 1 as the official Memories code; EDICT: its coupled exact sampler),
decodes, and flags seeds that diverged (:func:`~memories_lib.inversion.common.diverged_seeds`).
``invert_latents`` does the same from given latents z_0, without the encoder.
Plain DDIM sampling from given or fresh seeds (``regenerate``, ``generate``) is
``memories_lib.core.sampling``.

The methods (``METHODS``):

- "ddim": DDIM inversion with the caption.
- "renoise": ReNoise as the official Memories run used it (noise regularisation on, z_0 a
  posterior sample with seed 42 per image; :class:`ReNoiseConfig` defaults).
- "renoise-plain": ReNoise without noise regularisation, from the posterior mean
  (:meth:`ReNoiseConfig.plain`; deterministic, this project's earlier default).
- "nti": null-text inversion as prompt-to-prompt runs it (:class:`NullTextConfig` defaults).
- "nti-memories": null-text inversion as the official Memories code runs it
  (:meth:`NullTextConfig.official_memories`).
- "edict": EDICT's exact coupled inversion.

Resolved configuration: ``resolve(method, num_steps, **options)`` is a dict with every
setting that determines the result: ``method``, ``num_steps`` (the default resolved),
``posterior`` ("mean" or "sample": how z_0 is encoded), ``seed`` (of every image's
generator, or None when nothing is random) and the method's own settings (ReNoise and
null-text: ``config``, a frozen dataclass with every field). Results stores key on it.

Every method's ``info`` follows one convention so that batches can be concatenated:
tensor values have the batch as their first dimension; other values describe the
whole call and are taken from the first batch. The keys:

- all: ``num_steps``;
- ddim: ``guidance_scale`` (inversion), ``reconstruction_guidance``;
- renoise, renoise-plain: ``config`` (the :class:`ReNoiseConfig` used);
- nti, nti-memories: ``config`` (:class:`NullTextConfig`), ``uncond_embeds`` (B, n, L, D), the
  optimised embedding of every sampling step, ``losses`` and ``inner_steps`` (B, n); its
  ``trajectory`` is the pivot DDIM inversion (n = N, or N - 1 for nti-memories);
- edict: ``mix``, ``guidance_scale``, ``leapfrog``, ``float64``, and the float64 pair
  ``x_T``, ``y_T`` (B, C, h, w) the exact reconstruction starts from (seeds = x_T).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Mapping, Sequence

import torch

from ..core import throughput
from ..core.models import LDM, decode_latents, encode_images, encode_prompts
from ..core.progress import tqdm
from .common import InversionResult, diverged_seeds
from ..core.sampling import ddim_sample
from .ddim import ddim_invert
from .edict import DEFAULT_MIX, edict_invert, edict_sample
from .nti import NullTextConfig, null_text_invert, null_text_reconstruct
from .renoise import ReNoiseConfig, renoise_invert


@dataclass
class Inverted:
    """What a method's ``invert`` returns for one batch (tensors on the model's device).

    seeds: z_T (B, C, h, w); trajectory: z_0 .. z_T (T + 1, B, C, h, w) or None;
    info: extras, tensors batch-first (what the method's ``reconstruct`` needs, among them).
    """

    seeds: torch.Tensor
    trajectory: torch.Tensor | None = None
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class InversionMethod:
    """A registered inversion method.

    resolve(num_steps | None, **options) -> the resolved configuration (see the module
        docstring; unknown options raise ValueError)
    invert(ldm, latents, cond_embeds, resolved, *, generators, return_trajectory, progress) -> Inverted
        (``generators``: one per image, after the posterior sample, or None when ``resolved["seed"]`` is None)
    reconstruct(ldm, inverted, cond_embeds, *, progress) -> z_0 (B, C, h, w), as the method regenerates
    options: the names and defaults of the keyword options the method accepts.
    half_precision: measured to give float32's results in float16 on a GPU (``benchmarks/bench_precision.py``,
        its numbers in ``benchmarks/RESULTS.md``): what ``dtype="auto"`` of an audit runs in float16.
    """

    name: str
    resolve: Callable[..., dict[str, Any]]
    invert: Callable[..., Inverted]
    reconstruct: Callable[..., torch.Tensor]
    options: dict[str, Any]
    description: str
    half_precision: bool = False


# --------------------------------------------------------------------------- adapters

DEFAULT_STEPS = 50  # the official Memories setting (inversion and reconstruction)
# Each method's resolve turns num_steps None into its default; invert records the step
# count in info["num_steps"]; reconstruct reads what it needs from info.


def _check_options(name: str, options: dict[str, Any], accepted: dict[str, Any]) -> None:
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(f"method {name!r} has no option(s) {unknown}; its options are {sorted(accepted)}")


def _resolved(name: str, num_steps: int, posterior: str = "mean", seed: int | None = None, **settings) -> dict:
    return {"method": name, "num_steps": int(num_steps), "posterior": posterior, "seed": seed, **settings}


_DDIM_OPTIONS = {"guidance_scale": 0.0, "reconstruction_guidance": 1.0}


def _ddim_resolve(num_steps, **options) -> dict[str, Any]:
    _check_options("ddim", options, _DDIM_OPTIONS)
    settings = {k: float(options.get(k, v)) for k, v in _DDIM_OPTIONS.items()}
    return _resolved("ddim", DEFAULT_STEPS if num_steps is None else num_steps, **settings)


def _ddim_invert(ldm, latents, cond, resolved, *, generators, return_trajectory, progress) -> Inverted:
    num_steps, guidance = resolved["num_steps"], resolved["guidance_scale"]
    seeds, trajectory = ddim_invert(ldm, latents, cond, num_steps, guidance_scale=guidance,
                                    return_trajectory=return_trajectory, progress=progress)
    info = {"num_steps": num_steps, "guidance_scale": guidance,
            "reconstruction_guidance": resolved["reconstruction_guidance"]}
    return Inverted(seeds, trajectory, info)


def _ddim_reconstruct(ldm, inverted, cond, *, progress) -> torch.Tensor:
    info = inverted.info
    return ddim_sample(ldm, inverted.seeds, cond, info["num_steps"], info["reconstruction_guidance"],
                       progress=progress)


_RENOISE_FIELDS = [f.name for f in fields(ReNoiseConfig) if f.name not in ("num_inversion_steps", "num_inference_steps")]


def _renoise_resolver(name: str, base: ReNoiseConfig) -> Callable[..., dict[str, Any]]:
    accepted = {"config": None, **{f: getattr(base, f) for f in _RENOISE_FIELDS}}

    def resolve(num_steps, config: ReNoiseConfig | None = None, **overrides) -> dict[str, Any]:
        _check_options(name, {"config": config, **overrides}, accepted)
        if config is not None and not isinstance(config, ReNoiseConfig):
            raise TypeError(f"config must be a ReNoiseConfig, got {type(config).__name__}")
        config = dataclasses.replace(config or base, **overrides)
        if num_steps is not None:
            config = config.with_steps(num_steps)
        random = config.posterior == "sample" or config.regularizes
        return _resolved(name, config.num_inversion_steps, config.posterior, config.seed if random else None,
                         config=config)

    return resolve


def _renoise_invert(ldm, latents, cond, resolved, *, generators, return_trajectory, progress) -> Inverted:
    config: ReNoiseConfig = resolved["config"]
    seeds, trajectory = renoise_invert(ldm, latents, cond, config, return_trajectory=return_trajectory,
                                       progress=progress, generators=generators)
    return Inverted(seeds, trajectory, {"num_steps": config.num_inversion_steps, "config": config})


def _renoise_reconstruct(ldm, inverted, cond, *, progress) -> torch.Tensor:
    config: ReNoiseConfig = inverted.info["config"]
    return ddim_sample(ldm, inverted.seeds, cond, config.num_inference_steps, config.reconstruction_guidance,
                       progress=progress)


_NTI_FIELDS = [f.name for f in fields(NullTextConfig)]


def _nti_resolver(name: str, base: NullTextConfig) -> Callable[..., dict[str, Any]]:
    accepted = {"config": None, **{f: getattr(base, f) for f in _NTI_FIELDS}}

    def resolve(num_steps, config: NullTextConfig | None = None, **overrides) -> dict[str, Any]:
        _check_options(name, {"config": config, **overrides}, accepted)
        if config is not None and not isinstance(config, NullTextConfig):
            raise TypeError(f"config must be a NullTextConfig, got {type(config).__name__}")
        config = dataclasses.replace(config or base, **overrides)
        return _resolved(name, DEFAULT_STEPS if num_steps is None else num_steps, config=config)

    return resolve


def _nti_invert(ldm, latents, cond, resolved, *, generators, return_trajectory, progress) -> Inverted:
    config: NullTextConfig = resolved["config"]
    num_steps = resolved["num_steps"]
    out = null_text_invert(ldm, latents, cond, num_steps, config, progress=progress)
    info = {"num_steps": num_steps, "config": config, "uncond_embeds": out.uncond_embeds,
            "losses": out.losses, "inner_steps": out.inner_steps}
    return Inverted(out.seeds, out.pivots if return_trajectory else None, info)


def _nti_reconstruct(ldm, inverted, cond, *, progress) -> torch.Tensor:
    info = inverted.info
    config: NullTextConfig = info["config"]
    guidance = config.guidance_scale if config.reconstruction_guidance is None else config.reconstruction_guidance
    return null_text_reconstruct(ldm, inverted.seeds, cond, info["uncond_embeds"], guidance, progress,
                                 num_schedule_steps=info["num_steps"])


_EDICT_OPTIONS = {"mix": DEFAULT_MIX, "guidance_scale": 1.0, "leapfrog": True, "float64": None}


def _edict_resolve(num_steps, **options) -> dict[str, Any]:
    _check_options("edict", options, _EDICT_OPTIONS)
    settings = {k: options.get(k, v) for k, v in _EDICT_OPTIONS.items()}
    settings["mix"], settings["guidance_scale"] = float(settings["mix"]), float(settings["guidance_scale"])
    # float64 None: float64 where the device allows it (the device is part of every store key).
    return _resolved("edict", DEFAULT_STEPS if num_steps is None else num_steps, **settings)


def _edict_invert(ldm, latents, cond, resolved, *, generators, return_trajectory, progress) -> Inverted:
    r = resolved
    x_T, y_T, trajectory = edict_invert(ldm, latents, cond, r["num_steps"], r["mix"], r["guidance_scale"], None,
                                        r["leapfrog"], r["float64"], return_trajectory, progress)
    info = {"num_steps": r["num_steps"], "mix": r["mix"], "guidance_scale": r["guidance_scale"],
            "leapfrog": r["leapfrog"], "float64": x_T.dtype == torch.float64, "x_T": x_T, "y_T": y_T}
    return Inverted(x_T, trajectory, info)


def _edict_reconstruct(ldm, inverted, cond, *, progress) -> torch.Tensor:
    info = inverted.info
    x_0, _ = edict_sample(ldm, info["x_T"], info["y_T"], cond, info["num_steps"], info["mix"], info["guidance_scale"],
                          None, info["leapfrog"], info["float64"], progress)
    return x_0


def _config_options(base) -> dict[str, Any]:
    return {"config": None, **{f.name: getattr(base, f.name) for f in fields(base)
                               if f.name not in ("num_inversion_steps", "num_inference_steps")}}


def _registry() -> dict[str, InversionMethod]:
    renoise, plain = ReNoiseConfig(), ReNoiseConfig.plain()
    nti, nti_memories = NullTextConfig(), NullTextConfig.official_memories()
    return {
        "ddim": InversionMethod(
            "ddim", _ddim_resolve, _ddim_invert, _ddim_reconstruct, dict(_DDIM_OPTIONS),
            "DDIM inversion with the caption (guidance 0 = conditional only), DDIM reconstruction at guidance 1",
            half_precision=True,
        ),
        "renoise": InversionMethod(
            "renoise", _renoise_resolver("renoise", renoise), _renoise_invert, _renoise_reconstruct,
            _config_options(renoise),
            "ReNoise as the official Memories run: 5 renoise iterations per DDIM step, ReNoise's noise "
            "regularisation (4 rounds, KL target eps(z_0, t), acting below t = 250), z_0 a VAE posterior "
            "sample with seed 42 per image; reconstruction at guidance 1",
            half_precision=True,
        ),
        "renoise-plain": InversionMethod(
            "renoise-plain", _renoise_resolver("renoise-plain", plain), _renoise_invert, _renoise_reconstruct,
            _config_options(plain),
            "ReNoise without noise regularisation, from the posterior mean (deterministic): 5 renoise "
            "iterations per DDIM step, the official averaging; reconstruction at guidance 1",
        ),
        "nti": InversionMethod(
            "nti", _nti_resolver("nti", nti), _nti_invert, _nti_reconstruct, _config_options(nti),
            "null-text inversion as prompt-to-prompt: per-step null embeddings optimised for guidance 7.5 "
            "(10 Adam steps, decaying lr, early stop) and used to reconstruct at 7.5",
        ),
        "nti-memories": InversionMethod(
            "nti-memories", _nti_resolver("nti-memories", nti_memories), _nti_invert, _nti_reconstruct,
            _config_options(nti_memories),
            "null-text inversion as the official Memories code: seed = plain DDIM of N - 1 steps from "
            "alpha(t_{N-1}); 50 Adam steps per timestep, lr 1e-2, one optimiser, no early stop, guidance 7.5; "
            "reconstruction at guidance 1, so the embeddings go unused",
        ),
        "edict": InversionMethod(
            "edict", _edict_resolve, _edict_invert, _edict_reconstruct, dict(_EDICT_OPTIONS),
            "EDICT: coupled exact inversion (float64 where possible); seeds are the x sequence",
        ),
    }


METHODS: dict[str, InversionMethod] = _registry()


def get_method(name: str) -> InversionMethod:
    """The registered method called ``name`` (ValueError listing the methods otherwise)."""
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown inversion method {name!r}; the methods are {sorted(METHODS)}") from None


def resolve(method: str, num_steps: int | None = None, **options: Any) -> dict[str, Any]:
    """The fully resolved configuration of ``method`` run with ``num_steps`` and ``options``.

    Every default is filled in (num_steps, every config field), so two spellings of the same
    run (``config=ReNoiseConfig(num_renoise_steps=3)`` or ``num_renoise_steps=3``; ``num_steps``
    None or 50) give equal dicts, and a changed library default gives a different one. Keys:
    ``method``, ``num_steps``, ``posterior`` ("mean" / "sample"), ``seed`` (int or None) and
    the method's settings. Unknown options raise ValueError.
    """
    if num_steps is not None and (isinstance(num_steps, bool) or int(num_steps) != num_steps or num_steps < 1):
        raise ValueError(f"num_steps must be a positive integer, got {num_steps}")
    return get_method(method).resolve(None if num_steps is None else int(num_steps), **options)


# --------------------------------------------------------------------------- helpers


def _check_images(images01: torch.Tensor, prompts: list[str]) -> None:
    if images01.dim() != 4 or images01.shape[1] != 3:
        raise ValueError(f"images must be (B, 3, H, W) in [0, 1], got shape {tuple(images01.shape)}")
    if len(prompts) != images01.shape[0]:
        raise ValueError(f"got {len(prompts)} prompts for {images01.shape[0]} images")


def unet_rows_per_image(config: Mapping[str, Any]) -> int:
    """UNet rows per image in one call of a method with the resolved ``config``: 2 when it guides (CFG) anywhere."""
    scales = [config.get(k) for k in ("guidance_scale", "reconstruction_guidance")]
    return 2 if any(s is not None and float(s) > 1.0 for s in scales) else 1


def _check_batch_size(batch_size: int) -> None:
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size}")


def _merge_info(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Concatenate batch-first tensors over batches; keep other values from the first batch."""
    merged: dict[str, Any] = {}
    for key, value in parts[0].items():
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            merged[key] = torch.cat([p[key].detach().cpu() for p in parts])
        else:
            merged[key] = value
    return merged


def _cpu32(x: torch.Tensor) -> torch.Tensor:
    return x.detach().to("cpu", torch.float32)


# --------------------------------------------------------------------------- public API


def invert(
    ldm: LDM,
    images01: torch.Tensor,
    prompts: Sequence[str],
    method: str = "renoise",
    num_steps: int | None = None,
    regenerate: bool = True,
    return_trajectory: bool = False,
    batch_size: int | None = None,
    progress: bool = True,
    **options: Any,
) -> InversionResult:
    """Invert images (B, 3, H, W) in [0, 1] captioned by ``prompts`` into seeds z_T.

    ``method``: one of ``METHODS`` (see the module docstring); ``num_steps`` None is the
    method's default (50, the official setting); ``options`` are the method's own (see
    ``METHODS[name].options``; unknown ones raise ValueError). With ``regenerate`` the seeds
    are sampled back the way the method reconstructs and decoded. Images are processed
    ``batch_size`` at a time (None: as many as :mod:`~memories_lib.core.throughput`'s rule
    puts in one UNet call, in equal batches), each batch with that rule's CPU threads.

    Randomness (ReNoise's posterior sample and auto-correlation shifts) comes from one CPU
    generator per image seeded with the configuration's ``seed``, created afresh for every
    image as the official run does; so an image gets the same seed alone, in any batch and
    at any position, and the result is a function of the resolved configuration
    (``result.config``). ``result.diverged`` flags non-finite or exploded seeds.
    """
    _check_images(images01, prompts)
    resolved = resolve(method, num_steps, **options)

    def z0_of(start: int, end: int, generators):
        sample = resolved["posterior"] == "sample"
        return encode_images(ldm, images01[start:end], generators if sample else None)

    return _invert_batches(ldm, images01.shape[0], z0_of, prompts, method, resolved, regenerate, return_trajectory,
                           batch_size, progress)


def invert_latents(
    ldm: LDM,
    latents: torch.Tensor,
    prompts: Sequence[str],
    method: str = "renoise",
    num_steps: int | None = None,
    regenerate: bool = True,
    return_trajectory: bool = False,
    batch_size: int | None = None,
    progress: bool = True,
    **options: Any,
) -> InversionResult:
    """:func:`invert` of given scaled latents z_0 (B, C, h, w) instead of images: no encoder.

    The latents are inverted as they are (``result.latents`` are they), so the configuration's
    ``posterior`` does not apply (``result.config["posterior"]`` is "given"). Each image's generator
    is first advanced past the posterior draw :func:`invert` would have made when the
    configuration samples the posterior, so that the method's own random draws (ReNoise's
    auto-correlation shifts) are those it makes for an image: the two entry points then differ
    only in z_0. For latents already on a model's scale, e.g. the official null-text path of the
    Sequential Inversion Block (``decoder latent * vae.config.scaling_factor``).
    """
    if latents.dim() != 4 or tuple(latents.shape[1:]) != tuple(ldm.latent_shape):
        raise ValueError(f"latents must be (B, {', '.join(map(str, ldm.latent_shape))}) for this model, "
                         f"got shape {tuple(latents.shape)}")
    prompts = list(prompts)
    if len(prompts) != latents.shape[0]:
        raise ValueError(f"got {len(prompts)} prompts for {latents.shape[0]} latents")
    resolved = resolve(method, num_steps, **options)
    device = next(ldm.unet.parameters()).device

    def z0_of(start: int, end: int, generators):
        if generators is not None and resolved["posterior"] == "sample":
            shape = (1, *ldm.latent_shape)
            for g in generators:  # the draw of the posterior sample, skipped
                torch.randn(shape, generator=g, dtype=torch.float32)
        return latents[start:end].to(device, ldm.dtype)

    result = _invert_batches(ldm, latents.shape[0], z0_of, prompts, method, resolved, regenerate,
                             return_trajectory, batch_size, progress)
    result.config = {**result.config, "posterior": "given"}
    return result


def _invert_batches(
    ldm: LDM,
    n: int,
    z0_of: Callable[[int, int, list[torch.Generator] | None], torch.Tensor],
    prompts: Sequence[str],
    method: str,
    resolved: dict[str, Any],
    regenerate: bool,
    return_trajectory: bool,
    batch_size: int | None,
    progress: bool,
) -> InversionResult:
    """The loop of :func:`invert` and :func:`invert_latents`: ``z0_of(start, end, generators)`` gives a batch's z_0."""
    spec = get_method(method)
    rows = unet_rows_per_image(resolved)
    if batch_size is None:
        batch_size = throughput.unet_batch_size(ldm, n, rows)
    _check_batch_size(batch_size)
    device = next(ldm.unet.parameters()).device

    seeds, latents, recon, recon_latents, trajectories, infos = [], [], [], [], [], []
    starts = range(0, n, batch_size)
    for start in tqdm(starts, desc=f"{method} inversion", disable=not progress or len(starts) < 2):
        end = min(start + batch_size, n)
        batch_prompts = list(prompts[start:end])
        generators = None
        if resolved["seed"] is not None:
            generators = [torch.Generator().manual_seed(int(resolved["seed"])) for _ in range(end - start)]
        with throughput.threads_for_batch(rows * (end - start), device):
            z0 = z0_of(start, end, generators)
            cond = encode_prompts(ldm, batch_prompts)
            out = spec.invert(ldm, z0, cond, resolved, generators=generators, return_trajectory=return_trajectory,
                              progress=progress)
            seeds.append(_cpu32(out.seeds))
            latents.append(_cpu32(z0))
            if out.trajectory is not None:
                trajectories.append(_cpu32(out.trajectory))
            infos.append(out.info)
            if regenerate:
                z0_rec = spec.reconstruct(ldm, out, cond, progress=progress)
                recon_latents.append(_cpu32(z0_rec))
                recon.append(decode_latents(ldm, z0_rec))

    info = _merge_info(infos)
    all_seeds = torch.cat(seeds)
    return InversionResult(
        seeds=all_seeds,
        latents=torch.cat(latents),
        reconstruction=torch.cat(recon) if regenerate else None,
        trajectory=torch.cat(trajectories, dim=1) if trajectories else None,
        method=method,
        info=info,
        reconstruction_latents=torch.cat(recon_latents) if regenerate else None,
        diverged=diverged_seeds(all_seeds),
        config=resolved,
    )


__all__ = ["METHODS", "InversionMethod", "Inverted", "get_method", "invert", "invert_latents", "resolve"]
