"""``RandomVariable``: a distribution paired with one value that acts as a tensor."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.distributions import Distribution, kl_divergence

from ._moments import MissingMoment as _MissingMoment
from ._moments import Moment as _Moment

__all__ = ["RandomVariable"]


def _unwrap(obj: Any) -> Any:
    """Replace every ``RandomVariable`` inside ``obj`` (lists, tuples, dicts) by its value."""
    if isinstance(obj, RandomVariable):
        return obj.value
    if isinstance(obj, (list, tuple)):
        items = [_unwrap(o) for o in obj]
        if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # namedtuple
            return type(obj)(*items)
        return type(obj)(items)
    if isinstance(obj, dict):
        return {k: _unwrap(v) for k, v in obj.items()}
    return obj


def _floating_parameter(distribution: Distribution) -> Tensor | None:
    """One floating parameter the distribution holds (no lazy parameter is computed), for
    its dtype and device; ``None`` when it holds none."""
    for name in distribution.arg_constraints:
        param = distribution.__dict__.get(name)
        if isinstance(param, Tensor) and param.is_floating_point():
            return param
    return None


def _draw(distribution: Distribution, sample_shape: torch.Size) -> Tensor:
    if distribution.has_rsample:
        return distribution.rsample(sample_shape)
    return distribution.sample(sample_shape)


class RandomVariable:
    """A ``torch.distributions.Distribution`` together with one value of it.

    Wherever a tensor is accepted (any ``torch`` function, a tensor operator or
    method, an ``nn.Module``) a random variable is accepted and acts as its
    ``value``; the result is a plain tensor. Gradients flow through the value: it
    is drawn with ``rsample`` when the distribution has it.

    Args:
        distribution: the distribution of the variable.
        value: an observed or fixed value of shape
            ``sample_shape + batch_shape + event_shape``; drawn from the
            distribution when omitted. Numbers and lists become tensors in the
            dtype and on the device of the distribution's parameters (integers
            of a discrete family stay integers).
        sample_shape: leading shape of the value when it is drawn.
        name: an optional name, used by tracing and in the ``repr``.

    Shape:
        ``value``: ``sample_shape + distribution.batch_shape + distribution.event_shape``.

    Attributes:
        distribution: the wrapped distribution.
        name: the name given at construction, or ``None``.

    Note:
        ``rv.mean``, ``rv.variance`` and ``rv.stddev`` are the distribution's moments,
        as in ``torch.distributions``, and they are also callable as the tensor
        methods of the value: ``rv.mean()`` and ``rv.mean(dim)`` are
        ``rv.value.mean(...)`` (so ``model(x).mean()`` works as for a tensor),
        ``rv.variance(...)`` is ``rv.value.var(...)`` and ``rv.stddev(...)`` is
        ``rv.value.std(...)``. ``rv.distribution.mean`` is the unambiguous route
        to the distribution's mean, a plain tensor.

    Example:
        >>> import torch
        >>> import bayesian_layers as bl
        >>> _ = torch.manual_seed(0)
        >>> rv = bl.RandomVariable(torch.distributions.Normal(torch.zeros(3), 1.0))
        >>> (rv * 2 + 1).shape, type(torch.exp(rv)).__name__
        (torch.Size([3]), 'Tensor')
        >>> rv.log_prob(torch.zeros(3)).shape
        torch.Size([3])
        >>> rv.mean, rv.mean() == rv.value.mean()  # the distribution's mean; the value's
        (tensor([0., 0., 0.]), tensor(True))
    """

    def __init__(
        self,
        distribution: Distribution,
        value: Tensor | float | Sequence[float] | None = None,
        sample_shape: Sequence[int] | torch.Size = (),
        name: str | None = None,
    ) -> None:
        self._set_distribution(distribution, sample_shape, name, "RandomVariable")
        if value is None:
            self._value = _draw(distribution, self._sample_shape)
        else:
            value = _unwrap(value)
            if not isinstance(value, Tensor):  # numbers: the parameters' dtype and device
                as_given = torch.as_tensor(value)
                support = distribution.support
                if as_given.is_floating_point() or not getattr(support, "is_discrete", False):
                    param = _floating_parameter(distribution)
                    like: dict[str, Any] = {"dtype": torch.get_default_dtype()}
                    if param is not None:
                        like = {"dtype": param.dtype, "device": param.device}
                    as_given = torch.as_tensor(value, **like)  # no rounding on the way
                value = as_given
            expected = self._expected_shape()
            if value.shape != expected:
                raise ValueError(
                    f"{self._label()} expected `value` of shape {tuple(expected)} "
                    f"(sample_shape + batch_shape + event_shape), got {tuple(value.shape)}"
                )
            self._value = value

    @classmethod
    def deferred(
        cls,
        distribution: Distribution,
        compute_value: Callable[[], Tensor],
        sample_shape: Sequence[int] | torch.Size = (),
        name: str | None = None,
    ) -> RandomVariable:
        """A random variable whose value is computed by ``compute_value()`` on first use.

        For values that are costly and often unneeded: a reversible layer applied to a
        random variable returns one, so ``model(base).distribution.log_prob(x)`` never
        runs a sequential sampling pass. The value must have shape
        ``sample_shape + batch_shape + event_shape`` (checked when it is computed).
        """
        rv = cls.__new__(cls)
        rv._set_distribution(distribution, sample_shape, name, "RandomVariable.deferred")
        rv.__dict__["_compute_value"] = compute_value
        return rv

    def _set_distribution(
        self,
        distribution: Distribution,
        sample_shape: Sequence[int] | torch.Size,
        name: str | None,
        caller: str,
    ) -> None:
        if not isinstance(distribution, Distribution):
            raise TypeError(
                f"{caller} expected `distribution` to be a torch.distributions."
                f"Distribution, got {type(distribution).__name__}"
            )
        self.distribution = distribution
        self.name = name
        self._sample_shape = torch.Size(sample_shape)

    def _expected_shape(self) -> torch.Size:
        """``sample_shape + batch_shape + event_shape``: the shape of every value."""
        dist = self.distribution
        return self._sample_shape + dist.batch_shape + dist.event_shape

    def _label(self) -> str:
        return f"RandomVariable({self.name!r})" if self.name else "RandomVariable"

    # ----------------------------------------------------------------- value
    @property
    def _value(self) -> Tensor:
        stored = self.__dict__.get("_stored_value")
        if stored is None:
            value = self.__dict__.pop("_compute_value")()
            expected = self._expected_shape()
            if not isinstance(value, Tensor) or value.shape != expected:
                got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
                raise ValueError(
                    f"{self._label()}: the deferred value should have shape "
                    f"{tuple(expected)}, got {got}"
                )
            self.__dict__["_stored_value"] = value
            return value
        return stored  # type: ignore[no-any-return]

    @_value.setter
    def _value(self, value: Tensor) -> None:
        self.__dict__["_stored_value"] = value
        self.__dict__.pop("_compute_value", None)

    @property
    def value(self) -> Tensor:
        """The variable's value, a tensor."""
        return self._value

    @property
    def sample_shape(self) -> torch.Size:
        return self._sample_shape

    @property
    def shape(self) -> torch.Size:
        if "_compute_value" in self.__dict__:  # deferred: known without computing it
            return self._expected_shape()
        return self._value.shape

    # --------------------------------------------------------- distribution
    def sample(self, sample_shape: Sequence[int] | torch.Size = ()) -> Tensor:
        """Draw new values (``rsample`` when available) of shape ``sample_shape + self.shape``."""
        return _draw(self.distribution, torch.Size(sample_shape) + self._sample_shape)

    def log_prob(self, value: Tensor | RandomVariable) -> Tensor:
        """Log-density (or mass) of ``value`` under the distribution."""
        return self.distribution.log_prob(_unwrap(value))

    def _moment(self, name: str, method: str) -> Any:
        try:
            moment = getattr(self.distribution, name)
        except NotImplementedError as error:
            return _MissingMoment(self, method, error)
        return _Moment.wrap(moment, self, method)

    @property
    def mean(self) -> Tensor:
        """The distribution's mean (a tensor); called, ``value.mean(...)``."""
        return self._moment("mean", "mean")  # type: ignore[no-any-return]

    @property
    def variance(self) -> Tensor:
        """The distribution's variance (a tensor); called, ``value.var(...)``."""
        return self._moment("variance", "var")  # type: ignore[no-any-return]

    @property
    def stddev(self) -> Tensor:
        """The distribution's standard deviation (a tensor); called, ``value.std(...)``."""
        return self._moment("stddev", "std")  # type: ignore[no-any-return]

    def entropy(self) -> Tensor:
        return self.distribution.entropy()

    def kl_divergence(self, other: RandomVariable | Distribution) -> Tensor:
        """``KL(self || other)`` in closed form (``torch.distributions.kl_divergence``)."""
        q = other.distribution if isinstance(other, RandomVariable) else other
        if not isinstance(q, Distribution):
            raise TypeError(
                "RandomVariable.kl_divergence expected a RandomVariable or Distribution, "
                f"got {type(other).__name__}"
            )
        return kl_divergence(self.distribution, q)

    # ------------------------------------------------------- tensor protocol
    @classmethod
    def __torch_function__(
        cls,
        func: Callable[..., Any],
        types: Any,
        args: Sequence[Any] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        return func(*_unwrap(tuple(args)), **_unwrap(kwargs or {}))

    def __getattr__(self, name: str) -> Any:
        # Tensor attributes and methods (rv.dtype, rv.sum(), rv.view(...)) act on the value.
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return getattr(self._value, name)
        except AttributeError:
            raise AttributeError(
                f"'RandomVariable' object (and its value tensor) has no attribute {name!r}"
            ) from None

    def __repr__(self) -> str:
        name = f" {self.name!r}" if self.name else ""
        dist = type(self.distribution).__name__
        v = self._value
        return (
            f"<RandomVariable{name} {dist} shape={tuple(v.shape)} "
            f"batch_shape={tuple(self.distribution.batch_shape)} "
            f"event_shape={tuple(self.distribution.event_shape)} "
            f"dtype={v.dtype} device={v.device}>"
        )

    def __len__(self) -> int:
        return len(self._value)

    def __iter__(self) -> Any:
        return iter(self._value)

    def __getitem__(self, index: Any) -> Tensor:
        return self._value[_unwrap(index)]

    def __array__(self, dtype: Any = None, copy: Any = None) -> Any:
        arr = self._value.detach().cpu().numpy()
        return arr if dtype is None else arr.astype(dtype)

    def __bool__(self) -> bool:
        return bool(self._value)

    def __float__(self) -> float:
        return float(self._value)

    def __int__(self) -> int:
        return int(self._value)

    def __index__(self) -> int:
        return self._value.__index__()

    # Operators act on the value and return plain tensors.
    def __add__(self, other: Any) -> Tensor:
        return self._value.__add__(_unwrap(other))

    def __radd__(self, other: Any) -> Tensor:
        return self._value.__radd__(_unwrap(other))

    def __sub__(self, other: Any) -> Tensor:
        return self._value.__sub__(_unwrap(other))

    def __rsub__(self, other: Any) -> Tensor:
        return self._value.__rsub__(_unwrap(other))

    def __mul__(self, other: Any) -> Tensor:
        return self._value.__mul__(_unwrap(other))

    def __rmul__(self, other: Any) -> Tensor:
        return self._value.__rmul__(_unwrap(other))

    def __truediv__(self, other: Any) -> Tensor:
        return self._value.__truediv__(_unwrap(other))

    def __rtruediv__(self, other: Any) -> Tensor:
        return self._value.__rtruediv__(_unwrap(other))

    def __floordiv__(self, other: Any) -> Tensor:
        return self._value.__floordiv__(_unwrap(other))

    def __rfloordiv__(self, other: Any) -> Tensor:
        return self._value.__rfloordiv__(_unwrap(other))

    def __mod__(self, other: Any) -> Tensor:
        return self._value.__mod__(_unwrap(other))

    def __rmod__(self, other: Any) -> Tensor:
        return self._value.__rmod__(_unwrap(other))

    def __pow__(self, other: Any) -> Tensor:
        return self._value.__pow__(_unwrap(other))

    def __rpow__(self, other: Any) -> Tensor:
        return self._value.__rpow__(_unwrap(other))

    def __matmul__(self, other: Any) -> Tensor:
        return self._value.__matmul__(_unwrap(other))

    def __rmatmul__(self, other: Any) -> Tensor:
        return self._value.__rmatmul__(_unwrap(other))

    def __and__(self, other: Any) -> Tensor:
        return self._value.__and__(_unwrap(other))

    def __rand__(self, other: Any) -> Tensor:
        return self._value.__rand__(_unwrap(other))

    def __or__(self, other: Any) -> Tensor:
        return self._value.__or__(_unwrap(other))

    def __ror__(self, other: Any) -> Tensor:
        return self._value.__ror__(_unwrap(other))

    def __xor__(self, other: Any) -> Tensor:
        return self._value.__xor__(_unwrap(other))

    def __rxor__(self, other: Any) -> Tensor:
        return self._value.__rxor__(_unwrap(other))

    def __lt__(self, other: Any) -> Tensor:
        return self._value.__lt__(_unwrap(other))

    def __le__(self, other: Any) -> Tensor:
        return self._value.__le__(_unwrap(other))

    def __gt__(self, other: Any) -> Tensor:
        return self._value.__gt__(_unwrap(other))

    def __ge__(self, other: Any) -> Tensor:
        return self._value.__ge__(_unwrap(other))

    def __eq__(self, other: Any) -> Tensor:  # type: ignore[override]
        return self._value.__eq__(_unwrap(other))

    def __ne__(self, other: Any) -> Tensor:  # type: ignore[override]
        return self._value.__ne__(_unwrap(other))

    def __neg__(self) -> Tensor:
        return self._value.__neg__()

    def __pos__(self) -> Tensor:
        return self._value.__pos__()

    def __abs__(self) -> Tensor:
        return self._value.__abs__()

    def __invert__(self) -> Tensor:
        return self._value.__invert__()

    def __format__(self, spec: str) -> str:
        return self._value.__format__(spec)

    def __round__(self, ndigits: int | None = None) -> Any:
        return (
            round(float(self._value), ndigits) if ndigits is not None else round(float(self._value))
        )

    __hash__ = object.__hash__
