"""The base of the stochastic output layers (:mod:`.stochastic_output`,
:mod:`.mixtures`): a deterministic map from the input to the parameters of a
distribution, returned as a :class:`~bayesian_layers.RandomVariable` (paper §2.3).

Every layer has the same shape rules:

* ``units=None`` (default): the input holds the first parameter (``loc``,
  ``logits`` or ``log_rate``), and the value keeps the input's shape (Categorical
  drops the class dimension); any other parameter (a scale, ...) is a trainable
  per-feature tensor over the input's last dimension, created at the first call
  (a lazy module) or at construction when ``in_features=`` is given.
* ``units=n``: a trainable linear projection of the input's last dimension to
  exactly the parameters needed, laid out as consecutive blocks of ``n`` in the
  order of the layer's ``Shape:`` section. It is an ``nn.LazyLinear`` (drop-in: the
  input size is inferred at the first call), or an ``nn.Linear`` when
  ``in_features=`` is given (parameters exist at construction, for optimizers
  built before any call, ``device="meta"`` and sharding).
* Positive parameters are ``softplus(raw) + min_scale`` (``min_scale=1e-3``, a finite
  number >= 0, below the initial value of any per-feature parameter).
* The input is floating point, of the parameters' dtype when the layer has
  parameters (a ``TypeError`` otherwise; autocast chooses the dtypes itself).
* An empty batch gives an empty random variable (``(0, ...)`` values, empty
  ``log_prob``), as torch's layers do.
* ``log_prob`` refuses a target whose shape would broadcast against the batch
  (:func:`.output_distributions.check_target_shape`).
* ``name=`` names the returned random variable, created through the tracers as
  ``bl.Normal(..., name=...)`` is: ``bl.condition`` sets its value, ``bl.tape``
  records it and ``bl.make_log_joint_fn`` scores it. An unnamed output is not
  traced (so a log joint never scores it).
* ``event_dims`` trailing dimensions of the value form the event: ``log_prob``
  sums over them. The default makes ``log_prob`` return ``input.shape[:-1]``: one
  value per example for ``(B, D)`` inputs. It is 1 (the feature dimension), and 0
  where the layer consumes the last input dimension (Categorical; mixtures
  without ``units``). Elementwise families with ``event_dims > 0`` come wrapped in
  :class:`.IndependentEvents`, whose KL meets an elementwise prior:
  ``rv.kl_divergence(bl.Normal(0., 1.))`` is one value per example.

Families with ``rsample`` give values with gradients; discrete families and
mixtures draw with ``sample()`` (no gradient through the value) and their
``distribution.rsample()`` raises a ``NotImplementedError`` that says so.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.distributions as td
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.lazy import LazyModuleMixin

from ... import tracing as _tracing
from ..._checks import check_name, check_optional_count, check_real, inverse_softplus, is_lazy
from ...random_variables.variable import RandomVariable
from ..base import as_tensor
from . import distributions as od

__all__ = ["StochasticOutput"]


def _check_factory_dtype(owner: str, dtype: object) -> None:
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(
            f"{owner} expected `dtype` to be a floating-point torch.dtype or None, got {dtype!r}"
        )


_HALF = (torch.float16, torch.bfloat16)


class StochasticOutput(LazyModuleMixin, nn.Module):
    """Base class: input → distribution parameters → :class:`RandomVariable`.

    A subclass names its parameters (``param_names``, the first one held by the
    input when ``units`` is None), the per-feature trainable ones with their
    initial values (``feature_params``), the positive ones (``positive``), and
    builds the distribution in :meth:`_distribution`.

    Args:
        units: size of the value's last dimension, through a trainable projection;
            ``None``: no projection, the input holds the parameters.
        in_features: the input's last dimension, if known: builds the projection
            (or the per-feature parameters) at construction instead of at the
            first call, and checks every input.
        event_dims: trailing value dimensions that form the event (see module doc).
        min_scale: floor added to every softplus-constrained parameter.
        name: name of the returned random variable; a named output is created through
            the tracers (``bl.condition``, ``bl.tape``, ``bl.make_log_joint_fn``).
        validate_args: passed to the distribution (torch's default when ``None``).
        device, dtype: factory arguments of the parameters.
    """

    param_names: tuple[str, ...] = ()
    feature_params: dict[str, float] = {}
    positive: frozenset[str] = frozenset()
    #: event dimensions the family has by itself (1 for one-hot and multivariate)
    intrinsic_event_dims = 0
    #: the value drops the parameters' last dimension (class logits)
    consumes_last_dim = False

    #: its forward samples the output's value: :func:`bayesian_layers.predict` folds the
    #: K function samples through it (never part of a deterministic trunk)
    stochastic_forward: ClassVar[bool] = True

    def __init__(
        self,
        units: int | None = None,
        *,
        in_features: int | None = None,
        event_dims: int | None = None,
        min_scale: float = 1e-3,
        name: str | None = None,
        validate_args: bool | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        self.units = check_optional_count(owner, "units", units)
        self.in_features = check_optional_count(owner, "in_features", in_features)
        self.min_scale = check_real(owner, "min_scale", min_scale)
        name = check_name(owner, name)
        if validate_args is not None and not isinstance(validate_args, bool):
            raise TypeError(
                f"{owner} expected `validate_args` to be a bool or None, got {validate_args!r}"
            )
        _check_factory_dtype(owner, dtype)
        self.name = name
        self.validate_args = validate_args
        default = 0 if self._consumes_last_dim() else 1
        if event_dims is None:
            event_dims = default
        if isinstance(event_dims, bool) or not isinstance(event_dims, int):
            raise TypeError(f"{owner} expected `event_dims` to be an int, got {type(event_dims)}")
        if event_dims < self.intrinsic_event_dims:
            raise ValueError(
                f"{owner} expected `event_dims` >= {self.intrinsic_event_dims} (its family's own "
                f"event dimensions), got {event_dims}"
            )
        self.event_dims = event_dims
        if self.units is None:
            self._check_min_scale_below_initial_values(owner)
        factory: dict[str, Any] = {"device": device, "dtype": dtype}
        self.projection: nn.Module | None = None
        if self.units is not None:
            n_out = self._num_outputs(self.units)
            self.projection = (
                nn.LazyLinear(n_out, **factory)
                if self.in_features is None
                else nn.Linear(self.in_features, n_out, **factory)
            )
        else:
            for attr in self._feature_shapes(1):
                setattr(self, attr, nn.UninitializedParameter(**factory))
            if self.in_features is not None:
                self._materialize(self.in_features)

    def _initial_positive_values(self) -> list[float]:
        """Initial values of the positive per-feature parameters (``units=None``)."""
        return [v for k, v in self.feature_params.items() if k in self.positive]

    def _check_min_scale_below_initial_values(self, owner: str) -> None:
        values = self._initial_positive_values()
        if values and self.min_scale >= min(values):
            raise ValueError(
                f"{owner} expected `min_scale` below {min(values):g}, the initial value of its "
                f"per-feature parameters (units=None), got {self.min_scale!r}"
            )

    # ---------------------------------------------------------------- layout
    def _consumes_last_dim(self) -> bool:
        return self.consumes_last_dim

    def _num_outputs(self, units: int) -> int:
        """Size of the projection's output."""
        return len(self.param_names) * units

    def _split(self, raw: Tensor) -> dict[str, Tensor]:
        """Projection output ``(*, num_outputs)`` → raw parameters by name."""
        assert self.units is not None
        blocks = raw.unflatten(-1, (len(self.param_names), self.units)).unbind(-2)  # P × (*, n)
        return dict(zip(self.param_names, blocks, strict=True))

    def _from_input(self, x: Tensor) -> dict[str, Tensor]:
        """Raw parameters when the input holds them (``units=None``)."""
        raw = {self.param_names[0]: x}
        for name in self.feature_params:
            raw[name] = getattr(self, f"{name}_rho")
        return raw

    def _feature_shapes(self, features: int) -> dict[str, tuple[int, ...]]:
        """Per-feature trainable parameters (attribute → shape) for ``units=None``."""
        return {f"{name}_rho": (features,) for name in self.feature_params}

    def reset_feature_parameters(self) -> None:
        """Set the per-feature parameters to their initial values (documented per layer)."""
        with torch.no_grad():
            for name, value in self.feature_params.items():
                getattr(self, f"{name}_rho").fill_(inverse_softplus(value - self.min_scale))

    def _materialize(self, features: int) -> None:
        for attr, shape in self._feature_shapes(features).items():
            param = getattr(self, attr)
            if is_lazy(param):
                param.materialize(shape)
        self.reset_feature_parameters()

    def initialize_parameters(self, x: Any, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        """Lazy-module hook: size the per-feature parameters from the first input."""
        x = self._check_input(x)
        if any(is_lazy(p) for p in self.parameters()) and not bool(torch.isfinite(x).all()):
            # a failed call must not leave the layer built (sized from rejected input)
            raise ValueError(
                f"{type(self).__name__} got a non-finite input (NaN or infinite values) on the "
                "call that sizes its lazy parameters; the layer stays unbuilt"
            )
        if self.has_uninitialized_params():
            self._materialize(x.shape[-1])

    # ----------------------------------------------------------------- input
    def _expected_last_dim(self) -> int | None:
        if self.projection is not None:
            weight = getattr(self.projection, "weight", None)
            return None if weight is None or is_lazy(weight) else int(weight.shape[-1])
        for attr in self._feature_shapes(1):
            param = getattr(self, attr)
            if not is_lazy(param):
                return int(param.shape[-1])
        return self.in_features

    def _parameter_dtype(self) -> torch.dtype | None:
        """The dtype of the layer's parameters (materialized or not), if it has any."""
        for param in self.parameters():
            return param.dtype
        return None

    def _check_input(self, x: Any) -> Tensor:
        owner = type(self).__name__
        x = as_tensor(x, owner)
        expected_dtype = self._parameter_dtype()
        if not x.is_floating_point():
            wanted = f" ({expected_dtype})" if expected_dtype is not None else ""
            raise TypeError(
                f"{owner} expected `input` of a floating-point dtype{wanted}, got {x.dtype}"
            )
        if (
            expected_dtype is not None
            and x.dtype != expected_dtype
            and not torch.is_autocast_enabled(x.device.type)
        ):
            raise TypeError(
                f"{owner} expected `input` of dtype {expected_dtype} (its parameters' dtype; "
                f"convert the input or the layer with .to()), got {x.dtype}"
            )
        if x.dim() == 0:
            raise ValueError(f"{owner} expected an input of shape (*, features), got a scalar")
        expected = self._expected_last_dim()
        if expected is not None and x.shape[-1] != expected:
            what = "in_features" if self.projection is not None else "parameters"
            raise ValueError(
                f"{owner} expected input of shape (*, {expected}) ({what}), got {tuple(x.shape)}"
            )
        return x

    # --------------------------------------------------------------- forward
    def constrain_positive(self, raw: Tensor) -> Tensor:
        """``softplus(raw) + min_scale``."""
        return F.softplus(raw) + self.min_scale

    def _distribution(
        self, params: dict[str, Tensor], validate_args: bool | None
    ) -> td.Distribution:
        """The family's distribution from the constrained parameters."""
        raise NotImplementedError

    def forward(self, x: Tensor | RandomVariable) -> RandomVariable:
        """The output random variable; a random-variable input acts as its value."""
        x = self._check_input(x)
        raw = (
            self._split(self.projection(x)) if self.projection is not None else self._from_input(x)
        )
        if torch.is_autocast_enabled(x.device.type):
            # the projection ran in lower precision; the distribution (sampling, log_prob,
            # KL) runs in float32, as autocast runs losses
            raw = {k: v.float() if v.dtype in _HALF else v for k, v in raw.items()}
        params = {
            k: self.constrain_positive(v) if k in self.positive else v for k, v in raw.items()
        }
        # an empty batch has nothing to validate (torch's checks fail on zero elements)
        validate = False if x.shape[:-1].numel() == 0 else self.validate_args
        try:
            dist = self._distribution(params, validate)
        except ValueError as error:  # torch's validation, which does not name the layer
            raise ValueError(
                f"{type(self).__name__} got distribution parameters outside their constraints "
                f"from an input of shape {tuple(x.shape)} (NaN or infinite values?): {error}"
            ) from error
        extra = self.event_dims - self.intrinsic_event_dims
        if extra > len(dist.batch_shape):
            raise ValueError(
                f"{type(self).__name__} has event_dims={self.event_dims} but its value has only "
                f"{len(dist.batch_shape) + self.intrinsic_event_dims} dimensions "
                f"(input shape {tuple(x.shape)})"
            )
        if extra:
            dist = od.IndependentEvents(dist, extra, validate_args=validate)
        return self._random_variable(dist)

    def _random_variable(self, dist: td.Distribution) -> RandomVariable:
        """The output; a named one goes through the tracers while one is active (as
        ``bl.Normal(..., name=...)``), an unnamed one is invisible to them."""
        if self.name is not None and _tracing.is_tracing():
            return _tracing.variable(dist, name=self.name)  # type: ignore[no-any-return]
        return RandomVariable(dist, name=self.name)

    def extra_repr(self) -> str:
        parts = [f"units={self.units}"]
        if self.in_features is not None:
            parts.append(f"in_features={self.in_features}")
        parts.append(f"event_dims={self.event_dims}")
        if self.positive or self.feature_params:
            parts.append(f"min_scale={self.min_scale:g}")
        if self.name is not None:
            parts.append(f"name={self.name!r}")
        return ", ".join(parts)
