"""The law of an inhomogeneous Poisson process on a box: density and thinning.

Given an intensity ``λ: [..., D] -> [...]`` (any module or callable, e.g. GP layers
followed by softplus) :class:`PoissonProcessDistribution` is the process over point sets in the box
``A = [low_1, high_1] × ... × [low_D, high_D]``:

    log p(x) = Σ_i log λ(x_i) − ∫_A λ(s) ds.

Everything the rate is evaluated on in one density (the events and the
integration nodes), or in one thinning pass (the candidates and the bound grid),
goes through ``rate`` in a single call, so a stochastic rate (a Bayesian or GP
layer drawing a function per call) is scored and sampled as one function.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor
from torch.distributions import Distribution, constraints

from ...random_variables.variable import RandomVariable
from ._util import check_box, leggauss, tensor_grid

__all__ = ["PoissonProcessDistribution", "Rate", "INTEGRATION"]

Rate = Callable[[Tensor], Tensor]
INTEGRATION = ("gauss_legendre", "monte_carlo")


class PoissonProcessDistribution(Distribution):
    """The law of an inhomogeneous Poisson process over point sets in a box.

    Args:
        rate: intensity, ``[M, D] -> [M]`` (or ``[M, 1]``), non-negative.
        domain: ``D`` pairs ``(low, high)``.
        integration: ``"gauss_legendre"`` (tensor-product Gauss–Legendre rule with
            ``num_points`` nodes per dimension: exact for rates polynomial of degree
            ``≤ 2 num_points − 1`` in each coordinate, error falling exponentially in
            ``num_points`` for analytic rates) or ``"monte_carlo"`` (``num_points``
            uniform nodes drawn afresh per evaluation: unbiased, standard error
            ``|A| sd(λ(U)) / sqrt(num_points)``).
        num_points: see ``integration``.
        upper_bound: a bound ``λ* ≥ λ`` on the domain for thinning; ``None``
            estimates it as ``bound_factor ×`` the largest rate on a uniform grid of
            ``num_points`` nodes per dimension (raised and retried whenever an
            evaluated rate exceeds it; it can miss peaks narrower than the grid
            spacing, so give it for such rates).
        bound_factor: safety factor of the estimated bound.
        dtype, device: of the box and of the points drawn.
        owner: the name that error messages start with (default the class name; the
            :class:`~.process.PoissonProcess` layer that builds the law passes its own).

    ``log_prob`` takes one point set ``[N, D]`` (a scalar), a list of point sets (a
    ``[B]`` tensor) or a padded batch ``[B, N, D]`` with ``mask`` ``[B, N]`` (a
    ``[B]`` tensor). ``sample()`` returns one point set ``[N, D]``;
    ``sample((S,))`` a list of S point sets; :meth:`sample_padded` a padded batch.

    Example:
        >>> import torch
        >>> law = PoissonProcessDistribution(lambda x: 1.0 + x.sum(-1), [(0.0, 1.0), (0.0, 1.0)])
        >>> float(law.integral())  # ∫∫ (1 + x + y) = 2
        2.0
        >>> law.log_prob([torch.zeros(0, 2), torch.full((1, 2), 0.5)])  # [-2, log 2 - 2]
        tensor([-2.0000, -1.3069])
    """

    arg_constraints: dict[str, constraints.Constraint] = {}
    has_rsample = False

    def __init__(
        self,
        rate: Rate,
        domain: Sequence[tuple[float, float]],
        *,
        integration: str = "gauss_legendre",
        num_points: int = 64,
        upper_bound: float | None = None,
        bound_factor: float = 1.5,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        owner: str | None = None,
    ) -> None:
        owner = owner or type(self).__name__
        self.rate = rate
        self.domain = check_box(owner, domain)
        if integration not in INTEGRATION:
            raise ValueError(
                f"{owner} expected `integration` in {INTEGRATION}, got {integration!r}"
            )
        if isinstance(num_points, bool) or not isinstance(num_points, int) or num_points < 1:
            raise ValueError(f"{owner} expected `num_points` >= 1, got {num_points!r}")
        if upper_bound is not None and not (upper_bound > 0 and math.isfinite(upper_bound)):
            raise ValueError(f"{owner} expected `upper_bound` > 0, got {upper_bound!r}")
        if not 1.0 <= bound_factor < math.inf:
            raise ValueError(f"{owner} expected a finite `bound_factor` >= 1, got {bound_factor!r}")
        self.integration = integration
        self.num_points = num_points
        self.upper_bound = upper_bound
        self.bound_factor = float(bound_factor)
        self.dtype = dtype or torch.get_default_dtype()
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        lows, highs = zip(*self.domain, strict=True)
        self.low = torch.tensor(lows, dtype=self.dtype, device=self.device)  # (D,)
        self.high = torch.tensor(highs, dtype=self.dtype, device=self.device)  # (D,)
        super().__init__(batch_shape=torch.Size(), validate_args=False)
        self._owner = owner  # the name in messages about points

    # ----------------------------------------------------------------- geometry
    @property
    def dim(self) -> int:
        return len(self.domain)

    @property
    def volume(self) -> float:
        """``|A|``, the box's volume."""
        return math.prod(hi - lo for lo, hi in self.domain)

    def check_points(self, x: Tensor, what: str = "events") -> Tensor:
        """Validate a point set ``[..., N, D]`` inside the box; return it as a tensor."""
        owner = self._owner
        if isinstance(x, RandomVariable):
            x = x.value
        if not isinstance(x, Tensor):
            raise TypeError(f"{owner} expected {what} as a Tensor [N, {self.dim}], got {type(x)}")
        if x.dim() < 2 or x.shape[-1] != self.dim:
            raise ValueError(
                f"{owner} expected {what} of shape [N, {self.dim}], got {tuple(x.shape)}"
            )
        if not x.is_floating_point():
            raise TypeError(f"{owner} expected floating-point {what}, got {x.dtype}")
        if x.numel():
            low, high = self.low.to(x), self.high.to(x)
            finite = torch.isfinite(x).all(-1)
            if not bool(finite.all()):  # NaN compares false with both ends of the box
                bad = x[~finite][0].tolist()
                raise ValueError(
                    f"{owner} expected finite `{what}` (points inside {list(self.domain)}), "
                    f"got {int((~finite).sum())} non-finite point(s), e.g. {bad}"
                )
            outside = ((x < low) | (x > high)).any(-1)
            if bool(outside.any()):
                bad = x[outside][0].tolist()
                raise ValueError(
                    f"{owner} got {what} outside the domain {list(self.domain)}: "
                    f"{int(outside.sum())} point(s), e.g. {bad}"
                )
        return x

    def _nodes(self, like: Tensor) -> tuple[Tensor, Tensor]:
        """Integration nodes ``[Q, D]`` and weights ``[Q]`` (weights sum to ``|A|``)."""
        low, high = self.low.to(like), self.high.to(like)
        n = self.num_points
        if self.integration == "monte_carlo":
            u = torch.rand((n, self.dim), dtype=like.dtype, device=like.device)
            weights = torch.full((n,), self.volume / n, dtype=like.dtype, device=like.device)
            return low + (high - low) * u, weights
        unit_nodes, unit_weights = leggauss(n)  # on [-1, 1]
        t = torch.tensor(unit_nodes, dtype=like.dtype, device=like.device)
        w = torch.tensor(unit_weights, dtype=like.dtype, device=like.device)
        axes = [(lo + hi) / 2 + (hi - lo) / 2 * t for lo, hi in zip(low, high, strict=True)]
        scales = [(hi - lo) / 2 * w for lo, hi in zip(low, high, strict=True)]
        grid = tensor_grid(axes)
        weight = scales[0]
        for s in scales[1:]:
            weight = (weight.unsqueeze(-1) * s).reshape(-1)
        return grid, weight

    def intensity(self, points: Tensor) -> Tensor:
        """``λ(points)``, ``[M, D] -> [M]``, checked: finite and non-negative."""
        owner = type(self).__name__
        out = self.rate(points)
        if isinstance(out, RandomVariable):
            out = out.value
        if not isinstance(out, Tensor):
            raise TypeError(f"{owner}: `rate` returned {type(out).__name__}, expected a Tensor")
        lead = points.shape[:-1]
        if out.shape == lead + (1,):
            out = out.squeeze(-1)
        if out.shape != lead:
            raise ValueError(
                f"{owner}: `rate` mapped points {tuple(points.shape)} to shape "
                f"{tuple(out.shape)}, expected {tuple(lead)} (or {tuple(lead) + (1,)})"
            )
        if out.numel():
            low = float(out.detach().min())
            if not low >= 0.0:  # also catches NaN
                raise ValueError(
                    f"{owner}: `rate` must be non-negative (end it with softplus or exp), "
                    f"got minimum {low}"
                )
        return out

    # ------------------------------------------------------------------ density
    def log_prob(self, value: Tensor | Sequence[Tensor], mask: Tensor | None = None) -> Tensor:  # type: ignore[override]
        """``Σ log λ(x_i) − ∫_A λ`` per point set (one rate call for the whole batch)."""
        if isinstance(value, RandomVariable):
            value = value.value
        if isinstance(value, (list, tuple)):
            sets = [self.check_points(v) for v in value]
            if any(s.dim() != 2 for s in sets):
                raise ValueError(f"{type(self).__name__} expected a list of [N_i, D] point sets")
            points = torch.cat(sets, 0) if sets else self.low.new_zeros(0, self.dim)
            index = torch.cat(
                [torch.full((len(s),), i, dtype=torch.long) for i, s in enumerate(sets)]
            ) if sets else torch.zeros(0, dtype=torch.long)  # fmt: skip
            log_rates, integral = self._evaluate(points)
            sums = log_rates.new_zeros(len(sets))
            sums = sums.index_add(0, index.to(log_rates.device), log_rates)
            return sums - integral
        x = self.check_points(value)  # type: ignore[arg-type]
        if mask is not None:
            if mask.shape != x.shape[:-1]:
                raise ValueError(
                    f"{type(self).__name__} expected `mask` of shape {tuple(x.shape[:-1])}, "
                    f"got {tuple(mask.shape)}"
                )
            mask = mask.bool()
            low = self.low.to(x)
            x = torch.where(mask.unsqueeze(-1), x, low)  # padding: any point inside
        lead = x.shape[:-1]
        keep = None if mask is None else mask.reshape(-1)
        log_rates, integral = self._evaluate(x.reshape(-1, self.dim), keep)
        log_rates = log_rates.reshape(lead)
        return log_rates.sum(-1) - integral

    def _evaluate(self, points: Tensor, keep: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(log λ(points), ∫_A λ)`` from one call of the rate; with ``keep`` (bool,
        one per point) the other points (padding) get log-rate 0 and no gradient, even
        where the rate is 0 there (``log 0`` would make the gradient NaN)."""
        like = points if points.numel() else self.low
        nodes, weights = self._nodes(like)
        rates = self.intensity(torch.cat([points.to(nodes), nodes], 0))
        n = points.shape[0]
        at_points = rates[:n]
        if keep is None:
            return torch.log(at_points), (rates[n:] * weights.to(rates)).sum()
        keep = keep.to(at_points.device)
        # padding reads log 1 = 0, never log 0 (whose where-backward would be NaN)
        log_rates = torch.log(torch.where(keep, at_points, torch.ones_like(at_points)))
        return log_rates, (rates[n:] * weights.to(rates)).sum()

    def integral(self) -> Tensor:
        """``∫_A λ``, the expected number of points (by the chosen rule)."""
        return self._evaluate(self.low.new_zeros(0, self.dim))[1]

    # ----------------------------------------------------------------- sampling
    def _bound_grid(self) -> Tensor:
        """A uniform grid of ``num_points`` nodes per dimension (corners included)."""
        n, low = self.num_points, self.low
        axes = [
            torch.linspace(lo, hi, n, dtype=low.dtype, device=low.device) for lo, hi in self.domain
        ]
        return tensor_grid(axes)

    @torch.no_grad()
    def _sample_one(self) -> Tensor:
        owner = type(self).__name__
        low, high = self.low, self.high
        grid = self._bound_grid()
        bound = self.upper_bound
        if bound is None:
            bound = self.bound_factor * float(self.intensity(grid).max())
        if bound <= 0.0:  # a rate zero on the whole grid: no points
            return low.new_zeros(0, self.dim)
        for _ in range(30):
            mean_count = torch.tensor(bound * self.volume, dtype=torch.float64, device="cpu")
            count = int(torch.poisson(mean_count))  # a host-side size
            u = torch.rand(count, self.dim, dtype=low.dtype, device=low.device)
            candidates = low + (high - low) * u
            # one rate call: the candidates and the grid see the same function sample
            rates = self.intensity(torch.cat([candidates, grid], 0))
            peak = float(rates.max()) if rates.numel() else 0.0
            if peak <= bound:
                keep = torch.rand(count, dtype=low.dtype, device=low.device) * bound
                keep = keep < rates[:count]
                return candidates[keep]
            if self.upper_bound is not None:
                raise ValueError(
                    f"{owner}: the rate reached {peak:.4g} > upper_bound={self.upper_bound}; "
                    "pass a larger upper_bound (thinning needs λ ≤ upper_bound everywhere)"
                )
            bound = self.bound_factor * peak
        raise RuntimeError(f"{owner}: could not find an upper bound of the rate for thinning")

    def sample(self, sample_shape: Sequence[int] | torch.Size = ()) -> Tensor | list:  # type: ignore[override]
        """One point set ``[N, D]`` by thinning; ``sample((S,))``: a list of S sets."""
        shape = torch.Size(sample_shape)
        if len(shape) == 0:
            return self._sample_one()
        if len(shape) > 1:
            raise ValueError(f"{type(self).__name__}.sample takes () or (S,), got {tuple(shape)}")
        return [self._sample_one() for _ in range(shape[0])]

    def sample_padded(self, num_samples: int) -> tuple[Tensor, Tensor]:
        """``num_samples`` point sets padded to one tensor: ``(points [S, N_max, D],
        mask [S, N_max])``, padding rows at the box's lower corner."""
        sets = self.sample((num_samples,))
        n_max = max((len(s) for s in sets), default=0)
        points = self.low.expand(num_samples, n_max, self.dim).clone()
        mask = torch.zeros(num_samples, n_max, dtype=torch.bool, device=points.device)
        for i, s in enumerate(sets):
            points[i, : len(s)] = s
            mask[i, : len(s)] = True
        return points, mask
