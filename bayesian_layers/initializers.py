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
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import (
    AffineTransform,
    Distribution,
    HalfCauchy,
    LogNormal,
    Normal,
    TransformedDistribution,
)

from .distributions import Deterministic
from .random_variable import RandomVariable

__all__ = [
    "TrainableInitializer",
    "TrainableNormal",
    "TrainableHeNormal",
    "TrainableGlorotNormal",
    "TrainableLogNormal",
    "TrainableHalfCauchy",
    "TrainableDeterministic",
    "get_initializer",
    "log_softplus",
    "LOG_SOFTPLUS_CUT",
    "INITIALIZERS",
]


def fans(shape: Sequence[int]) -> tuple[int, int]:
    """``(fan_in, fan_out)`` of a weight of shape ``(out, in, *kernel)``; ``(n, n)`` for 1-d."""
    shape = tuple(shape)
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return shape[0], shape[0]
    receptive = math.prod(shape[2:])
    return shape[1] * receptive, shape[0] * receptive


def _pname(prefix: str, suffix: str) -> str:
    if not suffix:
        return prefix
    return f"{prefix}_{suffix}" if prefix else suffix


def inverse_softplus(y: float) -> float:
    """``rho`` such that ``softplus(rho) == y`` (y > 0)."""
    return y + math.log(-math.expm1(-y))


