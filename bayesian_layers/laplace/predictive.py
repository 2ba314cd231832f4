"""The linearised (GLM) predictive of a posterior held in the layers: :func:`glm_predictive`.

Linearising the network around the posterior means ``θ*``,
``f(x; θ) ≈ f(x; θ*) + J(x) (θ - θ*)``, a Gaussian posterior gives a Gaussian over the
outputs: mean ``f(x; θ*)``, covariance ``J Σ Jᵀ`` summed over the random parameter
tensors (Immer et al. 2021; Laplace Redux §4). For a Kronecker posterior of a weight
``(O, I)``, ``J Σ Jᵀ = Σ_{oi} J̃_{c,oi} J̃_{d,oi} / (λ_Go λ_Ai + τ)`` with
``J̃ = Q_Gᵀ J Q_A``; for a normal one, ``Σ_p J_cp σ_p² J_dp``; for the joint posterior of
a full Laplace fit (``Σ = U Uᵀ``, each tensor holding its rows ``U_l``),
``(Σ_l J_l U_l)(Σ_l J_l U_l)ᵀ``, cross-layer covariances included. Classification uses the
probit approximation ``softmax(f / sqrt(1 + π/8 · diag(J Σ Jᵀ)))``. Outputs
``(B, ..., C)`` (a language model's ``(B, T, V)`` logits) get the ``C × C`` covariance
of each position (the covariances across positions are not formed).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.func import functional_call, jacrev

from ..initializers.full_normal import FullNormal
from ..initializers.kron_normal import KroneckerNormal
from ..layers.base import BayesianLayer
from ..sampling import posterior_mean
from ._checks import LIKELIHOODS, check_choice
from ._kron_glm import probe_moments
from ._per_example import _quiet
from .curvature import eval_mode

__all__ = ["glm_predictive"]

_FN = "laplace.glm_predictive"
METHODS = ("auto", "jacobian")


def _posterior_parts(model: nn.Module, fn: str = _FN) -> list[tuple[str, BayesianLayer, str]]:
    """``(state name of the mean, layer, parameter)`` of every random parameter (errors
    name the function ``fn``)."""
    out = []
    for path, layer in model.named_modules():
        if not isinstance(layer, BayesianLayer):
            continue
        for name, spec in layer.named_random_parameters():
            init = spec.initializer
            if not (isinstance(init, (KroneckerNormal, FullNormal)) or init.is_normal):
                raise ValueError(
                    f"{fn} expected normal, Kronecker or full Laplace posteriors, got "
                    f"{type(init).__name__} for {path}.{name}"
                )
            if init.suffixes[0] != "loc":
                raise ValueError(f"{fn} expected a `loc` mean for {path}.{name}")
            out.append((f"{path}.{name}_loc" if path else f"{name}_loc", layer, name))
    if not out:
        raise ValueError(f"{fn} expected a model with random parameters, got none")
    return out


def _variance_term(jac: Tensor, layer: BayesianLayer, name: str) -> Tensor:
    """``J Σ Jᵀ`` of one parameter: ``jac`` ``(B, C, *shape)`` -> ``(B, C, C)``."""
    init = layer.parameter_spec(name).initializer
    b, c = jac.shape[:2]
    if isinstance(init, KroneckerNormal):
        o = init.eigvals_g.shape[0]
        j = jac.reshape(b, c, o, -1)  # (B, C, O, I)
        jt = init.eigvecs_g.T @ j @ init.eigvecs_a  # in the eigenbasis
        inv = (torch.outer(init.eigvals_g, init.eigvals_a) + init.prior_precision).reciprocal()
        return torch.einsum("bcoi,oi,bdoi->bcd", jt, inv, jt)
    _, scale = layer.posterior_loc_scale(name)
    assert scale is not None  # a random normal parameter
    j = jac.reshape(b, c, -1)
    return torch.einsum("bcp,p,bdp->bcd", j, scale.reshape(-1).square(), j)


def glm_predictive(
    model: nn.Module, x: Tensor, likelihood: str = "classification", *, method: str = "auto"
) -> Tensor | tuple[Tensor, Tensor]:
    """The linearised predictive at ``x`` of the posterior in ``model``'s layers.

    Works for any posterior of normal (diagonal) or
    :class:`~bayesian_layers.initializers.kron_normal.KroneckerNormal` families (a
    Laplace fit, or a mean-field variational one). Cost: when every random parameter is
    the weight or bias of a linear or 2-d convolution layer, one forward and ``C``
    backward passes that record each layer's inputs and output gradients
    (:mod:`._kron_glm`: no Jacobian of the whole network is formed, and a linear
    layer's Kronecker term costs ``O(O² + I²)`` per example); otherwise per-example
    Jacobians of the ``(B, C)`` outputs with respect to the random means,
    ``O(B C P)`` memory. Samples of the same linearised network without any Jacobian
    (a language model's logits at every position):
    :func:`~bayesian_layers.laplace.linearized_samples`.

    Args:
        model: a Bayesian model (e.g. returned by :func:`~bayesian_layers.laplace.fit`),
            run in eval mode on its posterior means (its modes are restored after).
        x: a batch of inputs.
        likelihood: ``"classification"``: probit-approximated class probabilities;
            ``"regression"``: the Gaussian over ``f`` (observation noise not added).
        method: ``"auto"`` (the recorded-gradient path when the layers allow it, else
            the Jacobian) or ``"jacobian"`` (always ``torch.func.jacrev``; the
            reference the other is tested against).

    Returns:
        classification: ``(B, C)`` probabilities; regression: ``(mean (B, C),
        covariance (B, C, C))``. For ``(B, ..., C)`` outputs: ``(B, ..., C)``
        probabilities, or the mean ``(B, ..., C)`` and each position's covariance
        ``(B, ..., C, C)`` (through the Jacobian: ``O(B·T·C·P)`` memory).

    Raises:
        ValueError: an unknown ``likelihood`` or ``method``, a model without random
            parameters, or
            a posterior that is neither normal nor Kronecker.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from bayesian_layers.laplace import fit
        >>> net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
        >>> post = fit(net, [(torch.randn(8, 3), torch.randint(0, 2, (8,)))], hessian="kron")
        >>> p = glm_predictive(post, torch.randn(5, 3))
        >>> p.shape, torch.allclose(p.sum(-1), torch.ones(5))
        (torch.Size([5, 2]), True)
    """
    check_choice(_FN, "likelihood", likelihood, LIKELIHOODS)
    check_choice(_FN, "method", method, METHODS)
    parts = _posterior_parts(model)
    moments = probe_moments(model, x) if method == "auto" else None
    if moments is not None:
        return _predictive(*moments, likelihood)
    means = {key: layer.point(name).detach() for key, layer, name in parts}

    def f(params: dict[str, Tensor]) -> Tensor:
        return functional_call(model, params, (x,), strict=False)

    with eval_mode(model):  # batch norm on its running statistics, as the curvature was
        with posterior_mean(model), torch.no_grad():
            f_mu = f(means)
        if f_mu.dim() < 2:
            raise ValueError(
                f"{_FN} expected model outputs of shape (B, C) or (B, ..., C), got "
                f"{tuple(f_mu.shape)}"
            )
        with posterior_mean(model):
            jacs = _quiet(jacrev(f), means)
    shape, c = f_mu.shape, f_mu.shape[-1]
    if f_mu.dim() > 2:  # one row per position: (B·T, C) outputs, (B·T, C, *shape) Jacobians
        f_mu = f_mu.reshape(-1, c)
        jacs = {k: j.reshape(f_mu.shape[0], c, *j.shape[len(shape) :]) for k, j in jacs.items()}
    f_var = torch.zeros(f_mu.shape + f_mu.shape[-1:], dtype=f_mu.dtype, device=f_mu.device)
    ju: Tensor | None = None  # Σ_l J_l U_l over the joint (full) tensors: (B, C, P)
    for key, layer, name in parts:
        init = layer.parameter_spec(name).initializer
        if isinstance(init, FullNormal):
            jac = jacs[key].flatten(2)  # (B, C, P_l)
            u = init.deviations.reshape(init.joint_size, -1).to(jac)  # U_lᵀ: (P, P_l)
            term = torch.einsum("bcl,pl->bcp", jac, u)
            ju = term if ju is None else ju + term
        else:
            f_var = f_var + _variance_term(jacs[key], layer, name)
    if ju is not None:
        f_var = f_var + ju @ ju.transpose(1, 2)
    out = _predictive(f_mu, f_var, likelihood)
    if isinstance(out, tuple):
        return out[0].reshape(shape), out[1].reshape(*shape, c)
    return out.reshape(shape)


def _predictive(f_mu: Tensor, f_var: Tensor, likelihood: str) -> Tensor | tuple[Tensor, Tensor]:
    """The Gaussian over ``f`` (regression) or its probit-approximated softmax."""
    if likelihood == "regression":
        return f_mu, f_var
    kappa = (1 + math.pi / 8 * f_var.diagonal(dim1=-2, dim2=-1)).rsqrt()
    return torch.softmax(kappa * f_mu, dim=-1)
