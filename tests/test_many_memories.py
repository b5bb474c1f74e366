"""The Sequential Inversion Block: decoder inversion, the block through the store, seed geometry and its baselines.

On the tiny random-weight LDM (32x32 images, latents 4x8x8): a random decoder is no good decoder,
but gradient descent on it still lowers the reconstruction error, which is what is tested here.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.spatial.distance import pdist

from memories_lib.core import metrics
from memories_lib.core.images import ImageSet
from memories_lib.core.models import encode_images, load_ldm
from memories_lib.core.store import Store
from memories_lib.experiments import many_memories as sib
from memories_lib.inversion import InversionResult, api
from memories_lib.inversion import decoder as dec


pytestmark = pytest.mark.usefixtures("one_thread")


def _images(n: int, seed: int) -> torch.Tensor:
    """Smooth random images (a random decoder can come closer to these than to pixel noise)."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 4, 4, generator=g)
    return torch.nn.functional.interpolate(low, size=(32, 32), mode="bilinear", align_corners=False)


@pytest.fixture(scope="module")
def queries() -> ImageSet:
    return ImageSet("Q", _images(2, 1), ["a red star", "a blue star on a striped background"])


@pytest.fixture(scope="module")
def supports() -> tuple[ImageSet, ...]:
    reference = ImageSet("R", _images(8, 2), [f"a {c} circle" for c in
                                              ("red", "green", "blue", "yellow", "purple", "orange", "white", "black")])
    return sib.draw_supports(reference, 2, 3, torch.Generator().manual_seed(0))


def _counting_decoder(monkeypatch) -> list[int]:
    """Count the latents that decoder inversion computes (those the store does not serve)."""
    counted: list[int] = []
    real = dec.decoder_invert

    def counting(vae, targets01, *args, **kwargs):
        counted.append(targets01.shape[0])
        return real(vae, targets01, *args, **kwargs)

    monkeypatch.setattr(dec, "decoder_invert", counting)
    return counted


# --------------------------------------------------------------------------- decoder inversion


def test_decoder_inversion_lowers_the_error_monotonically(ldm):
    x = _images(3, 0)
    out = dec.decoder_invert(ldm.vae, x, num_steps=25, lr=1e-2, progress=False)
    assert out.latents.shape == (3, 4, 8, 8) and out.losses.shape == (3, 26)
    # Column 0 is the encoder mean's error; the last, the returned latent's (decoded unclamped).
    start = dec.encoder_mean(ldm.vae, x)
    assert torch.equal(out.start, start)
    with torch.no_grad():
        def mse(z):
            return ((ldm.vae.decode(z).sample / 2 + 0.5 - x) ** 2).flatten(1).mean(1)
        torch.testing.assert_close(out.losses[:, 0], mse(start), rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(out.losses[:, -1], mse(out.latents), rtol=1e-5, atol=1e-7)
    steps = out.losses.diff(dim=1)
    assert (steps <= 1e-7).all(), f"the error rose at some step: largest rise {steps.max().item():.3g}"
    assert (out.losses[:, -1] < 0.9 * out.losses[:, 0]).all(), out.losses[:, [0, -1]]


def test_decoder_inversion_of_a_batch_is_each_image_alone(ldm):
    x = _images(3, 0)
    start = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    batch = dec.decoder_invert(ldm.vae, x, start, num_steps=5, progress=False)
    for i in range(3):
        alone = dec.decoder_invert(ldm.vae, x[i:i + 1], start[i:i + 1], num_steps=5, progress=False)
        torch.testing.assert_close(batch.latents[i:i + 1], alone.latents, rtol=1e-4, atol=1e-5)
    again = dec.decoder_invert(ldm.vae, x, start, num_steps=5, progress=False)
    assert torch.equal(again.latents, batch.latents)  # deterministic on the CPU


def test_decoder_inversion_callback_and_errors(ldm):
    x = _images(2, 0)
    seen = []
    dec.decoder_invert(ldm.vae, x, num_steps=3, progress=False, callback=lambda k, z, mse: seen.append((k, mse.shape)))
    assert seen == [(1, (2,)), (2, (2,)), (3, (2,))]
    for steps in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="steps"):
            dec.decoder_invert(ldm.vae, x, num_steps=steps, progress=False)
    with pytest.raises(ValueError, match="learning rate"):
        dec.decoder_invert(ldm.vae, x, num_steps=2, lr=0.0, progress=False)
    with pytest.raises(ValueError, match="start"):
        dec.decoder_invert(ldm.vae, x, torch.zeros(3, 4, 8, 8), num_steps=2, progress=False)


