"""Check that ``memories_lib.inversion``'s "nti-memories" is the official null-text inversion, on the mini shapes world.

Chapter 1 of the book and :mod:`memories_lib.inversion.nti` say that the method "nti-memories"
(:meth:`~memories_lib.inversion.nti.NullTextConfig.official_memories`) is the null-text inversion
of the official "Memories of Forgotten Concepts" code: 50 Adam steps per timestep at a constant
learning rate 1e-2 with one optimiser for the whole run, no early stop, guidance 7.5; the seed a
plain 49-step DDIM inversion that takes z_0 as the latent at t = 1; the regeneration at guidance 1.
This script checks that claim against a checkout of the official repository
(https://github.com/matanr/Memories_of_Forgotten_Concepts):

1. it imports ``src/nti.py`` from ``--official DIR`` (nothing of it is copied into this project) and
   runs it the way ``nti_invert`` of ``src/memory_of_an_ablated_concept.py`` does, image by image:
   the pipeline as that script's main builds it (``DDIMScheduler.from_config(model,
   subfolder="scheduler")``, ``StableDiffusionPipeline.from_pretrained(model, safety_checker=None,
   scheduler=...)``), z_0 the VAE posterior mean of the image (``get_latent_from_encoder``: the
   8-bit pixels ``/ 127.5 - 1``), ``latent = z_0 * scaling_factor``, the caption's embedding by
   ``pipe.encode_prompt``, ``pipe.scheduler.set_timesteps(50)``, ``ddim_inversion``,
   ``null_text_inversion(..., num_opt_steps=50)`` (its defaults: lr 1e-2, guidance 7.5) and
   ``reconstruct(..., guidance_scale=1)``;
2. it inverts the same images with the same captions and model with the project's
   ``invert(..., method="nti-memories")`` (regeneration and trajectory on);
3. it runs the official code once more on the first image from z_0 changed by float32 rounding
   (each entry times 1 + 2^-23 or 1 - 2^-23, at random): the official code's own sensitivity to
   rounding, the scale a difference that only comes from the order of float operations is read
   against (the official code has no random draw: there is no seed-to-seed spread);
4. it prints, per image, the largest difference of z_0 and of the pivot DDIM trajectory (each level
   in units of the official level's standard deviation), the mean and max difference of the seeds
   z_T (official std units), the largest difference of the 49 optimised null-text embeddings as a
   share of how far the official optimisation moved them from the empty prompt's embedding
   (``||ours_i - theirs_i|| / ||theirs_i - init||``, largest over the steps i), and the largest
   pixel difference of the regenerations (in [0, 1]).

It exits with 0 when, on every image, z_0, the trajectory and the seeds are within
``--tolerance`` standard deviations (1e-4), the embeddings within ``--embed-tolerance`` of the
optimisation's displacement (1e-2) and the regenerations within half an 8-bit level (0.5/255), and
each tolerance is at least the official code's own rounding sensitivity on the first image; with 1
otherwise, and with 2 (before loading anything heavy) when ``--official`` is not a checkout of the
official code.

The runs differ from the official scripts in the model and the images only: the world's model
folder (diffusers layout) for ``model_base`` (the official script then loads the erased UNet and
text encoder into it; here they are the model's own), and the world's reference images (32x32,
8-bit) at their own size instead of ``.resize((512, 512))``, Stable Diffusion's input size.

Versions: the official code pins diffusers 0.24 and transformers 4.46; ``nti.py`` runs unchanged
with diffusers 0.42.1 and transformers 5.x (``from_config`` of a path, ``pipe.decode_latents`` and
the tokenizer's misspelt ``truncaton=True`` only warn, and are silenced here). ``nti.py`` imports
torch alone; ``memory_of_an_ablated_concept.py`` is not imported (it needs the official datasets,
detectors and easydict), its ``nti_invert`` recipe is followed step by step instead.

One measurement shim (:class:`_Snapshots`): ``null_text_inversion`` keeps each timestep's
embedding as ``null_text_embeddings.detach().cpu()`` (``src/nti.py``, line 127), a copy on CUDA but,
on the CPU, a view of the parameter that Adam keeps updating in place: run on the CPU, all 49
entries of its list are the final embedding (the project's last step matched it to 1e-5 of the
displacement, its first to 0.99). The check records instead what the list holds on CUDA, a copy
of the parameter after each timestep, through a UNet forward pre-hook and ``pipe.progress_bar``;
nothing the official code computes changes. (The official regeneration, at guidance 1, does not
depend on the embeddings, so the aliasing does not change it.)

Run it (one thread is enough; the mini world must be trained and in the cache; about 2.5 minutes
per image for the official side and 1 for the project's, plus one more official run)::

    git clone https://github.com/matanr/Memories_of_Forgotten_Concepts /path/to/official
    MEMORIES_CACHE=/path/to/cache MEMORIES_THREADS=1 .venv/bin/python tools/check_official_nti.py \\
        --official /path/to/official --images 2

Found (official commit 1c445143509e94c36f505a460411d3fd10679489; CPU, one thread; diffusers 0.42.1,
transformers 5.x, torch 2.13; ``--images 1``, 5 minutes): on the first reference image of the mini
world (seed 0) the project's z_0 is the official one to 3.9e-6 std, the pivot trajectory to 2.8e-5,
the seed to 6.2e-6 on average (max 2.8e-5), the 49 embeddings to 5.5e-4 of the optimisation's
displacement (the official code's own rounding sensitivity: 5.9e-4), the regeneration to 3.6e-6 per
pixel. PASS. Only one image was run so far; ``--images 2`` takes about 8 minutes.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import types
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from official_checkout import (CheckError, add_world_arguments, argument_parser, check_imported_from,
                               check_world_arguments, open_world_check, reference_images, use_official_source)

if TYPE_CHECKING:
    import torch

#: Files of the official repository the check uses (paths under its ``src``): the null-text code it imports,
#: and the script whose ``nti_invert`` recipe it follows.
OFFICIAL_FILES: tuple[str, ...] = ("nti.py", "memory_of_an_ablated_concept.py")
#: The official run: DDIM steps of the schedule (``num_diffusion_inversion_steps``), also its Adam steps per timestep.
NUM_STEPS = 50
#: Seed of the float32 rounding perturbation of the sensitivity run.
ROUNDING_SEED = 0
#: A regeneration may differ by at most this (pixels in [0, 1]): half an 8-bit level.
PIXEL_TOLERANCE = 0.5 / 255


@dataclass(frozen=True)
class NullText:
    """One side's results for N images: z_0, the pivot trajectory (n + 1, N, C, h, w), the seeds, the
    embeddings (N, n, L, D), the regenerations (N, 3, H, W) in [0, 1]; float32 on the CPU."""

    latents: "torch.Tensor"
    trajectory: "torch.Tensor"
    seeds: "torch.Tensor"
    embeds: "torch.Tensor"
    images: "torch.Tensor"


@dataclass(frozen=True)
class Row:
    """One image's comparison (see :func:`compare`)."""

    caption: str
    z0_max: float
    trajectory_max: float
    seed_mean: float
    seed_max: float
    embed_max: float
    pixel_max: float


