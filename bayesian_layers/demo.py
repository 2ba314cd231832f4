"""End-to-end demo: a deterministic MLP against the same MLP with Bayesian layers.

Two of scikit-learn's bundled data sets (no download):

* ``load_digits`` (8x8 images, 10 classes): test accuracy, NLL, ECE, a reliability
  diagram, and out-of-distribution detection: train on digits 0-7, then score the
  test 8s and 9s against the test 0-7s by predictive entropy (both models) and by
  mutual information (Bayesian model), reported as AUROC.
* ``load_diabetes`` (regression): RMSE, Gaussian NLL with a learned homoscedastic
  noise scale (a mixture over K function samples for the Bayesian model) and the
  coverage of central 90% predictive intervals, plus an interval plot.

Both models share architecture, initialisation, optimiser, epochs and data; one flag
(``bayesian``) swaps ``nn.Linear`` for a ``layers.Linear<Estimator>``. The Bayesian
model is trained on the full-KL ELBO of the package's convention,
``nll_mean + kl_weight * sum(bl.losses(model)) / num_train_examples``.

Needs scikit-learn and matplotlib (the ``dev`` extra); tqdm is optional.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from . import metrics

__all__ = ["ESTIMATORS", "DemoConfig", "DemoResult", "Row", "format_report", "run_demo"]

#: Weight estimators the demo can use, as in ``layers.Linear<Estimator>``.
ESTIMATORS = ("Flipout", "Reparameterization", "LocalReparameterization")

_SPLIT_SEED = 0  # the train/test split never changes with --seed
_Z90 = 1.6448536269514722  # standard normal 95% quantile: central 90% interval


@dataclass(frozen=True)
class DemoConfig:
    """Settings of one demo run (the defaults are the tuned full run).

    Attributes:
        seed: seeds torch and numpy; the same seed gives the same table.
        quick: a much shorter run (for tests): fewer epochs and samples.
        epochs: epochs for every model; ``None`` uses the per-data-set default.
        kl_weight: multiplies the KL term of the ELBO (1.0 = full KL).
        estimator: one of :data:`ESTIMATORS`.
        hidden_digits: widths of the hidden layers of the digits MLP.
        hidden_diabetes: widths of the hidden layers of the diabetes MLP.
        lr: Adam learning rate.
        batch_size: minibatch size.
        num_samples: K, function samples for the Bayesian predictive.
        out_dir: where the PNG figures go.
        progress: show tqdm bars while training (when tqdm is installed).
        threads: upper bound on torch's intra-op threads during the run.
    """

    seed: int = 0
    quick: bool = False
    epochs: int | None = None
    kl_weight: float = 1.0
    estimator: str = "Flipout"
    hidden_digits: tuple[int, ...] = (128, 128)
    hidden_diabetes: tuple[int, ...] = (50,)
    lr: float = 3e-3
    batch_size: int = 64
    num_samples: int = 64
    out_dir: Path = Path("demo_output")
    progress: bool = True
    threads: int = 1

    def epochs_for(self, dataset: str) -> int:
        if self.epochs is not None:
            return self.epochs
        full = {"digits": 60, "diabetes": 200}[dataset]
        return max(1, full // 6) if self.quick else full


@dataclass
class Row:
    """One table row: a metric for both models. ``goal`` is "max", "min" or a target."""

    dataset: str
    metric: str
    goal: str
    deterministic: float | None
    bayesian: float | None

    @property
    def better(self) -> str:
        """``"bayesian"``, ``"deterministic"``, ``"tie"`` or ``"-"`` (one model only)."""
        d, b = self.deterministic, self.bayesian
        if d is None or b is None:
            return "-"
        if self.goal == "max":
            d, b = -d, -b
        elif self.goal not in ("min", "max"):
            target = float(self.goal.lstrip("≈~"))
            d, b = abs(d - target), abs(b - target)
        if math.isclose(d, b, rel_tol=1e-9, abs_tol=5e-4):
            return "tie"
        return "bayesian" if b < d else "deterministic"


@dataclass
class DemoResult:
    """What :func:`run_demo` returns: the rows, the figure paths and notes."""

    config: DemoConfig
    rows: list[Row]
    figures: list[Path]
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0


# ----------------------------------------------------------------------------- models
def make_mlp(
    in_features: int, hidden: tuple[int, ...], out_features: int, config: DemoConfig, bayesian: bool
) -> nn.Sequential:
    """A ReLU MLP; ``bayesian`` swaps every ``nn.Linear`` for ``layers.Linear<Estimator>``.

    Both start alike: weights (posterior means) uniform on ``±1/sqrt(fan_in)``, biases 0.
    """
    linear: Callable[[int, int], nn.Module]
    if bayesian:
        from . import layers

        if config.estimator not in ESTIMATORS:
            raise ValueError(
                f"make_mlp expected estimator in {ESTIMATORS}, got {config.estimator!r}"
            )
        linear = getattr(layers, f"Linear{config.estimator}")
    else:
        linear = _linear_zero_bias
    widths = (in_features, *hidden)
    mods: list[nn.Module] = []
    for fan_in, fan_out in zip(widths[:-1], widths[1:], strict=True):
        mods += [linear(fan_in, fan_out), nn.ReLU()]
    return nn.Sequential(*mods, linear(widths[-1], out_features))


def _linear_zero_bias(in_features: int, out_features: int) -> nn.Linear:
    layer = nn.Linear(in_features, out_features)
    nn.init.zeros_(layer.bias)  # as the Bayesian layers' default deterministic bias
    return layer


class Regressor(nn.Module):
    """An MLP for the mean and a learned homoscedastic noise scale ``softplus(noise_rho)``."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.noise_rho = nn.Parameter(torch.tensor(0.5413))  # softplus -> 1.0

    @property
    def noise_scale(self) -> Tensor:
        return nn.functional.softplus(self.noise_rho) + 1e-4

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).squeeze(-1)


