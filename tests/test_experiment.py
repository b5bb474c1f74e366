"""The data-set-level experiment: inversion records through the store, summaries, seeded selection."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from memories_lib.core import metrics
from memories_lib.core.images import ImageSet, seeded_choice
from memories_lib.experiments import concept_memory
from memories_lib.experiments.concept_memory import (
    RECORD_VERSION, SetInversion, invert_set, regeneration_scores, summarise,
)
from memories_lib.inversion import api
from memories_lib.inversion.renoise import ReNoiseConfig
from memories_lib.core.store import Store


@pytest.fixture(scope="module")
def image_set():
    g = torch.Generator().manual_seed(0)
    return ImageSet("rand", torch.rand(5, 3, 32, 32, generator=g), ["a red star"] * 3 + ["a blue circle"] * 2)


def test_invert_set_records_and_resumes(ldm, image_set, tmp_path, monkeypatch):
    store = Store(tmp_path / "store")
    first = invert_set(ldm, image_set, store, method="ddim", num_steps=4, batch_size=2)
    assert first.seeds.shape == (5, *ldm.latent_shape)
    assert first.reconstructions.shape == image_set.images.shape
    np.testing.assert_allclose(first.nll, metrics.nll(first.seeds).numpy(), rtol=1e-9)
    np.testing.assert_allclose(first.psnr, metrics.psnr(first.reconstructions, image_set.images).numpy(), rtol=1e-5)

    # A second run is served from the store: inversion must not be called at all.
    from memories_lib.inversion import api

    def refuse(*args, **kwargs):
        raise AssertionError("the store should have served every record")

    monkeypatch.setattr(api, "invert", refuse)
    again = invert_set(ldm, image_set, store, method="ddim", num_steps=4, batch_size=2)
    assert torch.equal(again.seeds, first.seeds)
    np.testing.assert_array_equal(again.psnr, first.psnr)


def test_invert_set_keys_on_method_parameters(ldm, image_set, tmp_path):
    store = Store(tmp_path / "store")
    a = invert_set(ldm, image_set, store, method="ddim", num_steps=2)
    b = invert_set(ldm, image_set, store, method="ddim", num_steps=4)
    assert not torch.equal(a.seeds, b.seeds)


def _counting(monkeypatch) -> list[int]:
    """Count the images ``invert_set`` computes (those the store does not serve)."""
    computed = []
    real = api.invert

    def counted(ldm, images01, prompts, *args, **kwargs):
        computed.append(images01.shape[0])
        return real(ldm, images01, prompts, *args, **kwargs)

    monkeypatch.setattr(api, "invert", counted)
    return computed


def test_invert_set_keys_on_the_resolved_configuration(ldm, image_set, tmp_path, monkeypatch):
    store = Store(tmp_path / "store")
    computed = _counting(monkeypatch)
    two = ImageSet("two", image_set.images[:2], list(image_set.prompts[:2]))
    invert_set(ldm, two, store, method="renoise-plain", num_steps=2)  # the default: 5 renoise steps
    assert sum(computed) == 2
    # The same run spelled three ways hits the same records.
    invert_set(ldm, two, store, method="renoise-plain", num_steps=2, options={"num_renoise_steps": 1})
    invert_set(ldm, two, store, method="renoise-plain", num_steps=2,
               options={"config": ReNoiseConfig.plain(num_renoise_steps=1)})
    invert_set(ldm, two, store, method="renoise-plain", num_steps=None,
               options={"config": ReNoiseConfig.plain(num_renoise_steps=1).with_steps(2)})
    assert sum(computed) == 4
    # A changed library default (the method's base config) gives new records, not the stale ones...
    spec = api.METHODS["renoise-plain"]
    for steps, expected in ((3, 6), (1, 6)):  # ... or the records of the run it now is
        changed = api._renoise_resolver("renoise-plain", ReNoiseConfig.plain(num_renoise_steps=steps))
        monkeypatch.setitem(api.METHODS, "renoise-plain", dataclasses.replace(spec, resolve=changed))
        invert_set(ldm, two, store, method="renoise-plain", num_steps=2)
        assert sum(computed) == expected
    # So is a changed default step count.
    invert_set(ldm, two, store, method="ddim", num_steps=3)
    monkeypatch.setattr(api, "DEFAULT_STEPS", 3)
    invert_set(ldm, two, store, method="ddim")
    assert sum(computed) == 8
    monkeypatch.setattr(api, "DEFAULT_STEPS", 2)
    invert_set(ldm, two, store, method="ddim")
    assert sum(computed) == 10
    # The key holds the model's device and dtype and the resolved configuration.
    key = concept_memory.record_key("m", "cpu", "torch.float32", "h", "p", api.resolve("ddim", 3))
    assert key["version"] == RECORD_VERSION == 2
    assert key["config"] == {"method": "ddim", "num_steps": 3, "posterior": "mean", "seed": None,
                             "guidance_scale": 0.0, "reconstruction_guidance": 1.0}
    assert store.key(**key) != store.key(**{**key, "device": "cuda"})
    assert store.key(**key) != store.key(**{**key, "dtype": "torch.float16"})


def test_invert_set_records_divergence(ldm, image_set, tmp_path, monkeypatch):
    real = api.renoise_invert

    def planted(ldm, latents, cond, config, **kwargs):  # the second image of every batch blows up
        seeds, trajectory = real(ldm, latents, cond, config, **kwargs)
        seeds = seeds.clone()
        if seeds.shape[0] > 1:
            seeds[1] = float("nan")
        return seeds, trajectory

    monkeypatch.setattr(api, "renoise_invert", planted)
    store = Store(tmp_path / "store")
    first = invert_set(ldm, image_set, store, method="renoise-plain", num_steps=2, batch_size=5)
    assert first.diverged.tolist() == [False, True, False, False, False]
    assert np.isnan(first.psnr[1]) and np.isfinite(np.delete(first.psnr, 1)).all()
    assert not np.isfinite(first.nll[1])
    again = invert_set(ldm, image_set, store, method="renoise-plain", num_steps=2, batch_size=5)  # from the store
    assert again.diverged.tolist() == first.diverged.tolist() and np.isnan(again.psnr[1])
    ref = metrics.NLLReference.draw(ldm.latent_dim, 2000, torch.Generator().manual_seed(1))
    row = summarise(again, again, ref, torch.Generator().manual_seed(0), n_boot=20, official_draws=20)
    assert row["diverged_e"] == row["diverged_r"] == 1 and row["diverged"] == 2
    assert np.isfinite(row["psnr"]) and np.isfinite(row["rd_emd"])


def test_invert_set_rejects_unknown_method_before_work(ldm, image_set, tmp_path):
    with pytest.raises(ValueError, match="unknown|method"):
        invert_set(ldm, image_set, Store(tmp_path / "s"), method="magic")


def test_image_set_checks_its_shape():
    with pytest.raises(ValueError, match="prompts"):
        ImageSet("x", torch.rand(2, 3, 8, 8), ["one"])
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        ImageSet("x", torch.rand(2, 8, 8), ["a", "b"])


def test_summary_of_a_set_against_itself_has_relative_distance_one(ldm, image_set, tmp_path):
    inv = invert_set(ldm, image_set, Store(tmp_path / "s"), method="ddim", num_steps=2)
    ref = metrics.NLLReference.draw(ldm.latent_dim, 20_000, torch.Generator().manual_seed(0))
    row = summarise(inv, inv, ref, torch.Generator().manual_seed(0), n_boot=50, control=inv, official_draws=50)
    for name in ("rd_emd", "rd_w2", "rd_ctrl_emd", "rd_ctrl_w2", "rd_w2_50", "rd_w2_1000"):
        assert row[name] == pytest.approx(1.0), name
    assert row["rd_emd_low"] <= row["rd_emd"] <= row["rd_emd_high"]
    assert row["diverged"] == 0 and row["n_e"] == row["n_r"] == row["n_c"] == len(image_set)
    assert isinstance(row["unstable"], bool)


def planted(nll, psnr=None, diverged=None):
    n = len(nll)
    recon = torch.rand(n, 3, 8, 8, generator=torch.Generator().manual_seed(n))
    fields = dict(seeds=torch.zeros(n, 4, 2, 2), reconstructions=recon,
                  psnr=np.asarray(psnr if psnr is not None else [20.0] * n, dtype=float),
                  vae_psnr=np.full(n, 30.0), nll=np.asarray(nll, dtype=float),
                  diverged=np.zeros(n, dtype=bool) if diverged is None else np.asarray(diverged, dtype=bool))
    return SetInversion(**fields)


def test_summary_row_is_each_ratio_of_e_against_its_own_denominator():
    """E shifted 3 sigma from genuine seeds, R genuine, a control 1 sigma off: every number of the row is the
    one its definition gives, so a swap of E and R (the reciprocal), of R and the control, or of the
    means would show."""
    d = 16
    sigma = np.sqrt(d / 2)
    ref = metrics.NLLReference.draw(d, 50_000, torch.Generator().manual_seed(0))
    genuine = metrics.sample_reference_nll(d, 120, torch.Generator().manual_seed(1))
    e, r, c = genuine[:40] + 3 * sigma, genuine[40:80], genuine[80:] + 1 * sigma
    row = summarise(planted(e), planted(r), ref, torch.Generator().manual_seed(2), n_boot=50, control=planted(c),
                    official_draws=50)
    assert row["nll"] == pytest.approx(e.mean()) and row["ref_nll"] == pytest.approx(r.mean())
    assert row["ctrl_nll"] == pytest.approx(c.mean())
    for distance in metrics.DISTANCES:
        fn = ref.distance(distance)
        assert row[f"rd_{distance}"] == pytest.approx(fn(e) / fn(r)), distance
        assert row[f"rd_ctrl_{distance}"] == pytest.approx(fn(e) / fn(c)), distance
    assert row["rd_emd"] > row["rd_ctrl_emd"] > 1  # R is nearer N than the control, which is nearer than E
    assert row["emd_rn"] == pytest.approx(ref.emd(r)) and row["emd_en"] == pytest.approx(ref.emd(e))
    assert row["emd_rn_sigma"] == pytest.approx(ref.emd(r) / sigma)
    assert row["unstable"] and not row["unstable_ctrl"]  # genuine R is within the floor; a 1-sigma shift is not
    assert row["emd_rn_sigma"] < row["noise_floor_r"] < row["emd_cn_sigma"]


def test_summary_leaves_out_and_counts_non_finite_and_diverged_seeds():
    d = 16
    ref = metrics.NLLReference.draw(d, 50_000, torch.Generator().manual_seed(0))
    base = metrics.sample_reference_nll(d, 12, torch.Generator().manual_seed(1))
    e_nll = base[:6] + 10.0
    clean = summarise(planted(e_nll[:4]), planted(base[6:]), ref, torch.Generator().manual_seed(2), n_boot=50,
                      official_draws=50)
    e_nll[4] = np.nan  # a NaN seed
    psnr = [20.0] * 6
    psnr[5] = np.inf  # and an infinite PSNR
    dirty = summarise(planted(e_nll, psnr), planted(base[6:]), ref, torch.Generator().manual_seed(2), n_boot=50,
                      official_draws=50)
    assert dirty["diverged_e"] == 2 and dirty["diverged"] == 2 and dirty["n_e"] == 4
    for name in ("psnr", "nll", "rd_emd", "rd_emd_low", "rd_w2", "rd_w2_50", "emd_rn"):
        assert np.isfinite(dirty[name]) and dirty[name] == pytest.approx(clean[name]), name
    flagged = planted(base[6:], diverged=[True, False, False, False, False, False])
    row = summarise(planted(e_nll[:4]), flagged, ref, torch.Generator().manual_seed(2), n_boot=50, official_draws=50)
    assert row["diverged_r"] == 1 and row["n_r"] == 5


def test_summary_of_an_all_diverged_set_is_nan_not_an_error():
    d = 16
    ref = metrics.NLLReference.draw(d, 10_000, torch.Generator().manual_seed(0))
    r = metrics.sample_reference_nll(d, 5, torch.Generator().manual_seed(1))
    row = summarise(planted([np.nan, np.inf]), planted(r), ref, torch.Generator().manual_seed(2), n_boot=20,
                    official_draws=20)
    assert row["n_e"] == 0 and row["diverged"] == 2
    assert np.isnan(row["psnr"]) and np.isnan(row["rd_emd"]) and np.isnan(row["rd_w2_50"])
    assert np.isfinite(row["emd_rn"])


def test_regeneration_scores_count_the_detector_and_average_the_similarity():
    class Detector:
        label_names = {"shape": ["star", "triangle"]}

        def predict_proba(self, images):
            p = torch.zeros(len(images), 2)
            p[:, 0] = images.mean(dim=(1, 2, 3))  # bright images are "stars"
            p[:, 1] = 0.5
            return {"shape": p}

    class Similarity:
        def similarity(self, images, texts):
            return images.mean(dim=(1, 2, 3))[:, None].repeat(1, len(texts))

    inv = planted([1.0, 2.0, np.nan, 3.0])
    recon = torch.stack([torch.full((3, 8, 8), v) for v in (0.9, 0.2, 1.0, 0.8)])
    object.__setattr__(inv, "reconstructions", recon)
    out = regeneration_scores(inv, Detector(), Similarity(), "star", "star", originals=recon * 0 + 0.5)
    assert out["detected"] == pytest.approx(2 / 3)  # the NaN seed is not scored
    assert out["similarity"] == pytest.approx((0.9 + 0.2 + 0.8) / 3)
    assert out["similarity_original"] == pytest.approx(0.5)


def test_seeded_choice_is_sorted_and_deterministic():
    a = seeded_choice(100, 10, torch.Generator().manual_seed(3))
    b = seeded_choice(100, 10, torch.Generator().manual_seed(3))
    assert a == b == sorted(a) and len(set(a)) == 10
    with pytest.raises(ValueError):
        seeded_choice(3, 4, torch.Generator())


def test_cached_inversion_is_read_back_with_its_measured_time(ldm, tmp_path, monkeypatch):
    """The second call reads the stored result (no inversion runs) and reports the time of the first."""
    import memories_lib.experiments.concept_memory as cm
    from memories_lib.core.store import Store

    store = Store(tmp_path / "store")
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    prompts = ["a red star", "a blue circle"]
    first, seconds = cm.cached_inversion(ldm, images, prompts, store, method="edict", num_steps=3)
    assert seconds > 0 and "x_T" in first.info and first.diverged.dtype == torch.bool

    def fail(*args, **kwargs):
        raise AssertionError("inverted again")

    monkeypatch.setattr(cm.inversion, "invert", fail)
    again, seconds_again = cm.cached_inversion(ldm, images, prompts, store, method="edict", num_steps=3)
    assert seconds_again == seconds
    assert torch.equal(again.seeds, first.seeds) and torch.equal(again.info["y_T"], first.info["y_T"])
    with pytest.raises(ValueError):
        cm.cached_inversion(ldm, images, prompts, store, method="edict", num_steps=3, options={"bogus": 1})
