"""Pure functions of the sparse variational GP: predictive moments and the KL.

Notation (Titsias 2009; Hensman et al. 2013): ``M`` inducing inputs ``Z``, ``N``
query points ``X``, ``U`` independent output units sharing one kernel.
``L`` is the Cholesky factor of ``K_ZZ``; ``q(u) = N(m, S Sᵀ)`` per unit, either
for the inducing outputs themselves or, whitened, for ``v = L⁻¹ u`` (prior
``N(0, I)``). The modules in :mod:`bayesian_layers.layers.sparse_gaussian_process`
hold parameters and call these; ``gradcheck`` tests them.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["svgp_predictive_moments", "svgp_kl", "gaussian_expected_log_likelihood"]


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


def gaussian_expected_log_likelihood(
    mean: Tensor, variance: Tensor, target: Tensor, noise_variance: Tensor | float
) -> Tensor:
    """``E_{f ~ N(mean, variance)} log N(y | f, σ²)`` per element, in closed form.

    ``= -½ log(2π σ²) - ((y - mean)² + variance) / (2 σ²)``: the variational
    expectation of a Gaussian likelihood, the data term of the SVGP ELBO.

    Shape:
        mean, variance, target: broadcastable; returns their broadcast shape.
    """
    noise_variance = torch.as_tensor(noise_variance, dtype=mean.dtype, device=mean.device)
    return -0.5 * (
        math.log(2 * math.pi)
        + noise_variance.log()
        + ((target - mean).square() + variance) / noise_variance
    )