# --------------------------------------------------------------------------- the official code


def import_official(src: Path) -> types.ModuleType:
    """``nti`` imported from ``src`` (bytecode is not written into the checkout)."""
    use_official_source(src)
    import nti

    check_imported_from(nti, src)
    return nti


@contextlib.contextmanager
def _quiet():
    """Silence the official code's deprecation warnings under current diffusers and transformers."""
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    transformers.logging.set_verbosity_error()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def official_pipe(model: Path, device: str):
    """The pipeline as the official script's main builds it, from ``model`` instead of the hub's SD 1.4."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    with _quiet():
        scheduler = DDIMScheduler.from_config(str(model), subfolder="scheduler")
        pipe = StableDiffusionPipeline.from_pretrained(str(model), safety_checker=None, scheduler=scheduler)
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def official_z0(pipe, pil) -> "torch.Tensor":
    """The VAE posterior mean of a PIL image, as ``get_latent_from_encoder`` (without its resize to 512)."""
    import numpy as np
    import torch

    pixels = np.array(pil.convert("RGB"))[None].transpose(0, 3, 1, 2)
    x = torch.from_numpy(pixels).to(torch.float32) / 127.5 - 1.0
    with torch.no_grad():
        return pipe.vae.encode(x.to(pipe.device)).latent_dist.mean.detach().clone()


class _Snapshots:
    """Measurement shim: the null-text embedding at the end of each timestep of ``null_text_inversion``.

    The official code keeps ``null_text_embeddings.detach().cpu()`` per timestep: a copy on CUDA,
    but on the CPU a view of the parameter that Adam then updates in place, so on the CPU every
    entry of its list ends as the final embedding. This records what its list holds on CUDA: a
    forward pre-hook on the UNet notes the parameter (the ``encoder_hidden_states`` that requires
    grad), and ``pipe.progress_bar`` (which wraps the timestep loop) copies it after each timestep.
    Nothing the official code computes is changed.
    """

    def __init__(self, pipe):
        self.pipe, self.parameter, self.copies = pipe, None, []

    def _hook(self, module, args, kwargs):
        states = kwargs.get("encoder_hidden_states", args[2] if len(args) > 2 else None)
        if states is not None and states.requires_grad:
            self.parameter = states

    def _progress_bar(self, iterable):
        for item in iterable:
            yield item
            self.copies.append(self.parameter.detach().clone().float().cpu())

    def __enter__(self):
        self.handle = self.pipe.unet.register_forward_pre_hook(self._hook, with_kwargs=True)
        self.pipe.progress_bar = self._progress_bar
        return self

    def __exit__(self, *exc):
        self.handle.remove()
        del self.pipe.progress_bar


def official_nti(nti: types.ModuleType, pipe, z_0s: Sequence["torch.Tensor"], prompts: Sequence[str],
                 device: str) -> NullText:
    """Each z_0 (1, C, h, w), unscaled, inverted as the official ``nti_invert`` does."""
    import torch

    latents, trajectories, seeds, embeds, images = [], [], [], [], []
    for z_0, prompt in zip(z_0s, prompts):
        with _quiet():
            latent = z_0 * pipe.vae.scaling_factor
            text_embeddings = pipe.encode_prompt(prompt, device, 1, False, None)[0]
            pipe.scheduler.set_timesteps(NUM_STEPS, device=device)
            all_latents = nti.ddim_inversion(latent, text_embeddings, pipe.scheduler, pipe.unet)
            with _Snapshots(pipe) as snapshots:
                z_T, all_null_texts = nti.null_text_inversion(pipe, all_latents, prompt, num_opt_steps=NUM_STEPS,
                                                              device=device)
            image = nti.reconstruct(pipe, z_T, prompt, all_null_texts, guidance_scale=1, device=device)
        latents.append(latent.detach().float().cpu())
        trajectories.append(torch.stack([x.float() for x in all_latents]))
        seeds.append(z_T.detach().float().cpu())
        embeds.append(torch.cat(snapshots.copies)[None])
        images.append(torch.from_numpy(image).float().permute(0, 3, 1, 2))
    return NullText(torch.cat(latents), torch.cat(trajectories, dim=1), torch.cat(seeds), torch.cat(embeds),
                    torch.cat(images))


def rounding_perturbed(z_0: "torch.Tensor", seed: int) -> "torch.Tensor":
    """``z_0`` with each entry multiplied by 1 + 2^-23 or 1 - 2^-23 (float32 rounding), signs from ``seed``."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    signs = torch.randint(0, 2, z_0.shape, generator=generator).to(z_0.device, z_0.dtype) * 2 - 1
    return z_0 * (1 + signs * 2.0 ** -23)


