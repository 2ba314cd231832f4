"""``layers.Discretize`` (paper footnote 4, Figure 6): continuous random variable in,
discrete random variable over bins out.

The bins are centred on ``c_i = low + i·w``, ``i = 0..num_bins-1``, ``w = (high - low) /
(num_bins - 1)``; by default ``num_bins = high - low + 1`` so ``w = 1`` and the values are
the integers ``low..high`` (8-bit pixels with the defaults ``low=0, high=255``). Bin ``i``
covers ``[c_i - w/2, c_i + w/2)``; the first bin is open to ``-∞`` and the last to ``+∞``,
so the bin probabilities sum to one:

    ``P(c_i) = F(c_i + w/2) - F(c_i - w/2)``,  ``P(c_0) = F(c_0 + w/2)``,
    ``P(c_{n-1}) = 1 - F(c_{n-1} - w/2)``.

Supported continuous families (after removing ``Independent`` wrappers, whose
reinterpreted dimensions are kept as event dimensions of the result):

* the package's :class:`.logistic.Logistic` (log-space via :func:`.logistic.log_sigmoid_diff`);
* ``torch.distributions.Normal`` (log-space via ``torch.special.log_ndtr``);
* ``MixtureSameFamily`` whose components are any supported family: the component
  bin masses are mixed in log space (``logsumexp`` with the mixture's log weights),
  as for the discretized logistic mixture of PixelCNN++ (``layers.MixtureLogistic``);
* any other scalar-event distribution with real support and a ``cdf`` (``Laplace``,
  ``Cauchy``, ``Gumbel``, ...): ``log(F(b) - F(a))`` from the ``cdf`` directly, exact
  but less accurate for bins far in a tail (probabilities below float precision are
  clamped to the smallest positive float).

Anything else (no ``cdf``, discrete or bounded support, a non-scalar event) raises a
``TypeError`` naming the family.
"""

from __future__ import annotations

import math
from numbers import Real
from typing import Any

import numpy as np
import torch
import torch.distributions as td
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import constraints

from ... import tracing as _tracing
from ..._checks import check_name
from ...random_variables.variable import RandomVariable
from ..outputs._util import Size, log1mexp, strip_independent
from ..outputs.binned import BinnedMoments, location_scale_bin_log_mass
from ..outputs.distributions import IndependentEvents, check_target_shape
from ..outputs.logistic import Logistic, log_sigmoid_diff

__all__ = ["Discretize", "DiscretizedDistribution"]


class _Grid(constraints.Constraint):
    """The values ``low + i·w``, ``i = 0..n-1`` (to ``w/1000``)."""

    is_discrete = True
    event_dim = 0

    def __init__(self, low: float, width: float, num_bins: int) -> None:
        self.low, self.width, self.num_bins = low, width, num_bins
        super().__init__()

    def check(self, value: Tensor) -> Tensor:
        idx = ((value - self.low) / self.width).round()
        on = (value - (self.low + idx * self.width)).abs() <= 1e-3 * self.width
        return on & (idx >= 0) & (idx <= self.num_bins - 1)

    def __repr__(self) -> str:
        return f"_Grid(low={self.low:g}, width={self.width:g}, num_bins={self.num_bins})"


#: 5-point Gauss-Legendre nodes and log weights on [-1, 1] (exact for degree 9)
_GL_NODES, _GL_WEIGHTS = (t.tolist() for t in np.polynomial.legendre.leggauss(5))
_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def _log_ndtr_diff(a: Tensor, b: Tensor) -> Tensor:
    r"""``log(Φ(b) - Φ(a))`` for ``a < b``, without cancellation, for wide and narrow
    intervals in either tail.

    Wide: ``log Φ(hi) + log1mexp(log Φ(lo) - log Φ(hi))`` on the side of the median
    that keeps both in the lower tail. That difference of two rounded logs loses about
    ``eps · max(1, |m|)² / (h · max(1, |m|))`` of relative precision (``m``, ``h``: the
    interval's midpoint and half-width): all of it for the narrow bins of a wide normal.
    So where ``h · max(1, |m|) <= 0.1`` the mass is integrated instead, by 5-point
    Gauss-Legendre in log space, :math:`\log h + \operatorname{logsumexp}_i(\log w_i +
    \log φ(m + h x_i))`, whose error there is below float64's rounding.
    """
    flip = (a + b) > 0
    lo, hi = torch.where(flip, -b, a), torch.where(flip, -a, b)
    log_hi = torch.special.log_ndtr(hi)
    wide = log_hi + log1mexp(torch.special.log_ndtr(lo) - log_hi)
    mid, half = (a + b) / 2, (b - a) / 2
    narrow = half * mid.abs().clamp_min(1.0) <= 0.1
    # the quadrature on safe inputs where unused (no NaN/inf in torch.where's backward)
    mid, half = torch.where(narrow, mid, 0.0), torch.where(narrow, half, 0.1)
    nodes = torch.tensor(_GL_NODES, dtype=mid.dtype, device=mid.device)
    log_w = torch.tensor(_GL_WEIGHTS, dtype=mid.dtype, device=mid.device).log()
    t = mid.unsqueeze(-1) + half.unsqueeze(-1) * nodes  # (..., 5)
    quad = half.log() + torch.logsumexp(log_w - t.square() / 2, -1) - _LOG_SQRT_2PI
    return torch.where(narrow, quad, wide)


