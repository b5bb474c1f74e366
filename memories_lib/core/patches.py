"""Scrambling images into shuffled square patches, and putting them back (the paper's section 5, Fig. 10).

The paper's limitation experiment cuts an image of the erased concept into patches, shuffles them,
inverts and regenerates the scrambled image with the erased model, and reassembles the patches of the
regeneration before scoring it. The paper gives no patch size; :func:`patch_sizes` lists the sizes
aligned to the VAE's downsampling ``factor`` (a patch then covers whole latent cells), from the whole
image (one patch: the plain image) down to one latent cell.

Images are float tensors (B, 3, H, W), as everywhere in the project. Every image of a batch gets its own
permutation, drawn from the ``torch.Generator`` passed in (deterministic for a seed).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def patch_sizes(image_size: int, factor: int) -> list[int]:
    """Patch sides that divide ``image_size`` and are multiples of ``factor``, largest (the image) first."""
    if image_size < 1 or factor < 1 or image_size % factor:
        raise ValueError(f"the image size ({image_size}) must be a positive multiple of the factor ({factor})")
    return [p for p in range(image_size, factor - 1, -1) if image_size % p == 0 and p % factor == 0]


@dataclass(frozen=True)
class Scramble:
    """How a batch was scrambled: the patch side and, per image, which original patch went where.

    ``order[b, i]`` is the index (row-major in the patch grid) of the original patch that position ``i``
    of scrambled image ``b`` holds.
    """

    patch: int
    order: torch.Tensor  # (B, cells) int64

    @property
    def cells(self) -> int:
        return self.order.shape[1]


def _grid(images: torch.Tensor, patch: int) -> tuple[int, int]:
    if images.dim() != 4:
        raise ValueError(f"expected images (B, C, H, W), got shape {tuple(images.shape)}")
    height, width = images.shape[-2:]
    if isinstance(patch, bool) or not isinstance(patch, int) or patch < 1 or height % patch or width % patch:
        valid = [p for p in range(min(height, width), 0, -1) if height % p == 0 and width % p == 0]
        raise ValueError(f"patch side {patch!r} does not tile a {height}x{width} image; sides that do: {valid}")
    return height // patch, width // patch


def _to_patches(images: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, cells, C, patch, patch), cells in row-major order."""
    rows, cols = _grid(images, patch)
    b, c = images.shape[:2]
    tiles = images.reshape(b, c, rows, patch, cols, patch).permute(0, 2, 4, 1, 3, 5)
    return tiles.reshape(b, rows * cols, c, patch, patch)


def _from_patches(tiles: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """(B, cells, C, patch, patch) -> (B, C, rows * patch, cols * patch)."""
    b, _, c, patch, _ = tiles.shape
    grid = tiles.reshape(b, rows, cols, c, patch, patch).permute(0, 3, 1, 4, 2, 5)
    return grid.reshape(b, c, rows * patch, cols * patch)


def scramble(images: torch.Tensor, patch: int, generator: torch.Generator) -> tuple[torch.Tensor, Scramble]:
    """Cut each image into ``patch`` x ``patch`` squares and shuffle them; returns the images and the key.

    One permutation per image, drawn in batch order from ``generator`` (on the CPU). With one patch
    (``patch`` = the image's side) the image is returned unchanged.
    """
    rows, cols = _grid(images, patch)
    tiles = _to_patches(images, patch)
    order = torch.stack([torch.randperm(rows * cols, generator=generator) for _ in range(images.shape[0])])
    shuffled = torch.gather(tiles, 1, order.to(images.device)[:, :, None, None, None].expand_as(tiles))
    return _from_patches(shuffled, rows, cols), Scramble(patch=patch, order=order)


def unscramble(images: torch.Tensor, key: Scramble) -> torch.Tensor:
    """Put the patches of scrambled images (or of their regenerations) back where they came from."""
    rows, cols = _grid(images, key.patch)
    if key.order.shape != (images.shape[0], rows * cols):
        raise ValueError(f"the key scrambled {tuple(key.order.shape)} (images, patches); these images have "
                         f"{(images.shape[0], rows * cols)}")
    tiles = _to_patches(images, key.patch)
    inverse = torch.argsort(key.order, dim=1).to(images.device)
    restored = torch.gather(tiles, 1, inverse[:, :, None, None, None].expand_as(tiles))
    return _from_patches(restored, rows, cols)