def empty_embedding(pipe) -> "torch.Tensor":
    """The empty prompt's embedding (1, L, D): where the official optimisation starts."""
    import torch

    with torch.no_grad(), _quiet():
        return pipe.encode_prompt("", pipe.device, 1, False, None)[0].float().cpu()


# --------------------------------------------------------------------------- the project


def project_nti(ldm, images01: "torch.Tensor", prompts: Sequence[str]) -> NullText:
    """The images inverted by the project's "nti-memories", regenerated, with the trajectory."""
    from memories_lib.inversion import invert

    result = invert(ldm, images01, list(prompts), method="nti-memories", return_trajectory=True, progress=False)
    return NullText(result.latents.float().cpu(), result.trajectory.float().cpu(), result.seeds.float().cpu(),
                    result.info["uncond_embeds"].float().cpu(), result.reconstruction.float().cpu())


# --------------------------------------------------------------------------- comparison


def _relative(ours: "torch.Tensor", theirs: "torch.Tensor") -> "torch.Tensor":
    return (ours - theirs).abs() / theirs.std()


def compare_one(ours: NullText, theirs: NullText, i: int, j: int, init: "torch.Tensor") -> dict[str, float]:
    """Image ``i`` of ``ours`` against image ``j`` of ``theirs`` (see the module docstring for the units)."""
    trajectory = max(float(_relative(ours.trajectory[k, i], theirs.trajectory[k, j]).max())
                     for k in range(theirs.trajectory.shape[0]))
    seed = _relative(ours.seeds[i], theirs.seeds[j])
    embed = max(float((ours.embeds[i, k] - theirs.embeds[j, k]).norm() / (theirs.embeds[j, k] - init[0]).norm())
                for k in range(theirs.embeds.shape[1]))
    return {"z0_max": float(_relative(ours.latents[i], theirs.latents[j]).max()), "trajectory_max": trajectory,
            "seed_mean": float(seed.mean()), "seed_max": float(seed.max()), "embed_max": embed,
            "pixel_max": float((ours.images[i] - theirs.images[j]).abs().max())}


