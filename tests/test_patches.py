"""Scrambling images into patches and putting them back (the limitation experiment's image operation)."""

from __future__ import annotations

import pytest
import torch

from memories_lib.core.patches import Scramble, patch_sizes, scramble, unscramble


def _images(n=3, size=16, seed=0):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("size, factor, sides", [(32, 4, [32, 16, 8, 4]), (512, 8, [512, 256, 128, 64, 32, 16, 8]),
                                                 (48, 8, [48, 24, 16, 8]), (8, 8, [8])])
def test_patch_sizes_are_aligned_to_the_latent_grid(size, factor, sides):
    assert patch_sizes(size, factor) == sides


def test_patch_sizes_refuse_a_size_the_factor_does_not_divide():
    with pytest.raises(ValueError, match="multiple of the factor"):
        patch_sizes(30, 4)


@pytest.mark.parametrize("patch", [1, 2, 4, 8, 16])
def test_unscramble_puts_every_pixel_back(patch):
    x = _images()
    y, key = scramble(x, patch, torch.Generator().manual_seed(1))
    assert torch.equal(unscramble(y, key), x)
    assert key.order.shape == (3, (16 // patch) ** 2)


def test_a_scrambled_image_holds_the_same_patches_elsewhere():
    x = torch.arange(16.0).reshape(1, 1, 4, 4).expand(1, 3, 4, 4).contiguous()
    y, key = scramble(x, 2, torch.Generator().manual_seed(3))
    cells = [x[0, 0, r:r + 2, c:c + 2] for r in (0, 2) for c in (0, 2)]
    for i, source in enumerate(key.order[0].tolist()):
        r, c = divmod(i, 2)
        assert torch.equal(y[0, 0, 2 * r:2 * r + 2, 2 * c:2 * c + 2], cells[source])
    assert sorted(key.order[0].tolist()) == [0, 1, 2, 3]


def test_one_patch_is_the_plain_image_and_the_draw_is_seeded():
    x = _images()
    same, key = scramble(x, 16, torch.Generator().manual_seed(0))
    assert torch.equal(same, x) and key.order.tolist() == [[0], [0], [0]]
    a, ka = scramble(x, 4, torch.Generator().manual_seed(5))
    b, kb = scramble(x, 4, torch.Generator().manual_seed(5))
    c, kc = scramble(x, 4, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and torch.equal(ka.order, kb.order) and not torch.equal(ka.order, kc.order)
    assert not torch.equal(ka.order[0], ka.order[1]), "each image draws its own permutation"


def test_bad_patches_and_keys_are_named():
    x = _images()
    with pytest.raises(ValueError, match="does not tile a 16x16 image; sides that do: \\[16, 8, 4, 2, 1\\]"):
        scramble(x, 5, torch.Generator())
    _, key = scramble(x, 4, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="the key scrambled"):
        unscramble(x[:2], key)
    with pytest.raises(ValueError, match="does not tile"):
        unscramble(x, Scramble(patch=0, order=key.order))
