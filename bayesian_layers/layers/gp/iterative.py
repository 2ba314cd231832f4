r"""Iterative (matrix-free in the solve) log marginal likelihood of a Gaussian process:
pivoted-Cholesky-preconditioned batched conjugate gradients for ``K⁻¹ r`` and
stochastic Lanczos quadrature for ``log|K|`` (Gardner et al., 2018; written from the
papers' equations).

With ``K = K_f + σ² I`` (``N × N``), ``t`` probe vectors and ``J`` CG iterations the
cost is O(J N² (U + t) + N k²) instead of the Cholesky's O(N³); the log-determinant
and its gradient are unbiased stochastic estimates with O(1/sqrt(t)) error.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from .linalg import full_precision

__all__ = ["pivoted_cholesky", "gaussian_log_marginal_likelihood_cg"]


def pivoted_cholesky(matrix: Tensor, rank: int, *, tolerance: float = 1e-8) -> Tensor:
    """Greedy rank-``rank`` pivoted Cholesky ``L`` (``N × k``) with ``L Lᵀ ≈ matrix``.

    Stops early when the largest remaining diagonal falls below ``tolerance`` times
    the trace. O(N k²) time; reads ``k`` rows of ``matrix``.

    Example:
        >>> a = torch.randn(6, 2, dtype=torch.float64)
        >>> low = pivoted_cholesky(a @ a.mT, 4)
        >>> low.shape[1], bool(torch.allclose(low @ low.mT, a @ a.mT))
        (2, True)
    """
    n = matrix.shape[-1]
    rank = min(rank, n)
    residual_diag = matrix.diagonal().clone()
    stop = tolerance * float(residual_diag.sum())
    rows = matrix.new_zeros(rank, n)  # row m is column m of L
    for m in range(rank):
        i = int(torch.argmax(residual_diag))
        pivot = residual_diag[i]
        if float(pivot) <= stop:
            return rows[:m].mT
        row = matrix[i] - rows[:m, i] @ rows[:m]  # (N,)
        rows[m] = row / pivot.sqrt()
        residual_diag = residual_diag - rows[m].pow(2)
        residual_diag[i] = 0.0
    return rows.mT


class _Preconditioner:
    """``P = L Lᵀ + σ² I``: solves by Woodbury, samples ``N(0, P)``, ``log|P|``."""

    def __init__(self, low: Tensor, noise: Tensor) -> None:
        self.low, self.noise = low, noise  # (N, k), ()
        k = low.shape[1]
        inner = noise * torch.eye(k, dtype=low.dtype, device=low.device) + low.mT @ low
        self.inner_chol = torch.linalg.cholesky(inner)  # (k, k)
        n = low.shape[0]
        self.log_det = (n - k) * noise.log() + 2 * self.inner_chol.diagonal().log().sum()

    def solve(self, v: Tensor) -> Tensor:
        if self.low.shape[1] == 0:
            return v / self.noise
        w = torch.cholesky_solve(self.low.mT @ v, self.inner_chol)  # (k, C)
        return (v - self.low @ w) / self.noise

    def sample(self, num: int) -> Tensor:
        n, k = self.low.shape
        dtype, device = self.low.dtype, self.low.device
        e1 = torch.randn(k, num, dtype=dtype, device=device)
        e2 = torch.randn(n, num, dtype=dtype, device=device)
        return self.low @ e1 + self.noise.sqrt() * e2


class _Breakdown(ArithmeticError):
    """CG met a non-positive curvature or preconditioned norm (rounding, not the math)."""


def _batched_cg(
    matrix: Tensor,
    noise: Tensor,
    rhs: Tensor,
    precond: _Preconditioner,
    max_iterations: int,
    tolerance: float,
) -> tuple[Tensor, Tensor, list[Tensor], list[Tensor], list[Tensor]]:
    """Preconditioned CG for ``(matrix + noise I) X = rhs``, every column of ``rhs`` (``N × C``).

    Returns the solutions, ``rᵀP⁻¹r`` of the right-hand sides, and per iteration the
    step sizes ``a``, the direction updates ``b`` and the columns still active.
    """
    shift = float(noise)
    solution = torch.zeros_like(rhs)
    residual = rhs.clone()
    z = precond.solve(residual)
    direction = z
    rz = (residual * z).sum(0)  # (C,)
    rz0 = rz
    norm0 = rhs.norm(dim=0).clamp_min(torch.finfo(rhs.dtype).tiny)
    steps: list[Tensor] = []
    updates: list[Tensor] = []
    active_log: list[Tensor] = []
    active = torch.ones_like(rz, dtype=torch.bool)
    tiny = torch.finfo(rhs.dtype).tiny
    if not bool((rz0 > 0).all()):  # P⁻¹ lost positive definiteness to rounding
        raise _Breakdown
    for _ in range(max_iterations):
        kd = torch.addmm(direction, matrix, direction, beta=shift)  # (K_f + σ² I) d, (N, C)
        curvature = (direction * kd).sum(0)
        if not bool(((curvature > 0) | ~active).all()):
            raise _Breakdown
        a = torch.where(active, rz / curvature.clamp_min(tiny), torch.zeros_like(rz))
        solution = solution + a * direction
        residual = residual - a * kd
        z = precond.solve(residual)
        rz_new = (residual * z).sum(0)
        b = torch.where(active, rz_new / rz.clamp_min(tiny), torch.zeros_like(rz))
        steps.append(a)
        updates.append(b)
        active_log.append(active)
        direction = z + b * direction
        rz = rz_new
        active = active & (residual.norm(dim=0) / norm0 > tolerance)
        if not bool(active.any()):
            break
    return solution, rz0, steps, updates, active_log


def _lanczos_log_quadrature(steps: Tensor, updates: Tensor, active: Tensor) -> Tensor:
    """``e₁ᵀ log(T) e₁`` for the Lanczos tridiagonal ``T`` of every CG column.

    ``steps``, ``updates``, ``active``: ``(J, C)``. A column's ``T`` uses its active
    iterations; the inactive tail is an identity block (``log 1 = 0``, decoupled).
    """
    a = torch.where(active, steps, torch.ones_like(steps)).mT  # (C, J)
    b = torch.where(active, updates, torch.zeros_like(updates)).mT
    act = active.mT
    diag = torch.where(act, 1.0 / a, torch.ones_like(a))
    diag[:, 1:] = diag[:, 1:] + torch.where(act[:, 1:], b[:, :-1] / a[:, :-1], 0.0)
    off = torch.where(act[:, 1:], b[:, :-1].clamp_min(0).sqrt() / a[:, :-1], 0.0)  # (C, J-1)
    tri = torch.diag_embed(diag) + torch.diag_embed(off, 1) + torch.diag_embed(off, -1)
    evals, evecs = torch.linalg.eigh(tri)  # (C, J), (C, J, J)
    evals = evals.clamp_min(torch.finfo(a.dtype).tiny)
    return (evecs[:, 0, :].pow(2) * evals.log()).sum(-1)  # (C,)


class _CGLogMarginalLikelihood(torch.autograd.Function):
    """The stochastic estimate and its closed-form gradient; ``setup_context`` form (the
    solves are extra non-differentiable outputs), so ``torch.func.grad`` applies."""

    @staticmethod
    def forward(  # type: ignore[override]
        kernel_matrix: Tensor,
        noise: Tensor,
        residual: Tensor,
        options: tuple[int, int, float, int],
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        num_probes, max_iterations, tolerance, rank = options
        n, units = residual.shape
        precond = _Preconditioner(pivoted_cholesky(kernel_matrix, rank), noise)
        probes = precond.sample(num_probes)  # (N, t) ~ N(0, P)
        rhs = torch.cat([residual, probes], dim=1)  # (N, U + t)
        solution, rz0, steps, updates, active = _batched_cg(
            kernel_matrix, noise, rhs, precond, max_iterations, tolerance
        )
        alpha, probe_solves = solution[:, :units], solution[:, units:]
        quadratures = _lanczos_log_quadrature(
            torch.stack(steps)[:, units:],
            torch.stack(updates)[:, units:],
            torch.stack(active)[:, units:],
        )  # (t,)
        log_det = precond.log_det + (rz0[units:] * quadratures).mean()
        quad = (residual * alpha).sum()
        value = -0.5 * quad - 0.5 * units * (log_det + n * math.log(2 * math.pi))
        return value, alpha, probe_solves, precond.solve(probes)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, ...]) -> None:
        _, alpha, probe_solves, precond_probes = output
        ctx.mark_non_differentiable(alpha, probe_solves, precond_probes)
        ctx.save_for_backward(alpha, probe_solves, precond_probes)
        ctx.units = inputs[2].shape[1]

    @staticmethod
    @once_differentiable
    def backward(
        ctx: Any, grad: Tensor, *_unused: Tensor | None
    ) -> tuple[Tensor | None, Tensor | None, Tensor | None, None]:
        alpha, probe_solves, precond_probes = ctx.saved_tensors
        t = probe_solves.shape[1]
        scale = 0.5 * ctx.units / t
        # ∂/∂K = ½ (ααᵀ - U K⁻¹), with K⁻¹ ≈ (1/t) Σ (K⁻¹ z)(P⁻¹ z)ᵀ since E[z zᵀ] = P
        grad_k = grad_noise = grad_r = None
        if ctx.needs_input_grad[0]:
            grad_k = torch.addmm(
                alpha @ alpha.mT, probe_solves, precond_probes.mT, alpha=-2.0 * scale
            ).mul_(0.5 * grad)
        if ctx.needs_input_grad[1]:
            trace_inv = (probe_solves * precond_probes).sum() / t
            grad_noise = grad * (0.5 * alpha.pow(2).sum() - 0.5 * ctx.units * trace_inv)
        if ctx.needs_input_grad[2]:
            grad_r = -grad * alpha
        return grad_k, grad_noise, grad_r, None


def gaussian_log_marginal_likelihood_cg(
    kernel_matrix: Tensor,
    noise: Tensor,
    residual: Tensor,
    *,
    num_probes: int = 10,
    max_iterations: int = 50,
    tolerance: float = 1e-2,
    preconditioner_rank: int = 15,
    layer: str = "gaussian_log_marginal_likelihood_cg",
) -> Tensor:
    r"""Stochastic estimate of ``Σ_u log N(r_u | 0, K_f + σ² I)`` and of its gradient.

    ``K⁻¹ r`` and ``K⁻¹ z_i`` for ``t = num_probes`` probes ``z_i ~ N(0, P)`` come from one
    batched preconditioned CG run (``P = L Lᵀ + σ² I`` with ``L`` the rank-k pivoted
    Cholesky factor of ``K_f``); ``log|K| = log|P| + tr log(P^{-½} K P^{-½})`` is
    estimated by Lanczos quadrature on the CG coefficients. The gradient is
    ``∂/∂K = ½(ααᵀ - U K⁻¹)`` with the unbiased estimate
    ``K⁻¹ ≈ (1/t) Σ_i (K⁻¹ z_i)(P⁻¹ z_i)ᵀ``. Draws probes from torch's global generator.

    Args:
        kernel_matrix: ``(N, N)`` noise-free kernel matrix ``K_f``.
        noise: positive scalar tensor ``σ²``.
        residual: ``(N, U)`` centred observations.
        num_probes: ``t``; the estimates' standard error falls like ``1/sqrt(t)``.
        max_iterations: CG iterations at most (also the Lanczos quadrature order).
        tolerance: stop when every column's residual norm relative to its
            right-hand side is below it.
        preconditioner_rank: ``k``; larger ``k`` fewer iterations (``k = N``: exact).
        layer: caller's name for error messages.

    Returns:
        A scalar tensor (first-order differentiable). When rounding breaks CG down in
        a lower precision (a non-positive curvature, e.g. duplicated inputs with tiny
        noise in float32), it is redone in float64 and the value cast back.

    Raises:
        ValueError: CG broke down in float64 too.

    Example:
        >>> kf = torch.eye(3, dtype=torch.float64)
        >>> r = torch.ones(3, 1, dtype=torch.float64)
        >>> value = gaussian_log_marginal_likelihood_cg(kf, torch.tensor(1.0, dtype=kf.dtype), r)
        >>> round(value.item(), 4)  # three N(0, 2) log-densities at 1
        -4.5465
    """
    if (
        kernel_matrix.dim() != 2
        or residual.dim() != 2
        or residual.shape[0] != kernel_matrix.shape[0]
    ):
        raise ValueError(
            "gaussian_log_marginal_likelihood_cg expected kernel_matrix (N, N) and residual "
            f"(N, U), got {tuple(kernel_matrix.shape)} and {tuple(residual.shape)}"
        )
    if num_probes < 1 or max_iterations < 1 or preconditioner_rank < 0 or not tolerance > 0:
        raise ValueError(
            "gaussian_log_marginal_likelihood_cg expected num_probes >= 1, max_iterations >= 1, "
            f"preconditioner_rank >= 0 and tolerance > 0, got {num_probes}, {max_iterations}, "
            f"{preconditioner_rank}, {tolerance}"
        )
    options = (num_probes, max_iterations, float(tolerance), preconditioner_rank)
    with full_precision(kernel_matrix.device):
        try:
            value = _CGLogMarginalLikelihood.apply(kernel_matrix, noise, residual, options)[0]
            if bool(torch.isfinite(value)):
                return value
        except _Breakdown:
            pass
        if kernel_matrix.dtype != torch.float64:  # rounding broke CG: redo it in float64
            wide = (t.to(torch.float64) for t in (kernel_matrix, noise, residual))
            try:
                value = _CGLogMarginalLikelihood.apply(*wide, options)[0]
                if bool(torch.isfinite(value)):
                    return value.to(kernel_matrix.dtype)
            except _Breakdown:
                pass
    raise ValueError(
        f"{layer}: solver='cg' broke down (the preconditioned system is not positive "
        f"definite to rounding, e.g. duplicated inputs with observation noise "
        f"{float(noise):.1e}); raise the observation noise or use solver='cholesky'"
    )