# --------------------------------------------------------------------------- training
def _progress(it: Iterable[int], desc: str, enabled: bool) -> Iterable[int]:
    if not enabled:
        return it
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm is optional
        return it
    return tqdm(it, desc=desc, leave=False, dynamic_ncols=True)


def train(
    model: nn.Module,
    nll: Callable[[nn.Module, Tensor, Tensor], Tensor],
    x: Tensor,
    y: Tensor,
    config: DemoConfig,
    *,
    bayesian: bool,
    epochs: int,
    generator: torch.Generator,
    desc: str,
) -> None:
    """Adam on minibatches; the ELBO ``nll_mean + kl_weight * KL / N`` when ``bayesian``."""
    import bayesian_layers as bl

    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    n = x.shape[0]
    bar = _progress(range(epochs), desc, config.progress)
    for _ in bar:
        perm = torch.randperm(n, generator=generator)
        for start in range(0, n, config.batch_size):
            idx = perm[start : start + config.batch_size]
            loss = nll(model, x[idx], y[idx])
            if bayesian:
                loss = bl.elbo_loss(loss, model, n, kl_weight=config.kl_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if hasattr(bar, "set_postfix"):
            bar.set_postfix(loss=f"{loss.item():.3f}")


def _cross_entropy(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    return nn.functional.cross_entropy(model(x), y)


def _gaussian(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    assert isinstance(model, Regressor)
    return metrics.gaussian_nll(model(x), model.noise_scale, y)


# ------------------------------------------------------------------------------- data
def _standardise(train: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    mean, std = train.mean(0), train.std(0)
    std = np.where(std > 0, std, 1.0)
    return [(a - mean) / std for a in (train, *others)]


def _load_digits() -> tuple[np.ndarray, ...]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=0.3, stratify=y, random_state=_SPLIT_SEED
    )
    return x_tr, x_te, y_tr, y_te


def _load_diabetes() -> tuple[np.ndarray, ...]:
    from sklearn.datasets import load_diabetes
    from sklearn.model_selection import train_test_split

    x, y = load_diabetes(return_X_y=True)
    return tuple(train_test_split(x, y, test_size=0.3, random_state=_SPLIT_SEED))


def _f32(a: np.ndarray) -> Tensor:
    return torch.as_tensor(a, dtype=torch.float32)


# ----------------------------------------------------------------------- predictions
def _class_probs(model: nn.Module, x: Tensor, bayesian: bool, k: int) -> tuple[Tensor, Tensor]:
    """``(probs_mean (N, C), prob_samples (K, N, C))``; K = 1 for the deterministic model."""
    import bayesian_layers as bl

    with torch.no_grad():
        if not bayesian:
            probs = model(x).softmax(-1)
            return probs, probs.unsqueeze(0)
        pred = bl.predict(model, x, num_samples=k, transform=lambda z: z.softmax(-1))
        return pred.mean, pred.samples


def _mixture_quantile(locs: Tensor, scale: Tensor, q: float, iters: int = 60) -> Tensor:
    """Quantile of the equal mixture of ``N(locs[k], scale²)`` over k, per column, by bisection."""
    normal = torch.distributions.Normal(0.0, 1.0)
    lo = locs.min(0).values - 10 * scale
    hi = locs.max(0).values + 10 * scale
    for _ in range(iters):
        mid = (lo + hi) / 2
        cdf = normal.cdf((mid - locs) / scale).mean(0)  # (N,)
        below = cdf < q
        lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
    return (lo + hi) / 2


# -------------------------------------------------------------------------- the runs
def _digits(config: DemoConfig, gen: torch.Generator) -> dict[str, Any]:
    x_tr, x_te, y_tr, y_te = _load_digits()
    x_tr, x_te = map(_f32, _standardise(x_tr, x_te))
    y_tr, y_te = torch.as_tensor(y_tr), torch.as_tensor(y_te)
    in_tr, in_te = y_tr < 8, y_te < 8
    epochs, k = config.epochs_for("digits"), config.num_samples
    out: dict[str, Any] = {}
    for bayesian in (False, True):
        name = "bayesian" if bayesian else "deterministic"
        model = make_mlp(64, config.hidden_digits, 10, config, bayesian)
        train(
            model,
            _cross_entropy,
            x_tr,
            y_tr,
            config,
            bayesian=bayesian,
            epochs=epochs,
            generator=gen,
            desc=f"digits {name}",
        )
        probs, _ = _class_probs(model, x_te, bayesian, k)
        # Out of distribution: a second model of the same kind, trained on digits 0-7 only.
        ood_model = make_mlp(64, config.hidden_digits, 8, config, bayesian)
        train(
            ood_model,
            _cross_entropy,
            x_tr[in_tr],
            y_tr[in_tr],
            config,
            bayesian=bayesian,
            epochs=epochs,
            generator=gen,
            desc=f"digits 0-7 {name}",
        )
        p_mean, p_samples = _class_probs(ood_model, x_te, bayesian, k)
        is_ood = ~in_te
        out[name] = {
            "accuracy": metrics.accuracy(probs, y_te).item(),
            "nll": metrics.negative_log_likelihood(probs, y_te).item(),
            "ece": metrics.expected_calibration_error(probs, y_te).item(),
            "confidence": probs.max(-1).values.mean().item(),
            "bins": metrics.reliability_bins(probs, y_te),
            "auroc_entropy": metrics.auroc(metrics.predictive_entropy(p_mean), is_ood).item(),
            "auroc_mi": metrics.auroc(metrics.mutual_information(p_samples), is_ood).item()
            if bayesian
            else None,
        }
    return out


def _diabetes(config: DemoConfig, gen: torch.Generator) -> dict[str, Any]:
    x_tr, x_te, y_tr, y_te = _load_diabetes()
    x_tr, x_te = map(_f32, _standardise(x_tr, x_te))
    y_mean, y_std = float(y_tr.mean()), float(y_tr.std())
    y_tr_s = _f32((y_tr - y_mean) / y_std)
    y_te = torch.as_tensor(y_te, dtype=torch.float64)  # original units
    epochs, k = config.epochs_for("diabetes"), config.num_samples
    out: dict[str, Any] = {"y_test": y_te}
    for bayesian in (False, True):
        name = "bayesian" if bayesian else "deterministic"
        model = Regressor(make_mlp(x_tr.shape[1], config.hidden_diabetes, 1, config, bayesian))
        train(
            model,
            _gaussian,
            x_tr,
            y_tr_s,
            config,
            bayesian=bayesian,
            epochs=epochs,
            generator=gen,
            desc=f"diabetes {name}",
        )
        with torch.no_grad():
            if bayesian:
                import bayesian_layers as bl

                locs = bl.predict(model, x_te, num_samples=k).samples  # (K, N)
            else:
                locs = model(x_te).unsqueeze(0)  # (1, N)
            locs = locs.double() * y_std + y_mean  # original units
            scale = model.noise_scale.double() * y_std
        lower = _mixture_quantile(locs, scale, 0.05)
        upper = _mixture_quantile(locs, scale, 0.95)
        mean = locs.mean(0)
        out[name] = {
            "rmse": metrics.rmse(mean, y_te).item(),
            "nll": metrics.mixture_gaussian_nll(locs, scale, y_te).item(),
            "coverage": metrics.interval_coverage(lower, upper, y_te).item(),
            "noise_scale": scale.item(),
            "mean": mean,
            "lower": lower,
            "upper": upper,
        }
    out["rmse_mean_prediction"] = metrics.rmse(torch.full_like(y_te, y_mean), y_te).item()
    return out


@contextlib.contextmanager
def _deterministic_torch(seed: int, threads: int) -> Iterator[torch.Generator]:
    """Seed everything and use deterministic kernels; restore torch's global settings after."""
    old_threads = torch.get_num_threads()
    old_det = torch.are_deterministic_algorithms_enabled()
    old_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.set_num_threads(max(1, min(threads, old_threads)))
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(seed)
    np.random.seed(seed)  # noqa: NPY002 - legacy global, in case anything downstream uses it
    try:
        yield torch.Generator().manual_seed(seed)
    finally:
        torch.use_deterministic_algorithms(old_det, warn_only=old_warn)
        torch.set_num_threads(old_threads)


def run_demo(config: DemoConfig | None = None) -> DemoResult:
    """Train the four digits models and two diabetes models; build the table and figures."""
    config = config or DemoConfig()
    if config.quick:
        config = replace(config, num_samples=min(config.num_samples, 16))
    start = time.perf_counter()
    with _deterministic_torch(config.seed, config.threads) as gen:
        digits = _digits(config, gen)
        diabetes = _diabetes(config, gen)
    d, b = digits["deterministic"], digits["bayesian"]
    rd, rb = diabetes["deterministic"], diabetes["bayesian"]
    rows = [
        Row("digits", "test accuracy", "max", d["accuracy"], b["accuracy"]),
        Row("digits", "test NLL (nats)", "min", d["nll"], b["nll"]),
        Row("digits", "ECE (15 bins)", "min", d["ece"], b["ece"]),
        Row("digits", "OOD AUROC, entropy", "max", d["auroc_entropy"], b["auroc_entropy"]),
        Row("digits", "OOD AUROC, MI (B) vs entropy (D)", "max", d["auroc_entropy"], b["auroc_mi"]),
        Row("diabetes", "test RMSE (original units)", "min", rd["rmse"], rb["rmse"]),
        Row("diabetes", "test NLL (original units)", "min", rd["nll"], rb["nll"]),
        Row("diabetes", "90% interval coverage", "≈0.90", rd["coverage"], rb["coverage"]),
    ]
    config.out_dir.mkdir(parents=True, exist_ok=True)
    figures = [
        _plot_reliability(d, b, config.out_dir / "reliability_digits.png"),
        _plot_intervals(diabetes, config.out_dir / "intervals_diabetes.png"),
    ]
    result = DemoResult(config, rows, figures, seconds=time.perf_counter() - start)
    result.notes = _notes(result, digits, diabetes)
    return result


def _notes(result: DemoResult, digits: dict[str, Any], diabetes: dict[str, Any]) -> list[str]:
    c = result.config
    kl = "full KL" if c.kl_weight == 1.0 else f"KL x {c.kl_weight:g} (tempered)"
    notes = [
        f"Bayesian model: layers.Linear{c.estimator}, N(0, 1) prior, {kl}, "
        f"K = {c.num_samples} function samples at test time.",
        f"Both models: MLP with 2 x {c.hidden} ReLU units, Adam lr {c.lr:g}, batch "
        f"{c.batch_size}, epochs digits {c.epochs_for('digits')} / diabetes "
        f"{c.epochs_for('diabetes')}, seed {c.seed}.",
        "OOD: models trained on digits 0-7; positives are test 8s and 9s, negatives test 0-7.",
        f"Diabetes mean-prediction RMSE (baseline): {diabetes['rmse_mean_prediction']:.1f}; "
        f"learned noise scale: deterministic {diabetes['deterministic']['noise_scale']:.1f}, "
        f"bayesian {diabetes['bayesian']['noise_scale']:.1f}.",
    ]
    worse = [f"{r.dataset} {r.metric}" for r in result.rows if r.better == "deterministic"]
    if worse:
        notes.append("The Bayesian model is worse on: " + "; ".join(worse) + ".")
    b = digits["bayesian"]
    if b["confidence"] < b["accuracy"] - 0.01:
        notes.append(
            f"The Bayesian MLP is underconfident on digits: mean top-class probability "
            f"{b['confidence']:.3f} < accuracy {b['accuracy']:.3f}. Full-KL mean-field VI "
            "with an N(0, 1) prior overweights the prior on a small data set; "
            "--kl-weight 0.1 (a tempered posterior) sharpens it."
        )
    cov = diabetes["bayesian"]["coverage"]
    if cov > 0.95:
        notes.append(f"The Bayesian 90% intervals are too wide on diabetes (coverage {cov:.2f}).")
    return notes


# ------------------------------------------------------------------------------ figures
def _figure(width: float, height: float, ncols: int) -> tuple[Any, Any]:
    """A matplotlib figure on the Agg canvas (no pyplot, no global backend state)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:  # pragma: no cover - matplotlib is in the dev extra
        raise ImportError("the demo's figures need matplotlib: pip install matplotlib") from err
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(1, ncols, sharey=True)


def _plot_reliability(det: dict[str, Any], bayes: dict[str, Any], path: Path) -> Path:
    fig, axes = _figure(9.0, 4.2, 2)
    for ax, (name, res) in zip(
        axes, (("Deterministic MLP", det), ("Bayesian MLP", bayes)), strict=True
    ):
        bins: metrics.ReliabilityBins = res["bins"]
        edges = bins.edges.numpy()
        width = np.diff(edges)
        filled = bins.counts.numpy() > 0
        acc = np.nan_to_num(bins.accuracy.numpy())
        conf = np.nan_to_num(bins.confidence.numpy())
        ax.bar(
            edges[:-1][filled],
            acc[filled],
            width=width[filled],
            align="edge",
            color="tab:blue",
            edgecolor="black",
            label="accuracy",
        )
        ax.bar(
            edges[:-1][filled],
            (conf - acc)[filled],
            bottom=acc[filled],
            width=width[filled],
            align="edge",
            color="tab:red",
            alpha=0.35,
            edgecolor="tab:red",
            label="gap to confidence",
        )
        ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
        ax.set(
            xlim=(0, 1),
            ylim=(0, 1),
            xlabel="confidence (top-class probability)",
            title=f"{name}: acc {res['accuracy']:.3f}, ECE {res['ece']:.3f}",
        )
        ax.legend(loc="upper left", fontsize=8)
    axes[0].set_ylabel("accuracy")
    fig.suptitle("Reliability diagram, digits test set (15 bins)")
    fig.savefig(path, dpi=110)
    return path


def _plot_intervals(diabetes: dict[str, Any], path: Path) -> Path:
    y = diabetes["y_test"].numpy()
    order = np.argsort(y)
    x = np.arange(len(y))
    fig, axes = _figure(11.0, 4.2, 2)
    for ax, name in zip(axes, ("deterministic", "bayesian"), strict=True):
        res = diabetes[name]
        lo, hi, mean = (res[k].numpy()[order] for k in ("lower", "upper", "mean"))
        ax.fill_between(
            x,
            lo,
            hi,
            color="tab:orange" if name == "bayesian" else "tab:blue",
            alpha=0.3,
            step="mid",
            label="90% predictive interval",
        )
        ax.plot(x, mean, ".", ms=3, color="black", label="predictive mean")
        inside = (y[order] >= lo) & (y[order] <= hi)
        ax.plot(
            x[inside],
            y[order][inside],
            "o",
            ms=3,
            mfc="none",
            color="tab:green",
            label="target, inside",
        )
        ax.plot(x[~inside], y[order][~inside], "x", ms=4, color="tab:red", label="target, outside")
        ax.set(
            xlabel="test point (sorted by target)",
            title=f"{name.capitalize()} MLP: coverage {res['coverage']:.2f}, "
            f"RMSE {res['rmse']:.1f}",
        )
        ax.legend(loc="upper left", fontsize=8)
    axes[0].set_ylabel("disease progression (original units)")
    fig.suptitle("Diabetes test set: central 90% predictive intervals")
    fig.savefig(path, dpi=110)
    return path


# -------------------------------------------------------------------------------- table
def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}" if abs(value) < 10 else f"{value:.2f}"


def format_report(result: DemoResult) -> str:
    """The table, the figure paths and the notes as text."""
    header = ("dataset", "metric", "goal", "deterministic", "bayesian", "better")
    body = [
        (r.dataset, r.metric, r.goal, _fmt(r.deterministic), _fmt(r.bayesian), r.better)
        for r in result.rows
    ]
    widths = [max(len(line[i]) for line in (header, *body)) for i in range(len(header))]

    def line(cells: tuple[str, ...]) -> str:
        return "  ".join(
            c.ljust(w) if i < 3 or i == 5 else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    rule = "-" * len(line(header))
    out = [rule, line(header), rule, *map(line, body), rule]
    out += [f"figure: {p}" for p in result.figures]
    out += [f"note: {n}" for n in result.notes]
    out.append(f"wall time: {result.seconds:.1f} s")
    return "\n".join(out)
