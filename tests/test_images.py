"""Image loading and saving: conventions and clear errors on bad files."""

import numpy as np
import pytest
import torch
from PIL import Image

from memories_lib.core.images import ImageError, load_image, load_images, save_image, to_pil


def quantised(shape, seed=0) -> torch.Tensor:
    """A random image whose values are multiples of 1/255 (exactly representable in 8 bits)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, shape, generator=g).float() / 255


def test_png_round_trip_is_exact(tmp_path):
    x = quantised((3, 16, 16))
    path = save_image(x, tmp_path / "sub" / "x.png")
    y = load_image(path, size=16)
    assert y.dtype == torch.float32 and y.shape == (3, 16, 16)
    assert torch.equal(x, y)
    assert list(tmp_path.rglob("*.tmp")) == []


def test_jpeg_loads_approximately(tmp_path):
    x = torch.full((3, 16, 16), 0.4)
    y = load_image(save_image(x, tmp_path / "x.jpg"))
    assert (y - x).abs().max() < 0.02


def test_missing_file_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.png"):
        load_image(tmp_path / "nope.png")


def test_corrupt_bytes_raise_image_error_naming_the_file(tmp_path):
    bad = tmp_path / "garbage.png"
    bad.write_bytes(b"this is not an image at all" * 10)
    with pytest.raises(ImageError, match="garbage.png"):
        load_image(bad)
    good = save_image(quantised((3, 32, 32)), tmp_path / "good.png")
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:100])
    with pytest.raises(ImageError, match="truncated.png"):
        load_image(truncated)
    assert issubclass(ImageError, ValueError)


def test_grayscale_becomes_rgb(tmp_path):
    gray = np.arange(64, dtype=np.uint8).reshape(8, 8) * 3
    Image.fromarray(gray).save(tmp_path / "g.png")  # mode L
    x = load_image(tmp_path / "g.png")
    assert x.shape == (3, 8, 8)
    for c in range(3):
        assert torch.equal(x[c], torch.from_numpy(gray).float() / 255)


def test_rgba_is_composited_on_white(tmp_path):
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[0, 0] = (255, 0, 0, 255)  # opaque red stays red
    rgba[0, 1] = (0, 0, 255, 0)  # fully transparent blue becomes white
    rgba[1, 0] = (0, 0, 0, 128)  # half-transparent black becomes mid gray
    rgba[1, 1] = (0, 255, 0, 255)
    Image.fromarray(rgba).save(tmp_path / "a.png")
    x = load_image(tmp_path / "a.png")
    assert x[:, 0, 0].tolist() == [1.0, 0.0, 0.0]
    assert x[:, 0, 1].tolist() == [1.0, 1.0, 1.0]
    assert torch.allclose(x[:, 1, 0], torch.full((3,), 127 / 255), atol=1.5 / 255)
    assert x[:, 1, 1].tolist() == [0.0, 1.0, 0.0]


def test_palette_transparency_is_composited_on_white(tmp_path):
    img = Image.new("P", (2, 1))
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * (3 * 254))
    img.putpixel((0, 0), 0)
    img.putpixel((1, 0), 1)
    img.save(tmp_path / "p.png", transparency=0)
    x = load_image(tmp_path / "p.png")
    assert x[:, 0, 0].tolist() == [1.0, 1.0, 1.0]
    assert x[:, 0, 1].tolist() == [1.0, 0.0, 0.0]


def test_sixteen_bit_images_are_refused(tmp_path):
    Image.fromarray(np.full((4, 4), 40000, dtype=np.uint16)).save(tmp_path / "deep.png")
    with pytest.raises(ImageError, match="8-bit"):
        load_image(tmp_path / "deep.png")


def test_wrong_size_names_both_sizes_unless_resize(tmp_path):
    path = save_image(quantised((3, 30, 40)), tmp_path / "r.png")
    with pytest.raises(ImageError, match=r"40x30.*32x32"):
        load_image(path, size=32)
    assert load_image(path, size=32, resize=True).shape == (3, 32, 32)


def test_resize_centre_crops_to_a_square(tmp_path):
    x = torch.zeros(3, 32, 64)
    x[2] = 1.0  # blue everywhere ...
    x[:, :, 16:48] = torch.tensor([1.0, 0.0, 0.0])[:, None, None]  # ... except a red centre square
    y = load_image(save_image(x, tmp_path / "wide.png"), size=32, resize=True)
    assert torch.equal(y, x[:, :, 16:48])
    small = load_image(tmp_path / "wide.png", size=8, resize=True)
    assert small.shape == (3, 8, 8) and torch.allclose(small[0], torch.ones(8, 8), atol=0.02)


def test_exif_orientation_is_applied(tmp_path):
    img = Image.fromarray(np.zeros((10, 20, 3), dtype=np.uint8))  # 20 wide, 10 high
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    img.save(tmp_path / "o.jpg", exif=exif)
    assert load_image(tmp_path / "o.jpg").shape == (3, 20, 10)


def test_load_images_stacks_and_checks_sizes(tmp_path):
    a = save_image(quantised((3, 8, 8), 1), tmp_path / "a.png")
    b = save_image(quantised((3, 8, 8), 2), tmp_path / "b.png")
    c = save_image(quantised((3, 8, 6), 3), tmp_path / "c.png")
    batch = load_images([a, b], size=8)
    assert batch.shape == (2, 3, 8, 8) and torch.equal(batch[1], load_image(b))
    with pytest.raises(ImageError, match="differ in size"):
        load_images([a, c])
    with pytest.raises(ValueError, match="no paths"):
        load_images([])


def test_to_pil_and_save_image_check_their_input(tmp_path):
    assert to_pil(torch.ones(1, 4, 5)).size == (5, 4)  # grayscale (1, H, W) -> RGB
    assert to_pil(torch.zeros(1, 3, 4, 5)).mode == "RGB"
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        to_pil(torch.full((3, 4, 4), 2.0))
    with pytest.raises(ValueError, match="shape"):
        to_pil(torch.zeros(4, 4, 3))
    with pytest.raises(ValueError, match="suffix"):
        save_image(torch.zeros(3, 4, 4), tmp_path / "x.unknown")
