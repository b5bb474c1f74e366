"""Check that ``memories_lib.inversion``'s ReNoise gives the official code's seeds on the mini shapes world.

The docstring of :mod:`memories_lib.inversion.renoise` says that its default configuration is the
ReNoise run of the official "Memories of Forgotten Concepts" code, and that on the mini world the
official code gives the same seeds, NaN included. This script checks that claim against a checkout
of the official repository (https://github.com/matanr/Memories_of_Forgotten_Concepts):

1. it imports the official ReNoise code from ``--official DIR`` (``DIR/src`` put on ``sys.path``;
   nothing of it is copied into this project) and runs it the way the official Memories scripts
   do (``store_z_T_of_ref_imgs_from_encoder`` of ``src/memory_of_an_ablated_concept.py``):
   ``get_pipes(Model_Type.SD14, Scheduler_Type.DDIM)`` for the pipelines, ``RunConfig`` with 50
   inversion and 50 inference steps, 5 renoise steps, no noise correction and seed 42, and
   ``renoise.main.run`` on each image (a PIL image) with its caption;
2. it inverts the same images with the same captions and model with the project's
   ``invert(..., method="renoise")``, whose default configuration is that run;
3. it runs the official code again with seed 43, twice: from the image (a new posterior sample
   z_0 and new auto-correlation shifts) and from the seed-42 run's z_0 (``run(..., latents=z_0)``,
   new shifts only). These are the official code's own seed-to-seed spreads, which tell how small
   a difference has to be to count as "the same seeds";
4. it prints, per image, whether each seed z_T is finite and, for finite ones, the mean and max
   absolute difference between the project's seed and the official one in units of the official
   seed's standard deviation, the mean differences of the official seeds 43 and 42 (from the
   image, and from the same z_0), and the largest difference of the posterior samples z_0 the
   inversions start from.

It exits with 0 when the NaN patterns of the project and the official run agree, every finite
seed's mean absolute difference and every z_0's largest one are within ``--tolerance`` (in
standard deviations; the spreads are means too), and that tolerance
is at most a tenth of both official seed-to-seed spreads; with 1 otherwise, and with 2 (before
loading anything heavy) when ``--official`` is not a checkout of the official code.

The two runs differ from the official scripts in the model and the images only:

* ``get_pipes`` loads the Stable Diffusion 1.4 hub model by the name that
  ``renoise.utils.enums_utils.model_type_to_model_name`` gives; that lookup is pointed at the
  world's own model folder (diffusers layout), and the whole model (VAE, tokenizer and scheduler
  too) is the world's. The official scripts then put the erased model's UNet and text encoder
  into the pipelines; here they are already the model's own.
* The images are the world's reference set (rendered 32x32, 8-bit), at their own size: the
  official ``.resize((512, 512))`` is Stable Diffusion's input size.
* The official reconstruction after the inversion (``do_reconstruction=True``) is skipped: it
  starts from a copy of z_T and draws from no generator of the inversion, so z_T is the same.

Versions: the official code pins diffusers 0.24 and transformers 4.46; it runs unchanged with
the project's diffusers 0.42.1 and transformers 5.x. The one shim: ``renoise/main.py`` imports
``pyrallis`` for the ``@pyrallis.wrap()`` of its command-line entry point, which is not called
here; where pyrallis is not installed, a stand-in whose ``wrap()`` is the identity decorator
takes its place.

Run it (one thread is plenty; the mini world must be trained and in the cache)::

    git clone https://github.com/matanr/Memories_of_Forgotten_Concepts /path/to/official
    MEMORIES_CACHE=/path/to/cache MEMORIES_THREADS=1 .venv/bin/python tools/check_official_renoise.py \\
        --official /path/to/official --images 8

Found (official commit 1c445143509e94c36f505a460411d3fd10679489; CPU, one thread; diffusers 0.42.1,
transformers 5.23, torch 2.13): on the first 32 reference images of the mini world (seed 0) the
project's seeds are the official ones to a mean absolute difference of 1.4e-5 official standard
deviations (worst image 9e-5, largest entry 4.9e-4), z_0 to 7e-5; 4 of the 32 seeds are NaN in
both, the same images. The official code's own spread is far larger: seed 43 against 42 differs by
0.74 standard deviations on average (dominated by the new posterior sample z_0), and seed 43 from
seed 42's z_0 (new auto-correlation shifts only) by 0.020 (first 8 images). Which images give NaN
depends on the seed too: with seed 43, 4 of the 32 are NaN, only one of them among seed 42's four;
from seed 42's z_0, 2 of the first 8 are NaN where seed 42 gives none.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from official_checkout import (CheckError, add_world_arguments, argument_parser, check_imported_from,
                               check_world_arguments, open_world_check, reference_images, stand_in,
                               use_official_source)

if TYPE_CHECKING:
    import torch

#: Files of the official repository that the check imports (paths under its ``src``).
OFFICIAL_FILES: tuple[str, ...] = (
    "renoise/main.py",
    "renoise/config.py",
    "renoise/eunms.py",
    "renoise/renoise_inversion.py",
    "renoise/utils/enums_utils.py",
    "renoise/pipes/sd_inversion_pipeline.py",
    "renoise/schedulers/ddim_scheduler.py",
)
#: The official Memories run's seed, and the second seed that measures the official seed-to-seed spread.
SEED, OTHER_SEED = 42, 43
#: The tolerance may be at most this share of the official seed-to-seed spread.
SPREAD_MARGIN = 10.0


@dataclass(frozen=True)
class Inversion:
    """Seeds z_T and the latents z_0 they were inverted from, (N, C, h, w), float32 on the CPU."""

    seeds: "torch.Tensor"
    latents: "torch.Tensor"


@dataclass(frozen=True)
class Row:
    """One image's comparison; differences in units of the official seed's (or z_0's) standard deviation."""

    caption: str
    finite: tuple[bool, bool, bool, bool]  # project, official seed 42, seed 43, seed 43 from the same z_0
    diff_mean: float | None  # project vs official 42 (None unless both are finite)
    diff_max: float | None
    spread: float | None  # official 43 vs 42, mean (None unless both are finite)
    spread_same_z0: float | None  # official 43 from seed 42's z_0 vs 42, mean (None unless both are finite)
    z0_max: float  # project vs official 42, max over z_0's entries


# --------------------------------------------------------------------------- the official code


def import_official(src: Path) -> types.SimpleNamespace:
    """The official modules the run needs, imported from ``src`` (bytecode is not written into the checkout)."""
    # Shim: renoise/main.py imports pyrallis only to decorate its command-line main(), never called here.
    stand_in("pyrallis", wrap=lambda *args, **kwargs: (lambda function: function))
    use_official_source(src)
    from renoise import config, eunms, main
    from renoise.utils import enums_utils

    check_imported_from(main, src)
    return types.SimpleNamespace(config=config, eunms=eunms, main=main, enums_utils=enums_utils)


def official_pipes(official: types.SimpleNamespace, model: Path, device: str) -> tuple:
    """The official inversion and inference pipelines (``get_pipes``), loading ``model`` instead of the hub's SD 1.4."""
    import diffusers

    official.enums_utils.model_type_to_model_name = lambda model_type: str(model)
    eunms = official.eunms
    diffusers.utils.logging.set_verbosity_error()  # get_pipes' warnings about the absent safety checker
    pipe_inversion, pipe_inference = official.enums_utils.get_pipes(
        eunms.Model_Type.SD14, eunms.Scheduler_Type.DDIM, device=device)
    pipe_inversion.set_progress_bar_config(disable=True)
    return pipe_inversion, pipe_inference


def official_renoise(official: types.SimpleNamespace, pipes: tuple, images: Sequence, prompts: Sequence[str],
                     seed: int, latents: "torch.Tensor | None" = None) -> Inversion:
    """Each PIL image inverted by the official ``run`` with the official Memories RunConfig and ``seed``.

    ``latents`` (N, C, h, w): start from these z_0 instead of encoding the images (``run``'s own
    ``latents`` argument; the generator then gives only the forward noise and the shifts).
    """
    import torch

    eunms = official.eunms
    config = official.config.RunConfig(
        model_type=eunms.Model_Type.SD14,
        num_inference_steps=50,
        num_inversion_steps=50,
        num_renoise_steps=5,
        scheduler_type=eunms.Scheduler_Type.DDIM,
        perform_noise_correction=False,
        seed=seed,
    )
    pipe_inversion, pipe_inference = pipes
    z_Ts, z_0s = [], []
    for i, (image, prompt) in enumerate(zip(images, prompts)):
        start = None if latents is None else latents[i:i + 1].clone()
        with contextlib.redirect_stdout(io.StringIO()):  # run() prints "Inverting..."
            _, z_T, _, trajectory = official.main.run(init_image=image, prompt=prompt, cfg=config,
                                                      pipe_inversion=pipe_inversion, pipe_inference=pipe_inference,
                                                      latents=start, do_reconstruction=False)
        z_Ts.append(z_T.detach().float().cpu())
        z_0s.append(trajectory[0].detach().float().cpu())
    return Inversion(torch.cat(z_Ts), torch.cat(z_0s))


# --------------------------------------------------------------------------- the project


def project_renoise(ldm, images01: "torch.Tensor", prompts: Sequence[str]) -> Inversion:
    """The images inverted by the project's ReNoise at its default configuration (the official run)."""
    from memories_lib.inversion import invert

    result = invert(ldm, images01, list(prompts), method="renoise", regenerate=False, progress=False)
    return Inversion(result.seeds.float().cpu(), result.latents.float().cpu())


# --------------------------------------------------------------------------- comparison


def _finite(x: "torch.Tensor") -> bool:
    return bool(x.isfinite().all())


def compare(prompts: Sequence[str], project: Inversion, official: Inversion, other: Inversion,
            other_same_z0: Inversion) -> list[Row]:
    """Per image: finiteness of the four seeds, the seed differences and the z_0 difference."""
    rows = []
    for i, caption in enumerate(prompts):
        theirs = official.seeds[i]
        seeds = (project.seeds[i], theirs, other.seeds[i], other_same_z0.seeds[i])
        finite = tuple(_finite(seed) for seed in seeds)
        std = theirs.std()
        diff = (seeds[0] - theirs).abs() / std if finite[0] and finite[1] else None
        spread, spread_same_z0 = (float(((seeds[k] - theirs).abs() / std).mean()) if finite[1] and finite[k] else None
                                  for k in (2, 3))
        z0_max = float(((project.latents[i] - official.latents[i]).abs() / official.latents[i].std()).max())
        rows.append(Row(caption, finite, None if diff is None else float(diff.mean()),
                        None if diff is None else float(diff.max()), spread, spread_same_z0, z0_max))
    return rows


def _number(x: float | None) -> str:
    return "-" if x is None else f"{x:.2e}"


def print_table(rows: Sequence[Row]) -> None:
    """The per-image table: finiteness and differences in standard deviations (see the legend it prints)."""
    yes_no = {True: "yes", False: "NaN"}
    print("finite: project / official 42 / official 43 / official 43 from the same z_0; diff: project vs official "
          "42, mean and max\n43 vs 42, same z_0: the official seed-to-seed spreads (means); all in official std units")
    print(f"{'image':>5}  {'finite':>15}  {'diff mean':>9}  {'diff max':>9}  {'43 vs 42':>9}  {'same z_0':>9}  "
          f"{'z_0 diff':>9}  caption")
    for i, row in enumerate(rows):
        finite = "/".join(yes_no[f] for f in row.finite)
        print(f"{i:>5}  {finite:>15}  {_number(row.diff_mean):>9}  {_number(row.diff_max):>9}  "
              f"{_number(row.spread):>9}  {_number(row.spread_same_z0):>9}  {_number(row.z0_max):>9}  {row.caption}")


def verdict(rows: Sequence[Row], tolerance: float) -> tuple[bool, list[str]]:
    """Whether the project's seeds are the official ones, and the summary lines that say why."""
    n = len(rows)
    nan = [sum(not row.finite[k] for row in rows) for k in range(4)]
    same_pattern = all(row.finite[0] == row.finite[1] for row in rows)
    diffs = [row for row in rows if row.diff_mean is not None]
    z0_max = max(row.z0_max for row in rows)
    lines = [f"non-finite seeds of {n}: project {nan[0]}, official {nan[1]}, official seed {OTHER_SEED} {nan[2]} "
             f"(from the same z_0: {nan[3]}); the same images in the project and the official run: "
             f"{'yes' if same_pattern else 'NO'}"]
    ok = same_pattern and z0_max <= tolerance and bool(diffs)
    if diffs:
        diff_mean = sum(row.diff_mean for row in diffs) / len(diffs)
        worst_mean = max(row.diff_mean for row in diffs)
        diff_max = max(row.diff_max for row in diffs)
        lines.append(f"project vs official ({len(diffs)} finite): mean abs diff/std {diff_mean:.2g} "
                     f"(worst image {worst_mean:.2g}), max {diff_max:.2g}")
        ok = ok and worst_mean <= tolerance
    else:
        lines.append("no image has finite seeds on both sides: nothing to compare")
    spreads_of = {"": [row.spread for row in rows], " from the same z_0": [row.spread_same_z0 for row in rows]}
    for name, spreads in spreads_of.items():
        spreads = [spread for spread in spreads if spread is not None]
        if not spreads:
            lines.append(f"official seed {OTHER_SEED}{name}: no finite seeds, no spread to compare with")
            ok = False
            continue
        spread = sum(spreads) / len(spreads)
        lines.append(f"official seed {OTHER_SEED}{name} vs {SEED} ({len(spreads)} finite): "
                     f"mean abs diff/std {spread:.3g}")
        ok = ok and tolerance * SPREAD_MARGIN <= spread
    lines.append(f"z_0 (posterior sample): max abs diff/std {z0_max:.2g}")
    lines.append(f"tolerance {tolerance:g} std (at most 1/{SPREAD_MARGIN:g} of each official seed-to-seed spread): "
                 f"{'PASS' if ok else 'FAIL'}")
    return ok, lines


# --------------------------------------------------------------------------- command line


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argument_parser(__doc__, "src/renoise")
    add_world_arguments(parser, images=8)
    parser.add_argument("--tolerance", type=float, default=1e-3,
                        help="largest mean seed difference (and largest z_0 difference), in standard deviations, "
                             "that counts as equal (default 1e-3)")
    return check_world_arguments(parser, parser.parse_args(argv))


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        official, world, model = open_world_check(args, OFFICIAL_FILES, "the official ReNoise code", import_official)
    except CheckError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    images01, pil, prompts = reference_images(world, args.images, args.reference_seed)
    device = world.profile.resolve_device()
    pipes = official_pipes(official, model, device)
    theirs = official_renoise(official, pipes, pil, prompts, SEED)
    theirs_other = official_renoise(official, pipes, pil, prompts, OTHER_SEED)
    theirs_other_same_z0 = official_renoise(official, pipes, pil, prompts, OTHER_SEED, latents=theirs.latents)
    ours = project_renoise(world.load_model(model), images01, prompts)

    rows = compare(prompts, ours, theirs, theirs_other, theirs_other_same_z0)
    print_table(rows)
    ok, lines = verdict(rows, args.tolerance)
    print("\n".join(lines))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
