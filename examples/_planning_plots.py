"""Figures of ``examples/bayesian_planning.py``: training curves and open-loop predictions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

COLORS = {"deterministic": "tab:gray", "bayesian": "tab:blue"}


def _band(ax, x: np.ndarray, values: np.ndarray, label: str, color: str) -> None:
    """Median over the first axis with the 5-95 percentile band."""
    lo, mid, hi = np.percentile(values, [5, 50, 95], axis=0)
    ax.plot(x, mid, color=color, label=label)
    ax.fill_between(x, lo, hi, color=color, alpha=0.25, linewidth=0)


def plot_training(runs: dict[str, dict[str, np.ndarray]], path: Path) -> None:
    """Episode returns and weight KL over training, median and 5-95 over seeds.

    ``runs[variant]["returns"]``: ``(seeds, episodes)``; ``["kl"]``: ``(seeds, episodes + 1)``
    (the first column before any training).
    """
    fig = Figure(figsize=(10, 3.8))  # the Agg canvas, no pyplot state
    FigureCanvasAgg(fig)
    ax_ret, ax_kl = fig.subplots(1, 2)
    for name, run in runs.items():
        episodes = np.arange(1, run["returns"].shape[1] + 1)
        _band(ax_ret, episodes, run["returns"], name, COLORS.get(name, "tab:orange"))
        if name != "deterministic":
            kl = run["kl"]
            _band(ax_kl, np.arange(kl.shape[1]), kl, name, COLORS.get(name, "tab:orange"))
    ax_ret.set(xlabel="planner episode", ylabel="episode return", title="returns (5-95 band)")
    ax_ret.legend()
    ax_kl.set(
        xlabel="model trainings (0 = initialisation)",
        ylabel="KL(q(W) || p(W)) [nats]",
        title="weight KL of the Bayesian dynamics model",
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def plot_open_loop(
    rollouts: dict[str, np.ndarray], truth: np.ndarray, labels: list[str], path: Path
) -> None:
    """Open-loop predictions against the true states, one panel per state dimension.

    ``rollouts[variant]``: ``(K, T, S)`` predicted states (K function samples);
    ``truth``: ``(T, S)``. Bayesian models show the 5-95 band over samples.
    """
    num = truth.shape[1]
    fig = Figure(figsize=(3.6 * num, 3.4))
    FigureCanvasAgg(fig)
    axes = np.atleast_1d(fig.subplots(1, num))
    t = np.arange(1, truth.shape[0] + 1)
    for d, ax in enumerate(axes):
        ax.plot(t, truth[:, d], color="black", label="true")
        for name, pred in rollouts.items():
            color = COLORS.get(name, "tab:orange")
            if pred.shape[0] > 1:
                _band(ax, t, pred[..., d], f"{name} (5-95 over samples)", color)
            else:
                ax.plot(t, pred[0, :, d], color=color, linestyle="--", label=name)
        ax.set(xlabel="steps ahead (open loop)", title=labels[d] if d < len(labels) else f"s[{d}]")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
