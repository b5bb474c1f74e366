"""Check that the project's "official" relative distance is the official code's computation.

Chapter 4 of the book and :func:`memories_lib.core.metrics.gaussian_w2` say that the official
"Memories of Forgotten Concepts" code compares NLL sets by the squared 2-Wasserstein distance of
the Gaussians fitted to them, ``(mu_x - mu_y)^2 + (sigma_x - sigma_y)^2`` with population standard
deviations (it calls it EMD), each set against the NLLs of 50 N(0, I) seeds, and never forms the
ratio itself. This script checks that against a checkout of the official repository
(https://github.com/matanr/Memories_of_Forgotten_Concepts):

1. it imports ``src/analyze_latents.py`` from ``--official DIR`` (nothing of it is copied into this
   project) and calls its ``analyze_goal_reference_normal_nll_values(nll_e, nll_r)``, the function
   that gives the official ``emd_scores`` (``goal_and_normal_emd_score``: E against N,
   ``source_and_normal_emd_score``: R against N, ``goal_and_source_emd_score``: E against R; its
   ``calculate_emd`` is ``(m1 - m2)^2 + v1 + v2 - 2 sqrt(v1 v2)`` with ``np.var``), on several
   seeded sets E and R of NLLs (cases below);
2. the 50 N(0, I) seeds the official function draws itself (``torch.randn(1, 4, 64, 64)``, 50 times,
   unseeded) are handed to it by the check: drawn beforehand from a seeded generator and fed through
   a stand-in for the ``torch`` name of ``analyze_latents`` (see Shims), so that both sides see the
   same N. The official function turns them into NLLs with its ``tensor_to_nll`` (float32 sum of
   ``Normal(0, 1).log_prob``);
3. it computes the same three distances with the project's :func:`~memories_lib.core.metrics.gaussian_w2`,
   the ratio E/R with :func:`~memories_lib.core.metrics.relative_distance` (``distance="w2"``) and
   with :meth:`~memories_lib.core.metrics.NLLReference.w2` (what ``rd_w2`` and ``rd_w2_50`` use), twice:
   (a) from the official NLLs of the N seeds, so that the inputs are identical, and (b) end to end,
   from the N seeds through the project's :func:`~memories_lib.core.metrics.nll` (float64);
4. it calls the official function a second time with another 50 N(0, I) seeds: the official ratio's
   own draw-to-draw spread, the scale a difference is read against.

Tolerances. (a) identical inputs: the two formulas differ only in float64 rounding (the official
one subtracts ``2 sqrt(v1 v2)`` from ``v1 + v2``, NLL variances being ~8,000 at d = 16384), so a
distance may differ by at most ``--tolerance`` (1e-9) times its scale ``(m1 - m2)^2 + v1 + v2``,
and a ratio by 1e-9 relative. (b) end to end: the official NLL is a float32 sum of 16,384 terms;
its rounding error stays below ``sqrt(d) * eps32 * |NLL|`` (the random-walk bound: 0.35 at NLL
23,000, 4e-3 of the NLL's standard deviation sqrt(d/2) = 90.5), and each seed's NLL must agree
within that bound; a ratio, which amplifies these errors most when W2(R, N) is small, may then
differ by at most a thousandth of the official ratio's own draw-to-draw spread in the same case
(the same E and R against a second draw of 50 N(0, I) seeds).

Cases (d = 16384, the official N's shape; NLLs in units of sqrt(d/2) about the N(0, I) mean):
``far``: E 40 NLLs at +8 +- 2, R 60 at +1 +- 1.2; ``near``: R drawn as genuine N(0, I) NLLs (the
denominator W2(R, N) is then small, sampling noise only); ``equal-spread``: E and R with the
standard deviation of N(0, I) NLLs (the official formula's cancellation); ``below``: E below the
N(0, I) band (NLL -3 +- 0.5). The mini world's seeds (d = 256) cannot be fed to the official
function as they are: it compares any set with N(0, I) seeds of SD's latent shape (1, 4, 64, 64),
d = 16384, hard-coded; the project uses the world's own d for N.

Shims: ``analyze_latents.py`` imports ``sklearn`` (TSNE, cosine_similarity) and ``torchvision`` at
the top for other functions; where they are not installed, empty stand-ins take their place.
Its ``torch.randn(...).to('cuda')`` is served by a stand-in ``torch`` (in that module only) whose
``randn`` returns the pre-drawn seeds, checking the requested shape, and whose ``.to`` keeps them
on the CPU. Matplotlib runs with the Agg backend and no plot is saved (``plots_dir=None``).

Run it (seconds; no model, no world)::

    git clone https://github.com/matanr/Memories_of_Forgotten_Concepts /path/to/official
    .venv/bin/python tools/check_official_distance.py --official /path/to/official

It exits with 0 when every check passes, 1 when one fails, and 2 (before any computation) when
``--official`` is not a checkout of the official code.

Found (official commit 1c445143509e94c36f505a460411d3fd10679489; CPU, torch 2.13): on identical
inputs the project's W2 distances are the official ones to 2.1e-16 of their scale and its ratios
(``relative_distance(..., "w2")``, ``NLLReference.w2``, the quotient of ``gaussian_w2``) to 2e-14
relative; end to end, the project's float64 NLLs of the same N seeds differ from the official
float32 ones by at most 0.008 of the float32 bound, and the ratios by 3.5e-6 to 8.5e-5 relative
(the largest, 8.5e-5, where R is genuine N(0, I) NLLs and the ratio is 12,910), at most 9.2e-5 of
the official ratio's own draw-to-draw spread, which is 56% to 131% between two draws of 50 N(0, I)
seeds. PASS: the project computes the official distance.
"""