def _check_family(d: td.Distribution) -> None:
    """Raise ``TypeError`` unless ``d`` is a supported scalar continuous family."""
    name = type(d).__name__
    if isinstance(d, td.MixtureSameFamily):
        _check_family(d.component_distribution)
        return
    if isinstance(d, (Logistic, td.Normal)):
        return
    if tuple(d.event_shape) != ():
        raise TypeError(
            f"Discretize expected an elementwise (scalar-event) distribution, got {name} with "
            f"event_shape {tuple(d.event_shape)}"
        )
    support = d.support
    if getattr(support, "is_discrete", False) or support is not constraints.real:
        raise TypeError(
            f"Discretize expected a continuous distribution with real support, got {name} with "
            f"support {support}; supported: Logistic, Normal, MixtureSameFamily of those, or "
            "any real-supported distribution with a `cdf`"
        )
    try:
        d.cdf(torch.zeros(d.batch_shape))
    except NotImplementedError:
        raise TypeError(
            f"Discretize expected a distribution with a `cdf`, got {name}, which has none; "
            "supported: Logistic, Normal, MixtureSameFamily of those, or any real-supported "
            "distribution with a `cdf`"
        ) from None


class DiscretizedDistribution(BinnedMoments, td.Distribution):
    """A scalar continuous distribution integrated over bins (see the module docstring).

    Args:
        base: the continuous distribution: a supported family with ``event_shape ()``.
        low: centre of the first bin.
        high: centre of the last bin.
        num_bins: number of bins (``>= 2``).
        validate_args: check that ``log_prob`` values lie on the grid (torch's default
            when ``None``). Without validation values are snapped to the nearest bin.

    ``log_prob(v)`` is the log of the mass of the bin ``v`` is the centre of; ``sample``
    draws from ``base`` and rounds to the nearest centre, clamped to ``[low, high]`` (so
    the draws have exactly the bin probabilities). ``bin_probs``, ``mean``, ``variance``
    and ``entropy`` enumerate the bins.

    Example:
        >>> d = DiscretizedDistribution(td.Normal(torch.zeros(2), 1.0), low=-2, high=2, num_bins=5)
        >>> d.bin_centers
        tensor([-2., -1.,  0.,  1.,  2.])
        >>> round(float(d.bin_probs().sum(-1)[0]), 6)
        1.0
    """

    arg_constraints: dict[str, constraints.Constraint] = {}
    has_rsample = False

    def __init__(
        self,
        base: td.Distribution,
        low: float,
        high: float,
        num_bins: int,
        validate_args: bool | None = None,
    ) -> None:
        if not isinstance(base, td.Distribution):
            raise TypeError(
                f"DiscretizedDistribution expected a torch Distribution, got {type(base).__name__}"
            )
        _check_family(base)
        self.base = base
        self.low, self.high, self.num_bins = float(low), float(high), int(num_bins)
        super().__init__(batch_shape=base.batch_shape, validate_args=validate_args)

    @constraints.dependent_property(is_discrete=True, event_dim=0)
    def support(self) -> constraints.Constraint:
        return _Grid(self.low, self.bin_width, self.num_bins)

    def _dtype(self) -> torch.dtype:
        for t in _param_tensors(self.base):
            if t.is_floating_point():
                return t.dtype
        return torch.get_default_dtype()

    @property
    def bin_centers(self) -> Tensor:
        """The ``num_bins`` values ``low + i · bin_width``."""
        i = torch.arange(self.num_bins, dtype=self._dtype())
        return self.low + i * self.bin_width

    def expand(self, batch_shape: Size, _instance: Any = None) -> DiscretizedDistribution:  # type: ignore[override]
        new = self._get_checked_instance(DiscretizedDistribution, _instance)
        new.base = self.base.expand(batch_shape)
        new.low, new.high, new.num_bins = self.low, self.high, self.num_bins
        super(DiscretizedDistribution, new).__init__(torch.Size(batch_shape), validate_args=False)
        new._validate_args = self._validate_args
        return new

    # ------------------------------------------------------------ bin masses
    def _log_mass(self, d: td.Distribution, idx: Tensor) -> Tensor:
        """Log mass of bin ``idx`` (float bin indices broadcasting with ``d.batch_shape``)."""
        if isinstance(d, td.MixtureSameFamily):
            log_w = d.mixture_distribution.logits.log_softmax(-1)
            return torch.logsumexp(
                log_w + self._log_mass(d.component_distribution, idx[..., None]), -1
            )
        w = self.bin_width
        if isinstance(d, (Logistic, td.Normal)):
            fns = (
                (F.logsigmoid, log_sigmoid_diff)
                if isinstance(d, Logistic)
                else (torch.special.log_ndtr, _log_ndtr_diff)
            )
            grid = (self.low, w, self.num_bins)
            return location_scale_bin_log_mass(idx, *grid, d.loc, d.scale, *fns)
        center = self.low + idx * w
        first, last = idx == 0, idx == self.num_bins - 1
        cdf_lo, cdf_up = d.cdf(center - w / 2), d.cdf(center + w / 2)
        mass = torch.where(first, cdf_up, torch.where(last, 1 - cdf_lo, cdf_up - cdf_lo))
        return mass.clamp_min(torch.finfo(mass.dtype).tiny).log()

    def _check_value(self, value: Any) -> None:
        if not isinstance(value, Tensor):
            raise TypeError(
                f"Discretize: log_prob expected a Tensor of bin values, got {type(value).__name__}"
            )
        ok = self.support.check(value.to(self._dtype()))
        if not bool(ok.all()):
            bad = value[~ok.expand(value.shape)].flatten()[0].item()
            grid = (
                f"the integers {self.low:g}..{self.high:g}"
                if self.bin_width == 1 and float(self.low).is_integer()
                else f"{self.low:g} + i * {self.bin_width:.6g}, i = 0..{self.num_bins - 1}"
            )
            raise ValueError(f"Discretize: log_prob expected values in {grid}, got {bad!r}")

    def log_prob(self, value: Tensor) -> Tensor:
        check_target_shape(self, value)
        if self._validate_args:
            self._check_value(value)
        idx = self._bin_index(torch.as_tensor(value).to(self._dtype()))
        return self._log_mass(self.base, idx)

    def bin_probs(self) -> Tensor:
        """Probabilities of all bins, ``(*batch, num_bins)``; they sum to one."""
        idx = torch.arange(self.num_bins, dtype=self._dtype())
        idx = idx.reshape((-1,) + (1,) * len(self.batch_shape))
        return (
            self._log_mass(self.base, idx)
            .expand((self.num_bins,) + self.batch_shape)
            .movedim(0, -1)
            .exp()
        )

    @property
    def mode(self) -> Tensor:
        return self.bin_centers[self.bin_probs().argmax(-1)]

    def snap(self, x: Tensor) -> Tensor:
        """Round continuous values to the nearest bin centre, clamped to ``[low, high]``."""
        return self.low + self._bin_index(x) * self.bin_width

    def sample(self, sample_shape: Size = ()) -> Tensor:
        with torch.no_grad():
            return self.snap(self.base.sample(torch.Size(sample_shape)))

    def rsample(self, sample_shape: Size = ()) -> Tensor:
        raise NotImplementedError(
            "Discretize: a discretized distribution has no rsample (its values are discrete); "
            "use sample() and train through log_prob"
        )

    def __repr__(self) -> str:
        return (
            f"DiscretizedDistribution({self.base!r}, low={self.low:g}, high={self.high:g}, "
            f"num_bins={self.num_bins})"
        )