def test_quantize_8bit():
    x = torch.tensor([0.0, 0.5, 1.0, 1.2, -0.1, 0.1234])
    q = dec.quantize_8bit(x)
    assert torch.equal(q * 255, (q * 255).round())
    assert q[0] == 0 and q[2] == 1 and q[3] == 1 and q[4] == 0 and abs(q[5] - 31 / 255) < 1e-7


# --------------------------------------------------------------------------- invert_latents


def test_invert_latents_matches_invert_given_the_same_z0(ldm):
    x = _images(2, 5)
    prompts = ["a red star", "a green circle"]
    # ddim: z_0 is the posterior mean.
    a = api.invert(ldm, x, prompts, method="ddim", num_steps=3, progress=False)
    b = api.invert_latents(ldm, encode_images(ldm, x), prompts, method="ddim", num_steps=3, progress=False)
    torch.testing.assert_close(a.seeds, b.seeds)
    assert b.config["posterior"] == "given"
    # renoise: z_0 a posterior sample; invert_latents skips that draw, so the regulariser's draws agree.
    a = api.invert(ldm, x, prompts, method="renoise", num_steps=3, progress=False)
    b = api.invert_latents(ldm, a.latents, prompts, method="renoise", num_steps=3, progress=False)
    torch.testing.assert_close(a.seeds, b.seeds)
    with pytest.raises(ValueError, match="latents"):
        api.invert_latents(ldm, torch.zeros(1, 4, 4, 4), ["a"], method="ddim", num_steps=2)


# --------------------------------------------------------------------------- the block


def _other_model(path):
    """A second model with the same VAE and another UNet (as an erased model is)."""
    other = load_ldm(path)
    with torch.no_grad():
        param = next(other.unet.parameters())
        param.add_(0.05 * torch.randn(param.shape, generator=torch.Generator().manual_seed(9)))
    other.invalidate_hash()
    return other


