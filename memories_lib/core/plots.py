"""Figure helpers shared by chapters."""

from __future__ import annotations

import math
from typing import Sequence

import matplotlib.pyplot as plt
import torch


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
    on top; pixels are shown unsmoothed.
    """
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"image_grid expects (N, 3, H, W) images, got {tuple(images.shape)}")
    rows = max(1, math.ceil(images.shape[0] / cols))
    extra = label_width if row_labels else 0.0
    fig, axes = plt.subplots(rows, cols, figsize=(scale * cols + extra, scale * rows + 0.3), squeeze=False)
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
