"""Mauna Loa CO2: an exact GP with a composite kernel, fitted by type-II maximum likelihood.

The kernel is Rasmussen & Williams' (GPML §5.4.3): a long-term smooth trend
(``ExponentiatedQuadratic``), a seasonal component (``Periodic`` with a one-year
period times an ``ExponentiatedQuadratic`` decay), medium-term irregularities
(``RationalQuadratic``) and noise (a short ``ExponentiatedQuadratic`` plus
``WhiteNoise``). The data are the weekly Mauna Loa series that statsmodels ships
(``statsmodels.datasets.co2``, 1958-2001, nothing downloaded), averaged per month.

The GP is fitted on the months up to the end of ``--train-until`` (1991 by
default), starting from the hyperparameters GPML reports, by maximising
``layers.GaussianProcess.log_marginal_likelihood`` with L-BFGS; it then forecasts
20 years ahead, and the first ten of those (1992-2001) are scored against the
held-out months (RMSE, 95% band coverage; also for a least-squares quadratic trend
plus yearly harmonics). scikit-learn's own optimiser
(``GaussianProcessRegressor``, L-BFGS-B over log-hyperparameters) is run from the
same start on the same data for comparison (``--no-sklearn`` skips it).
The plot shows the data, the forecast mean and its 95% band (for a monthly
observation: the ``WhiteNoise`` term is part of the predictive covariance).

    python examples/mauna_loa.py
    python examples/mauna_loa.py --quick   # every third month, few iterations
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from bayesian_layers import layers

D64 = {"dtype": torch.float64}
FORECAST_YEARS = 20


def load_co2() -> tuple[np.ndarray, np.ndarray]:
    """Decimal years (mid-month) and monthly mean CO2 (ppm), months without data dropped."""
    from statsmodels.datasets import co2

    frame = co2.load_pandas().data.resample("MS").mean().dropna()
    index = frame.index
    years = index.year + (index.month - 0.5) / 12.0
    return np.asarray(years, dtype=float), frame["co2"].to_numpy(float)


def gpml_kernel() -> layers.Kernel:
    """The composite kernel at GPML's hyperparameters (the fit's starting point)."""
    trend = layers.ExponentiatedQuadratic(66.0, 67.0, **D64)
    seasonal = layers.ExponentiatedQuadratic(2.4, 90.0, **D64) * layers.Periodic(
        1.0, 1.3, 1.0, **D64
    )
    seasonal.kernels[1].amplitude_rho.requires_grad_(False)  # amplitude: the decay factor's
    seasonal.kernels[1].period_rho.requires_grad_(False)  # one year, known
    medium = layers.RationalQuadratic(0.66, 1.2, 0.78, **D64)
    noise = layers.ExponentiatedQuadratic(0.18, 0.134, **D64) + layers.WhiteNoise(0.19**2, **D64)
    return trend + seasonal + medium + noise


def describe(kernel: layers.Kernel) -> str:
    """The fitted hyperparameters, one component per line."""
    trend, decay, periodic, medium, short, white = (
        kernel.kernels[0],
        *kernel.kernels[1].kernels,
        *kernel.kernels[2:],
    )
    return "\n".join(
        [
            f"  trend     {trend.amplitude:.3g}² · EQ(length_scale={trend.length_scale:.3g})",
            f"  seasonal  {decay.amplitude:.3g}² · EQ(length_scale={decay.length_scale:.3g}) "
            f"· Periodic(length_scale={periodic.length_scale:.3g}, period={periodic.period:.3g})",
            f"  medium    {medium.amplitude:.3g}² · RQ(length_scale={medium.length_scale:.3g}, "
            f"alpha={medium.alpha:.3g})",
            f"  noise     {short.amplitude:.3g}² · EQ(length_scale={short.length_scale:.3g}) "
            f"+ WhiteNoise(variance={white.variance:.3g})",
        ]
    )


def fit(gp: layers.GaussianProcess, iterations: int) -> float:
    """Type-II maximum likelihood with L-BFGS; returns the final log marginal likelihood."""
    params = [p for p in gp.parameters() if p.requires_grad]
    opt = torch.optim.LBFGS(params, lr=1.0, max_iter=iterations, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = -gp.log_marginal_likelihood()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return gp.log_marginal_likelihood().item()


def sklearn_fit(x: np.ndarray, y: np.ndarray) -> tuple[object, float]:
    """scikit-learn's optimiser from the same start: the fitted GPR and its LML."""
    from sklearn.gaussian_process import GaussianProcessRegressor
    from sklearn.gaussian_process import kernels as sk

    kernel = (
        66.0**2 * sk.RBF(67.0)
        + 2.4**2 * sk.RBF(90.0) * sk.ExpSineSquared(1.3, 1.0, periodicity_bounds="fixed")
        + 0.66**2 * sk.RationalQuadratic(1.2, 0.78)
        + 0.18**2 * sk.RBF(0.134)
        + sk.WhiteKernel(0.19**2)
    )
    gpr = GaussianProcessRegressor(kernel, alpha=1e-6, normalize_y=False).fit(x[:, None], y)
    return gpr, float(gpr.log_marginal_likelihood_value_)


