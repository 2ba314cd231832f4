"""Write a Laplace posterior into the layers: :func:`fit`.

``"diag"``: each random parameter's normal posterior gets ``scale = 1 / sqrt(h + τ)``
(``rho = softplus⁻¹(scale)``). ``"kron"``: each gets a
:class:`~bayesian_layers.initializers.kron_normal.KroneckerNormal` holding the
eigendecompositions of its factors (weight: ``G`` and ``A[:-1, :-1]``; bias: ``G`` and
``A[-1, -1]``). The means stay the trained weights.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .._checks import inverse_softplus
from ..convert import to_bayesian
from ..initializers.kron_normal import KroneckerNormal
from ..layers.base import BayesianLayer
from ._checks import HESSIANS, LIKELIHOODS, check_choice
from .curvature import (
    Curvature,
    LayerCurvature,
    compute_curvature,
    point_value,
    supported_layers,
)

__all__ = ["fit", "restore", "write_posterior", "group_precisions", "kron_eigen"]

_FN = "laplace.fit"


def kron_eigen(lc: LayerCurvature, param: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(λ_G, Q_G, λ_A, Q_A)`` of parameter ``param``'s Kronecker block (weight:
    ``A[:-1, :-1]`` when the layer has a bias, else ``A``; bias: ``A[-1:, -1:]``);
    eigenvalues clamped at 0 (the factors are PSD up to rounding); cached in ``lc``."""
    assert lc.A is not None and lc.G is not None
    if "G" not in lc.eigen:
        lg, qg = torch.linalg.eigh(lc.G)
        lc.eigen["G"] = (lg.clamp_min(0), qg)
    if param not in lc.eigen:
        a = lc.A
        if param == "bias":
            a = lc.A[-1:, -1:]
        elif "bias" in _declared(lc):
            a = lc.A[:-1, :-1]
        la, qa = torch.linalg.eigh(a)
        lc.eigen[param] = (la.clamp_min(0), qa)
    return lc.eigen["G"] + lc.eigen[param]


def _declared(lc: LayerCurvature) -> tuple[str, ...]:
    # the A factor has the bias column when the layer has a bias (random or not)
    assert lc.A is not None
    w = point_value(lc.module, "weight")
    assert w is not None
    return ("weight", "bias") if lc.A.shape[0] == w[0].numel() + 1 else ("weight",)


def group_precisions(
    curv: Curvature, prior_precision: float | Tensor, *, fn: str = _FN
) -> list[Tensor]:
    """``τ_g`` per parameter group of ``curv`` from a scalar or one value per group.

    Raises:
        ValueError: a tensor whose size is neither 1 nor the number of groups, or a
            value <= 0.
    """
    n = len(curv.groups())
    tau = torch.as_tensor(prior_precision, dtype=curv.loss.dtype)
    if tau.numel() not in (1, n):
        raise ValueError(
            f"{fn} expected `prior_precision` a scalar or {n} values (one per parameter "
            f"tensor), got shape {tuple(tau.shape)}"
        )
    if not bool((tau > 0).all()) or not bool(torch.isfinite(tau).all()):
        raise ValueError(f"{fn} expected `prior_precision` > 0 and finite, got {tau}")
    tau = tau.reshape(-1)
    return [tau[0] if tau.numel() == 1 else tau[i] for i in range(n)]


def write_posterior(curv: Curvature, prior_precision: float | Tensor = 1.0) -> None:
    """Write the Laplace posterior of ``curv`` into its (Bayesian) layers, in place.

    Raises:
        ValueError: a layer that is not a Bayesian layer, or (``"diag"``) whose posterior
            is not a ``loc``/``rho`` normal family.
    """
    taus = group_precisions(curv, prior_precision)
    for (lc, name), tau in zip(curv.groups(), taus, strict=True):
        layer = lc.module
        if not isinstance(layer, BayesianLayer):
            raise ValueError(f"{_FN}: {lc.name!r} is not a Bayesian layer; convert it first")
        init = layer.parameter_spec(name).initializer
        if init.suffixes != ("loc", "rho"):
            raise ValueError(
                f"{_FN} expected a loc/rho normal posterior for {lc.name}.{name}, got "
                f"{type(init).__name__}"
            )
        with torch.no_grad():
            loc = layer.point(name)
            if curv.hessian == "diag":
                scale = (lc.diag[name] + tau).rsqrt()
            else:
                lg, qg, la, qa = kron_eigen(lc, name)
                q = KroneckerNormal(qg.shape[0], qa.shape[0], device=loc.device, dtype=loc.dtype)
                q.set_factors(lg, qg, la, qa, tau)
                layer.set_initializer(name, q)
                scale = layer.posterior(name).stddev
            init.params(layer, name)["rho"].copy_(inverse_softplus(scale))


def _convert(model: nn.Module, names: list[str]) -> nn.Module:
    """A copy of deterministic ``model`` with the layers ``names`` made Bayesian
    (reparameterization, random biases), as :func:`fit` and :func:`restore` do."""
    return to_bayesian(
        copy.deepcopy(model),
        "reparameterization",
        include=names,
        bias_initializer="trainable_normal",
    )