from __future__ import annotations

import argparse
import math
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from official_checkout import (CheckError, argument_parser, check_imported_from, official_commit, official_source,
                               stand_in, use_official_source)

#: Files of the official repository that the check imports (paths under its ``src``).
OFFICIAL_FILES: tuple[str, ...] = ("analyze_latents.py",)
#: The official N(0, I) sample: 50 seeds of SD's latent shape (analyze_latents.py).
OFFICIAL_SAMPLES, OFFICIAL_SHAPE = 50, (1, 4, 64, 64)
D = math.prod(OFFICIAL_SHAPE)
#: Seeds of the two N(0, I) samples fed to the official function, and of the cases' E and R.
N_SEED, OTHER_N_SEED, CASE_SEED = 0, 1, 2
#: End to end, a ratio may differ by at most this share of the official draw-to-draw spread of its case.
SPREAD_MARGIN = 1000.0
#: float32's machine epsilon.
EPS32 = 2.0 ** -23
#: The official emd_scores keys, as (key, first set, second set).
SCORES = (("goal_and_normal_emd_score", "e", "n"), ("source_and_normal_emd_score", "r", "n"),
          ("goal_and_source_emd_score", "e", "r"))


@dataclass(frozen=True)
class Case:
    """One pair of NLL sets E, R: sizes and (mean, std) in units of sqrt(d/2) about the N(0, I) mean (None: genuine)."""

    name: str
    e: tuple[int, float, float]
    r: tuple[int, float, float] | None


CASES = (
    Case("far", (40, 8.0, 2.0), (60, 1.0, 1.2)),
    Case("near", (40, 8.0, 2.0), None),
    Case("equal-spread", (40, 4.0, 1.0), (60, 1.0, 1.0)),
    Case("below", (40, -3.0, 0.5), (60, 1.0, 1.2)),
)


@dataclass(frozen=True)
class Row:
    """One case's comparison."""

    case: str
    w2_diff: float  # largest |project - official| / scale over the three distances, identical inputs
    ratio: float  # the official ratio E/R
    ratio_diff: float  # largest relative difference of the project's ratios (three ways), identical inputs
    ratio_diff_e2e: float  # the same, end to end (project NLLs of the seeds)
    spread: float  # |official ratio with the other N sample - official ratio| / official ratio


# --------------------------------------------------------------------------- the official code


class _Seeds:
    """A stand-in for ``torch`` in ``analyze_latents``: ``randn(*shape)`` hands out pre-drawn seeds in turn."""

    def __init__(self, seeds):
        self.seeds, self.given = seeds, 0

    def randn(self, *shape):
        if tuple(shape) != OFFICIAL_SHAPE or self.given >= len(self.seeds):
            raise RuntimeError(f"the official code asked for torch.randn{shape} (seed {self.given + 1}); "
                               f"the check has {len(self.seeds)} of shape {OFFICIAL_SHAPE}")
        seed = self.seeds[self.given:self.given + 1]
        self.given += 1
        return types.SimpleNamespace(to=lambda *args, **kwargs: seed)  # .to('cuda'): stays on the CPU


