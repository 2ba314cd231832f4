"""Distributions returned by the stochastic output layers, where torch's need a hand.

* :class:`IndependentEvents`: :class:`torch.distributions.Independent` whose KL
  divergence broadcasts against an elementwise prior (``bl.Normal(0., 1.)``), with
  a ``kl_divergence`` method and attribute access forwarded to the base family.
* :class:`Bernoulli`, :class:`Categorical`, :class:`OneHotCategorical`,
  :class:`Poisson`, :class:`NegativeBinomial`, :class:`MixtureSameFamily`: torch's
  classes whose ``rsample`` says why there is none (torch raises a bare
  ``NotImplementedError``); ``Categorical.log_prob`` rejects non-integer classes.

The logistic families are in :mod:`.logistic`.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributions as td
from torch import Tensor

from ..random_variable import RandomVariable

__all__ = [
    "IndependentEvents",
    "Bernoulli",
    "Categorical",
    "OneHotCategorical",
    "Poisson",
    "NegativeBinomial",
    "MixtureSameFamily",
]

_Size = torch.Size | list[int] | tuple[int, ...]


def _no_rsample(dist: td.Distribution, reason: str) -> NotImplementedError:
    return NotImplementedError(
        f"{type(dist).__name__} has no reparameterised sample (rsample): {reason}, so no "
        "gradient can flow through a draw. Use .sample() (a value without gradient) with a "
        "score-function estimator built on log_prob, or a continuous relaxation such as "
        "torch.distributions.RelaxedBernoulli / RelaxedOneHotCategorical."
    )


class _NoRsample:
    """Mixin: ``rsample`` raises a ``NotImplementedError`` that says why."""

    _no_rsample_reason = "its values are discrete"

    def rsample(self, sample_shape: _Size = ()) -> Tensor:
        raise _no_rsample(self, self._no_rsample_reason)  # type: ignore[arg-type]


class Bernoulli(_NoRsample, td.Bernoulli):
    """:class:`torch.distributions.Bernoulli` with a clear ``rsample`` error."""


class OneHotCategorical(_NoRsample, td.OneHotCategorical):
    """:class:`torch.distributions.OneHotCategorical` with a clear ``rsample`` error."""


class Poisson(_NoRsample, td.Poisson):
    """:class:`torch.distributions.Poisson` with a clear ``rsample`` error."""


class NegativeBinomial(_NoRsample, td.NegativeBinomial):
    """:class:`torch.distributions.NegativeBinomial` with a clear ``rsample`` error."""


class MixtureSameFamily(_NoRsample, td.MixtureSameFamily):
    """:class:`torch.distributions.MixtureSameFamily` with a clear ``rsample`` error."""

    _no_rsample_reason = "it picks a mixture component discretely"


class Categorical(_NoRsample, td.Categorical):
    """:class:`torch.distributions.Categorical` with a clear ``rsample`` error and
    ``log_prob`` that rejects non-integer class values (torch's validation reports
    only the support; without validation it would truncate them silently).
    """

    def log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args:
            if not isinstance(value, Tensor):
                raise TypeError(
                    f"Categorical.log_prob expected a Tensor of class indices, "
                    f"got {type(value).__name__}"
                )
            if value.is_floating_point():
                off = value[value != value.round()]
                if off.numel():
                    raise ValueError(
                        f"Categorical.log_prob expected integer class indices in "
                        f"[0, {self._num_events}), got a {value.dtype} tensor with "
                        f"non-integer values such as {off.flatten()[0].item()!r}"
                    )
        return super().log_prob(value)


class IndependentEvents(td.Independent):
    """:class:`torch.distributions.Independent` that also meets elementwise priors.

    ``kl_divergence(p, q)`` for ``p = IndependentEvents(base, n)`` is
    ``KL(base || q_base)``, broadcast to ``base``'s batch shape and summed over the
    ``n`` reinterpreted dimensions, where ``q_base`` is ``q`` with any
    ``Independent`` wrappers removed; ``q`` may reinterpret at most ``n`` dimensions
    and its base must have ``base``'s event shape. So a posterior with event shape
    ``(D,)`` against ``Normal(0., 1.)`` gives one KL per example. Torch's own rule
    (for ``Independent`` on both sides) requires equal reinterpreted dimensions.

    Attributes of the base family (``loc``, ``scale``, ``logits``, ...) are read
    through: ``d.loc`` is ``d.base_dist.loc``.

    Example:
        >>> base = torch.distributions.Normal(torch.zeros(4, 3), torch.ones(4, 3))
        >>> d = IndependentEvents(base, 1)
        >>> d.kl_divergence(torch.distributions.Normal(0.0, 1.0))
        tensor([0., 0., 0., 0.])
        >>> d.loc.shape
        torch.Size([4, 3])
    """

    def __getattr__(self, name: str) -> Any:
        base = self.__dict__.get("base_dist")
        if name.startswith("_") or base is None:
            raise AttributeError(name)
        try:
            return getattr(base, name)
        except AttributeError:
            raise AttributeError(
                f"'{type(self).__name__}' object (and its base "
                f"{type(base).__name__}) has no attribute {name!r}"
            ) from None

    def rsample(self, sample_shape: _Size = ()) -> Tensor:
        if not self.has_rsample:
            base = self.base_dist
            raise _no_rsample(base, getattr(base, "_no_rsample_reason", "its family has none"))
        return super().rsample(sample_shape)

    def kl_divergence(self, other: td.Distribution | RandomVariable) -> Tensor:
        """``KL(self || other)``; ``other`` a distribution or a random variable."""
        q = other.distribution if isinstance(other, RandomVariable) else other
        if not isinstance(q, td.Distribution):
            raise TypeError(
                "IndependentEvents.kl_divergence expected a RandomVariable or Distribution, "
                f"got {type(other).__name__}"
            )
        return td.kl_divergence(self, q)


def _strip_independent(d: td.Distribution) -> tuple[td.Distribution, int]:
    n = 0
    while isinstance(d, td.Independent):
        n += d.reinterpreted_batch_ndims
        d = d.base_dist
    return d, n


def _kl_independent_events(p: IndependentEvents, q: td.Distribution) -> Tensor:
    p_base, p_n = _strip_independent(p)
    q_base, q_n = _strip_independent(q)
    if q_n > p_n or p_base.event_shape != q_base.event_shape:
        raise NotImplementedError(
            f"KL({type(p).__name__} || {type(q).__name__}): the prior must reinterpret at "
            f"most {p_n} dims and have base event shape {tuple(p_base.event_shape)}, got "
            f"{q_n} reinterpreted dims and base event shape {tuple(q_base.event_shape)}"
        )
    kl = td.kl_divergence(p_base, q_base)
    kl = kl.expand(torch.broadcast_shapes(kl.shape, p_base.batch_shape))
    return kl.sum(tuple(range(-p_n, 0))) if p_n else kl


td.register_kl(IndependentEvents, td.Distribution)(_kl_independent_events)
# Also the more specific pair, so (IndependentEvents, Independent) is not ambiguous
# with torch's (Independent, Independent) rule.
td.register_kl(IndependentEvents, td.Independent)(_kl_independent_events)