def test_sib_one_seed_per_support_and_decoder_inversions_shared_across_models(
        ldm, tiny_ldm_path, queries, supports, tmp_path, monkeypatch):
    store = Store(tmp_path / "store")
    counted = _counting_decoder(monkeypatch)
    kw = dict(method="renoise", num_steps=2, decoder_steps=4, progress=False)
    first = sib.many_memories(ldm, queries, supports, store, **kw)
    # Stage 1: 6 supports + 2 queries from their encoder means; stage 2: 6 supports towards their queries.
    assert sum(counted) == 14
    assert len(first) == 2
    for k, r in enumerate(first):
        assert isinstance(r.memories, InversionResult) and isinstance(r.own, InversionResult)
        assert r.memories.seeds.shape == (3, *ldm.latent_shape)
        assert r.own.seeds.shape == (1, *ldm.latent_shape)
        assert r.controls.seeds.shape == (3, *ldm.latent_shape)
        assert r.memories.method == "renoise" and r.memories.info["handoff"] == "reencode"
        assert r.memories.config == api.resolve("renoise", 2)
        assert r.memories.reconstruction.shape == (3, 3, 32, 32)
        assert r.psnr.shape == (3,) and r.nll.shape == (3,)
        assert r.latents.support_to_query.shape == (3, 4, 8, 8)
        assert r.latents.support_to_query_losses.shape == (3, 5)
        assert torch.equal(r.supports.images, supports[k].images)
        assert r.caption == queries.prompts[k]
        # Distinct starts give distinct memories.
        assert r.geometry().pairwise.min() > 0
        row = sib.summarise(r)
        assert row["n"] == 3 and row["d"] == 256
        assert row["to_seed_cv"] == pytest.approx(r.geometry().to_seed_cv)
        assert row["cv_ratio"] == pytest.approx(row["to_seed_cv"] / row["baseline_cv"])
        assert row["nll"] == pytest.approx(float(metrics.nll(r.memories.seeds).mean()))
        own = r.own.seeds.double().flatten(1)
        # the distances to the own seed, of the memories and of the controls, written out
        to_seed = (r.memories.seeds.double().flatten(1) - own).norm(dim=1)
        assert row["to_seed_mean"] == pytest.approx(float(to_seed.mean()))
        assert row["to_seed_cv"] == pytest.approx(float(to_seed.std(unbiased=False) / to_seed.mean()))
        controls = (r.controls.seeds.double().flatten(1) - own).norm(dim=1)
        assert row["control_to_seed_mean"] == pytest.approx(float(controls.mean()))
        # the baseline: N(0, I) seeds' distances to a seed of the own seed's norm
        baseline = metrics.gaussian_geometry(256, anchor_sq=float(own.square().sum()))
        assert row["baseline_cv"] == pytest.approx(baseline.to_anchor_cv)
        assert row["baseline_to_seed_mean"] == pytest.approx(baseline.to_anchor_mean)

    other = _other_model(tiny_ldm_path)
    assert other.vae_hash() == ldm.vae_hash() and other.weights_hash() != ldm.weights_hash()
    counted.clear()
    second = sib.many_memories(other, queries, supports, store, **kw)
    assert counted == [], "the second model must be served every decoder inversion from the store"
    assert torch.equal(second[0].latents.support_to_query, first[0].latents.support_to_query)
    assert not torch.equal(second[0].memories.seeds, first[0].memories.seeds)  # its own diffusion inversions

    # A rerun with the first model computes nothing at all (an interrupted run resumes the same way).
    def refuse(*args, **kwargs):
        raise AssertionError("the store should have served every record")

    monkeypatch.setattr(api, "invert", refuse)
    monkeypatch.setattr(api, "invert_latents", refuse)
    again = sib.many_memories(ldm, queries, supports, store, **kw)
    assert torch.equal(again[1].memories.seeds, first[1].memories.seeds)
    assert counted == []


def test_sib_decoder_inversions_keyed_by_their_settings(ldm, queries, supports, tmp_path, monkeypatch):
    store = Store(tmp_path / "store")
    counted = _counting_decoder(monkeypatch)
    one = sib.decoder_latents(ldm, queries, supports, store, num_steps=2, progress=False)
    two = sib.decoder_latents(ldm, queries, supports, store, num_steps=3, progress=False)
    three = sib.decoder_latents(ldm, queries, supports, store, num_steps=3, lr=2e-2, progress=False)
    assert sum(counted) == 3 * 14
    assert not torch.equal(one[0].query, two[0].query) and not torch.equal(two[0].query, three[0].query)
    # z0(s->q) starts where z0(s) ended: its first error is z0(s)'s decoding against the query.
    with torch.no_grad():
        decoded = ldm.vae.decode(one[0].supports).sample / 2 + 0.5
    expected = ((decoded - queries.images[0]) ** 2).flatten(1).mean(1)
    torch.testing.assert_close(one[0].support_to_query_losses[:, 0], expected, rtol=1e-5, atol=1e-7)


def test_sib_resumes_with_what_the_store_holds(ldm, queries, supports, tmp_path, monkeypatch):
    store = Store(tmp_path / "store")
    counted = _counting_decoder(monkeypatch)
    first = ImageSet("Q0", queries.images[:1], list(queries.prompts[:1]))
    part = sib.many_memories(ldm, first, supports[:1], store, method="ddim", num_steps=2, decoder_steps=2,
                             progress=False)  # as if the run had stopped after the first query
    assert sum(counted) == 4 + 3
    counted.clear()
    whole = sib.many_memories(ldm, queries, supports, store, method="ddim", num_steps=2, decoder_steps=2,
                              progress=False)
    assert sum(counted) == 4 + 3  # only the second query and its supports
    assert torch.equal(whole[0].memories.seeds, part[0].memories.seeds)