def import_official(src: Path) -> types.ModuleType:
    """``analyze_latents`` imported from ``src`` (bytecode is not written into the checkout)."""
    import matplotlib

    matplotlib.use("Agg")
    # Shims: analyze_latents.py imports these at the top for functions the check does not call.
    stand_in("sklearn.manifold", TSNE=None)
    stand_in("sklearn.metrics.pairwise", cosine_similarity=None)
    stand_in("torchvision")
    use_official_source(src)
    import analyze_latents

    check_imported_from(analyze_latents, src)
    return analyze_latents


def official_scores(official: types.ModuleType, nll_e, nll_r, seeds) -> tuple[dict[str, float], list[float]]:
    """The official emd_scores of E and R against the N(0, I) ``seeds`` (50, 4, 64, 64), and the N NLLs it used."""
    real_torch, stand_in_torch = official.torch, _Seeds(seeds)
    nlls: list[float] = []
    real_nll = official.tensor_to_nll

    def recording_nll(z):  # the official tensor_to_nll, its values kept for the end-to-end comparison
        value = real_nll(z)
        nlls.append(value)
        return value

    official.torch, official.tensor_to_nll = stand_in_torch, recording_nll
    try:
        scores = official.analyze_goal_reference_normal_nll_values(list(nll_e), list(nll_r))
    finally:
        official.torch, official.tensor_to_nll = real_torch, real_nll
    if stand_in_torch.given != OFFICIAL_SAMPLES:
        raise RuntimeError(f"the official code drew {stand_in_torch.given} seeds, not {OFFICIAL_SAMPLES}")
    return {key: float(value) for key, value in scores.items()}, nlls


# --------------------------------------------------------------------------- inputs and the project


def draw_seeds(seed: int):
    """``OFFICIAL_SAMPLES`` N(0, I) seeds of the official shape, float32, from a generator seeded with ``seed``."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    return torch.randn((OFFICIAL_SAMPLES, *OFFICIAL_SHAPE[1:]), generator=generator)


def draw_sets(case: Case, seed: int):
    """The case's NLL sets E and R (float64 arrays)."""
    import numpy as np
    import torch

    from memories_lib.core import metrics

    rng = np.random.default_rng(seed)
    law = metrics.nll_gaussian(D)

    def nlls(spec):
        n, mean, std = spec
        return law.mean + law.std * (mean + std * rng.standard_normal(n))

    e = nlls(case.e)
    r = nlls(case.r) if case.r is not None else metrics.reference_nll(D, 60, torch.Generator().manual_seed(seed))
    return e, r


def project_distances(e, r, n) -> tuple[dict[str, float], list[float]]:
    """The project's three W2 distances (as the official keys) and its ratio E/R three ways, against NLLs ``n``."""
    from memories_lib.core import metrics

    sets = {"e": e, "r": r, "n": n}
    scores = {key: metrics.gaussian_w2(sets[a], sets[b]) for key, a, b in SCORES}
    reference = metrics.NLLReference(n, D)
    ratios = [metrics.relative_distance(e, r, n, distance="w2"), reference.w2(e) / reference.w2(r),
              scores["goal_and_normal_emd_score"] / scores["source_and_normal_emd_score"]]
    return scores, ratios


def scale(x, y) -> float:
    """The size of the W2 terms of two sets, (m1 - m2)^2 + v1 + v2: what float64 rounding is relative to."""
    import numpy as np

    return float((np.mean(x) - np.mean(y)) ** 2 + np.var(x) + np.var(y))


# --------------------------------------------------------------------------- comparison


