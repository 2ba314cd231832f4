"""Training-step speed of our SparseGaussianProcess against GPyTorch's SVGP.

Run by ``make bench`` (same allocator setting as the other benchmarks), or directly::

    .venv/bin/python benchmarks/svgp_step.py [--quick] [--threads 2] [--repeats 9]

One step of a sparse variational GP regression: batch 256 of 8-dim inputs (standard
normal, seed 0), N = 10000 training points in the ELBO, M = 128 and M = 512 learned
inducing inputs, a full-covariance (Cholesky) q(u), whitened, one output;
``-ELBO / N`` + backward + Adam (default settings everywhere).

* ours: ``layers.SparseGaussianProcess(1, M, in_features=8, mean_fn=layers.ConstantMean())``
  (default squared-exponential kernel), a Gaussian likelihood with a trainable variance,
  loss ``-mean(E_q log N(y | f, σ²)) + sum(bl.losses(model)) / N``.
* GPyTorch: ``ApproximateGP`` with ``VariationalStrategy(learn_inducing_locations=True)``
  and ``CholeskyVariationalDistribution``, ``ConstantMean``, ``ScaleKernel(RBFKernel())``,
  ``GaussianLikelihood``, loss ``-VariationalELBO(likelihood, model, num_data=N)``.

Contenders run round-robin inside every repeat (the start rotates); a repeat's time is the
median of a few steps; the ratio is the median of the paired per-repeat ratios to the
first contender (ours), so GPyTorch's ratio is how many times longer its step takes.
GPyTorch is skipped when not importable.
"""

from __future__ import annotations

import torch
from bench_cli import parse_and_pin, step_parser, write_results
from cnn_lstm_step import Step, adam_step, run  # one timing loop and Adam step for all
from torch import Tensor, nn

import bayesian_layers as bl
from bayesian_layers import layers
from bayesian_layers.layers.gp.sparse_variational import gaussian_expected_log_likelihood

NUM_DATA = 10_000


class _Ours(nn.Module):
    def __init__(self, z: Tensor) -> None:
        super().__init__()
        self.gp = layers.SparseGaussianProcess(
            1, z.shape[0], inducing_inputs=z, mean_fn=layers.ConstantMean()
        )
        self.noise_rho = nn.Parameter(torch.tensor(0.0))


def ours(x: Tensor, y: Tensor, z: Tensor) -> Step:
    model = _Ours(z)

    def loss() -> Tensor:
        out = model.gp(x).distribution
        noise = nn.functional.softplus(model.noise_rho)
        ell = gaussian_expected_log_likelihood(out.mean, out.variance, y, noise)
        return -ell.mean() + sum(bl.losses(model)) / NUM_DATA

    return adam_step(model, loss)


def gpytorch_svgp(x: Tensor, y: Tensor, z: Tensor) -> Step | None:
    try:
        import gpytorch
    except ImportError:
        return None

    class SVGP(gpytorch.models.ApproximateGP):
        def __init__(self, inducing: Tensor) -> None:
            dist = gpytorch.variational.CholeskyVariationalDistribution(inducing.shape[0])
            strategy = gpytorch.variational.VariationalStrategy(
                self, inducing, dist, learn_inducing_locations=True
            )
            super().__init__(strategy)
            self.mean_module = gpytorch.means.ConstantMean()
            self.covar_module = gpytorch.kernels.ScaleKernel(gpytorch.kernels.RBFKernel())

        def forward(self, t: Tensor):  # noqa: ANN201 - a gpytorch distribution
            return gpytorch.distributions.MultivariateNormal(
                self.mean_module(t), self.covar_module(t)
            )

    model, likelihood = SVGP(z.clone()), gpytorch.likelihoods.GaussianLikelihood()
    model.train()
    likelihood.train()
    mll = gpytorch.mlls.VariationalELBO(likelihood, model, num_data=NUM_DATA)
    both = nn.ModuleList([model, likelihood])
    target = y.squeeze(-1)
    return adam_step(both, lambda: -mll(model(x), target))


def main(argv: list[str] | None = None) -> dict[str, dict]:
    parser = step_parser(__doc__)
    args = parse_and_pin(parser, argv)
    repeats, per, warm = (2, 1, 1) if args.quick else (args.repeats, 5, 3)
    batch, dim = (32, 8) if args.quick else (256, 8)
    sizes = (16,) if args.quick else (128, 512)
    x = torch.randn(batch, dim)
    y = torch.sin(x.sum(-1, keepdim=True)) + 0.1 * torch.randn(batch, 1)  # (B, 1)
    results = {}
    for m in sizes:
        z = torch.randn(m, dim)
        steps: dict[str, Step] = {"ours: SparseGaussianProcess": ours(x, y, z)}
        if (peer := gpytorch_svgp(x, y, z)) is not None:
            steps["gpytorch: ApproximateGP + VariationalStrategy"] = peer
        results[f"M={m}"] = run(steps, repeats, per, warm)
    for key, rows in results.items():
        print(f"SVGP step, batch {batch}, D = {dim}, {key}: {args.threads} threads, "
              f"median of {repeats} repeats")  # fmt: skip
        for name, r in rows.items():
            print(f"  {name:48s} {r['median_ms']:9.2f} ms  {r['ratio']:5.2f}x")
    write_results(args, "svgp_step", results)
    return results


if __name__ == "__main__":
    main()
