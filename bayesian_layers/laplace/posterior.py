"""Write a Laplace posterior into the layers: :func:`fit`.

``"diag"`` (and the diagonal layers of a Kronecker fit: recurrent, attention,
embedding): each random parameter's normal posterior gets ``scale = 1 / sqrt(h + τ)``
(``rho = softplus⁻¹(scale)``). ``"kron"``: each linear and conv parameter gets a
:class:`~bayesian_layers.initializers.kron_normal.KroneckerNormal` holding the
eigendecompositions of its factors (weight: ``G`` and ``A[:-1, :-1]``; bias: ``G`` and
``A[-1, -1]``). ``"full"``: with the Cholesky factor ``L`` of the joint precision
``H + diag(τ)``, ``U = L⁻ᵀ`` (``U Uᵀ = Σ``); each parameter gets a
:class:`~bayesian_layers.initializers.full_normal.FullNormal` holding its rows of ``U``,
and the layers share one noise ``z ∈ R^P`` per function sample (:mod:`._joint`), so draws
follow the joint posterior. The means stay the trained weights.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .._checks import inverse_softplus
from ..convert import to_bayesian
from ..initializers.full_normal import FullNormal
from ..initializers.kron_normal import KroneckerNormal
from ..initializers.swag_normal import SWAGNormal
from ..layers.base import BayesianLayer
from ..layers.linear import LinearReparameterization
from ._checks import (
    HESSIANS,
    LIKELIHOODS,
    SUBSETS,
    check_choice,
    check_mc_samples,
    check_positive_float,
)
from ._joint import share_joint_noise
from ._layers import targets
from .curvature import Curvature, LayerCurvature, compute_curvature, point_value

__all__ = [
    "fit",
    "restore",
    "write_posterior",
    "group_precisions",
    "kron_eigen",
    "joint_precision",
]

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


def joint_precision(curv: Curvature, taus: list[Tensor]) -> tuple[Tensor, Tensor]:
    """``"full"``: the posterior precision ``H + diag(τ)`` ``(P, P)`` and the prior
    precisions ``τ`` per parameter ``(P,)`` (each group's ``τ_g`` repeated)."""
    assert curv.full is not None
    sizes = [_value(lc, name).numel() for lc, name in curv.groups()]
    tau = torch.cat([t.reshape(1).expand(n) for t, n in zip(taus, sizes, strict=True)])
    tau = tau.to(curv.full)
    return curv.full + torch.diag(tau), tau


def _value(lc: LayerCurvature, name: str) -> Tensor:
    value = point_value(lc.module, name)
    assert value is not None  # a fitted parameter exists
    return value


def _layer(lc: LayerCurvature) -> BayesianLayer:
    if not isinstance(lc.module, BayesianLayer):
        raise ValueError(f"{_FN}: {lc.name!r} is not a Bayesian layer; convert it first")
    return lc.module


def _write_full(curv: Curvature, taus: list[Tensor]) -> None:
    prec, _ = joint_precision(curv, taus)
    chol, info = torch.linalg.cholesky_ex(prec)
    if int(info):
        raise ValueError(
            f"{_FN} expected a positive definite posterior precision H + τ I, got one whose "
            f"Cholesky factorisation failed at column {int(info)}; raise `prior_precision`"
        )
    eye = torch.eye(prec.shape[0], dtype=prec.dtype, device=prec.device)
    u = torch.linalg.solve_triangular(chol, eye, upper=False).T  # L⁻ᵀ: U Uᵀ = Σ
    start = 0
    for lc, name in curv.groups():
        layer = _layer(lc)
        loc = layer.point(name)
        rows = u[start : start + loc.numel()]  # (P_l, P)
        start += loc.numel()
        with torch.no_grad():
            factor = rows.T.reshape(u.shape[0], *loc.shape).to(loc)
            layer.set_initializer(name, FullNormal(factor))
            std = rows.square().sum(1).sqrt().reshape(loc.shape).to(loc)
            layer.parameter_spec(name).initializer.params(layer, name)["rho"].copy_(
                inverse_softplus(std)
            )
    if curv.joint is None:
        curv.joint = share_joint_noise(lc.module for lc in curv.layers)


def write_posterior(curv: Curvature, prior_precision: float | Tensor = 1.0) -> None:
    """Write the Laplace posterior of ``curv`` into its (Bayesian) layers, in place.

    Raises:
        ValueError: a layer that is not a Bayesian layer, or (``"diag"``) whose posterior
            is not a ``loc``/``rho`` normal family, or (``"full"``) a precision that is
            not positive definite.
    """
    taus = group_precisions(curv, prior_precision)
    if curv.hessian == "full":
        _write_full(curv, taus)
        return
    for (lc, name), tau in zip(curv.groups(), taus, strict=True):
        layer = _layer(lc)
        init = layer.parameter_spec(name).initializer
        if lc.structure == "diag" and isinstance(init, (KroneckerNormal, SWAGNormal)):
            layer.set_initializer(name, "trainable_normal")  # an earlier fit's (or FullNormal)
            init = layer.parameter_spec(name).initializer
        if init.suffixes != ("loc", "rho"):
            raise ValueError(
                f"{_FN} expected a loc/rho normal posterior for {lc.name}.{name}, got "
                f"{type(init).__name__}"
            )
        with torch.no_grad():
            loc = layer.point(name)
            if lc.structure == "diag":
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
    (reparameterization, random biases), as :func:`fit` and :func:`restore` do. A name
    inside another (an attention's ``out_proj``) converts with it; embeddings have no
    bias."""
    top = [n for n in names if not any(n.startswith(f"{o}.") for o in names if o and o != n)]
    emb = [n for n in top if isinstance(model.get_submodule(n), nn.Embedding)]
    rest = [n for n in top if n not in emb]
    net = copy.deepcopy(model)
    if rest:
        net = to_bayesian(
            net, "reparameterization", include=rest, bias_initializer="trainable_normal"
        )
    if emb:
        net = to_bayesian(net, "reparameterization", include=emb)
    return net


def _reparameterize(model: nn.Module, names: list[str]) -> None:
    """Replace each ``nn.Linear`` at ``names`` (adapter factors) by a
    ``LinearReparameterization`` with its weights as posterior means, in place."""
    for name in names:
        factor = model.get_submodule(name)
        assert isinstance(factor, nn.Linear)
        owner, _, attr = name.rpartition(".")
        parent = model.get_submodule(owner) if owner else model
        setattr(parent, attr, LinearReparameterization.from_torch(factor))


def _plain_lora_factors(model: nn.Module, state_dict: dict[str, Tensor]) -> list[str]:
    """The adapters' ``nn.Linear`` factors with a posterior mean in ``state_dict``."""
    from ..adapters import adapters  # the adapters build on the layers, not on laplace

    out = []
    for path, adapter in adapters(model):
        for part in ("lora_A", "lora_B"):
            name = f"{path}.{part}" if path else part
            if type(getattr(adapter, part)) is nn.Linear and _has_loc(state_dict, name):
                out.append(name)
    return out


def _prepare(model: nn.Module, subset: str, hessian: str) -> nn.Module:
    found = targets(model, subset)
    if subset == "lora":  # in place, no copy: the adapters' plain factors made Bayesian
        _reparameterize(model, [n for n, m, _ in found if isinstance(m, nn.Linear)])
        found = targets(model, subset)
    elif not any(isinstance(m, BayesianLayer) for m in model.modules()):
        if not found:
            raise ValueError(
                f"{_FN} expected a model with a Linear, Conv2d, recurrent, attention or "
                "Embedding layer, got none"
            )
        return _convert(model, [n for n, _, _ in found])
    if hessian in ("kron", "full"):
        for name, layer, kind in found:
            estimator = getattr(layer, "estimator", None)
            whole = hessian == "full" or kind != "generic"  # kron: generic layers stay diagonal
            if whole and estimator is not None and estimator.name != "reparameterization":
                raise ValueError(
                    f"{_FN} with hessian={hessian!r} expected reparameterization layers, got "
                    f"{type(layer).__name__} ({estimator.name}) at {name!r} (use hessian='diag')"
                )
    return model


def restore(model: nn.Module, state_dict: dict[str, Tensor]) -> nn.Module:
    """Load a Laplace posterior saved with ``state_dict()`` into a freshly built model.

    A deterministic ``model`` is copied and converted as :func:`fit` converts it (the
    supported layers with a ``<path>.<parameter>_loc`` entry in ``state_dict``; the
    plain factors of LoRA adapters, of a ``subset="lora"`` fit, in place); every
    parameter with Kronecker buffers in ``state_dict`` gets a
    :class:`~bayesian_layers.initializers.kron_normal.KroneckerNormal` of their size, and
    every one with a joint factor (``hessian="full"``) a
    :class:`~bayesian_layers.initializers.full_normal.FullNormal`; then ``load_state_dict``
    (strict), and the joint tensors share one noise again, so a fixed seed gives the
    fitted model's draws.

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
    _reparameterize(model, _plain_lora_factors(model, state_dict))  # in place, as fit
    if not any(isinstance(m, BayesianLayer) for m in model.modules()):
        names = [n for n, _, _ in targets(model, "all") if _has_loc(state_dict, n)]
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
            elif f"{key}deviations" in state_dict:
                like = layer.point(name)
                factor = torch.zeros_like(state_dict[f"{key}deviations"], device=like.device)
                layer.set_initializer(name, FullNormal(factor.to(like)))
    model.load_state_dict(state_dict)
    share_joint_noise(model)
    return model


def _has_loc(state_dict: dict[str, Tensor], path: str) -> bool:
    """Whether ``state_dict`` holds a posterior mean of the module at ``path`` itself."""
    head = f"{path}." if path else ""
    return any(
        k.startswith(head) and k.endswith("_loc") and "." not in k[len(head) :] for k in state_dict
    )


def fit(
    model: nn.Module,
    loader: Iterable[Any],
    likelihood: str = "classification",
    hessian: str = "diag",
    subset: str = "all",
    prior_precision: float | Sequence[float] | Tensor = 1.0,
    *,
    sigma_noise: float = 1.0,
    mc_samples: int = 0,
) -> nn.Module:
    """Post-hoc Laplace: a Gaussian posterior around the trained weights, in the layers.

    The posterior precision of each parameter tensor is its GGN block plus the prior's,
    ``H + τ I`` (:mod:`.curvature`), or for ``hessian="full"`` the joint GGN of all of
    them plus ``diag(τ)``; BatchNorm, LayerNorm and other modules without a rule stay
    point estimates (the model is run in eval mode). The posterior is written into the layers, so
    :func:`bayesian_layers.predict`, the sampling modes and ``state_dict`` work as for any
    Bayesian model. ``model.laplace_curvature`` keeps the :class:`Curvature` for
    :func:`~bayesian_layers.laplace.log_marginal_likelihood` and
    :func:`~bayesian_layers.laplace.optimize_prior_precision`.

    Args:
        model: a trained network. A deterministic one is copied and its fitted layers
            converted (``to_bayesian(copy, "reparameterization", bias random)``); a model
            with Bayesian layers is fitted in place at its posterior means. With
            ``subset="lora"`` the model is always fitted in place (no copy of a large
            frozen base): its adapters' plain ``lora_A``/``lora_B`` factors are
            converted to reparameterization layers, Bayesian ones kept.
        loader: ``(x, y)`` batches of the training data; outputs ``(B, C)`` or
            ``(B, ..., C)`` (a language model's ``(B, T, V)`` logits with ``(B, T)``
            token targets: one likelihood term per token, :mod:`.curvature`).
        likelihood: ``"classification"`` (softmax) or ``"regression"`` (Gaussian).
        hessian: ``"diag"`` (exact GGN diagonal), ``"kron"`` (KFAC for linear and conv
            layers, the exact diagonal for the others; needs reparameterization layers)
            or ``"full"`` (the joint ``P × P`` GGN of all fitted parameters, for small
            models; needs reparameterization layers).
        subset: ``"all"`` supported layers (linear, 2-d conv, LSTM, LSTM/GRU cells,
            multi-head attention, embedding), ``"last_layer"`` (the last linear), or
            ``"lora"``: the ``lora_A`` and ``lora_B`` factors of every
            :class:`~bayesian_layers.adapters.LoRALinear` (Laplace-LoRA, Yang et al.
            2024), the frozen base a point estimate.
        prior_precision: ``τ``, a scalar or one value per parameter tensor.
        sigma_noise: the regression likelihood's standard deviation.
        mc_samples: ``0``: the exact GGN; ``K > 0``: its Monte Carlo estimate from
            ``K`` sampled labels per output (``K`` backward passes per batch instead
            of one per class: a language model's vocabulary;
            :func:`~bayesian_layers.laplace.compute_curvature`).

    Returns:
        the Bayesian model holding the posterior.

    Raises:
        ValueError: an unknown ``likelihood``/``hessian``/``subset``, an empty loader, a
            model without a supported layer (``"lora"``: without adapters), a bad
            ``prior_precision``, class indices outside ``[0, C)``.
        TypeError: a ``loader`` batch that is not an ``(x, y)`` pair with a tensor ``y``.

    Example:
        >>> import torch, bayesian_layers as bl
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> data = [(torch.randn(16, 3), torch.randint(0, 2, (16,)))]
        >>> post = fit(net, data, hessian="kron", subset="last_layer")
        >>> type(post[2].weight_initializer).__name__, type(post[0]).__name__
        ('KroneckerNormal', 'Linear')

        Laplace-LoRA: the adapters' factors only (in place), here of a ``(B, T, V)``
        token model with ``(B, T)`` targets:

        >>> lm = bl.lora(nn.Sequential(nn.Embedding(5, 4), nn.Linear(4, 5)), target="1",
        ...              rank=2, posterior="laplace")
        >>> tokens = [(torch.randint(0, 5, (3, 6)), torch.randint(0, 5, (3, 6)))]
        >>> lm = fit(lm, tokens, hessian="kron", subset="lora")
        >>> [type(m).__name__ for m in (lm[1].base, lm[1].lora_A, lm[1].lora_B)]
        ['Linear', 'LinearReparameterization', 'LinearReparameterization']
    """
    check_choice(_FN, "likelihood", likelihood, LIKELIHOODS)
    check_choice(_FN, "hessian", hessian, HESSIANS)
    check_positive_float(_FN, "sigma_noise", sigma_noise)  # before subset="lora" converts
    check_mc_samples(_FN, mc_samples)
    model = _prepare(model, check_choice(_FN, "subset", subset, SUBSETS), hessian)
    curv = compute_curvature(
        model,
        loader,
        likelihood=likelihood,
        hessian=hessian,
        subset=subset,
        sigma_noise=sigma_noise,
        mc_samples=mc_samples,
    )
    tau = torch.as_tensor(prior_precision, dtype=curv.loss.dtype)  # not rounded to float32
    write_posterior(curv, tau)
    curv.prior_precision = tau
    model.laplace_curvature = curv  # type: ignore[assignment]
    return model
