"""The reversible-layer protocol (paper §2.4).

Tensors in, tensors out; random variables in, random variables out.

A reversible layer is an ``nn.Module`` with three methods:

- ``forward(x)``: the bijection ``y = f(x)``;
- ``reverse(y)``: its inverse ``x = f^{-1}(y)``;
- ``log_det_jacobian(x)``: ``log |det df/dx|`` per example, summed over the
  *event dims*. Vectors ``(..., D)`` have one event dim (the result has shape
  ``x.shape[:-1]``); images ``(..., C, H, W)`` have three (``x.shape[:-3]``).

Called on a tensor, a layer returns a tensor. Called on a
:class:`~bayesian_layers.RandomVariable` ``rv`` it returns
``RandomVariable(TransformedDistribution(rv.distribution, [_LayerTransform(layer)]),
value=layer(rv.value))``, so ``log_prob`` is exact (through ``reverse`` and
``log_det_jacobian``) and ``sample``/``rsample`` work. A plain ``nn.Sequential``
of reversible layers therefore transforms a random variable (Figure 8)::

    model = nn.Sequential(RealNVP(MADE(hidden_dims=[512, 512])), ...)
    outputs = model(base)                       # base: a RandomVariable
    loss = -outputs.distribution.log_prob(features).sum()

``reverse_sequential(model, y)`` inverts such a sequence (reverse order), and
``Reverse(model)`` wraps it as one reversible layer.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.distributions import Transform, TransformedDistribution, constraints

from ...random_variables.variable import RandomVariable
from ._util import call_naming

__all__ = [
    "ReversibleLayer",
    "Reverse",
    "reverse_sequential",
    "sequential_log_det_jacobian",
]


class _LayerTransform(Transform):
    """A ``torch.distributions.Transform`` backed by a reversible layer.

    ``_call`` is ``layer.forward``, ``_inverse`` is ``layer.reverse`` and
    ``log_abs_det_jacobian(x, y)`` is ``layer.log_det_jacobian(x)``; domain and
    codomain are ``independent(real, event_dim)``.
    """

    bijective = True

    def __init__(self, layer: nn.Module, event_dim: int, cache_size: int = 0) -> None:
        super().__init__(cache_size=cache_size)
        self.layer = layer
        self._event_dim = event_dim
        self._pending: tuple[Tensor, Tensor, Tensor] | None = None

    @property
    def domain(self) -> constraints.Constraint:  # type: ignore[override]
        return constraints.independent(constraints.real, self._event_dim)

    @property
    def codomain(self) -> constraints.Constraint:  # type: ignore[override]
        return constraints.independent(constraints.real, self._event_dim)

    def with_cache(self, cache_size: int = 1) -> _LayerTransform:
        if self._cache_size == cache_size:
            return self
        return _LayerTransform(self.layer, self._event_dim, cache_size=cache_size)

    def _call(self, x: Tensor) -> Tensor:
        out: Tensor = self.layer.forward(x)
        return out

    def _inverse(self, y: Tensor) -> Tensor:
        # Layers that get the log-det as a by-product of `reverse` (one network pass for
        # both) offer `reverse_and_log_det`; `TransformedDistribution.log_prob` asks for
        # the log-det at exactly the (x, y) pair returned here, so it is kept for that.
        both = getattr(self.layer, "reverse_and_log_det", None)
        if callable(both):
            x, log_det = both(y)
            self._pending = (x, y, log_det)
            return x  # type: ignore[no-any-return]
        out: Tensor = self.layer.reverse(y)  # type: ignore[operator]
        return out

    def log_abs_det_jacobian(self, x: Tensor, y: Tensor) -> Tensor:
        pending = self._pending
        if pending is not None:
            self._pending = None
            if pending[0] is x and pending[1] is y:
                return pending[2]
        return _layer_log_det(self.layer, x, y, "_LayerTransform")

    def __repr__(self) -> str:
        return f"_LayerTransform({type(self.layer).__name__}, event_dim={self._event_dim})"


class ReversibleLayer(nn.Module):
    """Base class of reversible layers (see the module docstring for the protocol).

    Subclasses implement ``forward``, ``reverse`` and ``log_det_jacobian``, and set
    ``event_dim`` (1 for vectors ``(..., D)``, 3 for images ``(..., C, H, W)``) or
    override ``event_dim_for(x)`` when it depends on the input.

    Example:
        >>> import torch
        >>> import bayesian_layers as bl
        >>> from bayesian_layers.layers.reversible.base import Reverse
        >>> from bayesian_layers.layers.reversible.flows import Permute
        >>> layer = Permute([2, 0, 1])
        >>> layer(torch.tensor([[1.0, 2.0, 3.0]]))
        tensor([[3., 1., 2.]])
        >>> base = bl.RandomVariable(torch.distributions.Normal(torch.zeros(4, 3), 1.0))
        >>> out = layer(base)
        >>> out.distribution.log_prob(torch.zeros(4, 3)).shape
        torch.Size([4])
        >>> Reverse(layer)(torch.tensor([[3.0, 1.0, 2.0]]))
        tensor([[1., 2., 3.]])
    """

    event_dim: int = 1

    def __init__(self) -> None:
        # No arguments: a subclass takes its own and calls ``super().__init__()``.
        super().__init__()

    @property
    def defers_value(self) -> bool:
        """Whether ``layer(rv)`` computes its value ``layer(rv.value)`` only when it is read.

        True by default, so ``model(base).distribution.log_prob(x)`` runs no forward
        (sampling) pass; the value then uses the parameters at the time it is first
        read. A layer that must see its input first (data-dependent initialisation)
        returns False until it has.
        """
        return True

    def event_dim_for(self, x: Tensor) -> int:
        """Number of trailing event dims of ``x`` (those ``log_det_jacobian`` sums over)."""
        return self.event_dim

    def reverse(self, y: Tensor) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} does not implement `reverse`")

    def log_det_jacobian(self, x: Tensor) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} does not implement `log_det_jacobian`")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if len(args) == 1 and not kwargs and isinstance(args[0], RandomVariable):
            return self.transform_random_variable(args[0])
        return super().__call__(*args, **kwargs)

    def transform_random_variable(self, rv: RandomVariable) -> RandomVariable:
        """The random variable ``f(rv)``: a ``TransformedDistribution``, value ``f(rv.value)``."""
        # Shape-only stand-in: reading the event dims must not compute a deferred value.
        event_dim = self.event_dim_for(torch.empty(rv.shape, device="meta"))
        base = rv.distribution
        have = len(base.event_shape)
        if have > event_dim:
            raise ValueError(
                f"{type(self).__name__} expected a random variable with at most {event_dim} "
                f"event dims, got event_shape {tuple(base.event_shape)}"
            )
        if len(base.batch_shape) + have < event_dim:
            raise ValueError(
                f"{type(self).__name__} expected a random variable with at least {event_dim} "
                f"dims in batch_shape + event_shape, got "
                f"{tuple(base.batch_shape) + tuple(base.event_shape)}"
            )
        dist = TransformedDistribution(base, [_LayerTransform(self, event_dim)])
        if not self.defers_value:
            value = nn.Module.__call__(self, rv.value)
            return RandomVariable(dist, value=value, sample_shape=rv.sample_shape, name=rv.name)
        return RandomVariable.deferred(
            dist,
            lambda: nn.Module.__call__(self, rv.value),
            sample_shape=rv.sample_shape,
            name=rv.name,
        )


def reverse_sequential(seq: nn.Sequential, y: Tensor) -> Tensor:
    """Invert a ``nn.Sequential`` of reversible layers: ``reverse`` of each, last to first
    (a nested ``nn.Sequential``, a block of layers, is inverted as a whole).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from bayesian_layers.layers.reversible.flows import Permute
        >>> seq = nn.Sequential(Permute([1, 2, 0]), Permute([2, 0, 1]), Permute([1, 0, 2]))
        >>> x = torch.randn(5, 3)
        >>> torch.equal(reverse_sequential(seq, seq(x)), x)
        True
    """
    for layer in reversed(list(seq)):
        if isinstance(layer, nn.Sequential):  # a block of layers: inverted as a whole
            y = reverse_sequential(layer, y)
            continue
        fn = getattr(layer, "reverse", None)
        if not callable(fn):
            raise NotImplementedError(
                f"reverse_sequential: layer {type(layer).__name__} has no `reverse` method"
            )
        y = fn(y)
    return y


def _event_dim(layer: nn.Module, x: Tensor) -> int:
    """The event dims of ``layer`` at ``x``: an ``nn.Sequential`` takes the largest of its
    layers' (nested blocks included), at least 1."""
    if isinstance(layer, nn.Sequential):
        return max([1, *(_event_dim(m, x) for m in layer)])
    fn = getattr(layer, "event_dim_for", None)
    return int(fn(x)) if callable(fn) else int(getattr(layer, "event_dim", 1))


