"""The book's figure style and helpers."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import seaborn as sns  # noqa: E402
import torch  # noqa: E402

from memories_lib.core import plots  # noqa: E402


def test_book_style_sets_the_colour_blind_palette_and_unsmoothed_images():
    plots.book_style()
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    assert [matplotlib.colors.to_hex(c) for c in colours] == sns.color_palette("colorblind").as_hex()
    assert plt.rcParams["image.interpolation"] == "nearest"
    assert plt.rcParams["figure.dpi"] == plots.DPI and plt.rcParams["figure.figsize"][0] <= plots.BOOK_WIDTH


@pytest.mark.parametrize("size, fitted", [((6, 3), (6, 3)), ((16, 4), (8, 2)), ((8, 5), (8, 5))])
def test_fit_width_keeps_the_aspect_and_the_book_width(size, fitted):
    assert plots.fit_width(*size) == pytest.approx(fitted)


def test_a_wide_image_grid_fits_the_book_width():
    fig = plots.image_grid(torch.rand(12, 3, 8, 8), cols=12, row_labels=["a"])
    assert fig.get_size_inches()[0] == pytest.approx(plots.BOOK_WIDTH)
    plt.close(fig)