def _prepare(model: nn.Module, subset: str, hessian: str) -> nn.Module:
    if not any(isinstance(m, BayesianLayer) for m in model.modules()):
        names = [n for n, _ in supported_layers(model, subset)]
        if not names:
            raise ValueError(f"{_FN} expected a model with a Linear or Conv2d layer, got none")
        return _convert(model, names)
    if hessian == "kron":
        for name, layer in supported_layers(model, subset):
            estimator = getattr(layer, "estimator", None)
            if estimator is not None and estimator.name != "reparameterization":
                raise ValueError(
                    f"{_FN} with hessian='kron' expected reparameterization layers, got "
                    f"{type(layer).__name__} at {name!r} (use hessian='diag')"
                )
    return model


def restore(model: nn.Module, state_dict: dict[str, Tensor]) -> nn.Module:
    """Load a Laplace posterior saved with ``state_dict()`` into a freshly built model.

    A deterministic ``model`` is copied and converted as :func:`fit` converts it (the
    layers with a ``<path>.weight_loc`` entry in ``state_dict``); every parameter with
    Kronecker buffers in ``state_dict`` gets a
    :class:`~bayesian_layers.initializers.kron_normal.KroneckerNormal` of their size;
    then ``load_state_dict`` (strict).

    Args:
        model: the architecture, deterministic or already converted.
        state_dict: e.g. ``torch.load(path, weights_only=True)``.

    Returns:
        the model holding the posterior.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
        >>> post = fit(net, [(torch.randn(8, 3), torch.randint(0, 2, (8,)))], hessian="kron")
        >>> again = restore(nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)),
        ...                 post.state_dict())
        >>> torch.equal(again[0].weight_initializer.eigvecs_a, post[0].weight_initializer.eigvecs_a)
        True
    """
    if not any(isinstance(m, BayesianLayer) for m in model.modules()):
        names = [n for n, m in model.named_modules() if f"{n}.weight_loc" in state_dict]
        model = _convert(model, names)
    for path, layer in model.named_modules():
        if not isinstance(layer, BayesianLayer):
            continue
        for name, _ in layer.named_random_parameters():
            key = f"{path}.{name}_initializer." if path else f"{name}_initializer."
            if f"{key}eigvals_g" in state_dict:
                loc = layer.point(name)
                q = KroneckerNormal(
                    state_dict[f"{key}eigvals_g"].shape[0],
                    state_dict[f"{key}eigvals_a"].shape[0],
                    device=loc.device,
                    dtype=loc.dtype,
                )
                layer.set_initializer(name, q)
    model.load_state_dict(state_dict)
    return model


def fit(
    model: nn.Module,
    loader: Iterable[Any],
    likelihood: str = "classification",
    hessian: str = "diag",
    subset: str = "all",
    prior_precision: float | Sequence[float] | Tensor = 1.0,
    *,
    sigma_noise: float = 1.0,
) -> nn.Module:
    """Post-hoc Laplace: a Gaussian posterior around the trained weights, in the layers.

    The posterior precision of each parameter tensor is its GGN block plus the prior's,
    ``H + τ I`` (:mod:`.curvature`); the posterior is written into the layers, so
    :func:`bayesian_layers.predict`, the sampling modes and ``state_dict`` work as for any
    Bayesian model. ``model.laplace_curvature`` keeps the :class:`Curvature` for
    :func:`~bayesian_layers.laplace.log_marginal_likelihood` and
    :func:`~bayesian_layers.laplace.optimize_prior_precision`.

    Args:
        model: a trained network. A deterministic one is copied and its fitted layers
            converted (``to_bayesian(copy, "reparameterization", bias random)``); a model
            with Bayesian layers is fitted in place at its posterior means.
        loader: ``(x, y)`` batches of the training data.
        likelihood: ``"classification"`` (softmax) or ``"regression"`` (Gaussian).
        hessian: ``"diag"`` or ``"kron"`` (needs reparameterization layers).
        subset: ``"all"`` linear and 2-d conv layers, or ``"last_layer"`` (the last linear).
        prior_precision: ``τ``, a scalar or one value per parameter tensor.
        sigma_noise: the regression likelihood's standard deviation.

    Returns:
        the Bayesian model holding the posterior.

    Raises:
        ValueError: an unknown ``likelihood``/``hessian``/``subset``, an empty loader, a
            model without a supported layer, a bad ``prior_precision``.

    Example:
        >>> import torch, bayesian_layers as bl
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> data = [(torch.randn(16, 3), torch.randint(0, 2, (16,)))]
        >>> post = fit(net, data, hessian="kron", subset="last_layer")
        >>> type(post[2].weight_initializer).__name__, type(post[0]).__name__
        ('KroneckerNormal', 'Linear')
    """
    check_choice(_FN, "likelihood", likelihood, LIKELIHOODS)
    check_choice(_FN, "hessian", hessian, HESSIANS)
    model = _prepare(model, check_choice(_FN, "subset", subset, ("all", "last_layer")), hessian)
    curv = compute_curvature(
        model,
        loader,
        likelihood=likelihood,
        hessian=hessian,
        subset=subset,
        sigma_noise=sigma_noise,
    )
    write_posterior(curv, torch.as_tensor(prior_precision))
    curv.prior_precision = torch.as_tensor(prior_precision)
    model.laplace_curvature = curv  # type: ignore[assignment]
    return model
