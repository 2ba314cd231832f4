"""One tensor's share of a joint normal over many tensors: :class:`FullNormal` (the
full-covariance Laplace posterior, ``bl.laplace.fit(..., hessian="full")``)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, Normal

from .swag_normal import SWAGNormal

__all__ = ["FullNormal"]


class FullNormal(SWAGNormal):
    r"""The rows of a joint Gaussian ``N(θ*, U Uᵀ)`` over ``P`` parameters that belong
    to one tensor.

    The joint covariance ``Σ = U Uᵀ`` (``U`` of shape ``(P, P)``, e.g. ``L⁻ᵀ`` from the
    Cholesky factor ``L`` of the posterior precision) is split by rows: this tensor's
    ``P_l`` entries get ``factor = U[rows_l, :]ᵀ`` reshaped to ``(P, *shape)``, a buffer
    saved in ``state_dict`` as ``{prefix}_initializer.deviations``. A draw is

    .. math:: \theta_l = \mathrm{loc} + \sum_j z_j\, \mathrm{factor}_j,
        \qquad z \sim N(0, I_P)

    with ``z`` asked of the layer as the low-rank noise of
    :class:`~bayesian_layers.initializers.swag_normal.SWAGNormal` (this family is SWAG's
    with no diagonal part and the factor taken as it is): every tensor of a model that
    shares one ``z`` per function sample (a noise hook such as the one
    :func:`bayesian_layers.laplace.fit` registers, or
    :func:`bayesian_layers.swag.joint_low_rank`) draws from the joint law, cross-tensor
    correlations included; without one, each tensor's own block is exact and the
    tensors are independent. ``O(P_l P)`` per draw and memory.

    The parameters are ``{prefix}_loc`` (the mean) and ``{prefix}_rho`` (for reading only:
    ``softplus⁻¹`` of the marginal standard deviations, as the fit writes it).
    :meth:`distribution` is the exact product of marginals
    ``N(loc, sqrt(Σ_j factor_j²))`` (what ``layer.weight.stddev`` and closed-form KL
    regularizers read). Draws are whole tensors: reparameterization layers only.

    Args:
        factor: ``(P, *shape)``, ``P ≥ 2`` (zeros of that shape before loading a saved
            posterior).
        shape: only for a standalone distribution; must equal ``factor.shape[1:]``.
        device, dtype: of the parameters of a standalone distribution.

    Raises:
        ValueError: ``factor`` is not a floating tensor with at least 2 rows, or does
            not fit ``shape``.

    Example:
        >>> u = torch.tensor([[2.0, 0.0], [1.0, 1.0]])  # Σ = U Uᵀ = [[4, 2], [2, 2]]
        >>> q = FullNormal(u.T.reshape(2, 2), shape=(2,))
        >>> q.joint_size, [round(v, 4) for v in q().variance.tolist()]
        (2, [4.0, 2.0])
    """

    def __init__(
        self,
        factor: Tensor,
        shape: Sequence[int] | None = None,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        if isinstance(factor, Tensor) and factor.dim() >= 1 and factor.shape[0] < 2:
            raise ValueError(
                f"FullNormal expected `factor` of shape (P, *shape) with P >= 2 jointly "
                f"distributed parameters, got shape {tuple(factor.shape)}"
            )
        super().__init__(factor, shape, device=device, dtype=dtype)

    @property
    def joint_size(self) -> int:
        """``P``, the number of parameters of the joint law (the noise's size)."""
        return self.rank

    def _factor(self, like: Tensor) -> Tensor:
        """``(P, *shape)`` in ``like``'s dtype and device."""
        return self.deviations.to(dtype=like.dtype, device=like.device)

    def distribution(self, owner: nn.Module | None = None, prefix: str = "") -> Distribution:
        loc = self.params(self._own(owner), prefix)["loc"]
        return Normal(loc, self._factor(loc).square().sum(0).sqrt(), validate_args=False)

    def transform(self, owner: nn.Module, prefix: str, noise: Tensor | None) -> Tensor:
        loc = self.params(owner, prefix)["loc"]
        if noise is None:
            raise ValueError(f"{type(self).__name__}.transform expected noise, got None")
        lead = noise.shape[: noise.dim() - loc.dim()]
        z = self._low_rank_noise(owner, prefix, lead, loc)  # (*lead, P)
        return loc + torch.tensordot(z, self._factor(loc), dims=1)  # (*lead, *shape)

    def extra_repr(self) -> str:
        return f"joint_size={self.rank}, shape={tuple(self.deviations.shape[1:])}"
