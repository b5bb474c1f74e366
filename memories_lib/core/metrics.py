"""The paper's metrics: seed likelihood (NLL), PSNR, relative distance of NLL sets, seed geometry.

Everything here is a pure function of its inputs: tensors or arrays in, floats, tensors or small
dataclasses out. Randomness (the N(0, I) reference sample, the bootstrap) comes only from a
``torch.Generator`` passed in by the caller. Likelihoods are computed in float64: the NLL of a
Stable Diffusion seed is about 23,000 and differences of a few units matter.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence, Union

import numpy as np
import torch
from scipy.stats import wasserstein_distance

ArrayLike = Union[torch.Tensor, np.ndarray, Sequence[float]]

LOG_2PI = math.log(2 * math.pi)


# --------------------------------------------------------------------------- helpers


def _as_1d(values: ArrayLike, name: str) -> np.ndarray:
    """A non-empty, finite, 1-D float64 array, or a ValueError naming ``name``."""
    if isinstance(values, torch.Tensor):
        values = values.detach().to("cpu", torch.float64).numpy()
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{name} must be a 1-D set of values, got shape {array.shape}")
    if array.size == 0:
        raise ValueError(f"{name} is empty")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return array


def _as_rows(x: torch.Tensor | np.ndarray, name: str) -> torch.Tensor:
    """Samples along dim 0, each flattened: a float64 (n, D) tensor on the CPU."""
    t = torch.as_tensor(x).detach().to("cpu", torch.float64)
    if t.ndim < 2:
        raise ValueError(f"{name} must have a batch dimension (n, ...), got shape {tuple(t.shape)}")
    return t.reshape(t.shape[0], -1)


def _positive_int(value: int, name: str) -> int:
    if isinstance(value, bool) or int(value) != value or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


# --------------------------------------------------------------------------- NLL of seeds


def nll(seeds: torch.Tensor) -> torch.Tensor:
    """Negative log-likelihood of each seed under N(0, I), in float64.

    For a sample z with d entries (all dimensions after the batch dimension 0):
    ``NLL(z) = -sum_i log N(z_i; 0, 1) = 0.5 * sum_i z_i^2 + d/2 * log(2 pi)``.
    Returns a (B,) float64 tensor on the CPU.
    """
    if not isinstance(seeds, torch.Tensor):
        raise TypeError(f"seeds must be a torch.Tensor, got {type(seeds).__name__}")
    if seeds.ndim < 2:
        raise ValueError(
            f"seeds must be a batch (B, ...) with the samples along dim 0, got shape {tuple(seeds.shape)}; "
            "use seeds[None] for a single seed"
        )
    z = seeds.detach().to("cpu", torch.float64).reshape(seeds.shape[0], -1)
    d = z.shape[1]
    return 0.5 * (z * z).sum(dim=1) + 0.5 * d * LOG_2PI


@dataclass(frozen=True)
class NLLGaussian:
    """The normal approximation (CLT) of the NLL of a N(0, I) seed of dimension d."""

    d: int
    mean: float
    std: float

    def __iter__(self):  # allows ``mean, std = nll_gaussian(d)``
        return iter((self.mean, self.std))


def nll_gaussian(d: int) -> NLLGaussian:
    """Mean and standard deviation of NLL(z) for z ~ N(0, I_d).

    ``0.5 * sum z_i^2`` is half a chi-square variable with d degrees of freedom, so
    ``mean = d/2 * log(2 pi) + d/2`` and ``variance = d/2`` (about 23,248 +- 90.5 for d = 16384).
    """
    d = _positive_int(d, "d")
    return NLLGaussian(d=d, mean=0.5 * d * LOG_2PI + 0.5 * d, std=math.sqrt(0.5 * d))


def reference_nll(d: int, n: int, generator: torch.Generator, chunk: int = 256) -> np.ndarray:
    """NLLs of ``n`` samples z ~ N(0, I_d) drawn from ``generator``: a float64 array of shape (n,).

    Samples are drawn in float32, like seeds, ``chunk`` rows at a time on the generator's device,
    so memory stays bounded and the result is a deterministic function of (d, n, chunk, the
    generator's state).
    """
    d, n, chunk = _positive_int(d, "d"), _positive_int(n, "n"), _positive_int(chunk, "chunk")
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    out = []
    for start in range(0, n, chunk):
        z = torch.randn((min(chunk, n - start), d), generator=generator, device=generator.device)
        out.append(nll(z).numpy())
    return np.concatenate(out)


# --------------------------------------------------------------------------- PSNR


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio per image, for images in [0, 1].

    ``PSNR = 10 * log10(1 / MSE)``, the MSE taken over all pixels and channels of an image.
    Batches (B, C, H, W) give a (B,) float64 tensor; a single (C, H, W) image a 0-d tensor.
    Identical images (MSE 0) give ``inf``.
    """
    a = torch.as_tensor(a).detach().to("cpu", torch.float64)
    b = torch.as_tensor(b).detach().to("cpu", torch.float64)
    if a.shape != b.shape:
        raise ValueError(f"psnr needs images of the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.ndim not in (3, 4) or a.numel() == 0:
        raise ValueError(f"psnr expects (C, H, W) or (B, C, H, W) images, got shape {tuple(a.shape)}")
    for name, x in (("a", a), ("b", b)):
        if torch.isnan(x).any() or x.min() < 0 or x.max() > 1:
            raise ValueError(
                f"psnr expects images in [0, 1]; {name} spans [{x.min().item():.4g}, {x.max().item():.4g}]"
                " (convert from [-1, 1] or [0, 255] first)"
            )
    single = a.ndim == 3
    if single:
        a, b = a[None], b[None]
    mse = ((a - b) ** 2).reshape(a.shape[0], -1).mean(dim=1)
    value = 10 * torch.log10(1.0 / mse)  # MSE 0 -> 1/0 = inf -> inf dB
    return value[0] if single else value


# --------------------------------------------------------------------------- distances of NLL sets


def emd(x: ArrayLike, y: ArrayLike) -> float:
    """Exact earth mover's distance (1-Wasserstein) of two 1-D samples.

    ``EMD = integral |F_x(t) - F_y(t)| dt`` over the empirical CDFs (scipy.stats.wasserstein_distance).
    """
    return float(wasserstein_distance(_as_1d(x, "x"), _as_1d(y, "y")))


def gaussian_w2(x: ArrayLike, y: ArrayLike) -> float:
    """Squared 2-Wasserstein distance of the Gaussians fitted to two 1-D samples.

    ``W2^2 = (mu_x - mu_y)^2 + (sigma_x - sigma_y)^2`` with population (ddof = 0) standard deviations.
    This is what the official Memories code computes (and calls EMD): it compares each NLL set with
    the NLLs of 50 *unseeded* N(0, I) samples this way and never forms the ratio d(E, R) itself.
    """
    x, y = _as_1d(x, "x"), _as_1d(y, "y")
    return float((x.mean() - y.mean()) ** 2 + (x.std() - y.std()) ** 2)


DISTANCES: dict[str, Callable[[ArrayLike, ArrayLike], float]] = {"emd": emd, "w2": gaussian_w2}


def _distance_fn(distance: str) -> Callable[[ArrayLike, ArrayLike], float]:
    try:
        return DISTANCES[distance]
    except (KeyError, TypeError):
        raise ValueError(f"unknown distance {distance!r}; choose one of {sorted(DISTANCES)}") from None


def relative_distance(nll_e: ArrayLike, nll_r: ArrayLike, nll_n: ArrayLike, distance: str = "emd") -> float:
    """The paper's relative distance ``d(E, R) = D(E, N) / D(R, N)``.

    E: NLLs of the erased concept's seeds; R: NLLs of reference (unrelated) images' seeds;
    N: NLLs of N(0, I) samples; D: ``"emd"`` (exact 1-D EMD) or ``"w2"`` (the official code's
    Gaussian squared W2). About 1 means the erased concept's seeds are as likely as any image's.
    """
    fn = _distance_fn(distance)
    e, r, n = _as_1d(nll_e, "nll_e"), _as_1d(nll_r, "nll_r"), _as_1d(nll_n, "nll_n")
    denominator = fn(r, n)
    if denominator == 0:
        raise ValueError(f"the reference set R is at {distance} distance 0 from N: the ratio is undefined")
    return fn(e, n) / denominator


@dataclass(frozen=True)
class RelativeDistance:
    """d(E, R) with a percentile-bootstrap confidence interval [low, high] at ``level``."""

    value: float
    low: float
    high: float
    distance: str
    n_boot: int
    level: float = 0.95
    n_reference: int = 0


def relative_distance_ci(
    nll_e: ArrayLike,
    nll_r: ArrayLike,
    d: int,
    n_reference: int,
    generator: torch.Generator,
    n_boot: int = 1000,
    level: float = 0.95,
    distance: str = "emd",
) -> RelativeDistance:
    """Relative distance against a seeded N(0, I_d) reference sample, with a bootstrap interval.

    The point estimate uses E, R and ``n_reference`` reference NLLs drawn from ``generator``.
    The interval is the percentile bootstrap: ``n_boot`` times, E, R and the reference sample are
    each resampled with replacement and the ratio recomputed; ``low`` and ``high`` are the
    ``(1 - level)/2`` and ``(1 + level)/2`` quantiles of those ratios. The resampling indices come
    from the same generator, so a seeded generator gives a deterministic result.

    Caveat: when R lies close to N, D(R, N) is small and resampling adds noise that inflates it,
    so the bootstrap ratios lean low and the point estimate can sit near the top of the interval.
    """
    fn = _distance_fn(distance)
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    n_boot = _positive_int(n_boot, "n_boot")
    e, r = _as_1d(nll_e, "nll_e"), _as_1d(nll_r, "nll_r")
    ref = reference_nll(d, n_reference, generator)
    value = relative_distance(e, r, ref, distance)

    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device).item())
    rng = np.random.default_rng(seed)
    ratios = np.empty(n_boot)
    for i in range(n_boot):
        eb, rb, nb = (rng.choice(s, s.size) for s in (e, r, ref))
        denominator = fn(rb, nb)
        ratios[i] = fn(eb, nb) / denominator if denominator > 0 else np.inf
    low, high = np.quantile(ratios, [(1 - level) / 2, (1 + level) / 2])
    return RelativeDistance(
        value=float(value),
        low=float(low),
        high=float(high),
        distance=distance,
        n_boot=n_boot,
        level=float(level),
        n_reference=int(n_reference),
    )


