"""Input checks shared by every layer (private; importable from
:mod:`bayesian_layers.layers.base`)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.parameter import UninitializedTensorMixin  # type: ignore[attr-defined]

from ...random_variables.variable import RandomVariable

__all__ = ["as_tensor", "check_input", "parameter_dtype"]


def as_tensor(x: Any, owner: str) -> Tensor:
    """Unwrap a random variable to its value; reject non-tensors with a ``TypeError``."""
    if isinstance(x, RandomVariable):
        x = x.value
    if not isinstance(x, Tensor):
        raise TypeError(f"{owner} expected a Tensor input, got {type(x).__name__}")
    return x


def check_input(
    x: Any, owner: str, argument: str = "input", *, dtype: torch.dtype | None = None
) -> Tensor:
    """Unwrap a random variable and check that ``x`` is a tensor of the expected dtype.

    Args:
        x: the value passed to a layer (a Tensor or a RandomVariable).
        owner: the layer's name for messages, e.g. ``type(self).__name__``.
        argument: the argument's name for messages (``"input"``, ``"hx"``, ``"query"``).
        dtype: the floating dtype the layer computes in (its parameters' dtype);
            ``None`` checks only that ``x`` is a tensor. Under ``torch.autocast``
            for ``x``'s device the autocast dtype is accepted as well, so a
            lower-precision output of one layer may feed the next.

    Returns:
        ``x`` as a plain tensor.

    Raises:
        TypeError: ``x`` is not a tensor, or its dtype is neither ``dtype`` nor
            (under autocast) the autocast dtype. The message names the layer, the
            argument, the expected and the received dtype.

    Example:
        >>> check_input(torch.zeros(2, 3), "Linear", dtype=torch.float32).shape
        torch.Size([2, 3])
        >>> check_input(torch.zeros(2, 3, dtype=torch.float64), "Linear", dtype=torch.float32)
        Traceback (most recent call last):
        ...
        TypeError: Linear expected `input` of dtype torch.float32, got torch.float64
    """
    if isinstance(x, RandomVariable):
        x = x.value
    if not isinstance(x, Tensor):
        raise TypeError(f"{owner} expected `{argument}` to be a Tensor, got {type(x).__name__}")
    if dtype is None or x.dtype == dtype:
        return x
    device = x.device.type
    if torch.is_autocast_enabled(device):
        fast = torch.get_autocast_dtype(device)
        if x.dtype == fast:
            return x
        raise TypeError(
            f"{owner} expected `{argument}` of dtype {dtype} (or {fast} under autocast), "
            f"got {x.dtype}"
        )
    raise TypeError(f"{owner} expected `{argument}` of dtype {dtype}, got {x.dtype}")


def parameter_dtype(module: object) -> torch.dtype | None:
    """The dtype of ``module``'s first materialised floating parameter: its own first
    (the common case, no recursion), then its submodules'; ``None`` when there is none
    (or ``module`` is not an ``nn.Module``). Lazy parameters are skipped by an isinstance
    test, which ``torch.compile`` traces (``nn.parameter.is_lazy`` breaks the graph)."""
    if not isinstance(module, nn.Module):
        return None
    for p in module._parameters.values():
        if p is not None and p.is_floating_point() and not isinstance(p, UninitializedTensorMixin):
            return p.dtype
    for p in module.parameters():
        if p.is_floating_point() and not isinstance(p, UninitializedTensorMixin):
            return p.dtype
    return None
