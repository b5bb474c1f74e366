"""Metrics against closed forms and known cases."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from memories_lib.core.metrics import (
    NLLGaussian,
    NLLReference,
    coefficient_of_variation,
    cosine_distance,
    emd,
    euclidean_distance,
    gaussian_w2,
    nll,
    nll_gaussian,
    pairwise_cosine_distances,
    psnr,
    reference_nll,
    relative_distance,
    relative_distance_interval,
)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------- NLL


def test_nll_of_zero_seed_is_the_normalising_constant():
    d = 4 * 8 * 8
    out = nll(torch.zeros(2, 4, 8, 8))
    assert torch.allclose(out, torch.full((2,), d / 2 * math.log(2 * math.pi), dtype=torch.float64))


def test_nll_matches_scipy_logpdf_and_is_float64():
    z = torch.randn(3, 4, 5, 5, generator=gen(1))
    expected = -stats.norm.logpdf(z.double().numpy()).reshape(3, -1).sum(axis=1)
    out = nll(z)
    assert out.dtype == torch.float64 and out.shape == (3,)
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-12)


def test_nll_refuses_unbatched_input():
    with pytest.raises(ValueError, match="batch"):
        nll(torch.zeros(5))


def test_nll_gaussian_closed_form_for_sd14():
    g = nll_gaussian(16384)
    assert isinstance(g, NLLGaussian)
    assert g.mean == pytest.approx(8192 * math.log(2 * math.pi) + 8192)
    assert g.mean == pytest.approx(23247.89, abs=0.01)  # "about 23,248"
    assert g.std == pytest.approx(90.51, abs=0.01)
    mean, std = g
    assert (mean, std) == (g.mean, g.std)
    with pytest.raises(ValueError, match="positive"):
        nll_gaussian(0)


def test_reference_nll_mean_and_std_match_the_clt():
    d, n = 1024, 2000
    values = reference_nll(d, n, gen(0))
    g = nll_gaussian(d)
    assert values.shape == (n,)
    assert abs(values.mean() - g.mean) < 4 * g.std / math.sqrt(n)
    assert values.std() == pytest.approx(g.std, rel=0.1)


def test_reference_nll_is_deterministic_given_the_seed():
    a = reference_nll(64, 300, gen(5))
    assert np.array_equal(a, reference_nll(64, 300, gen(5)))
    assert not np.array_equal(a, reference_nll(64, 300, gen(6)))


# --------------------------------------------------------------------------- PSNR


def test_psnr_of_a_constant_offset_of_0_1_is_20_db():
    a = torch.full((2, 3, 8, 8), 0.5)
    np.testing.assert_allclose(psnr(a, a + 0.1).numpy(), [20.0, 20.0], atol=1e-5)


def test_psnr_per_image_and_known_mse():
    a = torch.zeros(2, 3, 4, 4)
    b = a.clone()
    b[0] = 0.01  # MSE 1e-4 -> 40 dB
    out = psnr(a, b)
    assert out[0].item() == pytest.approx(40.0, abs=1e-4)
    assert math.isinf(out[1].item())  # identical images
    single = psnr(a[0], b[0])
    assert single.ndim == 0 and single.item() == pytest.approx(40.0, abs=1e-4)


def test_psnr_mse_over_pixels_and_channels():
    a = torch.zeros(1, 3, 2, 2)
    b = a.clone()
    b[0, 0, 0, 0] = 1.0  # one of 12 values off by 1: MSE 1/12
    assert psnr(a, b).item() == pytest.approx(10 * math.log10(12))


def test_psnr_refuses_bad_inputs():
    a = torch.zeros(1, 3, 4, 4)
    with pytest.raises(ValueError, match="same shape"):
        psnr(a, torch.zeros(1, 3, 4, 5))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        psnr(a, a - 1)  # images in [-1, 1]
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        psnr(a + 255, a)  # images in [0, 255]


# --------------------------------------------------------------------------- EMD and W2


def test_emd_of_a_shifted_sample_is_the_shift():
    x = np.random.default_rng(0).normal(size=200)
    assert emd(x, x + 3.5) == pytest.approx(3.5)
    assert emd(x, x) == 0.0
    assert emd(torch.tensor(x), x - 1.0) == pytest.approx(1.0)  # tensors accepted


def test_emd_of_point_masses():
    assert emd([0.0, 0.0], [1.0, 3.0]) == pytest.approx(2.0)


def test_gaussian_w2_of_a_shifted_sample_is_the_squared_shift():
    x = np.random.default_rng(1).normal(size=100)
    assert gaussian_w2(x, x + 3.0) == pytest.approx(9.0)


def test_gaussian_w2_uses_population_std():
    x = np.array([0.0, 2.0])  # mean 1, population std 1
    y = np.array([5.0, 5.0])  # mean 5, std 0
    assert gaussian_w2(x, y) == pytest.approx(16.0 + 1.0)


def test_distances_refuse_empty_or_nan():
    with pytest.raises(ValueError, match="empty"):
        emd([], [1.0])
    with pytest.raises(ValueError, match="NaN"):
        gaussian_w2([1.0, float("nan")], [1.0])


# --------------------------------------------------------------------------- relative distance


@pytest.fixture(scope="module")
def nll_sets():
    d = 256
    ref = reference_nll(d, 200, gen(1))
    r = reference_nll(d, 60, gen(2))
    e = reference_nll(d, 60, gen(3)) + 3 * nll_gaussian(d).std  # an "erased" set shifted away from N
    return d, e, r, ref


@pytest.mark.parametrize("distance", ["emd", "w2"])
def test_identical_sets_have_relative_distance_exactly_one(nll_sets, distance):
    d, _, r, ref = nll_sets
    assert relative_distance(r, r, ref, distance) == 1.0
    big = NLLReference.draw(d, 2000, gen(0))
    assert relative_distance_interval(r, r.copy(), big, gen(0), n_boot=50, distance=distance).value == 1.0


@pytest.mark.parametrize("distance", ["emd", "w2"])
def test_relative_distance_grows_with_the_shift_of_e(nll_sets, distance):
    d, _, r, ref = nll_sets
    base = reference_nll(d, 60, gen(4))
    sigma = nll_gaussian(d).std
    values = [relative_distance(base + k * sigma, r, ref, distance) for k in (0.5, 1, 2, 4, 8)]
    assert all(a < b for a, b in zip(values, values[1:])), values


def test_relative_distance_is_the_ratio_of_the_two_distances(nll_sets):
    _, e, r, ref = nll_sets
    assert relative_distance(e, r, ref, "emd") == pytest.approx(emd(e, ref) / emd(r, ref))
    assert relative_distance(e, r, ref, "w2") == pytest.approx(gaussian_w2(e, ref) / gaussian_w2(r, ref))


def test_unknown_distance_names_the_choices(nll_sets):
    d, e, r, ref = nll_sets
    with pytest.raises(ValueError, match=r"\['emd', 'w2'\]"):
        relative_distance(e, r, ref, "kl")
    with pytest.raises(ValueError, match=r"\['emd', 'w2'\]"):
        relative_distance_interval(e, r, NLLReference.draw(d, 50, gen(0)), gen(0), distance="wasserstein")


def test_relative_distance_refuses_a_reference_set_equal_to_n(nll_sets):
    _, e, _, ref = nll_sets
    with pytest.raises(ValueError, match="undefined"):
        relative_distance(e, ref, ref)


@pytest.mark.parametrize("distance", ["emd", "w2"])
def test_bootstrap_interval_contains_the_estimate_and_is_deterministic(nll_sets, distance):
    d, e, r, _ = nll_sets
    ref = NLLReference.draw(d, 2000, gen(1))
    a = relative_distance_interval(e, r, ref, gen(7), n_boot=300, distance=distance)
    assert a == relative_distance_interval(e, r, ref, gen(7), n_boot=300, distance=distance)
    assert a != relative_distance_interval(e, r, ref, gen(8), n_boot=300, distance=distance)
    assert a.low <= a.value <= a.high
    assert a.low < a.high
    assert a.value > 1  # E was shifted away from N, R was not
    assert (a.distance, a.n_boot, a.level, a.n_reference) == (distance, 300, 0.95, 2000)
    # the point estimate is the plain ratio against the fixed reference (the bootstrap does not move it)
    assert a.value == pytest.approx(relative_distance(e, r, ref.values, distance))


def test_narrower_level_gives_a_narrower_interval(nll_sets):
    d, e, r, _ = nll_sets
    ref = NLLReference.draw(d, 2000, gen(1))
    wide = relative_distance_interval(e, r, ref, gen(7), n_boot=300, level=0.95)
    narrow = relative_distance_interval(e, r, ref, gen(7), n_boot=300, level=0.5)
    assert wide.value == narrow.value
    assert wide.low <= narrow.low <= narrow.high <= wide.high
    with pytest.raises(ValueError, match="level"):
        relative_distance_interval(e, r, ref, gen(7), level=95)


def test_no_hidden_global_randomness():
    ref = NLLReference.draw(16, 20, gen(2))
    torch.manual_seed(0)
    a = relative_distance_interval([1.0, 2.0, 3.0], [0.5, 1.5], ref, gen(3), n_boot=20)
    torch.manual_seed(123)
    np.random.seed(123)
    b = relative_distance_interval([1.0, 2.0, 3.0], [0.5, 1.5], ref, gen(3), n_boot=20)
    assert a == b


# --------------------------------------------------------------------------- geometry


def test_cosine_distances_of_known_vectors():
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    b = torch.tensor([[3.0, 0.0], [-1.0, 0.0], [1.0, 1.0]])
    h = 1 - 1 / math.sqrt(2)
    expected = torch.tensor([[0.0, 2.0, h], [1.0, 1.0, h]], dtype=torch.float64)
    assert torch.allclose(cosine_distance(a, b), expected)


def test_cosine_distance_flattens_samples_and_pairwise_is_the_upper_triangle():
    x = torch.randn(4, 2, 3, 3, generator=gen(0))
    full = cosine_distance(x, x)
    assert full.shape == (4, 4)
    assert torch.allclose(torch.diagonal(full), torch.zeros(4, dtype=torch.float64), atol=1e-12)
    pw = pairwise_cosine_distances(x)
    assert pw.shape == (6,)
    assert torch.allclose(pw, torch.stack([full[i, j] for i in range(4) for j in range(i + 1, 4)]))
    with pytest.raises(ValueError, match="all-zero"):
        cosine_distance(torch.zeros(1, 18), x)
    with pytest.raises(ValueError, match="at least 2"):
        pairwise_cosine_distances(x[:1])


def test_euclidean_distance_of_independent_gaussian_seeds_is_about_sqrt_2d():
    d = 4096
    x = torch.randn(2, d, generator=gen(0))
    assert euclidean_distance(x[:1], x[1:]).item() == pytest.approx(math.sqrt(2 * d), rel=0.05)
    assert euclidean_distance(x, x)[0, 0].item() == 0.0
    assert euclidean_distance(torch.zeros(1, 2), torch.tensor([[3.0, 4.0]])).item() == 5.0


def test_coefficient_of_variation_uses_population_std():
    assert coefficient_of_variation([1.0, 3.0]) == pytest.approx(0.5)  # std 1, mean 2
    assert coefficient_of_variation(torch.tensor([2.0, 2.0, 2.0])) == 0.0
    with pytest.raises(ValueError, match="zero-mean"):
        coefficient_of_variation([-1.0, 1.0])


# --------------------------------------------------------------------------- large reference, official spread


def test_sample_reference_nll_has_the_law_of_drawn_seeds():
    from memories_lib.core.metrics import sample_reference_nll

    d = 64
    drawn = reference_nll(d, 4000, gen(0))
    fast = sample_reference_nll(d, 4000, gen(1))
    assert stats.ks_2samp(drawn, fast).pvalue > 0.01
    assert np.array_equal(fast, sample_reference_nll(d, 4000, gen(1)))
    big = sample_reference_nll(16384, 200_000, gen(2))
    g = nll_gaussian(16384)
    assert big.mean() == pytest.approx(g.mean, abs=1.0) and big.std() == pytest.approx(g.std, rel=0.01)


@pytest.mark.parametrize("n,m", [(1, 7), (2, 2), (5, 300), (37, 1000), (60, 5)])
def test_nll_reference_emd_matches_scipy(n, m):
    from memories_lib.core.metrics import NLLReference

    rng = np.random.default_rng(n * 1000 + m)
    y = np.round(rng.normal(23000, 90, m))  # rounded: ties inside y and between x and y
    ref = NLLReference(y, 16384)
    batch = np.round(rng.normal(23050, 120, (4, n)))
    got = ref.emd(batch)
    for row, value in zip(batch, got):
        assert value == pytest.approx(emd(row, y), rel=1e-9, abs=1e-7)
    assert ref.emd(batch[0]) == pytest.approx(emd(batch[0], y), rel=1e-9, abs=1e-7)
    assert ref.w2(batch[1]) == pytest.approx(gaussian_w2(batch[1], y), rel=1e-12)


def test_relative_distance_interval_with_a_large_reference():
    from memories_lib.core.metrics import NLLReference, relative_distance_interval

    d = 256
    ref = NLLReference.draw(d, 200_000, gen(0))
    r = reference_nll(d, 60, gen(2)) + 0.5 * nll_gaussian(d).std
    e = reference_nll(d, 60, gen(3)) + 3 * nll_gaussian(d).std
    for distance in ("emd", "w2"):
        out = relative_distance_interval(e, r, ref, gen(4), n_boot=300, distance=distance)
        assert out.value == pytest.approx(relative_distance(e, r, ref.values, distance), rel=1e-9)
        assert out.low < out.value < out.high and out.n_reference == 200_000
        again = relative_distance_interval(e, r, ref, gen(4), n_boot=300, distance=distance)
        assert again == out
    assert relative_distance_interval(r, r, ref, gen(0), n_boot=20).value == 1.0
    with pytest.raises(ValueError, match="unknown distance"):
        relative_distance_interval(e, r, ref, gen(0), distance="l2")


def test_two_reference_draws_agree_at_200000_but_not_at_50():
    from memories_lib.core.metrics import NLLReference, official_ratio_spread

    d = 256
    r = reference_nll(d, 50, gen(2)) + 0.5 * nll_gaussian(d).std
    e = reference_nll(d, 50, gen(3)) + 2 * nll_gaussian(d).std
    a, b = (NLLReference.draw(d, 200_000, gen(s)) for s in (10, 11))
    ra, rb = (relative_distance_interval_value(e, r, x) for x in (a, b))
    assert ra == pytest.approx(rb, rel=0.01)
    s50 = official_ratio_spread(e, r, d, gen(5), n_samples=50, n_draws=1000)
    s1000 = official_ratio_spread(e, r, d, gen(5), n_samples=1000, n_draws=300)
    assert s50.low < s50.median < s50.high and (s50.n_samples, s50.n_draws) == (50, 1000)
    assert (s1000.high - s1000.low) < (s50.high - s50.low) / 2
    assert s1000.low <= relative_distance(e, r, a.values, "w2") <= s1000.high


def relative_distance_interval_value(e, r, ref):
    return relative_distance(e, r, ref.values, "emd")


def test_noise_floor_shrinks_with_the_set_size():
    from memories_lib.core.metrics import NLLReference

    ref = NLLReference.draw(256, 100_000, gen(0))
    small, large = ref.noise_floor(4, gen(1)), ref.noise_floor(100, gen(1))
    assert 0 < large < small < 2


def test_noise_floor_is_the_quantile_of_genuine_sets_emd_in_nll_stds():
    """Against an independent Monte Carlo (numpy's chi-square seeds, scipy's EMD): the 0.95 quantile of EMD(n genuine
    NLLs, N) / sqrt(d/2) within 10%; the median, or a division by d/2, would be far outside it."""
    from memories_lib.core.metrics import NLLReference

    d, n = 16, 20
    ref = NLLReference.draw(d, 100_000, gen(0))
    rng = np.random.default_rng(5)
    nll = 0.5 * rng.chisquare(d, size=(1000, n)) + 0.5 * d * np.log(2 * np.pi)  # NLL of a N(0, I_d) seed
    emds = np.array([stats.wasserstein_distance(row, ref.values) for row in nll])
    expected = np.quantile(emds, 0.95) / np.sqrt(d / 2)
    assert ref.noise_floor(n, gen(1)) == pytest.approx(expected, rel=0.10)
    assert ref.noise_floor(n, gen(1), quantile=0.5) == pytest.approx(np.median(emds) / np.sqrt(d / 2), rel=0.10)