# --------------------------------------------------------------------------- seed geometry


def cosine_distance(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Cosine distances between every row of ``a`` and every row of ``b``, each sample flattened.

    ``D[i, j] = 1 - <a_i, b_j> / (|a_i| |b_j|)``: a (n, m) float64 tensor with values in [0, 2].
    """
    a, b = _as_rows(a, "a"), _as_rows(b, "b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"samples of a and b differ in size: {a.shape[1]} vs {b.shape[1]} entries")
    na, nb = a.norm(dim=1), b.norm(dim=1)
    if (na == 0).any() or (nb == 0).any():
        raise ValueError("the cosine distance of an all-zero sample is undefined")
    return (1 - (a / na[:, None]) @ (b / nb[:, None]).T).clamp(0, 2)


def pairwise_cosine_distances(x: torch.Tensor | np.ndarray) -> torch.Tensor:
    """The n(n-1)/2 cosine distances between distinct rows of ``x`` (pairs i < j, row-major order)."""
    full = cosine_distance(x, x)
    n = full.shape[0]
    if n < 2:
        raise ValueError(f"pairwise distances need at least 2 samples, got {n}")
    i, j = torch.triu_indices(n, n, offset=1)
    return full[i, j]


def euclidean_distance(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Euclidean distances ``|a_i - b_j|`` between every row of ``a`` and of ``b`` (flattened): (n, m) float64."""
    a, b = _as_rows(a, "a"), _as_rows(b, "b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"samples of a and b differ in size: {a.shape[1]} vs {b.shape[1]} entries")
    return torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist")


def coefficient_of_variation(x: ArrayLike) -> float:
    """``std / mean`` of a 1-D sample, with the population standard deviation (ddof = 0)."""
    x = _as_1d(x, "x")
    mean = x.mean()
    if mean == 0:
        raise ValueError("the coefficient of variation of a zero-mean sample is undefined")
    return float(x.std() / mean)