def _reversible(layer: nn.Module) -> bool:
    """Whether ``layer`` has a ``reverse`` (an ``nn.Sequential``: every layer inside)."""
    if isinstance(layer, nn.Sequential):
        return all(_reversible(m) for m in layer)
    return callable(getattr(layer, "reverse", None))


def sequential_log_det_jacobian(seq: nn.Sequential, x: Tensor) -> Tensor:
    """``log |det J|`` of a ``nn.Sequential`` of reversible layers at ``x`` (sum over layers).

    One forward sweep; each layer's log-det is read from its output when it offers
    ``log_det_jacobian_from_output`` (a masked autoregressive flow then takes no
    second sequential pass).
    """
    return _forward_and_log_det(seq, x, "sequential_log_det_jacobian")[1]


def _missing_method(owner: str, layer: nn.Module, method: str) -> NotImplementedError:
    return NotImplementedError(f"{owner}: layer {type(layer).__name__} has no `{method}` method")


def _layer_log_det(layer: nn.Module, x: Tensor, y: Tensor, owner: str) -> Tensor:
    """``layer.log_det_jacobian(x)`` where ``y = layer(x)``, by the cheapest route.

    Layers whose log-det is cheap from the output (autoregressive flows conditioned
    on ``y``, coupling layers) say so with ``log_det_jacobian_from_output``.
    """
    from_output = getattr(layer, "log_det_jacobian_from_output", None)
    if callable(from_output):
        out: Tensor = from_output(y)
        return out
    fn = getattr(layer, "log_det_jacobian", None)
    if not callable(fn):
        raise _missing_method(owner, layer, "log_det_jacobian")
    out = fn(x)
    return out


