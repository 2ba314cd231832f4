"""SWAG's posterior family: a normal with a diagonal plus low-rank covariance,
:class:`SWAGNormal` (Maddox et al., 2019)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, cast

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, Normal

from .normal import TrainableNormal

__all__ = ["SWAGNormal", "LOW_RANK_SUFFIX"]

#: The name suffix of the low-rank noise ``z₂`` of a SWAG draw, as asked of the layer's
#: :meth:`~bayesian_layers.layers.base.BayesianLayer.noise` (``"weight_swag_low_rank"``).
LOW_RANK_SUFFIX = "_swag_low_rank"


class SWAGNormal(TrainableNormal):
    r"""``N(loc, diag(scale²) + D Dᵀ / (2 (K - 1)))``: SWAG's Gaussian over one tensor.

    The parameters are those of :class:`TrainableNormal` (``{prefix}_loc``,
    ``{prefix}_rho``, ``scale = softplus(rho)``), so a layer's normal posterior can be
    switched to it with :meth:`~bayesian_layers.layers.base.BayesianLayer.set_initializer`;
    the low-rank factor is the buffer ``deviations`` of this module (``D``, the last K
    SWA deviations, one per row), saved in ``state_dict`` as
    ``{prefix}_initializer.deviations``. :func:`bayesian_layers.swag.collect` writes
    ``loc = θ_SWA`` and ``scale = sqrt(½ Σ_diag)``, which makes the law SWAG's
    ``N(θ_SWA, ½ (Σ_diag + D Dᵀ / (K - 1)))``. A draw is

    .. math:: \theta = \mathrm{loc} + \mathrm{scale} \odot \varepsilon_1
        + \frac{D^\top z_2}{\sqrt{2 (K - 1)}},
        \qquad \varepsilon_1 \sim N(0, I_{\text{shape}}),\ z_2 \sim N(0, I_K)

    with ``ε₁`` the parameter's noise (the layer's ``noise(name, ..., kind="parameter")``)
    and ``z₂`` asked of the layer as ``noise(name + "_swag_low_rank", (*lead, K))``, so
    noise hooks see it (:func:`bayesian_layers.swag.joint_low_rank` shares one ``z₂``
    across a whole network, as the paper does); in ``"frozen"`` mode it is kept in the
    layer's ``frozen_state`` under that name. Outside that context every tensor draws its
    own ``z₂``: the covariance inside each tensor is SWAG's, across tensors it is zero.

    Draws are not ``loc + scale · ε``, so ``is_normal`` is ``False``: only estimators
    that draw whole weights (reparameterization) accept it. :meth:`distribution` is the
    exact per-entry marginal ``N(loc, sqrt(scale² + Σ_k D_k² / (2 (K - 1))))`` (what
    ``layer.weight.stddev`` and closed-form KL regularizers read: the KL is that of the
    product of marginals); :meth:`loc_scale` is the diagonal part ``(loc, scale)``.

    Args:
        deviations: ``D`` of shape ``(K, *shape)``, ``K ≥ 2`` (zeros of that shape
            before loading a saved SWAG posterior).
        shape, loc_std, scale_init, device, dtype: see :class:`TrainableNormal`
            (``shape`` only for a standalone distribution; it must equal
            ``deviations.shape[1:]``).

    Raises:
        ValueError: ``deviations`` has fewer than 2 rows, is not floating point, or
            does not fit ``shape``.

    Example:
        >>> D = torch.tensor([[1.0, 0.0], [0.0, 0.0], [-1.0, 0.0]])  # K = 3, shape (2,)
        >>> q = SWAGNormal(D, shape=(2,), scale_init=1e-3)
        >>> q.rank, [round(s, 3) for s in q().stddev.tolist()]  # sqrt(1e-6 + 2 / 4)
        (3, [0.707, 0.001])
    """

    is_normal = False

    def __init__(
        self,
        deviations: Tensor,
        shape: Sequence[int] | None = None,
        *,
        loc_std: float | None = None,
        scale_init: float = 1e-2,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        name = type(self).__name__
        if not isinstance(deviations, Tensor) or not deviations.is_floating_point():
            got = deviations.dtype if isinstance(deviations, Tensor) else type(deviations).__name__
            raise ValueError(f"{name} expected `deviations` a floating tensor, got {got}")
        if deviations.dim() < 1 or deviations.shape[0] < 2:
            raise ValueError(
                f"{name} expected `deviations` of shape (K, *shape) with K >= 2 (the low-rank "
                f"term divides by K - 1), got shape {tuple(deviations.shape)}"
            )
        if shape is not None and tuple(shape) != tuple(deviations.shape[1:]):
            raise ValueError(
                f"{name} expected `deviations` of shape (K, *{tuple(shape)}), got "
                f"{tuple(deviations.shape)}"
            )
        super().__init__(shape, loc_std=loc_std, scale_init=scale_init, device=device, dtype=dtype)
        self.deviations: Tensor
        self.register_buffer("deviations", deviations.detach().clone().to(device=device))

    @property
    def rank(self) -> int:
        """K, the number of deviations (rows of ``D``)."""
        return int(self.deviations.shape[0])

    def _factor(self, like: Tensor) -> Tensor:
        """``D / sqrt(2 (K - 1))``: ``(K, *shape)`` in ``like``'s dtype and device."""
        d = self.deviations.to(dtype=like.dtype, device=like.device)
        return d / math.sqrt(2.0 * (self.rank - 1))

    def distribution(self, owner: nn.Module | None = None, prefix: str = "") -> Distribution:
        loc, scale = self.loc_scale(self._own(owner), prefix)
        low_rank_var = self._factor(loc).square().sum(0)
        return Normal(loc, (scale.square() + low_rank_var).sqrt(), validate_args=False)

    def _low_rank_noise(
        self, owner: nn.Module, prefix: str, lead: torch.Size, like: Tensor
    ) -> Tensor:
        """``z₂`` of shape ``(*lead, K)``: from the owner layer's noise (and frozen store),
        or a fresh draw for a standalone distribution."""
        shape = lead + torch.Size((self.rank,))
        noise_fn: Any = getattr(owner, "noise", None)
        if noise_fn is None or owner is self:
            return torch.randn(shape, dtype=like.dtype, device=like.device)
        key = prefix + LOW_RANK_SUFFIX
        if getattr(owner, "sampling", None) != "frozen":
            return cast(Tensor, noise_fn(key, shape, like, kind="normal"))
        store: dict[str, Any] = getattr(owner, "frozen_state")  # noqa: B009 - a layer's
        # the K draws of a vectorised call apart from the one of plain calls (as the
        # layer keeps its parameters' noise), so that neither replaces the other
        key = key if not lead else key + "@K"
        cached = store.get(key)
        if cached is None or cached.shape != shape:
            cached = cast(Tensor, noise_fn(key, shape, like, kind="normal"))
            store[key] = cached
        return cached

    def transform(self, owner: nn.Module, prefix: str, noise: Tensor | None) -> Tensor:
        loc, scale = self.loc_scale(owner, prefix)
        if noise is None:
            raise ValueError(f"{type(self).__name__}.transform expected noise, got None")
        lead = noise.shape[: noise.dim() - loc.dim()]
        z2 = self._low_rank_noise(owner, prefix, lead, loc)  # (*lead, K)
        low_rank = torch.tensordot(z2, self._factor(loc), dims=1)  # (*lead, *shape)
        return torch.addcmul(loc, scale, noise) + low_rank

    def extra_repr(self) -> str:
        return f"rank={self.rank}, shape={tuple(self.deviations.shape[1:])}"
