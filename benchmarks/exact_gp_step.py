"""Exact-GP marginal-likelihood training step: ``layers.GaussianProcess`` against GPyTorch.

Run by ``make bench`` (same allocator and thread settings), or directly::

    .venv/bin/python benchmarks/exact_gp_step.py [--quick] [--threads 2] [--repeats 5]

One step = the negative log marginal likelihood per point of N training points
(8-dimensional inputs, constant mean, exponentiated-quadratic kernel with one
length scale per dimension and an amplitude, Gaussian noise), its backward pass
and an Adam update of every hyperparameter, at N = 1000 and N = 4000 (float32,
both libraries' default dtype). Contenders:

* ours: ``layers.GaussianProcess(1, mean_fn=ConstantMean(), covariance_fn=
  ExponentiatedQuadratic(length_scale=ones(8)))``, loss ``-log_marginal_likelihood() / N``
  (one Cholesky forward; the closed-form gradient ``½(ααᵀ - K⁻¹)`` backward); and the
  same with ``solver="cg"`` (rank-15 pivoted-Cholesky-preconditioned CG, 10 probes,
  Lanczos log-determinant; relative residual tolerance 1e-2, its default), and with
  ``tolerance=1``, the CG tolerance GPyTorch uses while training (fewer iterations, a
  rougher gradient).
* GPyTorch ``ExactGP`` (``ConstantMean``, ``ScaleKernel(RBFKernel(ard_num_dims=8))``,
  ``GaussianLikelihood``, ``ExactMarginalLogLikelihood``) with its default settings
  (above 800 points it switches to preconditioned conjugate gradients and stochastic
  Lanczos log-determinants), and forced to Cholesky with
  ``gpytorch.settings.max_cholesky_size(10**9)``.

Contenders run round-robin inside every repeat (``cnn_lstm_step.run``); a repeat's time is
the median of a few steps; ratios are medians of paired per-repeat ratios to ours
(a ratio above 1: slower than ours).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable

import torch
from bench_cli import parse_and_pin, step_parser, write_results
from cnn_lstm_step import run
from torch import Tensor

from bayesian_layers import layers

DIM = 8
Step = Callable[[], Tensor]


def make_data(n: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Inputs uniform on [0, 1]^8; a smooth target plus noise of sd 0.1."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, DIM, generator=g)
    y = torch.sin(2 * math.pi * x[:, :3].sum(1) / 3) + 0.5 * x[:, 3] ** 2
    return x, y + 0.1 * torch.randn(n, generator=g)


def ours(
    x: Tensor, y: Tensor, lr: float, solver: str = "cholesky", options: dict | None = None
) -> Step:
    gp = layers.GaussianProcess(
        1,
        mean_fn=layers.ConstantMean(0.0),
        covariance_fn=layers.ExponentiatedQuadratic(1.0, torch.ones(DIM)),
        conditional_inputs=x,
        conditional_outputs=y,
        observation_noise=0.1,
        solver=solver,
        solver_options=options,
    )
    opt = torch.optim.Adam(gp.parameters(), lr=lr)
    n = x.shape[0]

    def step() -> Tensor:
        opt.zero_grad(set_to_none=True)
        loss = -gp.log_marginal_likelihood() / n
        loss.backward()
        opt.step()
        return loss

    return step


def gpytorch_steps(x: Tensor, y: Tensor, lr: float) -> dict[str, Step]:
    """GPyTorch's ExactGP step, default settings and forced Cholesky (empty if not installed)."""
    try:
        import gpytorch
    except ImportError:
        return {}

    class ExactGPModel(gpytorch.models.ExactGP):
        def __init__(self, likelihood: gpytorch.likelihoods.GaussianLikelihood) -> None:
            super().__init__(x, y, likelihood)
            self.mean_module = gpytorch.means.ConstantMean()
            rbf = gpytorch.kernels.RBFKernel(ard_num_dims=DIM)
            self.covar_module = gpytorch.kernels.ScaleKernel(rbf)

        def forward(self, inputs: Tensor) -> gpytorch.distributions.MultivariateNormal:
            return gpytorch.distributions.MultivariateNormal(
                self.mean_module(inputs), self.covar_module(inputs)
            )

    def make(settings: Callable[[], contextlib.AbstractContextManager]) -> Step:
        likelihood = gpytorch.likelihoods.GaussianLikelihood()
        model = ExactGPModel(likelihood)
        model.train()
        likelihood.train()
        mll = gpytorch.mlls.ExactMarginalLogLikelihood(likelihood, model)
        opt = torch.optim.Adam(model.parameters(), lr=lr)  # includes the likelihood's noise

        def step() -> Tensor:
            with settings():
                opt.zero_grad(set_to_none=True)
                loss = -mll(model(x), y)
                loss.backward()
                opt.step()
            return loss

        return step

    return {
        "GPyTorch ExactGP (default)": make(contextlib.nullcontext),
        "GPyTorch ExactGP (Cholesky)": make(lambda: gpytorch.settings.max_cholesky_size(10**9)),
    }


def main(argv: list[str] | None = None) -> dict[str, dict]:
    parser = step_parser(__doc__, repeats=5)
    parser.add_argument("--steps", type=int, default=3, help="steps per repeat (median taken)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 4000])
    parser.add_argument("--lr", type=float, default=0.01)
    args = parse_and_pin(parser, argv)
    repeats, per, warm = (2, 1, 1) if args.quick else (args.repeats, args.steps, 1)
    sizes = [64, 128] if args.quick else args.sizes
    results: dict[str, dict] = {}
    for n in sizes:
        x, y = make_data(n)
        steps = {
            "ours: GaussianProcess": ours(x, y, args.lr),
            "ours: GaussianProcess(solver='cg')": ours(x, y, args.lr, "cg"),
            "ours: solver='cg', tolerance=1": ours(x, y, args.lr, "cg", {"tolerance": 1.0}),
        } | gpytorch_steps(x, y, args.lr)
        results[str(n)] = run(steps, repeats, per, warm)
    print(f"exact GP: -LML/N + backward + Adam, D = {DIM}, float32, {args.threads} threads, "
          f"median of {repeats} repeats x {per} steps (ratio: time / ours)")  # fmt: skip
    print(f"  {'N':>5s}  {'contender':36s} {'median':>10s}  {'ratio':>6s}")
    for n, rows in results.items():
        for name, r in rows.items():
            print(f"  {n:>5s}  {name:36s} {r['median_ms']:8.1f} ms  {r['ratio']:5.2f}x")
    write_results(args, "exact_gp_step", results)
    return results


if __name__ == "__main__":
    main()
