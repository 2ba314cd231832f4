"""Trainable weight distributions ("distribution initializers").

An initializer is a module that creates trainable parameters and turns them into
a distribution over a tensor of a given shape. Used standalone
(``TrainableNormal((3, 4))``) it owns its parameters (``loc``, ``rho``) and
``forward()`` returns a :class:`~bayesian_layers.RandomVariable`. Inside a layer
it is a parameter-free recipe: :meth:`TrainableInitializer.build` registers the
parameters on the layer under names that say the math (``weight_loc``,
``weight_rho``), and :meth:`TrainableInitializer.distribution` reads them back.

Every family is reparameterised through standard noise: a draw is
``transform(params, noise)`` with ``noise ~ base`` fixed (N(0, 1), |Cauchy|, ...),
which is what lets a layer freeze a function sample (keep the noise) or draw K
samples at once (noise with a leading K dimension).

The map: :mod:`.base` (:class:`TrainableInitializer`), :mod:`.normal` (the normal
families), :mod:`.positive` (log-normal, half-Cauchy), :mod:`.deterministic` (point
estimates); below, the aliases that layers accept as ``weight_initializer="..."``.
"""

from __future__ import annotations

# `fans`, the checks, `inverse_softplus` and `softplus_scale` are importable from here for
# the layers and regularizers, outside `__all__`.
from .._checks import inverse_softplus as inverse_softplus
from ._util import LOG_SOFTPLUS_CUT, log_softplus
from ._util import check_finite as check_finite
from ._util import check_non_negative as check_non_negative
from ._util import check_positive as check_positive
from ._util import fans as fans
from ._util import softplus_scale as softplus_scale
from .base import TrainableInitializer
from .deterministic import TrainableDeterministic
from .full_normal import FullNormal
from .kron_normal import KroneckerNormal, KroneckerNormalDistribution
from .normal import TrainableGlorotNormal, TrainableHeNormal, TrainableNormal
from .positive import TrainableHalfCauchy, TrainableLogNormal
from .swag_normal import SWAGNormal

__all__ = [
    "TrainableInitializer",
    "TrainableNormal",
    "TrainableHeNormal",
    "TrainableGlorotNormal",
    "TrainableLogNormal",
    "TrainableHalfCauchy",
    "TrainableDeterministic",
    "SWAGNormal",
    "KroneckerNormal",
    "FullNormal",
    "KroneckerNormalDistribution",
    "get_initializer",
    "log_softplus",
    "LOG_SOFTPLUS_CUT",
    "INITIALIZERS",
]


#: The string aliases a layer's ``weight_initializer=`` / ``bias_initializer=`` accept:
#: alias -> initializer class, or (class, keyword arguments) for ``"zeros"`` and ``"ones"``.
INITIALIZERS: dict[str, type[TrainableInitializer] | tuple[type[TrainableInitializer], dict]] = {
    "trainable_normal": TrainableNormal,
    "trainable_he_normal": TrainableHeNormal,
    "trainable_glorot_normal": TrainableGlorotNormal,
    "trainable_log_normal": TrainableLogNormal,
    "trainable_half_cauchy": TrainableHalfCauchy,
    "trainable_deterministic": TrainableDeterministic,
    "zeros": (TrainableDeterministic, {"init": "zeros"}),
    "ones": (TrainableDeterministic, {"init": "ones"}),
}


def get_initializer(
    spec: str | TrainableInitializer, *, owner: str = "layer"
) -> TrainableInitializer:
    """Resolve a string alias, an initializer class, or an instance to an instance.

    Raises:
        ValueError: unknown alias (the message lists the known ones), or an instance
            built with ``shape`` (it owns parameters of its own, which a layer would
            carry unused beside the ones it builds).
        TypeError: anything else.
    """
    if isinstance(spec, TrainableInitializer):
        shape = getattr(spec, "shape", None)
        if shape is not None:
            raise ValueError(
                f"{owner} expected an initializer built without `shape`, got "
                f"{type(spec).__name__} with shape {tuple(shape)} (it owns parameters "
                f"of its own); pass {type(spec).__name__}() with the other arguments only"
            )
        return spec
    if isinstance(spec, type) and issubclass(spec, TrainableInitializer):
        return spec()
    if isinstance(spec, str):
        entry = INITIALIZERS.get(spec)
        if entry is None:
            raise ValueError(
                f"{owner}: unknown initializer {spec!r}; expected one of {sorted(INITIALIZERS)} "
                "or a TrainableInitializer instance"
            )
        cls, kwargs = entry if isinstance(entry, tuple) else (entry, {})
        return cls(**kwargs)
    raise TypeError(
        f"{owner} expected an initializer name or TrainableInitializer, got {type(spec).__name__}"
    )