def test_sib_null_text_path_inverts_the_scaled_latent(ldm, queries, supports, tmp_path):
    store = Store(tmp_path / "store")
    out = sib.many_memories(ldm, queries, supports, store, method="nti-memories", num_steps=3,
                            options={"num_inner_steps": 1}, decoder_steps=2, controls=False, progress=False)
    r = out[0]
    assert r.handoff == "latent" and r.controls is None and r.control_psnr is None
    assert r.memories.config == {**api.resolve("nti-memories", 3, num_inner_steps=1), "posterior": "given"}
    scale = ldm.vae.config.scaling_factor
    torch.testing.assert_close(r.memories.latents, r.latents.support_to_query * scale)
    torch.testing.assert_close(r.own.latents, r.latents.query[None] * scale)
    with pytest.raises(ValueError, match="no controls"):
        r.geometry(controls=True)


def test_reencoding_shift(ldm, queries, supports, tmp_path):
    store = Store(tmp_path / "store")
    out = sib.many_memories(ldm, queries, supports, store, method="renoise", num_steps=2, decoder_steps=2,
                            controls=False, progress=False)
    z0 = torch.stack([r.latents.query for r in out])
    shift = sib.reencoding_shift(ldm, z0, list(queries.prompts), store, method="renoise", num_steps=2,
                                 progress=False)
    assert shift.seed_distance.shape == (2,) and np.all(np.isfinite(shift.seed_distance))
    assert np.all(shift.latent_distance > 0)  # quantisation and the posterior sample move z_0
    # The re-encoded seeds are the SIB's own seeds (the same records).
    torch.testing.assert_close(shift.reencoded.seeds, torch.cat([r.own.seeds for r in out]))


def test_sib_checks_its_input_before_any_work(ldm, queries, supports, tmp_path, monkeypatch):
    store = Store(tmp_path / "store")
    counted = _counting_decoder(monkeypatch)
    bad = [
        (dict(decoder_steps=0), "steps"),
        (dict(decoder_steps=-5), "steps"),
        (dict(decoder_lr=-1.0), "learning rate"),
        (dict(method="nope"), "unknown inversion method"),
        (dict(handoff="pixels"), "handoff"),
        (dict(num_steps=0), "num_steps"),
        (dict(options={"bogus": 1}), "no option"),
    ]
    for kwargs, match in bad:
        with pytest.raises(ValueError, match=match):
            sib.many_memories(ldm, queries, supports, store, progress=False, **kwargs)
    with pytest.raises(ValueError, match="support sets"):
        sib.many_memories(ldm, queries, supports[:1], store, progress=False)
    small = ImageSet("small", torch.rand(1, 3, 16, 16), ["a red star"])
    with pytest.raises(ValueError, match="16, 16"):
        sib.many_memories(ldm, small, supports[:1], store, progress=False)
    assert counted == []


def test_draw_supports_is_seeded_and_disjoint():
    reference = ImageSet("R", torch.rand(7, 3, 8, 8), [f"caption {i}" for i in range(7)])
    a = sib.draw_supports(reference, 2, 3, torch.Generator().manual_seed(4))
    b = sib.draw_supports(reference, 2, 3, torch.Generator().manual_seed(4))
    c = sib.draw_supports(reference, 2, 3, torch.Generator().manual_seed(5))
    picks = [s.info["reference_indices"] for s in a]
    assert picks == [s.info["reference_indices"] for s in b] != [s.info["reference_indices"] for s in c]
    assert not set(picks[0]) & set(picks[1])
    assert a[1].prompts == tuple(f"caption {i}" for i in picks[1])
    with pytest.raises(ValueError, match="larger than the reference set"):
        sib.draw_supports(reference, 1, 8, torch.Generator())
    with pytest.raises(ValueError, match="disjoint"):
        sib.draw_supports(reference, 3, 3, torch.Generator())
    with pytest.raises(ValueError, match="num_supports"):
        sib.draw_supports(reference, 1, 0, torch.Generator())


