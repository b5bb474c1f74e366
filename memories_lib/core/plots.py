"""The book's figures: one style for every chapter, and helpers shared by chapters.

``book_style()`` (called by every chapter's first cell) sets what all figures share: font sizes that
read at the book's width, seaborn's colour-blind-safe palette, unsmoothed images, no top and right
spines. A figure is at most ``BOOK_WIDTH`` inches wide at ``DPI``, so the page shows it at nearly its
own size (the reader's check fails on figures shrunk below 70%); ``fit_width`` scales a size that is
wider.
"""

from __future__ import annotations

import math
from typing import Sequence

import matplotlib as mpl
import matplotlib.pyplot as plt
import torch

BOOK_WIDTH = 8.0  # inches: the widest figure, about the book's content column at DPI
DPI = 100
PALETTE = "colorblind"  # seaborn's colour-blind-safe palette


def book_style() -> None:
    """Apply the book's matplotlib style (idempotent)."""
    import seaborn as sns

    colours = sns.color_palette(PALETTE)
    mpl.rcParams.update({
        "figure.dpi": DPI,
        "savefig.dpi": DPI,
        "figure.figsize": (BOOK_WIDTH * 0.75, 3.0),
        "font.size": 9,
        "axes.titlesize": 10,
        "axes.labelsize": 9,
        "xtick.labelsize": 8,
        "ytick.labelsize": 8,
        "legend.fontsize": 8,
        "figure.titlesize": 10,
        "axes.prop_cycle": mpl.cycler(color=colours),
        "axes.spines.top": False,
        "axes.spines.right": False,
        "image.interpolation": "nearest",
        "image.cmap": "viridis",
    })


def fit_width(width: float, height: float, max_width: float = BOOK_WIDTH) -> tuple[float, float]:
    """A figure size no wider than ``max_width`` inches, with the aspect of ``(width, height)``."""
    if width <= max_width:
        return width, height
    return max_width, height * max_width / width


def image_grid(
    images: torch.Tensor,
    cols: int,
    row_labels: Sequence[str] | None = None,
    col_labels: Sequence[str] | None = None,
    scale: float = 1.1,
    fontsize: int = 8,
    label_width: float = 0.9,
) -> plt.Figure:
    """Images (N, 3, H, W) in [0, 1] as a grid of ``cols`` columns, filled row by row.

    Rows may be labelled on the left (``label_width`` inches set aside for the labels), columns
    on top; pixels are shown unsmoothed. A grid wider than the book's column is scaled to fit it.
    """
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"image_grid expects (N, 3, H, W) images, got {tuple(images.shape)}")
    rows = max(1, math.ceil(images.shape[0] / cols))
    extra = label_width if row_labels else 0.0
    fig, axes = plt.subplots(rows, cols, figsize=fit_width(scale * cols + extra, scale * rows + 0.3), squeeze=False)
    for i, ax in enumerate(axes.flat):
        if i < images.shape[0]:
            ax.imshow(images[i].detach().cpu().float().clamp(0, 1).permute(1, 2, 0).numpy(), interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.spines[:].set_visible(False)
    for r, text in enumerate(row_labels or []):
        axes[r, 0].set_ylabel(text, rotation=0, ha="right", va="center", fontsize=fontsize)
    for c, text in enumerate(col_labels or []):
        axes[0, c].set_title(text, fontsize=fontsize)
    fig.tight_layout()
    return fig