def harmonic_baseline(x: np.ndarray, y: np.ndarray, x_new: np.ndarray) -> np.ndarray:
    """Least squares on a quadratic trend plus yearly and half-yearly harmonics."""

    def features(t: np.ndarray) -> np.ndarray:
        u = (t - 1975.0) / 10.0
        waves = [f(2 * np.pi * k * t) for k in (1, 2) for f in (np.sin, np.cos)]
        return np.stack([np.ones_like(u), u, u**2, *waves], 1)

    weights, *_ = np.linalg.lstsq(features(x), y, rcond=None)
    return features(x_new) @ weights


def plot(path: Path, data: tuple[np.ndarray, ...], forecast: tuple[np.ndarray, ...]) -> None:
    x_train, y_train, x_test, y_test = data
    grid, mean, sd = forecast
    fig = Figure(figsize=(8, 4.2))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.fill_between(grid, mean - 1.96 * sd, mean + 1.96 * sd, color="C0", alpha=0.25,
                    label="95% band (monthly observation)")  # fmt: skip
    ax.plot(grid, mean, color="C0", lw=1, label="GP mean")
    ax.plot(x_train, y_train, ".", color="k", ms=2, label="training months")
    ax.plot(x_test, y_test, ".", color="C3", ms=2, label="held-out months")
    ax.set_xlabel("year")
    ax.set_ylabel("CO2 (ppm)")
    ax.set_title("Mauna Loa CO2: layers.GaussianProcess, composite kernel, type-II ML")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="every third month, few iterations")
    parser.add_argument("--iterations", type=int, default=200, help="L-BFGS iterations")
    parser.add_argument("--train-until", type=int, default=1991, help="last training year")
    parser.add_argument("--no-sklearn", action="store_true", help="skip scikit-learn's fit")
    parser.add_argument("--output-dir", type=Path, default=Path("demo_output"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    iterations = 12 if args.quick else args.iterations

    years, co2 = load_co2()
    train = years < args.train_until + 1
    x_train, y_train = years[train], co2[train]
    x_test, y_test = years[~train], co2[~train]
    if args.quick:
        x_train, y_train = x_train[::3], y_train[::3]
    offset = y_train.mean()  # zero prior mean on centred data
    x_t = torch.tensor(x_train, **D64)[:, None]
    gp = layers.GaussianProcess(
        1,
        covariance_fn=gpml_kernel(),
        conditional_inputs=x_t,
        conditional_outputs=torch.tensor(y_train - offset, **D64),
        observation_noise=1e-6,  # the WhiteNoise term models the noise
        trainable_noise=False,
        **D64,
    )
    with torch.no_grad():
        start = gp.log_marginal_likelihood().item()
    tic = time.perf_counter()
    lml = fit(gp, iterations)
    seconds = time.perf_counter() - tic
    print(f"Mauna Loa CO2, {len(x_train)} training months ({int(x_train[0])}-{args.train_until}), "
          f"{len(x_test)} held-out months")  # fmt: skip
    print(f"log marginal likelihood: {start:.3f} at GPML's start -> {lml:.3f} after "
          f"{iterations} L-BFGS iterations ({seconds:.1f} s)")  # fmt: skip
    print("fitted kernel:\n" + describe(gp.covariance_fn))

    last = x_train[-1]
    grid = np.concatenate([x_train, np.arange(last + 1 / 12, last + FORECAST_YEARS, 1 / 12)])
    with torch.no_grad():
        rv = gp(torch.tensor(grid, **D64)[:, None])
        mean = rv.mean[:, 0].numpy() + offset
        sd = rv.variance[:, 0].sqrt().numpy()
    future = grid > last
    pred = np.interp(x_test, grid[future], mean[future])
    pred_sd = np.interp(x_test, grid[future], sd[future])
    rmse = float(np.sqrt(np.mean((pred - y_test) ** 2)))
    coverage = float(np.mean(np.abs(pred - y_test) <= 1.96 * pred_sd))
    half_width = 1.96 * pred_sd.mean()
    print(f"held-out {int(x_test[0])}-{int(x_test[-1])}: RMSE {rmse:.3f} ppm, 95% band covers "
          f"{coverage:.0%} of the months; mean band half-width {half_width:.2f} ppm")  # fmt: skip
    base = harmonic_baseline(x_train, y_train, x_test)
    base_rmse = float(np.sqrt(np.mean((base - y_test) ** 2)))
    print(f"  baseline (least squares: quadratic trend + 2 harmonics): RMSE {base_rmse:.3f} ppm")
    result = {"lml_start": start, "lml": lml, "rmse": rmse, "coverage": coverage}
    result["baseline_rmse"] = base_rmse

    if not args.no_sklearn and not args.quick:
        tic = time.perf_counter()
        gpr, sk_lml = sklearn_fit(x_train, y_train - offset)
        sk_pred = gpr.predict(x_test[:, None]) + offset
        sk_rmse = float(np.sqrt(np.mean((sk_pred - y_test) ** 2)))
        seconds = time.perf_counter() - tic
        print(f"scikit-learn from the same start: LML {sk_lml:.3f} ({seconds:.1f} s), "
              f"held-out RMSE {sk_rmse:.3f} ppm\n  kernel {gpr.kernel_}")  # fmt: skip
        result |= {"sklearn_lml": sk_lml, "sklearn_rmse": sk_rmse}

    path = args.output_dir / "mauna_loa.png"
    plot(path, (x_train, y_train, x_test, y_test), (grid, mean, sd))
    print(f"plot written to {path}")
    return result


if __name__ == "__main__":
    main()
