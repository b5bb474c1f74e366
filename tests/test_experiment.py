"""The data-set-level experiment: inversion records through the store, summaries, seeded selection."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from memories_lib.core import metrics
from memories_lib.core.images import ImageSet, seeded_choice
import dataclasses

from memories_lib.experiments import concept_memory
from memories_lib.experiments.concept_memory import RECORD_VERSION, invert_set, summarise
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
    row = summarise(again, again, ldm.latent_dim, torch.Generator().manual_seed(0), n_reference=100, n_boot=20)
    assert row["diverged"] == row["ref_diverged"] == 1
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
    row = summarise(inv, inv, ldm.latent_dim, torch.Generator().manual_seed(0), n_reference=200, n_boot=50)
    assert row["rd_emd"] == pytest.approx(1.0)
    assert row["rd_w2"] == pytest.approx(1.0)
    assert row["rd_emd_low"] <= row["rd_emd"] <= row["rd_emd_high"]


def test_seeded_choice_is_sorted_and_deterministic():
    a = seeded_choice(100, 10, torch.Generator().manual_seed(3))
    b = seeded_choice(100, 10, torch.Generator().manual_seed(3))
    assert a == b == sorted(a) and len(set(a)) == 10
    with pytest.raises(ValueError):
        seeded_choice(3, 4, torch.Generator())