def compare(official: types.ModuleType) -> tuple[list[Row], float]:
    """Every case compared; also the largest NLL difference of the N seeds in units of its float32 bound."""
    import numpy as np

    from memories_lib.core import metrics

    seeds, other_seeds = draw_seeds(N_SEED), draw_seeds(OTHER_N_SEED)
    project_n = metrics.nll(seeds).numpy()
    rows, nll_excess = [], 0.0
    for k, case in enumerate(CASES):
        e, r = draw_sets(case, CASE_SEED + k)
        theirs, official_n = official_scores(official, e, r, seeds)
        theirs_other, _ = official_scores(official, e, r, other_seeds)
        official_n = np.asarray(official_n)
        bound = math.sqrt(D) * EPS32 * np.abs(official_n)
        nll_excess = max(nll_excess, float(np.max(np.abs(project_n - official_n) / bound)))
        ours, ratios = project_distances(e, r, official_n)
        _, ratios_e2e = project_distances(e, r, project_n)
        sets = {"e": e, "r": r, "n": official_n}
        w2_diff = max(abs(ours[key] - theirs[key]) / scale(sets[a], sets[b]) for key, a, b in SCORES)
        ratio = theirs["goal_and_normal_emd_score"] / theirs["source_and_normal_emd_score"]
        ratio_other = theirs_other["goal_and_normal_emd_score"] / theirs_other["source_and_normal_emd_score"]
        rows.append(Row(case.name, w2_diff, ratio, max(abs(x / ratio - 1) for x in ratios),
                        max(abs(x / ratio - 1) for x in ratios_e2e), abs(ratio_other / ratio - 1)))
    return rows, nll_excess


def print_table(rows: Sequence[Row]) -> None:
    """The per-case table (see the legend it prints)."""
    print("W2 diff: largest |project - official| / ((m1 - m2)^2 + v1 + v2) of the three distances, identical inputs;\n"
          "ratio: official W2(E, N) / W2(R, N); ratio diff: largest relative difference of the project's three ratios\n"
          "(identical inputs / end to end); draw spread: official ratio, other 50 N(0, I) seeds, relative change")
    print(f"{'case':>12}  {'W2 diff':>9}  {'ratio':>9}  {'ratio diff':>10}  {'end to end':>10}  {'draw spread':>11}")
    for row in rows:
        print(f"{row.case:>12}  {row.w2_diff:>9.1e}  {row.ratio:>9.4g}  {row.ratio_diff:>10.1e}  "
              f"{row.ratio_diff_e2e:>10.1e}  {row.spread:>11.3g}")


def verdict(rows: Sequence[Row], nll_excess: float, tolerance: float) -> tuple[bool, list[str]]:
    """Whether the project computes the official distance, and the summary lines that say why."""
    w2_diff = max(row.w2_diff for row in rows)
    ratio_diff = max(row.ratio_diff for row in rows)
    e2e = max(row.ratio_diff_e2e / row.spread for row in rows)
    checks = [
        (w2_diff <= tolerance, f"identical inputs: W2 distances within {w2_diff:.1e} of their scale "
                               f"(tolerance {tolerance:g})"),
        (ratio_diff <= tolerance, f"identical inputs: ratios within {ratio_diff:.1e} relative "
                                  f"(tolerance {tolerance:g})"),
        (nll_excess <= 1.0, f"NLLs of the N seeds, project (float64) vs official (float32): largest difference "
                            f"{nll_excess:.2g} of the float32 bound sqrt(d) eps32 |NLL|"),
        (e2e <= 1 / SPREAD_MARGIN, f"end to end: ratio differences at most {e2e:.2g} of the official "
                                   f"draw-to-draw spread of the same case (tolerance 1/{SPREAD_MARGIN:g})"),
    ]
    lines = [f"{'ok  ' if ok else 'FAIL'} {text}" for ok, text in checks]
    ok = all(ok for ok, _ in checks)
    lines.append("PASS" if ok else "FAIL")
    return ok, lines


# --------------------------------------------------------------------------- command line


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argument_parser(__doc__, "src/analyze_latents.py")
    parser.add_argument("--tolerance", type=float, default=1e-9,
                        help="largest W2 difference on identical inputs, relative to (m1 - m2)^2 + v1 + v2, "
                             "and largest relative difference of the ratio E/R (default 1e-9)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        src = official_source(args.official, OFFICIAL_FILES, "the official NLL analysis (analyze_latents.py)")
        official = import_official(src)
    except CheckError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"official code: {args.official} at commit {official_commit(args.official)}")
    print(f"N: {OFFICIAL_SAMPLES} N(0, I) seeds of shape {OFFICIAL_SHAPE} (seeds {N_SEED} and {OTHER_N_SEED}); "
          f"{len(CASES)} cases of E and R (seed {CASE_SEED} on)")
    rows, nll_excess = compare(official)
    print_table(rows)
    ok, lines = verdict(rows, nll_excess, args.tolerance)
    print("\n".join(lines))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