def _param_tensors(d: td.Distribution) -> list[Tensor]:
    if isinstance(d, td.MixtureSameFamily):
        return _param_tensors(d.component_distribution)
    found = (getattr(d, name, None) for name in ("loc", "scale"))
    return [t for t in found if isinstance(t, Tensor)]


class Discretize(nn.Module):
    """Discretize a continuous random variable onto bins (paper footnote 4, Figure 6).

    ``Discretize(low, high, num_bins)(rv)`` returns a :class:`~bayesian_layers.RandomVariable`
    whose distribution gives each bin the mass of ``rv``'s density over it (module
    docstring: edge bins open, supported families) and whose value is ``rv``'s value
    rounded to the nearest bin centre and clamped to ``[low, high]``. Event dimensions
    of ``rv`` (``Independent`` wrappers) are kept: ``log_prob`` sums over them.

    Args:
        low: centre of the first bin (default 0).
        high: centre of the last bin (default 255).
        num_bins: number of bins ``>= 2``; default ``high - low + 1`` (width-1 bins on
            the integers ``low..high``, which must then be integers).
        validate_args: validate ``log_prob`` values are bin centres (torch's default
            when ``None``).
        name: the name of the returned random variable, which is then created through
            the tracers (``bl.condition`` sets its value, ``bl.tape`` records it,
            ``bl.make_log_joint_fn`` scores it). Without a name, the result keeps the
            input's name and is not traced again (the input was).

    ``log_prob`` refuses a target whose shape would broadcast against the batch
    (:func:`.output_distributions.check_target_shape`); an empty batch gives an empty
    result.

    Example (Figure 6's likelihood)::

        >>> import torch
        >>> from bayesian_layers.layers.outputs.mixtures import MixtureLogistic
        >>> model = torch.nn.Sequential(MixtureLogistic(1, num_components=5), Discretize(0, 16))
        >>> features = torch.randint(0, 17, (4, 64, 1)).float()
        >>> rv = model(torch.randn(4, 64, 8))
        >>> rv.distribution.log_prob(features).shape
        torch.Size([4, 64])
        >>> bool(((rv.value >= 0) & (rv.value <= 16) & (rv.value == rv.value.round())).all())
        True
    """

    def __init__(
        self,
        low: float = 0,
        high: float = 255,
        num_bins: int | None = None,
        *,
        validate_args: bool | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__()
        if validate_args is not None and not isinstance(validate_args, bool):
            raise TypeError(
                f"Discretize expected `validate_args` to be a bool or None, got {validate_args!r}"
            )
        check_name("Discretize", name)
        self.name = name
        for name, v in (("low", low), ("high", high)):
            if isinstance(v, bool) or not isinstance(v, Real) or not math.isfinite(v):
                raise TypeError(f"Discretize expected a finite number `{name}`, got {v!r}")
        if not low < high:
            raise ValueError(f"Discretize expected `low` < `high`, got {low!r} and {high!r}")
        if num_bins is None:
            if not (float(low).is_integer() and float(high).is_integer()):
                raise ValueError(
                    "Discretize derives `num_bins = high - low + 1` (width-1 bins on integers) "
                    f"only for integer `low` and `high`, got {low!r} and {high!r}; pass `num_bins`"
                )
            num_bins = int(high - low) + 1
        if isinstance(num_bins, bool) or not isinstance(num_bins, int) or num_bins < 2:
            raise ValueError(f"Discretize expected `num_bins` an int >= 2, got {num_bins!r}")
        self.low, self.high, self.num_bins = float(low), float(high), num_bins
        self.validate_args = validate_args

    def forward(self, rv: RandomVariable) -> RandomVariable:
        if not isinstance(rv, RandomVariable):
            raise TypeError(
                "Discretize expected a RandomVariable (e.g. the output of layers.MixtureLogistic), "
                f"got {type(rv).__name__}; wrap a distribution as bl.RandomVariable(dist)"
            )
        base, n = strip_independent(rv.distribution)
        empty = base.batch_shape.numel() == 0  # nothing to validate (torch's checks fail)
        inner = DiscretizedDistribution(
            base,
            self.low,
            self.high,
            self.num_bins,
            validate_args=False if empty else self.validate_args,
        )
        # the inner distribution validates values with a clear message; the wrapper need not
        disc = IndependentEvents(inner, n, validate_args=False) if n else inner
        value = inner.snap(rv.value.detach())
        if self.name is None:
            return RandomVariable(disc, value=value, sample_shape=rv.sample_shape, name=rv.name)
        if _tracing.is_tracing():
            traced = _tracing.variable(
                disc, name=self.name, value=value, sample_shape=rv.sample_shape
            )
            return traced  # type: ignore[no-any-return]
        return RandomVariable(disc, value=value, sample_shape=rv.sample_shape, name=self.name)

    def extra_repr(self) -> str:
        extra = f"low={self.low:g}, high={self.high:g}, num_bins={self.num_bins}"
        return extra if self.name is None else f"{extra}, name={self.name!r}"
