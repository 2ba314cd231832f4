"""Distributions returned by the stochastic output layers, where torch's need a hand.

* :class:`IndependentEvents`: :class:`torch.distributions.Independent` whose KL
  divergence broadcasts against an elementwise prior (``bl.Normal(0., 1.)``), with
  a ``kl_divergence`` method and attribute access forwarded to the base family.
* :class:`Bernoulli`, :class:`Categorical`, :class:`OneHotCategorical`,
  :class:`Poisson`, :class:`NegativeBinomial`, :class:`MixtureSameFamily`: torch's
  classes whose ``rsample`` says why there is none (torch raises a bare
  ``NotImplementedError``); ``Categorical.log_prob`` rejects non-integer classes.
* :class:`Poisson` and :class:`NegativeBinomial` draw correct counts at any rate
  (torch's sampler overflows past ``2**63``): see :func:`sample_poisson`.
* :class:`Normal`, :class:`LogNormal`, :class:`Laplace`, :class:`StudentT`,
  :class:`MultivariateNormal`: torch's classes with the target check below.

Every distribution here checks the shape of a ``log_prob`` target
(:func:`check_target_shape`): a target whose shape would broadcast *against* the
batch (a ``(B,)`` target for ``(B, 1)`` values gives ``(B, B)`` terms, silently summed
by an event reduction) raises a ``ValueError`` naming both shapes and the fix.

The logistic families are in :mod:`.logistic`.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributions as td
from torch import Tensor

from ...random_variables.variable import RandomVariable
from ._util import Size, no_rsample, strip_independent

__all__ = [
    "IndependentEvents",
    "Normal",
    "LogNormal",
    "Laplace",
    "StudentT",
    "MultivariateNormal",
    "Bernoulli",
    "Categorical",
    "OneHotCategorical",
    "Poisson",
    "NegativeBinomial",
    "MixtureSameFamily",
    "POISSON_EXACT_MAX_RATE",
    "check_target_shape",
    "sample_poisson",
]


def _shape_hint(shape: torch.Size, expected: torch.Size) -> str:
    if shape + (1,) == expected[-len(shape) - 1 :]:
        return "add the missing unit dimension: use `y.unsqueeze(-1)`"
    if shape[-1:] == (1,) and shape[:-1] == expected[len(expected) - len(shape) + 1 :]:
        return "drop the extra unit dimension: use `y.squeeze(-1)`"
    return f"reshape it to {tuple(expected)}"


def check_target_shape(dist: td.Distribution, value: Any) -> None:
    """Raise ``ValueError`` if ``value`` would broadcast against ``dist``'s batch.

    Accepted: ``sample_shape + batch_shape + event_shape`` (any leading sample
    dimensions), or a shape with at most that many dimensions that broadcasts to it
    without growing it (one target for every example, ``(1, D)`` for ``(B, D)``).
    Refused: anything whose broadcast would cross the batch with itself, such as a
    ``(B,)`` target for ``(B, 1)`` values (``(B, B)`` terms) or ``(B, 1)`` class
    labels for ``(B,)`` values. Non-tensor values are left to torch.
    """
    if not isinstance(value, Tensor):
        return
    expected = dist.batch_shape + dist.event_shape
    shape, n = value.shape, len(expected)
    if n == 0 or shape[max(len(shape) - n, 0) :] == expected:
        return
    aligned = zip(shape, expected[n - len(shape) :], strict=True) if len(shape) <= n else None
    if aligned is not None and all(v in (1, e) for v, e in aligned):
        return
    try:
        grows = f"it would broadcast to {tuple(torch.broadcast_shapes(shape, expected))}"
    except RuntimeError:
        grows = "it does not broadcast"
    raise ValueError(
        f"{type(dist).__name__}.log_prob expected a target of shape {tuple(expected)} "
        f"(batch + event shape, optionally after sample dimensions), got {tuple(shape)}: "
        f"{grows}, pairing every example with every target; {_shape_hint(shape, expected)}"
    )


class _CheckedTarget:
    """Mixin: ``log_prob`` refuses targets that broadcast against the batch."""

    def log_prob(self, value: Tensor) -> Tensor:
        check_target_shape(self, value)  # type: ignore[arg-type]
        return super().log_prob(value)  # type: ignore[misc,no-any-return]


#: rates up to which torch's Poisson sampler is used; above, see :func:`sample_poisson`
POISSON_EXACT_MAX_RATE = float(2**30)


def sample_poisson(rate: Tensor) -> Tensor:
    """Poisson counts for any rate, as floats of ``rate``'s dtype (no gradient).

    Rates up to :data:`POISSON_EXACT_MAX_RATE` (``2**30``, log-rate ≈ 20.79) use
    ``torch.poisson``. Above it torch's samplers fail: the CPU one converts counts to
    int64 (-9.2e18 past log-rate ≈ 43.7) and loses accuracy in its acceptance test
    from about 1e14, CUDA's returns 32-bit counts. There the count is
    ``round(λ + √λ z + (z² - 1) / 6)``, ``z ~ N(0, 1)``: the Cornish-Fisher expansion
    of the Poisson quantile, whose error in distribution is ``O(1/λ)`` (< 1e-9 there).
    An infinite rate gives an infinite count.
    """
    with torch.no_grad():
        big = rate > POISSON_EXACT_MAX_RATE
        exact = torch.poisson(torch.where(big, 0.0, rate))
        z = torch.randn_like(rate)  # both branches always: no host sync, no graph break
        approx = (rate + rate.sqrt() * z + (z * z - 1) / 6).round().clamp_min(0.0)
        approx = torch.where(torch.isinf(rate), rate, approx)
        return torch.where(big, approx, exact)


class _NoRsample:
    """Mixin: ``rsample`` raises a ``NotImplementedError`` that says why."""

    _no_rsample_reason = "its values are discrete"

    def rsample(self, sample_shape: Size = ()) -> Tensor:
        raise no_rsample(self, self._no_rsample_reason)  # type: ignore[arg-type]


class Normal(_CheckedTarget, td.Normal):
    """:class:`torch.distributions.Normal` with the target check."""


class LogNormal(_CheckedTarget, td.LogNormal):
    """:class:`torch.distributions.LogNormal` with the target check."""


class Laplace(_CheckedTarget, td.Laplace):
    """:class:`torch.distributions.Laplace` with the target check."""


class StudentT(_CheckedTarget, td.StudentT):
    """:class:`torch.distributions.StudentT` with the target check."""


class MultivariateNormal(_CheckedTarget, td.MultivariateNormal):
    """:class:`torch.distributions.MultivariateNormal` with the target check; the
    ``log_prob`` of an empty batch is empty (torch's divides by zero)."""

    def log_prob(self, value: Tensor) -> Tensor:
        if isinstance(value, Tensor) and (value.numel() == 0 or self.batch_shape.numel() == 0):
            check_target_shape(self, value)
            shape = torch.broadcast_shapes(value.shape, self.batch_shape + self.event_shape)
            return self.loc.new_zeros(shape[:-1])
        return super().log_prob(value)


class Bernoulli(_CheckedTarget, _NoRsample, td.Bernoulli):
    """:class:`torch.distributions.Bernoulli` with a clear ``rsample`` error."""


class OneHotCategorical(_CheckedTarget, _NoRsample, td.OneHotCategorical):
    """:class:`torch.distributions.OneHotCategorical` with a clear ``rsample`` error;
    ``validate_args`` reaches the inner ``Categorical`` too (torch validates it always,
    which fails on an empty batch)."""

    def __init__(
        self,
        probs: Tensor | None = None,
        logits: Tensor | None = None,
        validate_args: bool | None = None,
    ) -> None:
        self._categorical = td.Categorical(probs, logits, validate_args=validate_args)
        categorical = self._categorical
        td.Distribution.__init__(
            self, categorical.batch_shape, categorical.param_shape[-1:], validate_args=validate_args
        )

    def expand(self, batch_shape: Size, _instance: Any = None) -> OneHotCategorical:  # type: ignore[override]
        new = self._get_checked_instance(OneHotCategorical, _instance)
        return super().expand(batch_shape, _instance=new)  # type: ignore[return-value]


class Poisson(_CheckedTarget, _NoRsample, td.Poisson):
    """:class:`torch.distributions.Poisson` with a clear ``rsample`` error and correct
    draws at any rate (:func:`sample_poisson`)."""

    def sample(self, sample_shape: Size = ()) -> Tensor:
        shape = self._extended_shape(torch.Size(sample_shape))
        return sample_poisson(self.rate.detach().expand(shape))


class NegativeBinomial(_CheckedTarget, _NoRsample, td.NegativeBinomial):
    """:class:`torch.distributions.NegativeBinomial` with a clear ``rsample`` error and
    correct draws at any rate: a gamma-distributed Poisson rate, as torch draws it, then
    :func:`sample_poisson`.

    Torch's parameterisation: the number of successes, each with probability
    ``p = sigmoid(logits)``, before ``total_count`` failures; mean
    ``total_count · p / (1 - p) = total_count · exp(logits)``.
    """

    def sample(self, sample_shape: Size = ()) -> Tensor:
        with torch.no_grad():
            return sample_poisson(self._gamma.sample(torch.Size(sample_shape)))


class MixtureSameFamily(_CheckedTarget, _NoRsample, td.MixtureSameFamily):
    """:class:`torch.distributions.MixtureSameFamily` with a clear ``rsample`` error."""

    _no_rsample_reason = "it picks a mixture component discretely"


class Categorical(_CheckedTarget, _NoRsample, td.Categorical):
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

    def _sum_events(self, x: Tensor) -> Tensor:
        # torch's _sum_rightmost reshapes to (..., -1), which fails on an empty batch
        n = self.reinterpreted_batch_ndims
        return x.sum(tuple(range(-n, 0))) if n else x

    def log_prob(self, value: Tensor) -> Tensor:
        check_target_shape(self, value)
        return self._sum_events(self.base_dist.log_prob(value))

    def entropy(self) -> Tensor:
        return self._sum_events(self.base_dist.entropy())

    def rsample(self, sample_shape: Size = ()) -> Tensor:
        if not self.has_rsample:
            base = self.base_dist
            raise no_rsample(base, getattr(base, "_no_rsample_reason", "its family has none"))
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


def _kl_independent_events(p: IndependentEvents, q: td.Distribution) -> Tensor:
    p_base, p_n = strip_independent(p)
    q_base, q_n = strip_independent(q)
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