def test_sib_inputs_from_a_world(monkeypatch):
    from memories_lib.worlds import WorldError, open_world

    world = open_world("tiny")
    generated = []

    def erased_set(concept, n, seed, **kwargs):
        generated.append((concept, n, seed))
        g = torch.Generator().manual_seed(seed)
        return ImageSet("E", torch.rand(n, 3, 32, 32, generator=g), [f"a {concept} {i}" for i in range(n)])

    monkeypatch.setattr(world, "erased_set", erased_set)
    with pytest.raises(WorldError, match="unknown concept"):
        sib.sib_inputs(world, "dragon", 2, 3)
    with pytest.raises(ValueError, match="larger than the reference set"):
        sib.sib_inputs(world, "star", 2, 5, reference_size=4)
    with pytest.raises(ValueError, match="num_supports"):
        sib.sib_inputs(world, "star", 2, 0)
    assert generated == []  # nothing generated before the checks
    inputs = sib.sib_inputs(world, "star", 2, 3, seed=1, set_size=4)
    assert generated == [("star", 4, 1)]
    assert len(inputs.queries) == 2 and [len(s) for s in inputs.supports] == [3, 3]
    assert inputs.queries.prompts == ("a star 0", "a star 1")
    again = sib.sib_inputs(world, "star", 2, 3, seed=1, set_size=4)
    assert torch.equal(again.supports[1].images, inputs.supports[1].images)


# --------------------------------------------------------------------------- geometry


def test_seed_geometry_by_hand():
    seeds = torch.tensor([[1.0, 1.0], [1.0, -1.0], [3.0, 0.0]])
    own = torch.tensor([1.0, 0.0])
    g = metrics.seed_geometry(seeds, own)
    np.testing.assert_allclose(g.to_seed, [1, 1, 2])
    assert g.to_seed_mean == pytest.approx(4 / 3)
    assert g.to_seed_std == pytest.approx(math.sqrt(2 / 9))  # ddof 0
    assert g.to_seed_cv == pytest.approx(math.sqrt(2) / 4)
    np.testing.assert_allclose(g.to_seed_cosine, [1 - 1 / math.sqrt(2), 1 - 1 / math.sqrt(2), 0], atol=1e-12)
    np.testing.assert_allclose(g.pairwise, [2, math.sqrt(5), math.sqrt(5)])
    np.testing.assert_allclose(g.pairwise_cosine, [1, 1 - 1 / math.sqrt(2), 1 - 1 / math.sqrt(2)], atol=1e-12)
    assert g.pairwise_mean == pytest.approx((2 + 2 * math.sqrt(5)) / 3)
    assert g.pairwise_std == pytest.approx(np.std([2, math.sqrt(5), math.sqrt(5)]))
    assert (g.n, g.d) == (3, 2)


def test_sphere_coordinates_by_hand():
    own = torch.tensor([1.0, 0.0])
    seeds = torch.tensor([[3.0, 0.0], [1.0, 2.0], [-1.0, 0.0]])  # offsets (2, 0), (0, 2), (-2, 0): all at distance 2
    radius, angle = sib.sphere_coordinates(seeds, own)
    expected = metrics.gaussian_geometry(2, anchor_sq=1.0).to_anchor_mean
    np.testing.assert_allclose(radius, [2 / expected] * 3)
    np.testing.assert_allclose(angle, [(90 + 180) / 2, (90 + 90) / 2, (180 + 90) / 2])
    with pytest.raises(ValueError, match="at least 2 seeds"):
        sib.sphere_coordinates(seeds[:1], own)


def test_a_query_with_a_diverged_own_seed_or_too_few_memories_is_not_measurable(ldm, queries, supports, tmp_path):
    r = sib.many_memories(ldm, queries, supports, Store(tmp_path / "store"), method="ddim", num_steps=2,
                          decoder_steps=2, progress=False)[0]
    assert r.measurable
    radius, angle = r.sphere()
    assert radius.shape == angle.shape == (3,)
    r.own.diverged[:] = True
    assert not r.measurable
    r.own.diverged[:] = False
    r.memories.diverged[:2] = True  # one memory left: no pairwise distance
    assert not r.measurable
    with pytest.raises(ValueError, match="at least 2 seeds"):
        r.sphere()


