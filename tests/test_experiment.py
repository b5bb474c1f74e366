"""The data-set-level experiment: inversion records through the store, summaries, seeded selection."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from memories_lib.core import metrics
from memories_lib.core.images import ImageSet, seeded_choice
from memories_lib.experiments.concept_memory import invert_set, summarise
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