def _add(total: Tensor | None, ldj: Tensor) -> Tensor:
    return ldj if total is None else total + ldj


def _forward_and_log_det(layer: nn.Module, x: Tensor, owner: str) -> tuple[Tensor, Tensor]:
    """``(layer(x), log |det J|(x))``; an ``nn.Sequential`` is swept first to last."""
    if isinstance(layer, nn.Sequential):
        total: Tensor | None = None
        for sub in layer:
            x, ldj = _forward_and_log_det(sub, x, owner)
            total = _add(total, ldj)
        if total is None:
            raise ValueError(f"{owner} expected a non-empty nn.Sequential")
        return x, total
    y: Tensor = layer(x)
    return y, _layer_log_det(layer, x, y, owner)


def _reverse_and_log_det(layer: nn.Module, y: Tensor, owner: str) -> tuple[Tensor, Tensor]:
    """``(x, log |det J|(x))`` with ``x = layer.reverse(y)``; an ``nn.Sequential`` is
    swept last to first. Layers that get the log-det with the inverse offer
    ``reverse_and_log_det``."""
    if isinstance(layer, nn.Sequential):
        total: Tensor | None = None
        for sub in reversed(list(layer)):
            y, ldj = _reverse_and_log_det(sub, y, owner)
            total = _add(total, ldj)
        if total is None:
            raise ValueError(f"{owner} expected a non-empty nn.Sequential")
        return y, total
    both = getattr(layer, "reverse_and_log_det", None)
    if callable(both):
        x, ldj = both(y)
        return x, ldj
    fn = getattr(layer, "reverse", None)
    if not callable(fn):
        raise _missing_method(owner, layer, "reverse")
    x = fn(y)
    return x, _layer_log_det(layer, x, y, owner)


class Reverse(ReversibleLayer):
    """Swap a reversible layer's ``forward`` and ``reverse`` (paper §2.4).

    ``Reverse(layer).forward(y) = layer.reverse(y)``,
    ``Reverse(layer).reverse(x) = layer.forward(x)`` and
    ``Reverse(layer).log_det_jacobian(y) = -layer.log_det_jacobian(layer.reverse(y))``.
    ``layer`` may be any module (duck typing): one without ``reverse`` constructs
    fine and raises ``NotImplementedError`` naming its class only when called. An
    ``nn.Sequential`` of reversible layers is reversed as a whole
    (:func:`reverse_sequential`).

    ``log_det_jacobian`` takes one reverse sweep of ``layer`` and
    ``reverse_and_log_det`` one forward sweep, each layer's log-det read along the
    way (``reverse_and_log_det`` or ``log_det_jacobian_from_output`` where a layer
    offers them), so ``Reverse(layer)(rv).log_prob`` takes a single sweep.

    Args:
        layer: the module to invert.
    """

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def _missing(self, method: str) -> NotImplementedError:
        return NotImplementedError(
            f"Reverse({type(self.layer).__name__}): the wrapped layer "
            f"{type(self.layer).__name__} has no `{method}` method, so it cannot be reversed"
        )

    def _inner_reverse(self, y: Tensor) -> Tensor:
        if isinstance(self.layer, nn.Sequential):
            return reverse_sequential(self.layer, y)
        fn = getattr(self.layer, "reverse", None)
        if not callable(fn):
            raise self._missing("reverse")
        out: Tensor = fn(y)
        return out

    def event_dim_for(self, x: Tensor) -> int:
        fn = getattr(self.layer, "event_dim_for", None)
        if callable(fn):
            out: int = fn(x)
            return out
        return _event_dim(self.layer, x)

    @property
    def defers_value(self) -> bool:
        # A wrapped layer without `reverse` must raise when called, not when read.
        return _reversible(self.layer)

    def forward(self, y: Tensor) -> Tensor:
        return call_naming(self._owner(), self._inner_reverse, y)

    def reverse(self, x: Tensor) -> Tensor:
        out: Tensor = call_naming(self._owner(), self.layer, x)
        return out

    def log_det_jacobian(self, y: Tensor) -> Tensor:
        # one reverse sweep of the wrapped layer, its log-det read along the way
        owner = self._owner()
        return -call_naming(owner, _reverse_and_log_det, self.layer, y, owner)[1]

    def reverse_and_log_det(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(reverse(x), log_det_jacobian(reverse(x)))`` from one forward sweep of the
        wrapped layer (no reverse sweep to recover ``x``)."""
        owner = self._owner()
        y, ldj = call_naming(owner, _forward_and_log_det, self.layer, x, owner)
        return y, -ldj

    def _owner(self) -> str:
        return f"Reverse({type(self.layer).__name__})"

    def extra_repr(self) -> str:
        return ""
