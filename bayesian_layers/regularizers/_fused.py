"""The fused normal KL for a scalar prior: one autograd function, analytic derivatives.

:class:`~bayesian_layers.regularizers.NormalKLDivergence` uses it on the training hot
path; :func:`softplus_normal_kl_scalar_prior` is re-exported by
:mod:`bayesian_layers.regularizers`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..initializers import LOG_SOFTPLUS_CUT

__all__ = ["softplus_normal_kl_scalar_prior"]


def _clamped_softplus(rho: Tensor) -> tuple[Tensor, Tensor]:
    """``(rho_c, softplus(rho_c))`` with ``rho_c = max(rho, LOG_SOFTPLUS_CUT)``.

    Below the cut ``log softplus(rho) = rho - exp(rho)/2 + ...``, so
    ``log softplus(rho_c) + (rho - rho_c)`` is ``log softplus(rho)`` to within
    ``exp(cut)/2 < 5e-14``, and ``sigmoid(rho_c) / softplus(rho_c)`` its derivative to
    within the same; ``softplus(rho_c)²`` stands for ``softplus(rho)² < exp(2 cut)``.
    Only clamps and smooth functions: no comparisons or ``where`` (slow on CPU).
    """
    rho_c = rho.clamp(min=LOG_SOFTPLUS_CUT)
    return rho_c, F.softplus(rho_c)


class _NormalKLScalarPrior(torch.autograd.Function):
    """``sum KL(N(μ, softplus(ρ)) || N(μ_p, σ_p))`` for a scalar prior, analytic derivatives.

    Forward: ``(‖σ‖² + ‖μ - μ_p‖²) / (2σ_p²) - Σ log σ + n (log σ_p - 1/2)`` with
    ``σ = softplus(ρ)``, ``ρ`` clamped below at
    :data:`~bayesian_layers.initializers.LOG_SOFTPLUS_CUT` and ``log σ`` continued
    linearly (``log σ ≈ ρ``) below it, where ``σ`` may underflow: finite for every
    finite ``ρ``, off by at most ``exp(-30)/2`` per element in ``log σ`` and
    ``exp(-60)/(2σ_p²)`` in ``σ²/(2σ_p²)``. Backward: ``∂/∂μ = (μ - μ_p)/σ_p²``,
    ``∂/∂ρ = sigmoid(ρ) (σ/σ_p² - 1/σ)`` (``→ -1`` as ``ρ → -∞``); the prior is a
    constant. A first backward reuses the forward's ``σ``; with ``create_graph`` the
    backward is rebuilt from differentiable ops (double backward works). ``jvp``
    gives forward mode and ``vmap`` uses the generated rule, so every ``torch.func``
    transform applies.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(loc: Tensor, rho: Tensor, p_loc: Tensor, p_scale: Tensor):  # type: ignore[override]
        centred = (loc - p_loc).reshape(-1)
        rho_c, scale = _clamped_softplus(rho)
        flat_scale = scale.reshape(-1)
        quad = torch.dot(flat_scale, flat_scale) + torch.dot(centred, centred)
        log_scale_sum = scale.log().sum() + (rho - rho_c).sum()
        log_p_scale = torch.log(p_scale)
        kl = 0.5 * quad * torch.exp(-2 * log_p_scale) - log_scale_sum
        return kl + loc.numel() * (log_p_scale - 0.5), scale

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:  # type: ignore[override]
        loc, rho, p_loc, p_scale = inputs
        ctx.mark_non_differentiable(output[1])
        ctx.save_for_backward(loc, rho, p_loc, p_scale, output[1])
        ctx.save_for_forward(loc, rho, p_loc, p_scale)

    @staticmethod
    def _partials(
        loc: Tensor, rho: Tensor, p_loc: Tensor, p_scale: Tensor, scale: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        inv_var = 1.0 / (p_scale * p_scale)
        d_loc = (loc - p_loc) * inv_var
        rho_c = rho.clamp(min=LOG_SOFTPLUS_CUT)
        if scale is None:
            scale = F.softplus(rho_c)
        d_rho = torch.sigmoid(rho_c) * (scale * inv_var - 1.0 / scale)
        return d_loc, d_rho

    @staticmethod
    def backward(ctx, grad: Tensor, _grad_scale: Tensor | None = None):  # type: ignore[override]
        loc, rho, p_loc, p_scale, scale = ctx.saved_tensors
        # Under create_graph the saved σ (no graph) would cut the second derivative.
        kept = None if torch.is_grad_enabled() else scale
        d_loc, d_rho = _NormalKLScalarPrior._partials(loc, rho, p_loc, p_scale, kept)
        grad_loc = d_loc * grad if ctx.needs_input_grad[0] else None
        grad_rho = d_rho * grad if ctx.needs_input_grad[1] else None
        return grad_loc, grad_rho, None, None

    @staticmethod
    def jvp(ctx, t_loc, t_rho, t_p_loc, t_p_scale):  # type: ignore[override]
        d_loc, d_rho = _NormalKLScalarPrior._partials(*ctx.saved_tensors)
        out = torch.zeros((), dtype=d_loc.dtype, device=d_loc.device)
        if t_loc is not None:
            out = out + (d_loc * t_loc).sum()
        if t_rho is not None:
            out = out + (d_rho * t_rho).sum()
        return out, None


def softplus_normal_kl_scalar_prior(
    loc: Tensor, rho: Tensor, prior_loc: Tensor, prior_scale: Tensor
) -> Tensor:
    """``sum KL(N(loc, softplus(rho)) || N(prior_loc, prior_scale))`` for 0-d priors.

    ``loc`` and ``rho`` have the same shape. Fused: a few passes over the
    parameters forward and backward instead of autograd's dozen; finite value
    and gradient for every finite ``rho`` (the gradient tends to ``-1`` as
    ``rho → -inf``, where ``-log σ ≈ -rho``).
    """
    return _NormalKLScalarPrior.apply(loc, rho, prior_loc, prior_scale)[0]
