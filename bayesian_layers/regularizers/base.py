"""The base class :class:`Regularizer`, its prior-buffer helpers and the Monte Carlo KL."""

from __future__ import annotations

from numbers import Real

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Distribution

from ..initializers import check_non_negative, log_softplus
from ..random_variables.variable import RandomVariable

__all__ = ["Regularizer", "monte_carlo_kl"]


def _as_rv(owner: str, x: RandomVariable | Distribution) -> RandomVariable:
    if isinstance(x, RandomVariable):
        return x
    if isinstance(x, Distribution):
        return RandomVariable(x)
    raise TypeError(f"{owner} expected a RandomVariable or Distribution, got {type(x).__name__}")


def _float_buffer(owner: str, name: str, value: float | Tensor) -> Tensor:
    """A finite floating-point copy of ``value`` (never an alias of the caller's tensor)."""
    if isinstance(value, bool) or not isinstance(value, (Real, Tensor)):
        raise TypeError(
            f"{owner} expected `{name}` to be a number or tensor, got {type(value).__name__} "
            f"{value!r}"
        )
    # a number (numpy's too) in the default dtype, as a Python float is
    t = value.detach().clone() if isinstance(value, Tensor) else torch.tensor(float(value))
    t = t if t.is_floating_point() else t.to(torch.get_default_dtype())
    if t.device.type != "meta" and not bool(torch.isfinite(t).all()):
        raise ValueError(f"{owner} expected `{name}` to be finite, got {value!r}")
    return t


def _positive_buffer(owner: str, name: str, value: float | Tensor) -> Tensor:
    t = _float_buffer(owner, name, value)
    if t.device.type != "meta" and not bool((t > 0).all()):
        raise ValueError(f"{owner} expected `{name}` to be finite and > 0, got {value!r}")
    return t


def monte_carlo_kl(q: Distribution, p: Distribution, value: Tensor) -> Tensor:
    """Single-sample estimate ``sum(log q(w) - log p(w))`` at ``w = value``."""
    return (q.log_prob(value) - p.log_prob(value)).sum()


class Regularizer(nn.Module):
    """Base class. Subclasses implement ``penalty(rv) -> Tensor`` (unscaled).

    Args:
        scale_factor: multiplies the penalty (a tempered KL uses < 1).
    """

    #: whether the penalty reads the random variable's value (Monte Carlo).
    needs_sample: bool = False

    def __init__(self, scale_factor: float = 1.0) -> None:
        super().__init__()
        self.scale_factor = check_non_negative(type(self).__name__, "scale_factor", scale_factor)

    def penalty(self, rv: RandomVariable) -> Tensor:
        raise NotImplementedError

    def normal_penalty(self, loc: Tensor, scale: Tensor) -> Tensor | None:
        """The scaled penalty of ``N(loc, scale)`` straight from its parameters, or ``None``.

        Layers call this first for normal posteriors: it skips building a
        distribution and a random variable on the training hot path.
        """
        return None

    def softplus_normal_penalty(self, loc: Tensor, rho: Tensor) -> Tensor | None:
        """The scaled penalty of ``N(loc, softplus(rho))`` from the raw parameters, or ``None``.

        Layers call this for normal posteriors; a regularizer that needs
        ``log(scale)`` overrides it to use :func:`~bayesian_layers.initializers.log_softplus`,
        which stays finite where ``softplus(rho)`` underflows. The default defers
        to :meth:`normal_penalty`.
        """
        return self.normal_penalty(loc, F.softplus(rho))

    def forward(self, rv: RandomVariable | Distribution) -> Tensor:
        out = self.penalty(_as_rv(type(self).__name__, rv))
        return out if self.scale_factor == 1.0 else out * self.scale_factor


class NormalClosedForm(Regularizer):
    """A regularizer whose penalty of ``N(loc, scale)`` is ``_kl(loc, scale, log scale)``.

    Subclasses implement ``_kl``; this gives them the two fast paths, the one from
    ``(loc, scale)`` and the one from ``(loc, rho)`` with a stable ``log softplus(rho)``.
    """

    def _kl(self, loc: Tensor, scale: Tensor, log_scale: Tensor) -> Tensor:
        raise NotImplementedError

    def normal_penalty(self, loc: Tensor, scale: Tensor) -> Tensor | None:
        out = self._kl(loc, scale, scale.log())
        return out if self.scale_factor == 1.0 else out * self.scale_factor

    def softplus_normal_penalty(self, loc: Tensor, rho: Tensor) -> Tensor | None:
        out = self._kl(loc, F.softplus(rho), log_softplus(rho))
        return out if self.scale_factor == 1.0 else out * self.scale_factor


class LocScalePrior(Regularizer):
    """A regularizer whose prior has a location and a positive scale, kept as buffers."""

    prior_loc: Tensor
    prior_scale: Tensor

    def __init__(
        self, loc: float | Tensor = 0.0, scale: float | Tensor = 1.0, scale_factor: float = 1.0
    ) -> None:
        super().__init__(scale_factor)
        self.register_buffer("prior_loc", _float_buffer(type(self).__name__, "loc", loc))
        self.register_buffer("prior_scale", _positive_buffer(type(self).__name__, "scale", scale))
