"""Figure 1 of the paper: a Bayesian RNN, the LSTM cell looped over time steps.

Next-year regression on the yearly sunspot numbers 1700-2008 that statsmodels
ships (``sm.datasets.sunspots``): an LSTM cell reads the series and a
deterministic linear head outputs the mean and scale of a normal distribution
over the next value. As in Figure 1, the loop calls the cell once per time step,
``get_initial_state`` draws the cell's weights for the sequence, and
``cell.losses`` is read once per sequence:

    state = cell.get_initial_state(x[:, 0])
    for t in range(T):
        h, c = state = cell(x[:, t], state)
        nll += ...
    loss = nll / T + sum(cell.losses) / num_train   # the ELBO per training target

The same script with ``nn.LSTMCell`` (``--deterministic``, or both by default)
gives the baseline. Values are ``sqrt(sunspots)`` standardised on the training
years (1700-1950); the test NLL is per test year (1951-2008), predicting each
year from all years before it. The Bayesian model's predictive is the mixture
over 64 weight draws, computed in one vectorised pass.

    python examples/bayesian_rnn.py            # both models
    python examples/bayesian_rnn.py --estimator flipout
"""

from __future__ import annotations

import argparse
import math
import time

import statsmodels.api as sm
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import bayesian_layers as bl
from bayesian_layers.layers.recurrent import LSTMCellFlipout, LSTMCellReparameterization

ESTIMATORS = {"reparameterization": LSTMCellReparameterization, "flipout": LSTMCellFlipout}
SPLIT_YEAR = 1951


def load_series() -> tuple[Tensor, int]:
    """``sqrt(sunspots)`` standardised on the training years; index of the first test year."""
    data = sm.datasets.sunspots.load_pandas().data
    years = torch.tensor(data["YEAR"].to_numpy(), dtype=torch.float32)
    values = torch.tensor(data["SUNACTIVITY"].to_numpy(), dtype=torch.float32).sqrt()
    split = int((years < SPLIT_YEAR).sum())
    train = values[:split]
    return (values - train.mean()) / train.std(), split


class Forecaster(nn.Module):
    """An LSTM cell and a linear head: ``y_{t+1} ~ N(mean_t, scale_t)`` from ``x_{≤t}``."""

    def __init__(self, cell: nn.Module) -> None:
        super().__init__()
        self.cell = cell
        self.head = nn.Linear(cell.hidden_size, 2)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x: ``(B, T, 1)``; returns the mean and scale of each next value, ``(B, T)`` each."""
        draws = hasattr(self.cell, "get_initial_state")  # nn.LSTMCell starts from zeros
        state = self.cell.get_initial_state(x[:, 0]) if draws else None
        outputs = []
        for t in range(x.shape[1]):
            h, c = state = self.cell(x[:, t], state)
            outputs.append(self.head(h))
        out = torch.stack(outputs, 1)  # (B, T, 2)
        return out[..., 0], F.softplus(out[..., 1]) + 1e-3


def windows(series: Tensor, length: int, batch: int, end: int) -> tuple[Tensor, Tensor]:
    """``batch`` random windows of inputs ``(B, length, 1)`` and next values ``(B, length)``."""
    starts = torch.randint(0, end - length, (batch,))
    index = starts[:, None] + torch.arange(length + 1)  # (B, length + 1)
    seq = series[index]
    return seq[:, :-1, None], seq[:, 1:]


def train(model: Forecaster, series: Tensor, split: int, steps: int, num_train: int) -> None:
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for _ in range(steps):
        x, y = windows(series, 60, 32, split)
        mean, scale = model(x)
        nll = -torch.distributions.Normal(mean, scale).log_prob(y).mean()
        loss = bl.elbo_loss(nll, model, num_train)  # nll + sum(cell.losses) / N
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()


@torch.no_grad()
def test_nll(model: Forecaster, series: Tensor, split: int, num_samples: int) -> float:
    """Mean NLL of the test years under the predictive: a mixture over weight draws."""
    x, y = series[None, :-1, None], series[1:]
    k = num_samples if isinstance(model.cell, bl.layers.BayesianLayer) else 1
    with bl.vectorized_samples(model, k):  # K draws: the batch holds K copies of the series
        mean, scale = model(x.expand(k, -1, -1))  # (K, T)
    log_p = torch.distributions.Normal(mean, scale).log_prob(y)  # (K, T)
    log_mix = torch.logsumexp(log_p, 0) - math.log(k)
    return -log_mix[split - 1 :].mean().item()


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--estimator", choices=sorted(ESTIMATORS), default="reparameterization")
    parser.add_argument("--deterministic", action="store_true", help="only nn.LSTMCell")
    parser.add_argument("--bayesian", action="store_true", help="only the Bayesian cell")
    parser.add_argument("--hidden", type=int, default=16)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--samples", type=int, default=64, help="weight draws at test time")
    parser.add_argument("--quick", action="store_true", help="a few steps, for tests")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    steps = 25 if args.quick else args.steps
    series, split = load_series()
    num_train = split - 1  # training targets: years 1701-1950
    print(
        f"sunspots: {len(series)} years, train 1700-{SPLIT_YEAR - 1}, test {SPLIT_YEAR}-2008; "
        f"{steps} steps of 32 windows x 60 years"
    )
    kinds = ["bayesian", "deterministic"]
    if args.deterministic != args.bayesian:
        kinds = ["deterministic" if args.deterministic else "bayesian"]
    results = {}
    for kind in kinds:
        torch.manual_seed(args.seed)
        if kind == "bayesian":
            cell: nn.Module = ESTIMATORS[args.estimator](1, args.hidden)
        else:
            cell = nn.LSTMCell(1, args.hidden)
        model = Forecaster(cell)
        start = time.perf_counter()
        train(model, series, split, steps, num_train)
        nll = test_nll(model, series, split, args.samples)
        name = type(cell).__name__
        extra = ""
        if kind == "bayesian":
            kl = sum(t.item() for t in bl.losses(model))
            with bl.posterior_mean(model):
                mean_nll = test_nll(model, series, split, 1)
            extra = f"; posterior-mean NLL {mean_nll:.3f}; KL {kl:.1f} nats"
            results["posterior_mean_nll"] = mean_nll
        results[f"{kind}_nll"] = nll
        elapsed = time.perf_counter() - start
        print(f"{name}: test NLL {nll:.3f} per year{extra} ({elapsed:.1f} s)")
    return results


if __name__ == "__main__":
    main()
