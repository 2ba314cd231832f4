"""The :class:`PoissonProcess` layer and its output, the random point set
:class:`PointSetVariable` (traceable through :func:`point_set`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch
from torch import Tensor, nn

from ..._checks import check_name
from ...random_variables.variable import RandomVariable
from ...tracing import traceable
from ..base import check_input
from ._util import check_box
from .distribution import PoissonProcessDistribution, Rate

__all__ = ["PoissonProcess", "PointSetVariable", "point_set"]


class PointSetVariable(RandomVariable):
    """A random point set: a :class:`~bayesian_layers.RandomVariable` whose value is
    ``[N, D]`` and whose distribution is a point process (N itself is random).
    ``sample()`` draws a new point set.

    Args:
        distribution: the point process.
        value: the point set ``[N, D]``, inside the process's domain.
        name: the variable's name.

    Example:
        >>> import torch
        >>> law = PoissonProcessDistribution(lambda x: torch.ones(x.shape[:-1]), [(0.0, 2.0)])
        >>> rv = PointSetVariable(law, torch.tensor([[0.5]]), name="events")
        >>> rv.shape, float(rv.log_prob(rv))  # log 1 - 2
        (torch.Size([1, 1]), -2.0)
    """

    def __init__(
        self, distribution: PoissonProcessDistribution, value: Tensor, name: str | None = None
    ) -> None:
        self._set_distribution(distribution, (), name, "PointSetVariable")
        self._value = distribution.check_points(value)


@traceable
def point_set(
    distribution: PoissonProcessDistribution,
    *,
    name: str | None = None,
    value: Tensor | None = None,
) -> PointSetVariable:
    """A traceable :class:`PointSetVariable` (drawn by thinning when ``value`` is None)."""
    if value is None:
        return PointSetVariable(distribution, cast(Tensor, distribution.sample()), name=name)
    return PointSetVariable(distribution, value, name=name)


class PoissonProcess(nn.Module):
    """Inhomogeneous Poisson process on a box in 1–3 dimensions (paper Figure 9).

    Args:
        rate: the intensity, a module or callable mapping points ``[M, D]`` to
            non-negative intensities ``[M]`` (or ``[M, 1]``), e.g.
            ``nn.Sequential(layers.SparseGaussianProcess(1, 32), nn.Softplus())``.
            A module is registered as a submodule (its parameters train, its
            ``losses`` count in ``bl.losses``).
        domain: one ``(low, high)`` pair per dimension.
        integration: ``"gauss_legendre"`` or ``"monte_carlo"`` rule for ``∫λ``;
            ``num_points`` controls its error (see
            :class:`PoissonProcessDistribution`).
        num_points: nodes per dimension (Gauss–Legendre) or in all (Monte Carlo).
        upper_bound: ``λ*`` for thinning, or ``None`` to estimate it on a grid.
        bound_factor: safety factor of an estimated bound.
        name: name of the returned random variable (for tracing and conditioning).

    Shape:
        - Input: a point set ``[N, D]`` (N may be 0), all points inside ``domain``;
          or nothing, and the value is drawn by thinning (a generative program:
          ``bl.condition(events=x)`` then fixes it without drawing).
        - Output: a :class:`PointSetVariable` with value the input.

    Example:
        >>> import torch
        >>> from bayesian_layers import layers
        >>> process = layers.PoissonProcess(lambda x: 2.0 * torch.ones(x.shape[:-1]),
        ...                                 domain=[(0.0, 3.0)], name="events")
        >>> events = process(torch.tensor([[0.5], [2.0]]))
        >>> round(float(events.log_prob(events)), 4)  # 2 log 2 - 2 * 3
        -4.6137
        >>> _ = torch.manual_seed(0)
        >>> events.sample().shape[-1]
        1
    """

    def __init__(
        self,
        rate: Rate,
        domain: Sequence[tuple[float, float]],
        *,
        integration: str = "gauss_legendre",
        num_points: int = 64,
        upper_bound: float | None = None,
        bound_factor: float = 1.5,
        name: str | None = None,
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        if not callable(rate):
            raise TypeError(f"{owner} expected `rate` to be a module or callable, got {rate!r}")
        check_name(owner, name)
        self.rate = rate
        self.name = name
        self.domain = check_box(owner, domain)
        self._options = {
            "integration": integration,
            "num_points": num_points,
            "upper_bound": upper_bound,
            "bound_factor": bound_factor,
        }
        self.process()  # validates domain and options now

    def process(
        self, *, dtype: torch.dtype | None = None, device: torch.device | str | None = None
    ) -> PoissonProcessDistribution:
        """The process as a distribution over point sets (box and draws in ``dtype`` on
        ``device``)."""
        options = self._options
        law = PoissonProcessDistribution(
            self.rate,
            self.domain,
            dtype=dtype,
            device=device,
            owner=type(self).__name__,  # errors about the points name this layer
            **options,  # type: ignore[arg-type]
        )
        return law

    def forward(self, x: Tensor | None = None) -> PointSetVariable:
        if isinstance(x, RandomVariable):
            x = x.value
        param = self._rate_parameter()
        dtype = param.dtype if param is not None else None
        device = param.device if param is not None else None
        if isinstance(x, Tensor):
            if param is not None and x.is_floating_point():
                # the rate module computes in its parameters' dtype (or autocast's)
                check_input(x, type(self).__name__, "events", dtype=param.dtype)
            dtype = x.dtype if x.is_floating_point() else dtype
            device = x.device
        # the points are checked (also a value substituted by conditioning) by PointSetVariable
        return point_set(self.process(dtype=dtype, device=device), name=self.name, value=x)

    def _rate_parameter(self) -> Tensor | None:
        """A floating parameter of the rate module: its dtype and device are the points'."""
        if isinstance(self.rate, nn.Module):
            for p in self.rate.parameters():
                if p.is_floating_point() and not isinstance(p, nn.UninitializedParameter):
                    return p
        return None

    def extra_repr(self) -> str:
        return f"domain={list(self.domain)}, name={self.name!r}"
