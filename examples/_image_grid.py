"""A labelled grid of small grey images as a PNG, shared by the generative examples."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import Tensor


def save_image_grid(
    rows: Sequence[tuple[str, Tensor]], path: Path, vmax: float, left: float = 0.12
) -> None:
    """One labelled row per ``(label, images (n, H, W))``; intensities in ``[0, vmax]``."""
    n = len(rows[0][1])
    fig = Figure(figsize=(n * 0.9, len(rows) * 1.0))
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(rows), n)
    for r, (label, images) in enumerate(rows):
        for c in range(n):
            ax = axes[r, c]
            ax.imshow(images[c], cmap="gray_r", vmin=0, vmax=vmax)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r, 0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    fig.subplots_adjust(left=left, right=0.99, top=0.99, bottom=0.01, wspace=0.05, hspace=0.05)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
