"""The moments of a :class:`~bayesian_layers.RandomVariable`: ``rv.mean`` is both the
distribution's mean and, called, the tensor method ``rv.value.mean(...)``.

Private: no stability promise.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

if TYPE_CHECKING:
    from .variable import RandomVariable


class Moment(Tensor):
    """A moment of the distribution (``rv.mean``) that is also the tensor method of
    the same name on the value: ``rv.mean`` acts as ``rv.distribution.mean`` (a tensor
    in every torch function, operator and method, results plain tensors, gradients
    included) and ``rv.mean(*args, **kwargs)`` is ``rv.value.mean(*args, **kwargs)``.
    """

    _owner: RandomVariable
    _method: str

    @classmethod
    def wrap(cls, moment: Tensor, owner: RandomVariable, method: str) -> Moment:
        out = moment.as_subclass(cls)  # shares data and stays in the autograd graph
        out._owner, out._method = owner, method
        return out

    def __call__(self, *args: Any, **kwargs: Any) -> Tensor:
        return getattr(self._owner.value, self._method)(*args, **kwargs)  # type: ignore[no-any-return]

    @classmethod
    def __torch_function__(
        cls,
        func: Callable[..., Any],
        types: Any,
        args: Sequence[Any] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        with torch._C.DisableTorchFunctionSubclass():
            return func(*args, **(kwargs or {}))  # plain tensors out

    def __repr__(self, *, tensor_contents: Any = None) -> str:  # type: ignore[override]
        return repr(self.as_subclass(Tensor))

    def __reduce_ex__(self, protocol: Any) -> Any:  # pickles and copies as a plain tensor
        return self.as_subclass(Tensor).__reduce_ex__(protocol)

    def __deepcopy__(self, memo: dict[int, Any]) -> Tensor:
        return copy.deepcopy(self.as_subclass(Tensor), memo)


class MissingMoment:
    """``rv.mean`` where the distribution has no mean: callable as the tensor method,
    and any other use raises the distribution's own error."""

    def __init__(self, owner: RandomVariable, method: str, error: NotImplementedError) -> None:
        self._owner, self._method, self._error = owner, method, error

    def __call__(self, *args: Any, **kwargs: Any) -> Tensor:
        return getattr(self._owner.value, self._method)(*args, **kwargs)  # type: ignore[no-any-return]

    def __getattr__(self, name: str) -> Any:
        raise self._error
