"""The demo's figures: a reliability diagram and a predictive-interval plot (matplotlib Agg)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .. import metrics
from ._extra import missing_message

__all__ = ["plot_reliability", "plot_intervals"]


# ------------------------------------------------------------------------------ figures
def _figure(width: float, height: float, ncols: int) -> tuple[Any, Any]:
    """A matplotlib figure on the Agg canvas (no pyplot, no global backend state)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:  # pragma: no cover - run_demo checks the extra first
        raise ModuleNotFoundError(missing_message(["matplotlib"]), name="matplotlib") from err
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(1, ncols, sharey=True)


def plot_reliability(det: dict[str, Any], bayes: dict[str, Any], path: Path) -> Path:
    fig, axes = _figure(9.0, 4.4, 2)
    for ax, (name, res) in zip(axes, (("Deterministic", det), ("Bayesian", bayes)), strict=True):
        bins: metrics.ReliabilityBins = res["bins"]
        filled = (bins.counts > 0).numpy()
        left = bins.edges[:-1].numpy()[filled]
        width = np.diff(bins.edges.numpy())[filled]
        acc, conf = bins.accuracy.numpy()[filled], bins.confidence.numpy()[filled]
        ax.bar(
            left,
            acc,
            width,
            align="edge",
            color="tab:blue",
            edgecolor="black",
            label="accuracy in bin",
        )
        ax.bar(
            left,
            np.abs(conf - acc),
            width,
            bottom=np.minimum(acc, conf),
            align="edge",
            fill=False,
            hatch="//",
            edgecolor="tab:red",
            label="gap to mean confidence",
        )
        for x, top, n in zip(
            left + width / 2, np.maximum(acc, conf), bins.counts[filled].tolist(), strict=True
        ):
            ax.annotate(
                str(n), (x, top), xytext=(0, 2), textcoords="offset points", ha="center", fontsize=6
            )
        ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
        ax.set(
            xlim=(0, 1),
            ylim=(0, 1.06),
            xlabel="confidence (top-class probability)",
            title=f"{name} MLP: acc {res['accuracy']:.3f}, ECE {res['ece']:.3f}",
        )
        ax.legend(loc="upper left", fontsize=8)
    axes[0].set_ylabel("accuracy")
    fig.suptitle("Reliability diagram, digits test set (15 bins; numbers: examples per bin)")
    fig.savefig(path, dpi=110)
    return path


def plot_intervals(diabetes: dict[str, Any], path: Path) -> Path:
    y = diabetes["y_test"].numpy()
    fig, axes = _figure(11.0, 4.4, 2)
    for ax, name in zip(axes, ("deterministic", "bayesian"), strict=True):
        res = diabetes[name]
        order = np.argsort(res["mean"].numpy())  # each panel sorted by its predictive mean
        lo, hi, mean = (res[k].numpy()[order] for k in ("lower", "upper", "mean"))
        target, x = y[order], np.arange(len(y))
        ax.fill_between(
            x,
            lo,
            hi,
            color="tab:orange" if name == "bayesian" else "tab:blue",
            alpha=0.3,
            label="central 90% interval",
        )
        ax.plot(x, mean, "-", lw=1, color="black", label="predictive mean")
        inside = (target >= lo) & (target <= hi)
        ax.plot(
            x[inside],
            target[inside],
            "o",
            ms=3,
            mfc="none",
            color="tab:green",
            label="target, inside",
        )
        ax.plot(x[~inside], target[~inside], "x", ms=4, color="tab:red", label="target, outside")
        ax.set(
            xlabel="test point (sorted by predictive mean)",
            title=f"{name.capitalize()} MLP: coverage {res['coverage']:.2f}, "
            f"RMSE {res['rmse']:.1f}",
        )
        ax.legend(loc="upper left", fontsize=8)
    axes[0].set_ylabel("disease progression (original units)")
    fig.suptitle("Diabetes test set: predictive intervals")
    fig.savefig(path, dpi=110)
    return path
