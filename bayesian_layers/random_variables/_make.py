"""The one hook every random-variable constructor goes through, and their argument types.

Private: no stability promise. The constructors in :mod:`.continuous`, :mod:`.positive`,
:mod:`.discrete`, :mod:`.multivariate` and :mod:`.composite` only name their
arguments and call :func:`make`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeAlias

import torch
import torch.distributions as td
from torch import Tensor

from .. import tracing as _tracing
from .variable import RandomVariable

Real: TypeAlias = Tensor | float
OptionalReal: TypeAlias = Tensor | float | None
DistributionLike: TypeAlias = td.Distribution | RandomVariable
Value: TypeAlias = Tensor | float | Sequence[float] | None
Shape: TypeAlias = Sequence[int] | torch.Size

# Arguments that take a distribution: a random variable passed there stands for its
# distribution (everywhere else it stands for its value).
_DISTRIBUTION_ARGUMENTS = frozenset(
    {"base_distribution", "mixture_distribution", "component_distribution"}
)


def make(
    constructor: Callable[..., RandomVariable],
    dist_cls: type[td.Distribution],
    args: dict[str, Any],
    name: str | None,
    value: Value,
    sample_shape: Shape,
) -> RandomVariable:
    """Build ``dist_cls(**args)`` and wrap it: the one place every constructor goes through.

    ``constructor`` is the public function making the call (``bl.Normal``). While a
    tracer is active (:func:`bayesian_layers.trace`) the call goes to the tracers as
    ``tracer(constructor, **args, name=, value=, sample_shape=)``.
    """
    if _tracing.is_tracing():
        kwargs = {**args, "name": name, "value": value, "sample_shape": sample_shape}
        return _tracing._dispatch(constructor, (), kwargs)
    kwargs = {}
    for key, arg in args.items():
        if isinstance(arg, RandomVariable):
            arg = arg.distribution if key in _DISTRIBUTION_ARGUMENTS else arg.value
        kwargs[key] = arg
    distribution = dist_cls(**kwargs)
    return RandomVariable(distribution, value=value, sample_shape=sample_shape, name=name)
