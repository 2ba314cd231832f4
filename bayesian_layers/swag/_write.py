"""Writing SWAG's posterior into the Bayesian layers, and preparing a fresh model to load
a saved one (private; public through :mod:`bayesian_layers.swag`)."""

from __future__ import annotations

import torch
from torch import nn

from .._checks import inverse_softplus
from ..initializers.swag_normal import SWAGNormal
from ._moments import SWAGMoments
from ._targets import RandomNormal, random_normals, trained_parameters

__all__ = ["COVARIANCES", "check_low_rank_estimators", "prepare", "write_posterior"]

#: ``"low_rank"``: SWAG, ``N(θ_SWA, ½ (Σ_diag + D Dᵀ / (K - 1)))``;
#: ``"diagonal"``: SWAG-Diag, ``N(θ_SWA, Σ_diag)``.
COVARIANCES = ("low_rank", "diagonal")


def check_low_rank_estimators(targets: list[RandomNormal], fn: str) -> None:
    """``ValueError`` naming the first layer whose estimator does not draw whole weights
    (Flipout, local reparameterization need ``loc + scale · ε`` posteriors)."""
    probe = SWAGNormal(torch.zeros(2, 1))
    for t in targets:
        estimator = getattr(type(t.layer), "estimator", None)
        role = "bias" if "bias" in t.name else "weight"
        if estimator is not None and not estimator.accepts(role, probe):
            raise ValueError(
                f"{fn}(covariance='low_rank') expected layers that draw whole weights (the "
                f"reparameterization estimator), got {type(t.layer).__name__} "
                f"({estimator.name}) for {t.path!r}; use covariance='diagonal' or convert with "
                "bl.to_bayesian(net, 'reparameterization')"
            )


@torch.no_grad()
def write_posterior(model: nn.Module, moments: SWAGMoments, covariance: str = "low_rank") -> None:
    r"""Write the posterior of ``moments`` into ``model``.

    Every trained tensor (:func:`trained_parameters`) becomes its SWA mean ``θ̄``. Each
    random parameter of a Bayesian layer gets ``loc = θ̄`` and

    - ``covariance="low_rank"``: ``scale = sqrt(½ Σ_diag)`` and the family
      :class:`~bayesian_layers.initializers.swag_normal.SWAGNormal` holding ``D``, so
      its law is ``N(θ̄, ½ (Σ_diag + D Dᵀ / (K - 1)))``;
    - ``covariance="diagonal"``: ``scale = sqrt(Σ_diag)`` in its normal family (SWAG-Diag;
      a :class:`SWAGNormal` left by an earlier low-rank fit becomes a ``TrainableNormal``).

    ``rho = softplus⁻¹(scale)``, with ``scale`` floored at the dtype's smallest normal
    number (a tensor that never moved) so ``rho`` stays finite.

    Raises:
        ValueError: a tensor of the model is missing from ``moments``, or (low rank) fewer
            than 2 deviations were kept.
    """
    fn = "bl.swag.write_posterior"
    if covariance not in COVARIANCES:
        raise ValueError(f"{fn} expected `covariance` in {COVARIANCES}, got {covariance!r}")
    targets = random_normals(model, fn)
    trained = trained_parameters(model, targets)
    missing = [k for k in trained if k not in moments.mean]
    if missing:
        raise ValueError(f"{fn} expected moments of every trained tensor, got none for {missing}")
    if covariance == "low_rank":
        if moments.rank < 2:
            raise ValueError(
                f"{fn}(covariance='low_rank') expected at least 2 collected snapshots (the "
                f"low-rank term divides by K - 1), got {moments.rank}"
            )
        check_low_rank_estimators(targets, fn)
    variances = moments.variance
    deviations = moments.deviations if covariance == "low_rank" else {}
    for key, p in trained.items():
        p.copy_(moments.mean[key])
    half = 0.5 if covariance == "low_rank" else 1.0
    for t in targets:
        scale = (half * variances[t.loc_key]).sqrt().to(t.rho.dtype)
        scale = scale.clamp_min(torch.finfo(t.rho.dtype).tiny)
        t.rho.copy_(inverse_softplus(scale))
        if covariance == "low_rank":
            d = deviations[t.loc_key].to(dtype=t.loc.dtype, device=t.loc.device)
            t.layer.set_initializer(t.name, SWAGNormal(d))
        elif isinstance(t.layer.parameter_spec(t.name).initializer, SWAGNormal):
            # an earlier low-rank posterior's deviations would stay in the law
            t.layer.set_initializer(t.name, "trainable_normal")


def prepare(model: nn.Module, rank: int) -> nn.Module:
    """Give ``model``'s Bayesian layers :class:`SWAGNormal` posteriors of rank ``rank``
    (zero deviations), so a SWAG ``state_dict`` saved with that rank loads into it.

    Args:
        model: a freshly built model with the architecture of the saved one.
        rank: K, the number of deviations saved (``SWAGMoments.rank`` of the collection;
            ``model.<layer>.weight_initializer.rank`` of the saved model), ``≥ 2``.

    Returns:
        ``model`` (changed in place).

    Example:
        >>> import torch, bayesian_layers as bl
        >>> fresh = torch.nn.Sequential(bl.layers.LinearReparameterization(3, 2))
        >>> _ = prepare(fresh, rank=4)
        >>> fresh[0].weight_initializer.deviations.shape
        torch.Size([4, 2, 3])
    """
    fn = "bl.swag.prepare"
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 2:
        raise ValueError(f"{fn} expected `rank` an int >= 2, got {rank!r}")
    targets = random_normals(model, fn)
    check_low_rank_estimators(targets, fn)
    for t in targets:
        zeros = torch.zeros((rank, *t.loc.shape), dtype=t.loc.dtype, device=t.loc.device)
        t.layer.set_initializer(t.name, SWAGNormal(zeros))
    return model
