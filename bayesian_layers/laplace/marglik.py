"""The Laplace evidence and the prior precision that maximises it.

``log p(D) ≈ log p(D | θ*) - ½ (log det P - log det P₀ + Σ_g τ_g ‖θ*_g‖²)`` with the
posterior precision ``P = H + τ I`` and the prior ``P₀ = τ I`` per parameter group ``g``
(Laplace Redux, Daxberger et al. 2021, eq. 3; as laplace-torch). ``log det P`` is
``Σ log(h + τ)`` for the diagonal, ``Σ_ij log(λ_Gi λ_Aj + τ)`` for a Kronecker block
(a fit may mix the two: its recurrent, attention and embedding layers are diagonal), and
``2 Σ log diag L`` with the Cholesky factor ``L`` of the joint ``H + diag(τ)`` for
``hessian="full"``.
"""

from __future__ import annotations

import math
from numbers import Real

import torch
from torch import Tensor, nn

from .curvature import Curvature, point_value
from .posterior import group_precisions, joint_precision, kron_eigen, write_posterior

__all__ = ["log_marginal_likelihood", "optimize_prior_precision"]


def _curvature(model_or_curv: nn.Module | Curvature, fn: str) -> Curvature:
    if isinstance(model_or_curv, Curvature):
        return model_or_curv
    curv = getattr(model_or_curv, "laplace_curvature", None)
    if not isinstance(curv, Curvature):
        raise ValueError(
            f"laplace.{fn} expected a model returned by laplace.fit or a Curvature, got "
            f"{type(model_or_curv).__name__} without one"
        )
    return curv


def _eigen_terms(curv: Curvature) -> list[tuple[Tensor, Tensor]]:
    """Per group: the curvature eigenvalues (flat) and ``θ*`` (flat)."""
    out = []
    for lc, name in curv.groups():
        theta = point_value(lc.module, name)
        assert theta is not None  # a fitted parameter exists
        if curv.hessian == "full":
            h = theta.new_zeros(0)  # the joint log det is taken apart (_lml_full)
        elif lc.structure == "diag":
            h = lc.diag[name].reshape(-1)
        else:
            lg, _, la, _ = kron_eigen(lc, name)
            h = torch.outer(lg, la).reshape(-1)
        out.append((h.detach(), theta.detach().reshape(-1)))
    return out


def _log_likelihood(curv: Curvature) -> Tensor:
    if curv.likelihood == "classification":
        return -curv.loss
    s2 = curv.sigma_noise**2
    norm = curv.n_data * curv.n_outputs * math.log(curv.sigma_noise * math.sqrt(2 * math.pi))
    return -curv.loss / s2 - norm


def _lml_full(curv: Curvature, terms: list[tuple[Tensor, Tensor]], taus: list[Tensor]) -> Tensor:
    prec, tau = joint_precision(curv, taus)
    chol, info = torch.linalg.cholesky_ex(prec)
    if int(info):
        raise ValueError(
            "laplace.log_marginal_likelihood expected a positive definite posterior "
            f"precision, got one whose Cholesky factorisation failed at column {int(info)}"
        )
    theta = torch.cat([t for _, t in terms]).to(prec)
    log_det_ratio = 2 * chol.diagonal().log().sum() - tau.log().sum()
    return _log_likelihood(curv) - 0.5 * (log_det_ratio + (tau * theta.square()).sum())


def _lml(curv: Curvature, terms: list[tuple[Tensor, Tensor]], taus: list[Tensor]) -> Tensor:
    if curv.hessian == "full":
        return _lml_full(curv, terms, taus)
    total = _log_likelihood(curv)
    for (h, theta), tau in zip(terms, taus, strict=True):
        log_det_ratio = (h + tau).log().sum() - h.numel() * tau.log()
        total = total - 0.5 * (log_det_ratio + tau * theta.square().sum())
    return total


def log_marginal_likelihood(
    model: nn.Module | Curvature, prior_precision: float | Tensor | None = None
) -> Tensor:
    """The Laplace approximation of ``log p(D)``, differentiable in ``prior_precision``.

    Args:
        model: a model returned by :func:`~bayesian_layers.laplace.fit` (or its
            :class:`Curvature`).
        prior_precision: ``τ`` (scalar or one per parameter tensor); ``None``: the one
            the posterior was fitted with.

    Returns:
        a scalar tensor.

    Example:
        >>> import torch, bayesian_layers as bl
        >>> from torch import nn
        >>> from bayesian_layers.laplace import fit
        >>> net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
        >>> post = fit(net, [(torch.randn(8, 3), torch.randint(0, 2, (8,)))])
        >>> log_marginal_likelihood(post, 2.0).shape
        torch.Size([])
    """
    curv = _curvature(model, "log_marginal_likelihood")
    if prior_precision is None:
        prior_precision = curv.prior_precision
    taus = group_precisions(curv, prior_precision, fn="laplace.log_marginal_likelihood")
    return _lml(curv, _eigen_terms(curv), taus)


def optimize_prior_precision(
    model: nn.Module | Curvature,
    *,
    structure: str = "scalar",
    init: float = 1.0,
    n_steps: int = 100,
    lr: float = 0.1,
    write: bool = True,
) -> Tensor:
    """Maximise the Laplace evidence over ``τ`` (Adam on ``log τ``, as laplace-torch's
    ``optimize_prior_precision(method="marglik")``), and write the posterior with it.

    Args:
        model: a model returned by :func:`~bayesian_layers.laplace.fit` (or a Curvature).
        structure: ``"scalar"`` (one ``τ``) or ``"layerwise"`` (one per parameter tensor).
        init: the starting ``τ``; n_steps, lr: Adam's steps and learning rate.
        write: write the posterior with the optimised ``τ`` into the layers.

    Returns:
        ``τ``: shape ``()`` or ``(number of parameter tensors,)``.

    Raises:
        ValueError: an unknown ``structure``, ``init <= 0``, ``n_steps < 1`` or ``lr <= 0``.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from bayesian_layers.laplace import fit
        >>> net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
        >>> post = fit(net, [(torch.randn(8, 3), torch.randint(0, 2, (8,)))])
        >>> bool(optimize_prior_precision(post) > 0)
        True
    """
    fn = "laplace.optimize_prior_precision"
    curv = _curvature(model, "optimize_prior_precision")
    if structure not in ("scalar", "layerwise"):
        raise ValueError(f"{fn} expected `structure` in ('scalar', 'layerwise'), got {structure!r}")
    if not init > 0:
        raise ValueError(f"{fn} expected `init` > 0, got {init!r}")
    if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 1:
        raise ValueError(f"{fn} expected `n_steps` a positive int, got {n_steps!r}")
    if isinstance(lr, bool) or not isinstance(lr, Real) or not 0 < lr < math.inf:
        raise ValueError(f"{fn} expected `lr` a finite number > 0, got {lr!r}")
    n = 1 if structure == "scalar" else len(curv.groups())
    log_tau = torch.full((n,), math.log(init), dtype=curv.loss.dtype, requires_grad=True)
    terms = _eigen_terms(curv)
    opt = torch.optim.Adam([log_tau], lr=lr)
    for _ in range(n_steps):
        opt.zero_grad()
        taus = group_precisions(curv, log_tau.exp(), fn=fn)
        (-_lml(curv, terms, taus)).backward()
        opt.step()
    tau = log_tau.detach().exp()
    tau = tau[0] if structure == "scalar" else tau
    if write:
        write_posterior(curv, tau)
        curv.prior_precision = tau
    return tau
