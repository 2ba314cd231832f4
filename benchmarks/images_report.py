"""The image benchmark's table and figures, from the per-run JSONs of ``images.py``.

``write_table`` merges ``<method>_seed<s>.json`` into a Markdown table beside the published
uncertainty-baselines rows; ``write_figures`` draws the reliability diagram, accuracy / NLL /
ECE against rotation angle, and the OOD ROC curves (needs matplotlib, the ``images``
extra). Both average over seeds; the table shows mean ± standard error.

    python benchmarks/images_report.py --out-dir benchmarks/results/images
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent

#: uncertainty-baselines, baselines/mnist/README.md, Fashion-MNIST: NLL, accuracy %, ECE.
PUBLISHED = (
    ("deterministic (published)", 0.321, 91.0, None),
    ("deep ensemble, 10 (published)", 0.200, 93.2, 0.010),
    ("refined VI (published)", 0.259, 90.6, 0.011),
    ("VI (published)", 0.292, 89.5, 0.011),
)
MIN_BIN_COUNT = 20  # reliability bins with fewer test images per seed are not drawn
OOD_KEYS = ("auroc_entropy", "auroc_mutual_information", "aupr_entropy", "aupr_mutual_information")


def mean_se(values: list[float], digits: int = 3) -> str:
    """``mean ± standard error`` (just the mean for one value)."""
    t = torch.tensor(values, dtype=torch.float64)
    if len(values) < 2:
        return f"{t.mean():.{digits}f}"
    return f"{t.mean():.{digits}f} ± {t.std() / len(values) ** 0.5:.{digits}f}"


#: single-model methods after the VI rows, in this order
SINGLE_MODEL_ORDER = ("batch_ensemble", "rank1", "sngp", "heteroscedastic")


def _row_order(method: str) -> tuple[int, int, str]:
    """Deterministic, ensembles by size, MC dropout, hand-built VI, converted VI,
    BatchEnsemble, rank-1, SNGP, heteroscedastic, others."""
    if method.startswith("deterministic"):
        return (0, method != "deterministic", method)
    if method.startswith("ensemble_") and method.rsplit("_", 1)[1].isdigit():
        return (1, int(method.rsplit("_", 1)[1]), method)
    if method == "mc_dropout":
        return (2, 0, method)
    if method.startswith("vi_"):
        return (4 if method.endswith("_converted") else 3, 0, method)
    if method in SINGLE_MODEL_ORDER:
        return (5, SINGLE_MODEL_ORDER.index(method), method)
    return (6, 0, method)


def load_runs(out_dir: Path) -> dict[str, list[dict]]:
    """method -> its runs (one dict per seed, in seed order), methods in table order."""
    runs: dict[str, list[dict]] = {}
    for f in sorted(out_dir.glob("*_seed*.json")):
        r = json.loads(f.read_text())
        if "test" in r:  # model-selection runs (--validation-only) have no test metrics
            runs.setdefault(r["method"], []).append(r)
    if not runs:
        raise FileNotFoundError(f"images_report: no <method>_seed<s>.json in {out_dir}")
    return {m: sorted(runs[m], key=lambda r: r["seed"]) for m in sorted(runs, key=_row_order)}


def cost_ratios(out_dir: Path, runs: dict[str, list[dict]]) -> tuple[dict[str, list[str]], str]:
    """method -> [train, predict] as ratios to the deterministic network, and where they
    come from: ``cost.json`` (side by side in one process) when present, else the runs'
    own timings (separate processes: noisier)."""
    cost_file = out_dir / "cost.json"
    if cost_file.exists():
        cost = json.loads(cost_file.read_text())
        ratios = {
            m: [f"{c['train_ratio']:.2f}", f"{c['predict_ratio']:.2f}"] for m, c in cost.items()
        }
        return ratios, "measured side by side in one process (`images.py --cost`)"
    det = runs.get("deterministic", [])
    if not det:
        return {}, "not measured"
    keys = ("train_s_per_epoch", "predict_ms_per_image")
    base = {k: sum(r["timing"][k] for r in det) / len(det) for k in keys}
    ratios = {
        m: [f"{sum(r['timing'][k] for r in rs) / len(rs) / base[k]:.2f}" for k in keys]
        for m, rs in runs.items()
    }
    return ratios, "from the runs' own timings (separate processes)"


def write_table(out_dir: Path, path: Path) -> str:
    """Merge the runs in ``out_dir`` into a Markdown table at ``path``; returns its text."""
    runs = load_runs(out_dir)
    cost, cost_source = cost_ratios(out_dir, runs)
    cols = ["method", "seeds", "epochs", "NLL", "accuracy %", "ECE", "Brier", "AUROC H",
            "AUROC MI", "AUPR H", "AUPR MI", "acc at 90°", "NLL at 90°", "train ×det",
            "training ×det", "predict ×det"]  # fmt: skip
    det_epochs = runs["deterministic"][0]["epochs"] if "deterministic" in runs else None
    det_runs = runs.get("deterministic", [])
    det_epoch_s = (
        sum(r["timing"]["train_s_per_epoch"] for r in det_runs) / len(det_runs) if det_runs else 0
    )
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for name, rs in runs.items():

        def col(get: Callable[[dict], float], rs: list[dict] = rs, digits: int = 3) -> str:
            return mean_se([get(r) for r in rs], digits)

        epochs = rs[0].get("epochs")  # None for an ensemble: its members' epochs
        train, predict = cost.get(name, ["—", "—"])
        total = train  # the whole training run, epochs included
        if train != "—" and epochs is not None and det_epochs is not None:
            whole = float(train) * epochs / det_epochs
            if "posthoc_s" in rs[0] and det_epoch_s:  # a post-hoc fit adds its own time
                whole += sum(r["posthoc_s"] for r in rs) / len(rs) / (det_epoch_s * det_epochs)
            total = f"{whole:.2f}"
        lines.append("| " + " | ".join([
            name, str(len(rs)), "—" if epochs is None else str(epochs),
            col(lambda r: r["test"]["nll"]),
            col(lambda r: 100 * r["test"]["accuracy"], digits=1), col(lambda r: r["test"]["ece"]),
            col(lambda r: r["test"]["brier"]),
            *(col(lambda r, k=k: r["ood"][k]) for k in OOD_KEYS),
            col(lambda r: 100 * r["rotation"]["90"]["accuracy"], digits=1),
            col(lambda r: r["rotation"]["90"]["nll"]),
            train, total, predict]) + " |")  # fmt: skip
    for name, nll, acc, ece in PUBLISHED:
        cells = [name, "—", "—", f"{nll:.3f}", f"{acc:.1f}", "—" if ece is None else f"{ece:.3f}"]
        lines.append("| " + " | ".join(cells + ["—"] * (len(cols) - len(cells))) + " |")
    calibrated = calibrated_table(runs)
    text = (
        "# Image benchmark: LeNet-5 on Fashion-MNIST (benchmarks/images.py)\n\n"
        "Mean ± standard error over seeds (an ensemble's seeds are disjoint sets of "
        "deterministic members). NLL, accuracy, ECE (15 bins) and Brier on the 10 000 test "
        "images; OOD: MNIST digits as positives, scored by predictive entropy (H) or mutual "
        "information (MI); rotation: every 5th test image turned by 90°. Cost: training time "
        "per step (train) and for the whole run (training: per step × epochs / the "
        "deterministic network's epochs, plus a post-hoc fit's seconds over the deterministic "
        "runs' training seconds), and predictive time per image, as ratios to the "
        f"deterministic network, {cost_source}. Protocol and discussion: docs/images.md.\n\n"
        + "\n".join(lines)
        + "\n"
        + calibrated
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return text


def calibrated_table(runs: dict[str, list[dict]]) -> str:
    """The rows whose runs all carry temperature-scaled test metrics, uncalibrated beside
    calibrated ("" when there are none)."""
    have = {m: rs for m, rs in runs.items() if all("calibrated" in r for r in rs)}
    if not have:
        return ""
    cols = ["method", "seeds", "T", "NLL", "NLL, T-scaled", "ECE", "ECE, T-scaled",
            "accuracy %", "accuracy %, T-scaled"]  # fmt: skip
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for name, rs in have.items():
        cal = [r["calibrated"] for r in rs]
        lines.append("| " + " | ".join([
            name, str(len(rs)), mean_se([c["temperature"] for c in cal], 2),
            mean_se([r["test"]["nll"] for r in rs]), mean_se([c["test"]["nll"] for c in cal]),
            mean_se([r["test"]["ece"] for r in rs]), mean_se([c["test"]["ece"] for c in cal]),
            mean_se([100 * r["test"]["accuracy"] for r in rs], 1),
            mean_se([100 * c["test"]["accuracy"] for c in cal], 1)]) + " |")  # fmt: skip
    return (
        "\n## After temperature scaling\n\n"
        "One temperature per run, fitted on the validation split (`bl.calibrate`'s fit, on the "
        "method's predictive samples) and applied to every test sample before averaging; "
        "the uncalibrated columns are the same runs' (Ashukha et al., 2020: uncalibrated "
        "metrics can mis-rank methods). Only runs made since calibration was added carry it.\n\n"
        + "\n".join(lines)
        + "\n"
    )


def _mean(curves: list[list[float]]) -> list[float]:
    """Pointwise mean over seeds."""
    return torch.tensor(curves, dtype=torch.float64).mean(0).tolist()


def _pooled_reliability(rs: list[dict]) -> tuple[list[float], list[float]]:
    """Bin confidence and accuracy pooled over seeds (count-weighted); bins holding fewer
    than :data:`MIN_BIN_COUNT` images per seed are NaN (not drawn: too noisy)."""
    counts = torch.tensor([r["reliability"]["counts"] for r in rs], dtype=torch.float64)

    def pooled(key: str) -> list[float]:
        values = torch.tensor(
            [[math.nan if v is None else v for v in r["reliability"][key]] for r in rs],
            dtype=torch.float64,
        )
        total = (values.nan_to_num(0.0) * counts).sum(0)
        n = counts.sum(0)
        enough = n >= MIN_BIN_COUNT * len(rs)
        return torch.where(enough, total / n.clamp_min(1), math.nan).tolist()

    return pooled("confidence"), pooled("accuracy")


def write_figures(out_dir: Path, fig_dir: Path, methods: list[str] | None = None) -> list[Path]:
    """Reliability diagram, metrics against rotation angle and OOD ROC curves (PNG) of
    ``methods`` (default: every method in ``out_dir`` but the ``*_converted`` VI rows)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = load_runs(out_dir)
    if methods is None:  # the converted VI rows differ from the hand-built ones in init only
        methods = [m for m in runs if not m.endswith("_converted")]
    names = [m for m in methods if m in runs]
    tab20 = plt.get_cmap("tab20").colors  # type: ignore[attr-defined]
    color = {m: tab20[(2 * i) % 20 + (2 * i) // 20 % 2] for i, m in enumerate(names)}  # 20 hues
    fig_dir.mkdir(parents=True, exist_ok=True)
    paths = []

    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], "k:", lw=1, label="perfect calibration")
    for name in names:
        conf, acc = _pooled_reliability(runs[name])
        ax.plot(conf, acc, "o-", ms=3, label=name, color=color[name])
    ax.set(
        xlabel="confidence",
        ylabel="accuracy",
        title=f"Reliability, Fashion-MNIST test (bins of ≥ {MIN_BIN_COUNT} images)",
    )
    ax.legend(fontsize=7)
    paths.append(fig_dir / "images_reliability.png")
    fig.savefig(paths[-1], dpi=120, bbox_inches="tight")
    plt.close(fig)

    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for ax, key, label in zip(
        axes, ("accuracy", "nll", "ece"), ("accuracy", "NLL", "ECE"), strict=True
    ):
        for name in names:
            angles = sorted(int(a) for a in runs[name][0]["rotation"])
            curve = [[r["rotation"][str(a)][key] for a in angles] for r in runs[name]]
            ax.plot(angles, _mean(curve), "o-", ms=3, label=name, color=color[name])
        ax.set(xlabel="rotation (degrees)", ylabel=label, title=f"{label} under rotation")
    axes[0].legend(fontsize=7)
    paths.append(fig_dir / "images_rotation.png")
    fig.savefig(paths[-1], dpi=120, bbox_inches="tight")
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.5))
    for ax, score in zip(axes, ("entropy", "mutual_information"), strict=True):
        ax.plot([0, 1], [0, 1], "k:", lw=1)
        for name in names:
            if score == "mutual_information" and runs[name][0].get("num_samples") == 1:
                continue  # one function: the mutual information is 0 everywhere
            tpr = _mean([r["ood"][f"roc_{score}"] for r in runs[name]])
            fpr = torch.linspace(0, 1, len(tpr)).tolist()
            auc = sum(r["ood"][f"auroc_{score}"] for r in runs[name]) / len(runs[name])
            ax.plot(fpr, tpr, label=f"{name} ({auc:.3f})", color=color[name])
        ax.set(
            xlabel="false-positive rate (Fashion-MNIST)",
            ylabel="true-positive rate (MNIST)",
            title=f"OOD ROC by {score.replace('_', ' ')}",
        )
        ax.legend(fontsize=7)
    paths.append(fig_dir / "images_ood_roc.png")
    fig.savefig(paths[-1], dpi=120, bbox_inches="tight")
    plt.close(fig)
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=HERE / "results" / "images")
    parser.add_argument("--table-path", type=Path, default=HERE / "results" / "images.md")
    parser.add_argument("--fig-dir", type=Path, default=HERE / "results")
    parser.add_argument("--no-figures", action="store_true")
    args = parser.parse_args(argv)
    print(write_table(args.out_dir, args.table_path))
    if not args.no_figures:
        for p in write_figures(args.out_dir, args.fig_dir):
            print(f"wrote {p}")


if __name__ == "__main__":
    main()
