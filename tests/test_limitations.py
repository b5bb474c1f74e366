"""The limitation experiment: scrambled images of a concept inverted, regenerated and reassembled."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from memories_lib.core.images import ImageSet
from memories_lib.core.store import Store
from memories_lib.experiments import limitations as lim
from memories_lib.core.patches import unscramble
from memories_lib.experiments.concept_memory import invert_sets
from memories_lib.inversion import api

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def images() -> ImageSet:
    g = torch.Generator().manual_seed(5)
    return ImageSet("E", torch.rand(2, 3, 32, 32, generator=g), ("a red triangle", "a blue triangle"))


def test_check_patches_lists_the_sizes_that_tile_whole_latent_cells(ldm):
    assert lim.check_patches(ldm, None) == [32, 16, 8, 4]  # 32x32 images, 8x8 latents: cells of 4 pixels
    assert lim.check_patches(ldm, [8, 32, 8]) == [32, 8]
    assert lim.check_patches(ldm, [8, 4]) == [32, 8, 4]  # the plain image is always the first, the reference
    for bad in ([12], [2], [64], [8.0], [True]):
        with pytest.raises(ValueError, match=r"choose from \[32, 16, 8, 4\]"):
            lim.check_patches(ldm, bad)
    with pytest.raises(ValueError, match="no patch size"):
        lim.check_patches(ldm, [])


def test_scramble_sweep_same_scrambles_for_every_call_and_plain_images_as_chapter_4(ldm, images, tmp_path,
                                                                                   monkeypatch):
    store = Store(tmp_path / "store")
    runs = lim.scramble_sweep(ldm, images, [8, 32], store, seed=3, method="ddim", num_steps=2, progress=False)
    assert list(runs) == [32, 8]
    plain, small = runs[32], runs[8]
    assert plain.cells == 1 and small.cells == 16
    assert torch.equal(plain.scrambled.images, images.images)  # one patch: the image itself
    assert not torch.equal(small.scrambled.images, images.images)
    assert small.scrambled.prompts == images.prompts
    # The plain images are the same store records as an ordinary inversion of them (chapter 4's).
    ordinary = invert_sets(ldm, {"E": images}, store, method="ddim", num_steps=2, progress=False)["E"]
    assert torch.equal(ordinary.seeds, plain.inversion.seeds)
    # Reassembling puts each regenerated patch back: reassembling the scrambled input gives the image.
    assert torch.allclose(unscramble(small.scrambled.images, small.key), images.images)
    assert small.reassembled.shape == images.images.shape
    assert torch.allclose(small.reassembled, unscramble(small.inversion.reconstructions.float(), small.key)
                          .clamp(0, 1))

    def refuse(*args, **kwargs):
        raise AssertionError("the store should have served every scrambled image")

    monkeypatch.setattr(api, "invert", refuse)
    again = lim.scramble_sweep(ldm, images, [8], store, seed=3, method="ddim", num_steps=2, progress=False)
    assert torch.equal(again[8].scrambled.images, small.scrambled.images)  # the same scramble, served
    assert torch.equal(again[8].inversion.seeds, small.inversion.seeds)


def test_scramble_sweep_checks_the_patch_sizes_before_any_work(ldm, images, tmp_path, monkeypatch):
    monkeypatch.setattr(api, "invert", lambda *a, **k: pytest.fail("inverted before checking the patches"))
    with pytest.raises(ValueError, match="patch size 5"):
        lim.scramble_sweep(ldm, images, [8, 5], Store(tmp_path / "s"), seed=0, method="ddim", num_steps=2)


class _Detector:
    label_names = {"colour": ["red", "blue"], "shape": ["star", "triangle"]}

    def predict_proba(self, images):
        n = images.shape[0]
        shape = torch.tensor([[0.9, 0.1], [0.3, 0.7]])[:n]
        return {"colour": torch.full((n, 2), 0.5), "shape": shape}


class _Similarity:
    def similarity(self, images, texts):
        return images.mean(dim=(1, 2, 3))[:, None].repeat(1, len(texts))


def test_concept_scores():
    images = torch.stack([torch.full((3, 4, 4), 0.25), torch.full((3, 4, 4), 2.0)])  # the second is clamped to 1
    s = lim.concept_scores(images, _Detector(), _Similarity(), "triangle", "triangle")
    np.testing.assert_allclose(s["probability"], [0.1, 0.7])
    assert s["detected"].tolist() == [False, True]
    np.testing.assert_allclose(s["similarity"], [0.25, 1.0])
    with pytest.raises(ValueError, match="no label 'circle'"):
        lim.concept_scores(images, _Detector(), _Similarity(), "circle", "circle")