def compare(prompts: Sequence[str], ours: NullText, theirs: NullText, init: "torch.Tensor") -> list[Row]:
    """Per image: the project against the official run."""
    shapes = {name: (tuple(getattr(ours, name).shape), tuple(getattr(theirs, name).shape))
              for name in ("latents", "trajectory", "seeds", "embeds", "images")}
    wrong = {name: pair for name, pair in shapes.items() if pair[0] != pair[1]}
    if wrong:
        raise RuntimeError(f"the project's and the official results differ in shape (project, official): {wrong}")
    return [Row(caption, **compare_one(ours, theirs, i, i, init)) for i, caption in enumerate(prompts)]


def print_table(rows: Sequence[Row], rounding: dict[str, float]) -> None:
    """The per-image table, and the official rounding sensitivity in the same units."""
    print("z_0, trajectory: max abs diff / std (per level); seed: mean and max abs diff / std; embeds: max over the 49\n"
          "steps of ||ours - official|| / ||official - empty prompt||; pixels: max abs diff in [0, 1]")
    print(f"{'image':>9}  {'z_0':>8}  {'traject.':>8}  {'seed mean':>9}  {'seed max':>8}  {'embeds':>8}  "
          f"{'pixels':>8}  caption")
    for i, row in enumerate(rows):
        print(f"{i:>9}  {row.z0_max:>8.1e}  {row.trajectory_max:>8.1e}  {row.seed_mean:>9.1e}  {row.seed_max:>8.1e}  "
              f"{row.embed_max:>8.1e}  {row.pixel_max:>8.1e}  {row.caption}")
    print(f"{'rounding':>9}  {rounding['z0_max']:>8.1e}  {rounding['trajectory_max']:>8.1e}  "
          f"{rounding['seed_mean']:>9.1e}  {rounding['seed_max']:>8.1e}  {rounding['embed_max']:>8.1e}  "
          f"{rounding['pixel_max']:>8.1e}  official, image 0: z_0 changed by float32 rounding vs unchanged")


def verdict(rows: Sequence[Row], rounding: dict[str, float], tolerance: float,
            embed_tolerance: float) -> tuple[bool, list[str]]:
    """Whether "nti-memories" is the official null-text inversion, and the summary lines that say why."""
    worst = {name: max(getattr(row, name) for row in rows) for name in rounding}
    limits = {"z0_max": tolerance, "trajectory_max": tolerance, "seed_mean": tolerance, "seed_max": None,
              "embed_max": embed_tolerance, "pixel_max": PIXEL_TOLERANCE}
    names = {"z0_max": "z_0 (max, std)", "trajectory_max": "trajectory (max, std)", "seed_mean": "seed (mean, std)",
             "seed_max": "seed (max, std)", "embed_max": "embeddings (share of the displacement)",
             "pixel_max": "regeneration (max pixel)"}
    lines, ok = [], True
    for name, limit in limits.items():
        if limit is None:
            lines.append(f"     {names[name]}: project vs official {worst[name]:.2g}, official rounding "
                         f"{rounding[name]:.2g} (not a criterion)")
            continue
        good = worst[name] <= limit and rounding[name] <= limit
        ok = ok and good
        lines.append(f"{'ok  ' if good else 'FAIL'} {names[name]}: project vs official {worst[name]:.2g}, "
                     f"official rounding sensitivity {rounding[name]:.2g}, tolerance {limit:.2g}")
    lines.append("PASS" if ok else "FAIL")
    return ok, lines


# --------------------------------------------------------------------------- command line


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argument_parser(__doc__, "src/nti.py")
    add_world_arguments(parser, images=2)
    parser.add_argument("--tolerance", type=float, default=1e-4,
                        help="largest z_0, trajectory and mean seed difference, in standard deviations (default 1e-4)")
    parser.add_argument("--embed-tolerance", type=float, default=1e-2,
                        help="largest embedding difference, as a share of the official optimisation's displacement "
                             "(default 1e-2)")
    return check_world_arguments(parser, parser.parse_args(argv))


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        nti, world, model = open_world_check(args, OFFICIAL_FILES, "the official null-text code", import_official)
    except CheckError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    images01, pil, prompts = reference_images(world, args.images, args.reference_seed)
    device = world.profile.resolve_device()
    pipe = official_pipe(model, device)
    z_0s = [official_z0(pipe, image) for image in pil]
    theirs = official_nti(nti, pipe, z_0s, prompts, device)
    theirs_rounded = official_nti(nti, pipe, [rounding_perturbed(z_0s[0], ROUNDING_SEED)], prompts[:1], device)
    ours = project_nti(world.load_model(model), images01, prompts)

    init = empty_embedding(pipe)
    rows = compare(prompts, ours, theirs, init)
    rounding = compare_one(theirs_rounded, theirs, 0, 0, init)
    print_table(rows, rounding)
    ok, lines = verdict(rows, rounding, args.tolerance, args.embed_tolerance)
    print("\n".join(lines))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
