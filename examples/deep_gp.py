"""Figure 5 of the paper: a three-layer deep GP in a plain ``nn.Sequential``.

    model = nn.Sequential(
        nn.Flatten(),
        layers.SparseGaussianProcess(units=D, num_inducing=M),
        layers.SparseGaussianProcess(units=D, num_inducing=M),
        layers.SparseGaussianProcess(units=1, num_inducing=M),
    )

Each layer returns a random variable (its marginal predictive) whose value, a
sample, feeds the next: the doubly stochastic deep GP of Salimbeni & Deisenroth
(2017). Every constructor argument is left at its default (squared-exponential
kernel, whitened q(u), a linear mean function initialised to the identity/PCA
map), with the hidden width scaled to the data (the input dimension D instead of
the figure's 256) and M = 128 inducing points instead of 512. Training minimises
the negative ELBO per example, ``-E_q[log p(y | f)] + sum(bl.losses(model)) / N``,
with ``layers.GaussianLikelihood`` (its noise variance learned); the expectation
over the last layer, ``lik.expected_log_likelihood(f, y)``, is in closed form given
the sampled inner layers, and ``lik(f)`` is the predictive distribution of ``y``.

It runs on one of the UCI regression sets (standard split, inputs and target
standardised on the training part) and compares, on the same split, test RMSE and
mean test log-likelihood (original target units) of the deep GP, a one-layer
sparse GP (the same layer alone) and an exact GP (``layers.GaussianProcess``,
hyperparameters by type-II maximum likelihood). The plot shows predicted against
observed test targets for the three models.

    python examples/deep_gp.py [/path/to/uci-regression/yacht] [--split 0]
    python examples/deep_gp.py --quick      # fewer steps and inducing points
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import Tensor, nn

import bayesian_layers as bl
from bayesian_layers import layers

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "uci-regression" / "yacht"
BUNDLED = ROOT / "tests" / "data" / "uci" / "yacht"  # split 0-2 copy, licence note beside it
NUM_SAMPLES = 64  # samples of the inner layers for the predictive mixture


def load_split(folder: Path, split: int) -> tuple[Tensor, Tensor, Tensor, Tensor, float]:
    """Standardised ``(x_train, y_train, x_test, y_test)`` and the target's training std."""
    data = np.loadtxt(folder / "data.txt")
    feats = np.loadtxt(folder / "index_features.txt", dtype=int).reshape(-1)
    target = int(np.loadtxt(folder / "index_target.txt"))
    train = np.loadtxt(folder / f"index_train_{split}.txt", dtype=int)
    test = np.loadtxt(folder / f"index_test_{split}.txt", dtype=int)
    x, y = data[:, feats], data[:, target : target + 1]
    x_mu, x_sd = x[train].mean(0), x[train].std(0) + 1e-8
    y_mu, y_sd = y[train].mean(), y[train].std()

    def t(a: np.ndarray) -> Tensor:
        return torch.tensor(a, dtype=torch.float32)

    return (t((x[train] - x_mu) / x_sd), t((y[train] - y_mu) / y_sd),
            t((x[test] - x_mu) / x_sd), t((y[test] - y_mu) / y_sd), float(y_sd))  # fmt: skip


def deep_gp(in_features: int, num_inducing: int, depth: int = 3) -> nn.Sequential:
    """Figure 5 with every default: Flatten, then ``depth`` sparse GP layers."""
    hidden = [layers.SparseGaussianProcess(in_features, num_inducing) for _ in range(depth - 1)]
    return nn.Sequential(nn.Flatten(), *hidden, layers.SparseGaussianProcess(1, num_inducing))


def train_svgp(
    model: nn.Module, x: Tensor, y: Tensor, steps: int, *, batch_size: int = 256, lr: float = 0.01
) -> layers.GaussianLikelihood:
    """Adam on the negative ELBO per example, mini-batches of ``batch_size``; the
    observation noise is learned by ``layers.GaussianLikelihood``."""
    lik = layers.GaussianLikelihood(y.shape[-1], noise_variance=0.1)
    model(x[:batch_size])  # the first call reads D and initialises Z and the mean maps
    opt = torch.optim.Adam([*model.parameters(), *lik.parameters()], lr=lr)
    n = len(x)
    for _ in range(steps):
        idx = torch.randperm(n)[:batch_size]
        f = model(x[idx])  # last layer's marginal, given sampled inner layers
        ell = lik.expected_log_likelihood(f, y[idx])  # closed form, (batch, units)
        loss = bl.elbo_loss(-ell.sum(-1).mean(), model, n)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return lik