def _check_number(owner: str, name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(
            f"{owner} expected `{name}` to be a number, got {type(value).__name__} {value!r}"
        )
    return float(value)


def check_finite(owner: str, name: str, value: object) -> float:
    """``value`` as a float; ``TypeError`` for a non-number, ``ValueError`` for NaN or ±inf."""
    v = _check_number(owner, name, value)
    if not math.isfinite(v):
        raise ValueError(f"{owner} expected `{name}` to be a finite number, got {value!r}")
    return v


def check_positive(owner: str, name: str, value: object) -> float:
    """``value`` as a float; ``TypeError`` if not a number, ``ValueError`` unless finite, > 0."""
    v = _check_number(owner, name, value)
    if not (math.isfinite(v) and v > 0):
        raise ValueError(f"{owner} expected `{name}` to be a finite positive number, got {value!r}")
    return v


def check_non_negative(owner: str, name: str, value: object) -> float:
    """``value`` as a float; ``TypeError`` if not a number, ``ValueError`` unless finite, >= 0."""
    v = _check_number(owner, name, value)
    if not (math.isfinite(v) and v >= 0):
        raise ValueError(
            f"{owner} expected `{name}` to be a finite non-negative number, got {value!r}"
        )
    return v


def _check_shape(owner: str, shape: Sequence[int]) -> torch.Size:
    try:
        dims = tuple(shape)
    except TypeError:
        dims = None
    if dims is None or any(isinstance(d, bool) or not isinstance(d, int) or d < 0 for d in dims):
        raise ValueError(
            f"{owner} expected `shape` to be a sequence of non-negative ints, got {shape!r}"
        )
    return torch.Size(dims)


_check_positive = check_positive


#: Below this ``rho``, ``log(softplus(rho)) = rho + log1p(-exp(rho)/2 + ...)`` equals
#: ``rho`` to within ``exp(rho)/2 < 5e-14`` (relative error < 2e-15); above it
#: ``softplus(rho)`` is a normal float in float32 and float64, so its log is accurate.
LOG_SOFTPLUS_CUT = -30.0


def log_softplus(rho: Tensor) -> Tensor:
    """``log(softplus(rho))``, finite with a finite gradient for every finite ``rho``.

    ``softplus(rho)`` underflows to 0 in float32 below ``rho ≈ -104`` (and is
    subnormal below ``≈ -87``), where ``log`` would give ``-inf`` and its gradient
    ``inf``. Since ``softplus(rho) = exp(rho) (1 - exp(rho)/2 + ...)``, the logarithm
    is ``rho`` below :data:`LOG_SOFTPLUS_CUT`; each branch only sees inputs where it
    is finite, so the gradient (``sigmoid(rho) / softplus(rho)``, ``→ 1``) has no
    NaN from the branch not taken.

    Example:
        >>> log_softplus(torch.tensor([-200.0, 0.0])).tolist()
        [-200.0, -0.3665129...]
    """
    low = rho < LOG_SOFTPLUS_CUT
    return torch.where(low, rho, torch.log(F.softplus(rho.clamp(min=LOG_SOFTPLUS_CUT))))


def softplus_scale(owner: nn.Module, prefix: str, rho: Tensor) -> Tensor:
    """``softplus(rho)``: the scale of a softplus-parameterised family.

    Computed afresh at every call, so each forward pass and each ``losses`` query
    owns its graph: two losses, gradient accumulation over several forward passes,
    threads sharing one model and ``torch.func`` transforms all work as with
    ``nn.Linear``. (``owner`` and ``prefix`` are kept for subclasses that want to
    know whose scale they compute.)
    """
    return F.softplus(rho)


#: Standard deviation of a standard normal truncated to [-2, 2].
_TRUNC2_STD = 0.87962566103423978


class TrainableInitializer(nn.Module):
    """Base class: a recipe for trainable parameters and the distribution they define.

    Subclasses set ``suffixes`` (parameter name suffixes, e.g. ``("loc", "rho")``)
    and implement ``_init_params``, ``distribution``, ``noise`` and ``transform``.

    Args:
        shape: when given, the initializer owns parameters of this shape and
            ``forward()`` returns a random variable; leave ``None`` inside layers.
        device, dtype: factory arguments for the owned parameters.
    """

    suffixes: tuple[str, ...] = ()
    #: True for families whose draws are ``loc + scale * N(0, 1)`` (Flipout and local
    #: reparameterization need this).
    is_normal: bool = False
    #: True for point estimates (no noise at all).
    is_deterministic: bool = False

    def __init__(
        self,
        shape: Sequence[int] | None = None,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.shape = None if shape is None else _check_shape(type(self).__name__, shape)
        if shape is not None:
            self.build(self, "", shape, device=device, dtype=dtype)

    # ---------------------------------------------------------------- building
    def build(
        self,
        owner: nn.Module,
        prefix: str,
        shape: Sequence[int],
        *,
        fan_in: int | None = None,
        fan_out: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        """Register this family's parameters on ``owner`` as ``{prefix}_{suffix}``."""
        shape = torch.Size(shape)
        f_in, f_out = fans(shape)
        fan_in = f_in if fan_in is None else fan_in
        fan_out = f_out if fan_out is None else fan_out
        params: dict[str, Tensor] = {
            s: nn.Parameter(torch.empty(shape, device=device, dtype=dtype)) for s in self.suffixes
        }
        with torch.no_grad():
            self._init_params(params, fan_in, fan_out)
        for s, p in params.items():
            owner.register_parameter(_pname(prefix, s), p)  # type: ignore[arg-type]

    def params(self, owner: nn.Module, prefix: str) -> dict[str, Tensor]:
        return {s: getattr(owner, _pname(prefix, s)) for s in self.suffixes}

    # ------------------------------------------------------------- interface
    def _init_params(self, params: dict[str, Tensor], fan_in: int, fan_out: int) -> None:
        raise NotImplementedError

    def distribution(self, owner: nn.Module | None = None, prefix: str = "") -> Distribution:
        """The distribution defined by the current parameters."""
        raise NotImplementedError

    def noise(self, shape: torch.Size, like: Tensor) -> Tensor | None:
        """Standard noise of ``shape`` (``None`` for point estimates)."""
        raise NotImplementedError

    def transform(self, owner: nn.Module, prefix: str, noise: Tensor | None) -> Tensor:
        """A reparameterised draw from the parameters and standard noise."""
        raise NotImplementedError

    def loc_scale(self, owner: nn.Module, prefix: str) -> tuple[Tensor, Tensor]:
        """``(loc, scale)`` of a normal family (draws are ``loc + scale * N(0, 1)``)."""
        raise TypeError(f"{type(self).__name__} is not a normal family")

    def loc_rho(self, owner: nn.Module, prefix: str) -> tuple[Tensor, Tensor]:
        """``(loc, rho)`` of a normal family with ``scale = softplus(rho)``: the raw
        parameters, from which regularizers compute ``log(scale)`` stably."""
        raise TypeError(f"{type(self).__name__} is not a normal family")

    def point(self, owner: nn.Module, prefix: str) -> Tensor:
        """The posterior mean (the location for families without a finite mean)."""
        return self.distribution(owner, prefix).mean

    def forward(self) -> RandomVariable:
        if self.shape is None:
            raise RuntimeError(
                f"{type(self).__name__} was built without `shape`; call it inside a layer "
                "or construct it as e.g. TrainableNormal((3, 4))"
            )
        return RandomVariable(self.distribution(self, ""))

    def _own(self, owner: nn.Module | None) -> nn.Module:
        return self if owner is None else owner


class TrainableNormal(TrainableInitializer):
    """Mean-field normal ``N(loc, softplus(rho))``: the default weight posterior.

    Args:
        shape: see :class:`TrainableInitializer`.
        loc_std: ``loc`` starts as a truncated normal (cut at ±2 of its scale,
            widened so its standard deviation is ``loc_std``); ``None`` (default)
            starts it like ``nn.Linear``'s weight, uniform on ``±1/sqrt(fan_in)``.
        scale_init: the initial standard deviation (``rho = softplus⁻¹(scale_init)``).

    Parameters: ``{prefix}_loc`` and ``{prefix}_rho`` (``scale = softplus(rho)``).

    Example:
        >>> q = TrainableNormal((2, 3), scale_init=0.1)
        >>> rv = q()
        >>> rv.shape, round(rv.stddev.mean().item(), 3)
        (torch.Size([2, 3]), 0.1)
    """

    suffixes = ("loc", "rho")
    is_normal = True

    def __init__(
        self,
        shape: Sequence[int] | None = None,
        *,
        loc_std: float | None = None,
        scale_init: float = 1e-2,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        name = type(self).__name__
        if loc_std is not None:
            _check_positive(name, "loc_std", loc_std)
        _check_positive(name, "scale_init", scale_init)
        self.loc_std = loc_std
        self.scale_init = scale_init
        super().__init__(shape, device=device, dtype=dtype)

    def _loc_std(self, fan_in: int, fan_out: int) -> float | None:
        return self.loc_std

    def _init_params(self, params: dict[str, Tensor], fan_in: int, fan_out: int) -> None:
        std = self._loc_std(fan_in, fan_out)
        if std is None:
            bound = 1.0 / math.sqrt(max(fan_in, 1))
            nn.init.uniform_(params["loc"], -bound, bound)
        else:
            # A normal truncated at ±2 s has std 0.8796 s: widen s so the std is `std`.
            s = std / _TRUNC2_STD
            nn.init.trunc_normal_(params["loc"], 0.0, s, -2 * s, 2 * s)
        params["rho"].fill_(inverse_softplus(self.scale_init))

    def loc_scale(self, owner: nn.Module, prefix: str) -> tuple[Tensor, Tensor]:
        p = self.params(owner, prefix)
        return p["loc"], softplus_scale(owner, prefix, p["rho"])

    def loc_rho(self, owner: nn.Module, prefix: str) -> tuple[Tensor, Tensor]:
        p = self.params(owner, prefix)
        return p["loc"], p["rho"]

    def distribution(self, owner: nn.Module | None = None, prefix: str = "") -> Distribution:
        loc, scale = self.loc_scale(self._own(owner), prefix)
        return Normal(loc, scale, validate_args=False)

    def noise(self, shape: torch.Size, like: Tensor) -> Tensor:
        return torch.randn(shape, dtype=like.dtype, device=like.device)

    def transform(self, owner: nn.Module, prefix: str, noise: Tensor | None) -> Tensor:
        loc, scale = self.loc_scale(owner, prefix)
        return torch.addcmul(loc, scale, noise)  # type: ignore[arg-type]

    def point(self, owner: nn.Module, prefix: str) -> Tensor:
        return self.params(owner, prefix)["loc"]

    def extra_repr(self) -> str:
        return f"loc_std={self.loc_std}, scale_init={self.scale_init}"


class TrainableHeNormal(TrainableNormal):
    """:class:`TrainableNormal` whose ``loc`` starts He-normal: std ``sqrt(2 / fan_in)``.

    Example:
        >>> TrainableHeNormal((4, 8))().shape
        torch.Size([4, 8])
    """

    def _loc_std(self, fan_in: int, fan_out: int) -> float | None:
        return math.sqrt(2.0 / max(fan_in, 1))


class TrainableGlorotNormal(TrainableNormal):
    """:class:`TrainableNormal` with a Glorot-normal ``loc``: std ``sqrt(2 / (fan_in + fan_out))``.

    Example:
        >>> TrainableGlorotNormal((4, 8))().shape
        torch.Size([4, 8])
    """

    def _loc_std(self, fan_in: int, fan_out: int) -> float | None:
        return math.sqrt(2.0 / max(fan_in + fan_out, 1))


class TrainableLogNormal(TrainableInitializer):
    """Log-normal ``exp(N(loc, softplus(rho)))`` for positive weights (e.g. scales).

    Args:
        shape: see :class:`TrainableInitializer`.
        loc_init: initial ``loc`` (the log of the median); ``None`` starts at
            ``log(1/sqrt(fan_in))`` so draws have the magnitude of a default init.
        scale_init: initial standard deviation of the log.

    Example:
        >>> bool((TrainableLogNormal((3,))().value > 0).all())
        True
    """

    suffixes = ("loc", "rho")

    def __init__(
        self,
        shape: Sequence[int] | None = None,
        *,
        loc_init: float | None = None,
        scale_init: float = 1e-2,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        _check_positive(type(self).__name__, "scale_init", scale_init)
        if loc_init is not None:
            check_finite(type(self).__name__, "loc_init", loc_init)
        self.loc_init = loc_init
        self.scale_init = scale_init
        super().__init__(shape, device=device, dtype=dtype)

    def _init_params(self, params: dict[str, Tensor], fan_in: int, fan_out: int) -> None:
        loc = -0.5 * math.log(max(fan_in, 1)) if self.loc_init is None else self.loc_init
        nn.init.trunc_normal_(params["loc"], loc, 0.1, loc - 0.2, loc + 0.2)
        params["rho"].fill_(inverse_softplus(self.scale_init))

    def distribution(self, owner: nn.Module | None = None, prefix: str = "") -> Distribution:
        p = self.params(self._own(owner), prefix)
        return LogNormal(p["loc"], F.softplus(p["rho"]), validate_args=False)

    def noise(self, shape: torch.Size, like: Tensor) -> Tensor:
        return torch.randn(shape, dtype=like.dtype, device=like.device)

    def transform(self, owner: nn.Module, prefix: str, noise: Tensor | None) -> Tensor:
        p = self.params(owner, prefix)
        return torch.exp(torch.addcmul(p["loc"], F.softplus(p["rho"]), noise))  # type: ignore[arg-type]

    def extra_repr(self) -> str:
        return f"loc_init={self.loc_init}, scale_init={self.scale_init}"


class TrainableHalfCauchy(TrainableInitializer):
    """Half-Cauchy shifted to ``loc`` with scale ``softplus(rho)``: support ``[loc, inf)``.

    Its mean is infinite; the posterior-mean mode uses ``loc`` (the mode).

    Args:
        shape: see :class:`TrainableInitializer`.
        loc_init: initial location.
        scale_init: initial scale.

    Example:
        >>> q = TrainableHalfCauchy((3,), loc_init=1.0)
        >>> bool((q().value >= 1.0).all())
        True
    """

    suffixes = ("loc", "rho")

    def __init__(
        self,
        shape: Sequence[int] | None = None,
        *,
        loc_init: float = 0.0,
        scale_init: float = 1e-2,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        _check_positive(type(self).__name__, "scale_init", scale_init)
        check_finite(type(self).__name__, "loc_init", loc_init)
        self.loc_init = loc_init
        self.scale_init = scale_init
        super().__init__(shape, device=device, dtype=dtype)

    def _init_params(self, params: dict[str, Tensor], fan_in: int, fan_out: int) -> None:
        params["loc"].fill_(self.loc_init)
        params["rho"].fill_(inverse_softplus(self.scale_init))

    def distribution(self, owner: nn.Module | None = None, prefix: str = "") -> Distribution:
        p = self.params(self._own(owner), prefix)
        base = HalfCauchy(F.softplus(p["rho"]), validate_args=False)
        return TransformedDistribution(base, [AffineTransform(p["loc"], 1.0)], validate_args=False)

    def noise(self, shape: torch.Size, like: Tensor) -> Tensor:
        # |Cauchy(0, 1)| = tan(pi/2 * U), U ~ Uniform(0, 1)
        u = torch.rand(shape, dtype=like.dtype, device=like.device)
        return torch.tan(0.5 * math.pi * u)

    def transform(self, owner: nn.Module, prefix: str, noise: Tensor | None) -> Tensor:
        p = self.params(owner, prefix)
        return torch.addcmul(p["loc"], F.softplus(p["rho"]), noise)  # type: ignore[arg-type]

    def point(self, owner: nn.Module, prefix: str) -> Tensor:
        return self.params(owner, prefix)["loc"]

    def extra_repr(self) -> str:
        return f"loc_init={self.loc_init}, scale_init={self.scale_init}"


class TrainableDeterministic(TrainableInitializer):
    """A point estimate: one parameter named ``{prefix}`` itself (``weight``, ``bias``).

    Args:
        shape: see :class:`TrainableInitializer` (standalone, the parameter is ``loc``).
        init: ``"default"`` (uniform on ``±1/sqrt(fan_in)``, as ``nn.Linear``),
            ``"zeros"`` or ``"ones"``.

    Example:
        >>> TrainableDeterministic((2,), init="zeros")().value.tolist()
        [0.0, 0.0]
    """

    suffixes = ("",)
    is_deterministic = True
    _INITS = ("default", "zeros", "ones")

    def __init__(
        self,
        shape: Sequence[int] | None = None,
        *,
        init: str = "default",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        if not isinstance(init, str) or init not in self._INITS:
            raise ValueError(
                f"{type(self).__name__} expected `init` in {self._INITS}, got {init!r}"
            )
        self.init = init
        super().__init__(shape, device=device, dtype=dtype)

    def _init_params(self, params: dict[str, Tensor], fan_in: int, fan_out: int) -> None:
        p = params[""]
        if self.init == "zeros":
            p.zero_()
        elif self.init == "ones":
            p.fill_(1.0)
        else:
            bound = 1.0 / math.sqrt(max(fan_in, 1))
            nn.init.uniform_(p, -bound, bound)

    def params(self, owner: nn.Module, prefix: str) -> dict[str, Tensor]:
        return {"": getattr(owner, prefix or "loc")}

    def build(self, owner, prefix, shape, **kwargs) -> None:  # type: ignore[override]
        super().build(owner, prefix or "loc", shape, **kwargs)

    def distribution(self, owner: nn.Module | None = None, prefix: str = "") -> Distribution:
        return Deterministic(self.params(self._own(owner), prefix)[""])

    def noise(self, shape: torch.Size, like: Tensor) -> None:
        return None

    def transform(self, owner: nn.Module, prefix: str, noise: Tensor | None) -> Tensor:
        return self.params(owner, prefix)[""]

    def point(self, owner: nn.Module, prefix: str) -> Tensor:
        return self.params(owner, prefix)[""]

    def extra_repr(self) -> str:
        return f"init={self.init!r}"


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
        ValueError: unknown alias (the message lists the known ones).
        TypeError: anything else.
    """
    if isinstance(spec, TrainableInitializer):
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
