"""Pure functions of the sparse variational GP: predictive moments and the KL.

Notation (Titsias 2009; Hensman et al. 2013): ``M`` inducing inputs ``Z``, ``N``
query points ``X``, ``U`` independent output units sharing one kernel.
``L`` is the Cholesky factor of ``K_ZZ``; ``q(u) = N(m, S Sᵀ)`` per unit, either
for the inducing outputs themselves or, whitened, for ``v = L⁻¹ u`` (prior
``N(0, I)``). The modules in :mod:`bayesian_layers.layers.gp.sparse`
hold parameters and call these; ``gradcheck`` tests them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from .linalg import add_to_diagonal, cholesky_with_jitter, full_precision

__all__ = [
    "svgp_predictive_moments",
    "pathwise_conditional",
    "whitened_predictive_moments",
    "svgp_kl",
    "whitened_kl",
    "gaussian_expected_log_likelihood",
]


def svgp_predictive_moments(
    kxx_diag: Tensor,
    kzx: Tensor,
    chol_kzz: Tensor,
    q_loc: Tensor,
    q_scale_tril: Tensor,
    *,
    whiten: bool = True,
) -> tuple[Tensor, Tensor]:
    """Marginal mean and variance of ``q(f(x)) = ∫ p(f(x) | u) q(u) du`` at every point.

    With ``A = L⁻¹ K_ZX`` (and ``B = A`` whitened, ``B = L⁻ᵀ A`` otherwise):
    ``mean = Bᵀ m``, ``var = k(x, x) - ‖A_n‖² + ‖Sᵀ B_n‖²``. Cost ``O(M² N + U M² N)``;
    the ``N × N`` covariance is never formed.

    Shape:
        kxx_diag: ``(N,)``; kzx: ``(M, N)``; chol_kzz: ``(M, M)`` lower;
        q_loc: ``(U, M)``; q_scale_tril: ``(U, M, M)`` lower;
        returns mean and variance, each ``(N, U)`` (no mean function added).
    """
    a = torch.linalg.solve_triangular(chol_kzz, kzx, upper=False)  # (M, N)
    b = a if whiten else torch.linalg.solve_triangular(chol_kzz.mT, a, upper=True)  # (M, N)
    mean = b.mT @ q_loc.mT  # (N, U)
    sb = q_scale_tril.mT @ b  # (U, M, N)
    var = (kxx_diag - a.square().sum(0)).unsqueeze(-1) + sb.square().sum(-2).mT  # (N, U)
    return mean, var


def pathwise_conditional(
    kxz: Tensor, chol_kzz: Tensor, inducing_white: Tensor, prior_x: Tensor, prior_z: Tensor
) -> Tensor:
    """Function values by pathwise conditioning (Wilson et al. 2020), whitened.

    ``f(X) = f₀(X) + K_XZ K_ZZ⁻¹ (u - f₀(Z)) = f₀(X) + K_XZ L⁻ᵀ (v - L⁻¹ f₀(Z))`` with
    ``u = L v``: given a prior draw ``f₀ ~ GP(0, k)`` at ``X`` and ``Z`` and inducing
    values ``u ~ q(u)``, ``f`` is a draw of the posterior function; its mean and
    covariance are those of :func:`svgp_predictive_moments` whenever ``f₀`` has
    covariance ``K`` (exact prior draws, or random features averaged over their
    frequencies). Cost ``O(K (M² U + B M U))``.

    Shape:
        kxz: ``(K, B, M)``; chol_kzz: ``(M, M)`` lower; inducing_white ``v``: ``(K, M, U)``;
        prior_x: ``(K, B, U)``; prior_z: ``(K, M, U)``; returns ``(K, B, U)``.

    Example:
        >>> chol = torch.eye(2)
        >>> f = pathwise_conditional(torch.ones(1, 3, 2), chol, torch.ones(1, 2, 1),
        ...                          torch.zeros(1, 3, 1), torch.zeros(1, 2, 1))
        >>> f.squeeze()
        tensor([2., 2., 2.])
    """
    rhs = inducing_white - torch.linalg.solve_triangular(chol_kzz, prior_z, upper=False)
    coef = torch.linalg.solve_triangular(chol_kzz.mT, rhs, upper=True)  # (K, M, U)
    return prior_x + kxz @ coef


def _lower_inverse(chol: Tensor) -> Tensor:
    """``L⁻¹`` of a lower-triangular ``(M, M)`` factor by the right solve ``X L = I`` (for
    torch's column-major factor the fastest of the triangular-solve variants measured)."""
    eye = torch.eye(chol.shape[-1], dtype=chol.dtype, device=chol.device)
    return torch.linalg.solve_triangular(chol, eye, upper=False, left=False)


def _lower_plus_diag(offdiag: Tensor, diag: Tensor) -> Tensor:
    """``tril(offdiag, -1) + diag(diag)``: ``(U, M, M)`` from ``(U, M, M)`` and ``(U, M)``."""
    out = offdiag.tril(-1)
    out.diagonal(dim1=-2, dim2=-1).copy_(diag)
    return out


class _WhitenedPredictive(torch.autograd.Function):
    """Whitened SVGP marginals from ``K_ZZ`` with a closed-form backward.

    Forward: ``L = chol(K_ZZ + jitter·I)``, ``L⁻¹`` (one triangular inverse), then matrix
    products only: ``A = L⁻¹ K_ZX``, ``Sᵀ A``. Backward, with ``G = ∂/∂A``:
    ``∂/∂K_ZX = L⁻ᵀ G`` and ``∂/∂K_ZZ = -sym(L⁻ᵀ Φ(G Aᵀ) L⁻¹)`` (``Φ``: lower triangle,
    half diagonal), the Cholesky and triangular-solve backwards in three products
    instead of autograd's triangular solves.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        kxx_diag: Tensor, kzz: Tensor, kzx: Tensor, q_loc: Tensor,
        q_scale_offdiag: Tensor, q_scale_diag: Tensor, jitter: float, layer: str,
        on_jitter: Callable[[float], None] | None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
        if jitter:
            kzz = add_to_diagonal(kzz, jitter)
        chol = cholesky_with_jitter(kzz, layer=layer, on_jitter=on_jitter)
        chol_inv = _lower_inverse(chol)  # (M, M)
        scale = _lower_plus_diag(q_scale_offdiag, q_scale_diag)  # S, (U, M, M)
        a = chol_inv @ kzx  # (M, N)
        sb = scale.mT @ a  # (U, M, N)
        mean = a.mT @ q_loc.mT  # (N, U)
        var = (kxx_diag - a.square().sum(0)).unsqueeze(-1) + sb.square().sum(-2).mT
        return mean, var, chol_inv, a, sb, scale  # the last four saved for backward

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:
        _, _, chol_inv, a, sb, scale = output
        ctx.mark_non_differentiable(chol_inv, a, sb, scale)
        ctx.save_for_backward(chol_inv, a, sb, inputs[3], scale)

    @staticmethod
    @once_differentiable
    def backward(
        ctx: Any, grad_mean: Tensor, grad_var: Tensor, *_unused: Tensor
    ) -> tuple[Tensor | None, ...]:
        chol_inv, a, sb, q_loc, scale = ctx.saved_tensors
        need_kxx, need_kzz, need_kzx, need_loc, need_off, need_diag = ctx.needs_input_grad[:6]
        g_kxx = g_kzz = g_kzx = g_loc = g_off = g_diag = None
        gv = grad_var.mT.unsqueeze(-2)  # (U, 1, N)
        h = sb * gv  # (U, M, N): ½ ∂/∂(Sᵀ A)
        if need_kxx:
            g_kxx = grad_var.sum(-1)
        if need_loc:
            g_loc = (a @ grad_mean).mT  # (U, M)
        if need_off or need_diag:
            g_scale = (a @ h.mT).mul_(2.0)  # (U, M, M)
            g_diag = g_scale.diagonal(dim1=-2, dim2=-1).clone() if need_diag else None
            g_off = g_scale.tril_(-1) if need_off else None
        if need_kzz or need_kzx:
            s_h = scale @ h  # (U, M, N)
            s_h = s_h[0] if s_h.shape[0] == 1 else s_h.sum(0)
            g_a = torch.addmm(s_h.sub_(a * gv.sum(0)).mul_(2.0), q_loc.mT, grad_mean.mT)  # (M, N)
            if need_kzx:
                g_kzx = chol_inv.mT @ g_a
            if need_kzz:
                phi = (g_a @ a.mT).tril_()
                phi.diagonal().mul_(0.5)
                g = chol_inv.mT @ phi @ chol_inv
                g_kzz = (g + g.mT).mul_(-0.5)
        return g_kxx, g_kzz, g_kzx, g_loc, g_off, g_diag, None, None, None


def whitened_predictive_moments(
    kxx_diag: Tensor,
    kzz: Tensor,
    kzx: Tensor,
    q_loc: Tensor,
    q_scale_offdiag: Tensor,
    q_scale_diag: Tensor,
    *,
    jitter: float = 0.0,
    layer: str = "SparseGaussianProcess",
    on_jitter: Callable[[float], None] | None = None,
) -> tuple[Tensor, Tensor]:
    """:func:`svgp_predictive_moments` (whitened) from ``K_ZZ`` itself, with a fast gradient.

    ``S = tril(q_scale_offdiag, -1) + diag(q_scale_diag)`` (the upper triangle of
    ``q_scale_offdiag`` is ignored and gets a zero gradient). Factorises ``K_ZZ +
    jitter·I`` with :func:`~bayesian_layers.layers.gp.linalg.cholesky_with_jitter`
    (more jitter only if that fails), inverts the factor once and works with matrix
    products, which on CPU run several times faster than LAPACK's triangular solves at
    these sizes. The backward is closed form (first order only): the same marginals and
    gradients as autograd through ``svgp_predictive_moments``. Cost ``O(M³ + U M² N)``.

    Shape:
        kxx_diag: ``(N,)``; kzz: ``(M, M)``; kzx: ``(M, N)``; q_loc: ``(U, M)``;
        q_scale_offdiag: ``(U, M, M)``; q_scale_diag: ``(U, M)``; returns mean and
        variance, each ``(N, U)``.

    Example:
        >>> z, x = torch.randn(4, 2), torch.randn(6, 2)
        >>> k = lambda a, b: torch.exp(-0.5 * torch.cdist(a, b).square())
        >>> mean, var = whitened_predictive_moments(
        ...     torch.ones(6), k(z, z), k(z, x), torch.zeros(1, 4), torch.zeros(1, 4, 4),
        ...     torch.ones(1, 4), jitter=1e-6)
        >>> torch.allclose(var, torch.ones(6, 1), atol=1e-4)  # q(v) = p(v): the prior
        True
    """
    with full_precision(kzz.device):
        mean, var, *_ = _WhitenedPredictive.apply(
            kxx_diag, kzz, kzx, q_loc, q_scale_offdiag, q_scale_diag, jitter, layer, on_jitter
        )
        return mean, var


class _WhitenedKL(torch.autograd.Function):
    """``Σ_u KL(N(m_u, S_u S_uᵀ) ‖ N(0, I))`` from the parts of ``S``; closed-form backward."""

    generate_vmap_rule = True

    @staticmethod
    def forward(loc: Tensor, offdiag: Tensor, diag: Tensor) -> Tensor:  # type: ignore[override]
        sq = offdiag.tril(-1).square().sum() + diag.square().sum() + loc.square().sum()
        return 0.5 * (sq - loc.numel()) - diag.log().sum()

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:
        ctx.save_for_backward(*inputs)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        loc, offdiag, diag = ctx.saved_tensors  # plain ops: differentiable again
        return grad * loc, grad * offdiag.tril(-1), grad * (diag - diag.reciprocal())


def whitened_kl(q_loc: Tensor, q_scale_offdiag: Tensor, q_scale_diag: Tensor) -> Tensor:
    """:func:`svgp_kl` of the whitened case from the parts of ``S`` (no ``(U, M, M)`` assembly).

    ``½ [‖tril(offdiag, -1)‖² + ‖diag‖² + ‖m‖² - U M] - Σ log diag``; one autograd node.

    Shape:
        q_loc: ``(U, M)``; q_scale_offdiag: ``(U, M, M)``; q_scale_diag: ``(U, M)``
        (positive); returns a scalar.

    Example:
        >>> float(whitened_kl(torch.zeros(1, 3), torch.zeros(1, 3, 3), torch.ones(1, 3)))  # q = p
        0.0
    """
    return _WhitenedKL.apply(q_loc, q_scale_offdiag, q_scale_diag)


def svgp_kl(q_loc: Tensor, q_scale_tril: Tensor, chol_kzz: Tensor | None = None) -> Tensor:
    """``Σ_units KL(N(m, S Sᵀ) ‖ p)`` in closed form: ``p = N(0, I)`` or ``N(0, L Lᵀ)``.

    ``chol_kzz=None`` is the whitened case. Otherwise, with ``L⁻¹ S`` and ``L⁻¹ m``:
    ``½ [‖L⁻¹S‖²_F + ‖L⁻¹m‖² - M + 2 Σ log L_ii - 2 Σ log S_ii]`` per unit.
    Cost ``O(U M²)`` whitened, ``O(U M³)`` otherwise.

    Shape:
        q_loc: ``(U, M)``; q_scale_tril: ``(U, M, M)``; chol_kzz: ``(M, M)``;
        returns a scalar.
    """
    units, m = q_loc.shape
    log_det_s = q_scale_tril.diagonal(dim1=-2, dim2=-1).log().sum()
    if chol_kzz is None:
        trace, maha = q_scale_tril.square().sum(), q_loc.square().sum()
        log_det_p: Tensor | float = 0.0
    else:
        ls = torch.linalg.solve_triangular(chol_kzz, q_scale_tril, upper=False)  # (U, M, M)
        lm = torch.linalg.solve_triangular(chol_kzz, q_loc.mT, upper=False)  # (M, U)
        trace, maha = ls.square().sum(), lm.square().sum()
        log_det_p = units * chol_kzz.diagonal().log().sum()
    return 0.5 * (trace + maha - units * m) + log_det_p - log_det_s


class _GaussianExpectedLogLikelihood(torch.autograd.Function):
    """The closed form below as one autograd node (its gradient is closed form too)."""

    @staticmethod
    def forward(  # type: ignore[override]
        mean: Tensor, variance: Tensor, target: Tensor, noise: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        residual = target - mean
        inv_noise = noise.reciprocal()
        scaled = (residual.square() + variance) * inv_noise  # ((y - μ)² + v) / σ²
        out = scaled.add(noise.log() + math.log(2 * math.pi)).mul_(-0.5)
        return out, residual, scaled, inv_noise

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:
        _, residual, scaled, inv_noise = output
        ctx.mark_non_differentiable(residual, scaled, inv_noise)
        ctx.save_for_backward(residual, scaled, inv_noise)
        ctx.shapes = tuple(t.shape for t in inputs)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor, *_unused: Tensor) -> tuple[Tensor | None, ...]:
        residual, scaled, inv_noise = ctx.saved_tensors
        shapes, needs = ctx.shapes, ctx.needs_input_grad
        g_mean = g_var = g_target = g_noise = None
        if needs[0] or needs[2]:
            g_res = grad * residual * inv_noise  # ∂/∂μ; ∂/∂y is its negative
            g_mean = g_res.sum_to_size(shapes[0]) if needs[0] else None
            g_target = (-g_res).sum_to_size(shapes[2]) if needs[2] else None
        if needs[1]:
            g_var = (-0.5 * grad * inv_noise).expand_as(grad).sum_to_size(shapes[1])
        if needs[3]:
            g_noise = (0.5 * grad * (scaled - 1.0) * inv_noise).sum_to_size(shapes[3])
        return g_mean, g_var, g_target, g_noise


def gaussian_expected_log_likelihood(
    mean: Tensor, variance: Tensor, target: Tensor, noise_variance: Tensor | float
) -> Tensor:
    """``E_{f ~ N(mean, variance)} log N(y | f, σ²)`` per element, in closed form.

    ``= -½ log(2π σ²) - ((y - mean)² + variance) / (2 σ²)``: the variational
    expectation of a Gaussian likelihood, the data term of the SVGP ELBO. One autograd
    node with a closed-form gradient (first order only).

    Shape:
        mean, variance, target, noise_variance: broadcastable; returns their broadcast
        shape.

    Example:
        >>> ell = gaussian_expected_log_likelihood(
        ...     torch.zeros(2), torch.ones(2), torch.ones(2), 1.0)
        >>> torch.allclose(ell, torch.full((2,), -0.5 * math.log(2 * math.pi) - 1.0))
        True
    """
    noise_variance = torch.as_tensor(noise_variance, dtype=mean.dtype, device=mean.device)
    return _GaussianExpectedLogLikelihood.apply(mean, variance, target, noise_variance)[0]