@torch.no_grad()
def evaluate_svgp(
    model: nn.Module, lik: layers.GaussianLikelihood, x: Tensor, y: Tensor, y_sd: float
) -> dict[str, float]:
    """RMSE and mean log-likelihood (original units) of the mixture over inner-layer samples."""
    outs = [lik(model(x)).distribution for _ in range(NUM_SAMPLES)]  # predictive y, noise in
    mean = torch.stack([o.mean for o in outs])  # (S, N, 1)
    log_p = torch.stack([o.log_prob(y) for o in outs])  # (S, N, 1)
    ll = torch.logsumexp(log_p, 0) - math.log(NUM_SAMPLES) - math.log(y_sd)
    rmse = (mean.mean(0) - y).square().mean().sqrt() * y_sd
    return {"rmse": rmse.item(), "log_likelihood": ll.mean().item(), "pred": mean.mean(0)}


def exact_gp(x: Tensor, y: Tensor, steps: int, *, lr: float = 0.05) -> layers.GaussianProcess:
    """Exact GP, default kernel, noise and kernel hyperparameters by type-II ML (Adam)."""
    gp = layers.GaussianProcess(
        1, conditional_inputs=x, conditional_outputs=y, observation_noise=0.1
    )
    opt = torch.optim.Adam(gp.parameters(), lr=lr)
    for _ in range(steps):
        loss = -gp.log_marginal_likelihood() / len(x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return gp


@torch.no_grad()
def evaluate_exact(gp: layers.GaussianProcess, x: Tensor, y: Tensor, y_sd: float) -> dict:
    dist = gp(x).distribution
    mean, var = dist.mean, dist.variance + gp.observation_noise  # (N, 1) each
    ll = torch.distributions.Normal(mean, var.sqrt()).log_prob(y) - math.log(y_sd)
    rmse = (mean - y).square().mean().sqrt() * y_sd
    return {"rmse": rmse.item(), "log_likelihood": ll.mean().item(), "pred": mean}


def plot(results: dict[str, dict], y: Tensor, y_sd: float, path: Path, title: str) -> None:
    fig = Figure(figsize=(9, 3.2))
    FigureCanvasAgg(fig)
    truth = (y * y_sd).squeeze(-1)
    lo, hi = float(truth.min()), float(truth.max())
    for i, (name, r) in enumerate(results.items()):
        ax = fig.add_subplot(1, len(results), i + 1)
        ax.scatter(truth, (r["pred"] * y_sd).squeeze(-1), s=8)
        ax.plot([lo, hi], [lo, hi], color="k", lw=0.8)
        ax.set_title(f"{name}\nRMSE {r['rmse']:.2f}, LL {r['log_likelihood']:.2f}", fontsize=9)
        ax.set_xlabel("observed (centred)")
        if i == 0:
            ax.set_ylabel("predicted mean (centred)")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", nargs="?", type=Path, default=None,
                        help="a UCI set folder (default: ../shared/.../yacht, else the "
                             "bundled copy in tests/data/uci/yacht)")  # fmt: skip
    parser.add_argument("--split", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="few steps, for tests")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--num-inducing", type=int, default=128)
    parser.add_argument("--output-dir", type=Path, default=Path("demo_output"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # small matrices: thread hand-off would dominate
    folder = args.data or (SHARED if SHARED.exists() else BUNDLED)
    steps, m = (300, 32) if args.quick else (args.steps, args.num_inducing)
    x, y, xt, yt, y_sd = load_split(folder, args.split)
    results: dict[str, dict] = {}
    for name, depth in (("deep GP (3 layers)", 3), ("sparse GP (1 layer)", 1)):
        torch.manual_seed(args.seed)
        model = deep_gp(x.shape[-1], min(m, len(x)), depth)
        lik = train_svgp(model, x, y, steps)
        results[name] = evaluate_svgp(model, lik, xt, yt, y_sd)
    torch.manual_seed(args.seed)
    results["exact GP"] = evaluate_exact(exact_gp(x, y, steps // 3), xt, yt, y_sd)
    print(f"{folder.name}, split {args.split}: N = {len(x)} train, {len(xt)} test, D = "
          f"{x.shape[-1]}; {steps} Adam steps (exact GP: {steps // 3}), M = {m}")  # fmt: skip
    print(f"  {'model':22s} {'test RMSE':>10s} {'test LL':>9s}")
    for name, r in results.items():
        print(f"  {name:22s} {r['rmse']:10.3f} {r['log_likelihood']:9.3f}")
    path = args.output_dir / "deep_gp.png"
    plot(results, yt, y_sd, path, f"{folder.name} split {args.split}: test predictions")
    print(f"plot written to {path}")
    return {k: {s: v for s, v in r.items() if s != "pred"} for k, r in results.items()}


if __name__ == "__main__":
    main()
