"""SWAG's collection run: SGD from the trained weights, collecting moments
(:func:`collect`; private module, public as :func:`bayesian_layers.swag.collect`)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from numbers import Real
from typing import Any

import torch
from torch import Tensor, nn

from ..sampling import posterior_mean
from ._moments import SWAGMoments
from ._predict import update_bn
from ._targets import random_normals, trained_parameters
from ._write import COVARIANCES, check_low_rank_estimators, write_posterior

__all__ = ["collect"]

_FN = "bl.swag.collect"


def _check_int(name: str, value: object, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{_FN} expected `{name}` an int >= {low}, got {value!r}")
    return value


def _check_lr(name: str, value: object, *, positive: bool) -> float:
    ok = isinstance(value, Real) and not isinstance(value, bool)
    v = float(value) if ok else math.nan  # type: ignore[arg-type]
    if not (math.isfinite(v) and (v > 0 if positive else v >= 0)):
        bound = "> 0" if positive else ">= 0"
        raise ValueError(f"{_FN} expected `{name}` a finite number {bound}, got {value!r}")
    return v


def _split(batch: Any) -> tuple[Any, Any]:
    if isinstance(batch, (list, tuple)) and len(batch) == 2:
        return batch[0], batch[1]
    got = f"a {type(batch).__name__} of length {len(batch)}" if isinstance(
        batch, (list, tuple)) else type(batch).__name__  # fmt: skip
    raise ValueError(f"{_FN} expected `loader` to yield (input, target) pairs, got {got}")


def collect(
    model: nn.Module,
    loader: Iterable[Any],
    loss_fn: Callable[[Any, Any], Tensor],
    optimizer: torch.optim.Optimizer | None = None,
    *,
    lr: float,
    epochs: int,
    max_rank: int = 20,
    collect_every: int = 1,
    collect_unit: str = "epoch",
    lr_min: float | None = None,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    covariance: str = "low_rank",
    bn_update: bool = True,
) -> SWAGMoments:
    r"""Run SWAG (Maddox et al., 2019) from ``model``'s trained weights and write its
    posterior into the Bayesian layers.

    SGD runs on the point estimate: the model is called in :func:`bl.posterior_mean
    <bayesian_layers.posterior_mean>` mode (no noise), so it trains the layers' means
    ``weight_loc`` (and every other trained tensor, see below) exactly as a
    deterministic network; ``loss = loss_fn(model(x), y)`` (weight decay, if any, is the
    prior; no KL term). Every ``collect_every`` epochs (or steps) the iterate ``θ_i`` is
    collected: running moments and the last ``max_rank`` deviations
    (:class:`SWAGMoments`). At the end every trained tensor is set to the SWA mean
    ``θ_SWA`` and each random parameter of the Bayesian layers gets SWAG's posterior:

    .. math::
        q(\theta) = N\!\left(\theta_{\text{SWA}},\ \tfrac12\left(\Sigma_{\text{diag}}
            + \frac{D D^\top}{K - 1}\right)\right), \qquad
        \Sigma_{\text{diag}} = \max(\overline{\theta^2} - \theta_{\text{SWA}}^2, 0)

    with ``D`` the ``(P, K)`` matrix of the last ``K ≤ max_rank`` deviations
    ``θ_i - θ̄_i``; ``loc = θ_SWA``, ``scale = sqrt(½ Σ_diag)`` (``rho =
    softplus⁻¹(scale)``) and ``D`` per parameter tensor in the family
    :class:`~bayesian_layers.initializers.swag_normal.SWAGNormal`. With
    ``covariance="diagonal"`` the layers keep their normal family with ``scale =
    sqrt(Σ_diag)`` (SWAG-Diag), which every estimator (Flipout, local
    reparameterization) accepts. Point estimates (a deterministic bias, BatchNorm's
    affine, plain torch layers) become their SWA mean: SWAG's uncertainty lives in the
    Bayesian layers. Finally, with ``bn_update``, BatchNorm running statistics are
    recomputed at ``θ_SWA`` (one pass over ``loader``, :func:`update_bn`).

    Learning rate: constant ``lr``, or, with ``lr_min``, cyclic (the paper's): inside each
    collection period of ``c`` steps, step ``j = 1..c`` uses ``(1 - j/c)·lr + (j/c)·lr_min``
    so the collected iterate is taken at ``lr_min``. With ``optimizer`` given (it should
    hold the tensors this trains: the means and point estimates, not the ``*_rho``), its
    groups' ``lr`` are set by this schedule (``lr`` throughout when constant);
    otherwise ``torch.optim.SGD(lr, momentum, weight_decay)`` is used.

    Cost: ``epochs`` passes of SGD; memory ``(K + 2)·P`` floats in float64 for ``P``
    trained entries; the saved low-rank posterior adds ``K·P_random`` to ``state_dict``.

    Args:
        model: a model with Bayesian layers whose random parameters have normal
            posteriors ``N(loc, softplus(rho))`` (hand-built or
            ``bl.to_bayesian(net, "reparameterization")``), already trained.
        loader: an iterable of ``(input, target)`` batches (re-iterated each epoch).
        loss_fn: ``loss_fn(output, target) -> scalar``, e.g. ``F.cross_entropy``.
        optimizer: an optimizer over the trained tensors, or ``None`` for SGD.
        lr: the (maximum) learning rate, ``> 0``.
        epochs: passes over ``loader``, ``≥ 1``.
        max_rank: K at most, the deviations kept (``≥ 1``; ``≥ 2`` for ``"low_rank"``).
        collect_every: collect after every this many ``collect_unit``\ s, ``≥ 1``.
        collect_unit: ``"epoch"`` (the paper) or ``"step"``.
        lr_min: the learning rate at collection for the cyclic schedule, ``0 ≤ lr_min``;
            ``None`` for a constant ``lr``. With ``collect_unit="epoch"`` it needs
            ``len(loader)``.
        momentum, weight_decay: of the default SGD.
        covariance: ``"low_rank"`` (SWAG) or ``"diagonal"`` (SWAG-Diag).
        bn_update: recompute BatchNorm statistics at ``θ_SWA`` at the end.

    Returns:
        The :class:`SWAGMoments` (float64): ``mean``, ``variance``, ``deviations`` by
        ``named_parameters`` name, ``rank`` K.

    Raises:
        ValueError: a bad hyperparameter, an empty ``loader``, a batch that is not a
            pair, a non-finite loss, a model without Bayesian layers (or with non-normal
            posteriors, or with Flipout/local reparameterization under ``"low_rank"``),
            or too few snapshots (fewer than 2 for ``"low_rank"``); nothing is written
            then. The messages name ``bl.swag.collect`` and the argument.

    Example:
        >>> import torch, bayesian_layers as bl
        >>> _ = torch.manual_seed(0)
        >>> model = torch.nn.Sequential(bl.layers.LinearReparameterization(3, 1))
        >>> data = [(torch.randn(8, 3), torch.randn(8, 1)) for _ in range(4)]
        >>> moments = bl.swag.collect(model, data, torch.nn.functional.mse_loss,
        ...                           lr=0.05, epochs=5, max_rank=3)
        >>> moments.rank, model[0].weight_initializer.deviations.shape
        (3, torch.Size([3, 1, 3]))
    """
    targets = random_normals(model, _FN)
    _check_int("max_rank", max_rank, 1)
    epochs = _check_int("epochs", epochs, 1)
    every = _check_int("collect_every", collect_every, 1)
    lr = _check_lr("lr", lr, positive=True)
    if lr_min is not None:
        lr_min = _check_lr("lr_min", lr_min, positive=False)
    momentum = _check_lr("momentum", momentum, positive=False)  # the default SGD's
    weight_decay = _check_lr("weight_decay", weight_decay, positive=False)
    if collect_unit not in ("epoch", "step"):
        raise ValueError(
            f"{_FN} expected `collect_unit` in ('epoch', 'step'), got {collect_unit!r}"
        )
    if covariance not in COVARIANCES:
        raise ValueError(f"{_FN} expected `covariance` in {COVARIANCES}, got {covariance!r}")
    if covariance == "low_rank":
        if max_rank < 2:
            raise ValueError(
                f"{_FN}(covariance='low_rank') expected `max_rank` >= 2 (the low-rank term "
                f"divides by K - 1), got {max_rank}"
            )
        check_low_rank_estimators(targets, _FN)
    if not callable(loss_fn):
        raise TypeError(f"{_FN} expected `loss_fn` callable, got {type(loss_fn).__name__}")
    if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(
            f"{_FN} expected `optimizer` a torch.optim.Optimizer or None, got "
            f"{type(optimizer).__name__}"
        )
    period = every
    if lr_min is not None and collect_unit == "epoch":
        if not hasattr(loader, "__len__"):
            raise ValueError(f"{_FN}(lr_min=...) with collect_unit='epoch' needs len(loader)")
        period = every * len(loader)  # type: ignore[arg-type]
    trained = trained_parameters(model, targets)
    if optimizer is None:
        optimizer = torch.optim.SGD(
            list(trained.values()), lr=lr, momentum=momentum, weight_decay=weight_decay
        )
    else:
        for group in optimizer.param_groups:
            group["lr"] = lr
    moments = SWAGMoments(max_rank)
    was_training = model.training
    model.train()
    step = 0
    try:
        with posterior_mean(model):
            for epoch in range(epochs):
                batches = 0
                for batch in loader:
                    x, y = _split(batch)
                    if lr_min is not None:
                        t = (step % period + 1) / period
                        for group in optimizer.param_groups:
                            group["lr"] = (1 - t) * lr + t * lr_min
                    optimizer.zero_grad()
                    loss = loss_fn(model(x), y)
                    if not torch.isfinite(loss.detach()).all():
                        raise ValueError(
                            f"{_FN}: the loss became {loss.item()} at step {step} (epoch "
                            f"{epoch}); lower `lr`"
                        )
                    loss.backward()
                    optimizer.step()
                    step += 1
                    batches += 1
                    if collect_unit == "step" and step % every == 0:
                        moments.update({k: p for k, p in trained.items()})
                if batches == 0:
                    raise ValueError(f"{_FN} expected a non-empty `loader`, got no batches")
                if collect_unit == "epoch" and (epoch + 1) % every == 0:
                    moments.update({k: p for k, p in trained.items()})
    finally:
        model.train(was_training)
    needed = 2 if covariance == "low_rank" else 1
    if moments.num_snapshots < needed:
        raise ValueError(
            f"{_FN}(covariance={covariance!r}) expected at least {needed} snapshots, got "
            f"{moments.num_snapshots} ({epochs} epochs, one every {every} {collect_unit}s); "
            "raise `epochs` or lower `collect_every`"
        )
    write_posterior(model, moments, covariance)
    if bn_update:
        with posterior_mean(model):
            update_bn(model, loader)
    return moments
