"""Reading and writing images as float tensors (3, H, W) in [0, 1].

Conventions, the same everywhere in the project:

* 8-bit images only (COCO, the paper's generated sets and the shapes world are 8-bit); 16-bit and
  floating-point images are refused rather than guessed at;
* grayscale, bilevel and palette images become RGB;
* an image with transparency (RGBA, LA, a palette with a transparent colour) is composited onto a
  white background, as an image viewer shows it;
* the EXIF orientation of a photograph is applied;
* a ``size`` is checked, not silently enforced: a wrong size raises ``ImageError`` unless
  ``resize=True``, which centre-crops to a square and resizes (bicubic, antialiased).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .progress import tqdm

EIGHT_BIT_MODES = frozenset({"1", "L", "P", "RGB", "RGBA", "LA", "PA", "RGBX", "RGBa", "La", "CMYK", "YCbCr"})
ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})


class ImageError(ValueError):
    """An image file that cannot be used: unreadable, corrupt, of an unsupported kind or the wrong size."""


def _to_rgb(img: Image.Image, path: Path) -> Image.Image:
    """8-bit RGB; transparency is composited onto white."""
    if img.mode not in EIGHT_BIT_MODES:
        raise ImageError(f"{path}: pixel mode {img.mode!r} is not 8-bit; convert the image to 8-bit RGB first")
    if img.mode in ALPHA_MODES or "transparency" in img.info:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


def _square(img: Image.Image, size: int) -> Image.Image:
    """Centre-crop to a square, then resize to ``size`` x ``size`` (bicubic, antialiased)."""
    w, h = img.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    img = img.crop((left, top, left + side, top + side))
    return img if side == size else img.resize((size, size), Image.Resampling.BICUBIC)


def load_image(path: str | Path, size: int | None = None, resize: bool = False) -> torch.Tensor:
    """Read an image file as a float32 tensor (3, H, W) in [0, 1] (see the module's conventions).

    ``size``: the expected side of a square image; a file of another size raises ImageError naming
    both sizes, unless ``resize=True``, which centre-crops to a square and resizes to ``size``.
    Missing file -> FileNotFoundError; unreadable, corrupt or not 8-bit -> ImageError (a ValueError).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    if size is not None and (isinstance(size, bool) or int(size) != size or size < 1):
        raise ValueError(f"size must be a positive integer or None, got {size!r}")
    try:
        with Image.open(path) as opened:
            opened.load()
            img = _to_rgb(ImageOps.exif_transpose(opened), path)
    except ImageError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise ImageError(f"cannot read the image {path}: {err}") from err
    if size is not None and img.size != (size, size):
        if not resize:
            w, h = img.size
            raise ImageError(f"{path} is {w}x{h} pixels, expected {size}x{size} (pass resize=True to resize it)")
        img = _square(img, int(size))
    array = np.array(img, dtype=np.uint8)  # a writable copy
    return torch.from_numpy(array).permute(2, 0, 1).float().div_(255.0).contiguous()


def load_images(
    paths: Sequence[str | Path], size: int | None = None, resize: bool = False, desc: str = "images",
    progress: bool = True,
) -> torch.Tensor:
    """Read several images into one (B, 3, H, W) float32 batch in [0, 1] (see ``load_image``)."""
    paths = list(paths)
    if not paths:
        raise ValueError("load_images got no paths")
    images = [load_image(p, size, resize) for p in tqdm(paths, desc=desc, unit="image", leave=False,
                                                           disable=not progress)]
    if len({tuple(im.shape) for im in images}) > 1:
        found = ", ".join(f"{p}: {im.shape[2]}x{im.shape[1]}" for p, im in zip(paths, images))
        raise ImageError(f"images differ in size ({found}); pass size= (and resize=True) to batch them")
    return torch.stack(images)


def to_pil(image: torch.Tensor) -> Image.Image:
    """A (3, H, W), (1, H, W), (H, W) or (1, 3, H, W) tensor in [0, 1] as an 8-bit RGB PIL image."""
    t = torch.as_tensor(image).detach().to("cpu", torch.float32)
    shape = tuple(t.shape)
    if t.ndim == 4 and t.shape[0] == 1:
        t = t[0]
    if t.ndim == 2:
        t = t[None]
    if t.ndim != 3 or t.shape[0] not in (1, 3) or t.numel() == 0:
        raise ValueError(f"to_pil expects a (3, H, W) or (1, H, W) image, got shape {shape}")
    if torch.isnan(t).any() or t.min() < 0 or t.max() > 1:
        raise ValueError(f"to_pil expects values in [0, 1], got [{t.min().item():.4g}, {t.max().item():.4g}]")
    array = (t.expand(3, -1, -1) * 255).round().to(torch.uint8).permute(1, 2, 0).contiguous().numpy()
    return Image.fromarray(array)


def save_image(image: torch.Tensor, path: str | Path) -> Path:
    """Write a tensor image in [0, 1] to ``path`` (format from the suffix), atomically; returns the path."""
    path = Path(path)
    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"cannot tell the image format of {path} from its suffix {path.suffix!r}")
    pil = to_pil(image)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            pil.save(f, format=fmt)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


@dataclass(frozen=True)
class ImageSet:
    """Images (N, 3, H, W) in [0, 1] with their captions, a name for figures and tables, and how it was made."""

    name: str
    images: torch.Tensor
    prompts: tuple[str, ...]
    info: Mapping[str, Any] = field(default_factory=dict, compare=False)  # how it was made (e.g. acceptance)

    def __post_init__(self) -> None:
        if self.images.dim() != 4 or self.images.shape[1] != 3:
            raise ValueError(f"image set {self.name!r}: images must be (N, 3, H, W), got {tuple(self.images.shape)}")
        if len(self.prompts) != self.images.shape[0]:
            raise ValueError(
                f"image set {self.name!r}: {self.images.shape[0]} images but {len(self.prompts)} prompts"
            )
        object.__setattr__(self, "prompts", tuple(self.prompts))

    def __len__(self) -> int:
        return self.images.shape[0]


def seeded_choice(n_total: int, n: int, generator: torch.Generator) -> list[int]:
    """``n`` distinct indices of ``range(n_total)``, drawn with ``generator`` and sorted (never file-system order)."""
    if n > n_total:
        raise ValueError(f"cannot choose {n} items out of {n_total}")
    return sorted(torch.randperm(n_total, generator=generator)[:n].tolist())