def test_seed_geometry_matches_scipy_and_the_official_matrix():
    z = torch.randn(6, 2, 3, 3, generator=torch.Generator().manual_seed(0))
    own = torch.randn(1, 2, 3, 3, generator=torch.Generator().manual_seed(1))
    g = metrics.seed_geometry(z, own)
    flat = z.reshape(6, -1).double().numpy()
    np.testing.assert_allclose(g.pairwise, pdist(flat, "euclidean"), rtol=1e-12)
    np.testing.assert_allclose(g.pairwise_cosine, pdist(flat, "cosine"), rtol=1e-10, atol=1e-12)
    # The official statistics: the square matrix with its diagonal left out.
    full = np.linalg.norm(flat[:, None] - flat[None], axis=-1)
    np.fill_diagonal(full, np.nan)
    assert g.pairwise_mean == pytest.approx(np.nanmean(full)) and g.pairwise_std == pytest.approx(np.nanstd(full))
    with pytest.raises(ValueError, match="at least 2"):
        metrics.seed_geometry(z[:1], own)
    with pytest.raises(ValueError, match="entries"):
        metrics.seed_geometry(z, torch.zeros(5))


def test_gaussian_baselines_known_values():
    assert metrics.CV_CONSTANT == pytest.approx(0.612, abs=1e-3)
    sd = metrics.gaussian_geometry(16384)
    assert sd.to_anchor_cv == pytest.approx(metrics.CV_CONSTANT / 128)
    assert 100 * sd.to_anchor_cv == pytest.approx(0.48, abs=0.005)
    assert 100 * metrics.gaussian_geometry(256).to_anchor_cv == pytest.approx(3.8, abs=0.05)
    assert sd.pairwise_mean == pytest.approx(181, abs=0.5) and sd.norm_mean == pytest.approx(128, abs=0.01)
    assert sd.to_anchor_mean == pytest.approx(math.sqrt(2 * 16384))
    assert metrics.gaussian_geometry(100, anchor_sq=0).to_anchor_mean == pytest.approx(10)
    with pytest.raises(ValueError):
        metrics.gaussian_geometry(0)
    with pytest.raises(ValueError):
        metrics.gaussian_geometry(16, anchor_sq=-1)


@pytest.mark.parametrize("d", [64, 256])
def test_gaussian_baselines_against_sampling(d):
    g = torch.Generator().manual_seed(d)
    n = 4000
    z = torch.randn(n, d, generator=g, dtype=torch.float64)
    anchor = 1.5 * torch.randn(d, generator=g, dtype=torch.float64)  # an atypical seed: |a|^2 about 2.25 d
    base = metrics.gaussian_geometry(d, anchor_sq=float(anchor.square().sum()))
    norms = z.norm(dim=1)
    assert norms.mean().item() == pytest.approx(base.norm_mean, abs=0.05)
    assert norms.std().item() == pytest.approx(base.norm_std, rel=0.05)
    geo = metrics.seed_geometry(z[:400], anchor)  # pairs of 400 seeds: 79,800 distances
    to_anchor = metrics.euclidean_distance(z, anchor[None])[:, 0]
    assert to_anchor.mean().item() == pytest.approx(base.to_anchor_mean, rel=0.005)
    assert metrics.coefficient_of_variation(to_anchor) == pytest.approx(base.to_anchor_cv, rel=0.06)
    assert geo.pairwise_mean == pytest.approx(base.pairwise_mean, rel=0.005)
    assert geo.pairwise_cosine_mean == pytest.approx(base.cosine_mean, abs=0.01)
    assert geo.pairwise_cosine_std == pytest.approx(base.cosine_std, rel=0.05)
    typical = metrics.gaussian_geometry(d)
    assert typical.to_anchor_cv == pytest.approx(metrics.CV_CONSTANT / math.sqrt(d))
