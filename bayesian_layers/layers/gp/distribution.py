"""The distribution of a Gaussian-process layer's output: one multivariate normal
over the batch per unit, laid out as ``(*, B, units)`` like a dense layer's output."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor
from torch.distributions import Distribution, Normal, constraints
from torch.distributions.utils import lazy_property

from ..outputs.distributions import check_target_shape
from .linalg import cholesky_with_jitter, full_precision

__all__ = ["MultivariateNormalColumns", "MarginalNormal"]


class MultivariateNormalColumns(Distribution):
    r"""Independent multivariate normals over the rows of each column of a ``(B, units)`` value.

    Column ``u`` of the value (the ``B`` function values of unit ``u``) is
    ``N(loc[..., :, u], Σ_u)``; columns are independent. ``Σ`` is shared by all
    units (shape ``(*, B, B)``; what an exact GP with one kernel gives) or given
    per unit (shape ``(*, units, B, B)``). The Cholesky factor is computed on first
    use (sampling, ``log_prob``, ``entropy``), with :func:`cholesky_with_jitter`.

    Args:
        loc: ``(*, B, units)`` means.
        covariance_matrix: ``(*, B, B)`` or ``(*, units, B, B)``.
        layer: name used in numerical error messages.
        jitter_scale: the scale ``(*,)`` a jitter the Cholesky factor needs is relative
            to, or a function returning it (called only when a jitter is needed);
            default its mean diagonal. A GP posterior covariance ``K_XX - K_Xc (K_cc +
            σ² I)⁻¹ K_cX`` is rounded on the scale of the prior ``K_XX``, not of its own
            (small) diagonal: the GP layers pass the prior's.
        validate_args: as in ``torch.distributions``.

    Shape:
        ``batch_shape = *``, ``event_shape = (B, units)``; ``log_prob`` of a
        ``(S, *, B, units)`` value is ``(S, *)`` (the sum over units).

    Example:
        >>> loc = torch.zeros(3, 2)
        >>> cov = torch.eye(3) + 0.5
        >>> d = MultivariateNormalColumns(loc, cov)
        >>> d.sample((4,)).shape, d.log_prob(torch.zeros(3, 2)).shape
        (torch.Size([4, 3, 2]), torch.Size([]))
        >>> d.variance.tolist()[0]
        [1.5, 1.5]
    """

    arg_constraints = {"loc": constraints.real}
    support = constraints.real
    has_rsample = True

    def __init__(
        self,
        loc: Tensor,
        covariance_matrix: Tensor,
        *,
        layer: str = "MultivariateNormalColumns",
        jitter_scale: Tensor | Callable[[], Tensor] | None = None,
        validate_args: bool | None = None,
    ) -> None:
        if loc.dim() < 2:
            raise ValueError(f"{layer} expected loc of shape (*, B, units), got {tuple(loc.shape)}")
        b, units = loc.shape[-2:]
        batch = loc.shape[:-2]
        shared = batch + (b, b)
        per_unit = batch + (units, b, b)
        if covariance_matrix.shape not in (shared, per_unit):
            raise ValueError(
                f"{layer} expected covariance_matrix of shape {tuple(shared)} or "
                f"{tuple(per_unit)}, got {tuple(covariance_matrix.shape)}"
            )
        self.loc = loc
        self.covariance_matrix = covariance_matrix
        self.shared = covariance_matrix.shape == shared and covariance_matrix.dim() == loc.dim()
        self.layer = layer
        self.jitter_scale = jitter_scale
        super().__init__(batch, loc.shape[-2:], validate_args=validate_args)

    @lazy_property
    def scale_tril(self) -> Tensor:
        """Lower Cholesky factor of ``covariance_matrix`` (same shape), jittered if needed."""
        scale = None if self.jitter_scale is None else self._jitter_scale
        return cholesky_with_jitter(self.covariance_matrix, layer=self.layer, scale=scale)

    def _jitter_scale(self) -> Tensor:
        """The given jitter scale, ``(*,)``, or ``(*, 1)`` against per-unit matrices."""
        given = self.jitter_scale
        scale = given() if callable(given) else given
        assert scale is not None
        return scale if self.shared else scale.unsqueeze(-1)

    @property
    def mean(self) -> Tensor:
        return self.loc

    @property
    def mode(self) -> Tensor:
        return self.loc

    @property
    def variance(self) -> Tensor:
        """``(*, B, units)`` marginal variances."""
        diag = self.covariance_matrix.diagonal(dim1=-2, dim2=-1)  # (*, B) or (*, units, B)
        if self.shared:
            return diag[..., None].expand(self.loc.shape)
        return diag.mT

    def _matmul_tril(self, z: Tensor) -> Tensor:
        # z: (S, *, B, units) -> L_u z_u for every column
        if self.shared:
            return self.scale_tril @ z
        return (self.scale_tril @ z.mT[..., None]).squeeze(-1).mT  # (S, *, units, B) -> back

    def rsample(self, sample_shape: Sequence[int] = ()) -> Tensor:
        shape = self._extended_shape(torch.Size(sample_shape))
        return self.transform(torch.randn(shape, dtype=self.loc.dtype, device=self.loc.device))

    def transform(self, noise: Tensor) -> Tensor:
        """The draw ``loc + L noise`` (column by column) made from standard normal ``noise``.

        Shape: ``noise`` ``(S, *, B, units)`` -> the same shape.
        """
        with full_precision(self.loc.device):  # a bf16 product would round the sample
            return self.loc + self._matmul_tril(noise)

    def _whiten(self, diff: Tensor) -> Tensor:
        """``L⁻¹ diff`` column by column; ``diff`` ``(S, *, B, units)``."""
        tril = self.scale_tril
        if self.shared:
            tril = tril.expand(diff.shape[:-2] + tril.shape[-2:])
            return torch.linalg.solve_triangular(tril, diff, upper=False)
        cols = diff.mT[..., None]  # (S, *, units, B, 1)
        tril = tril.expand(cols.shape[:-2] + tril.shape[-2:])
        return torch.linalg.solve_triangular(tril, cols, upper=False).squeeze(-1).mT

    def _half_log_det(self) -> Tensor:
        """``Σ_u ½ log|Σ_u|`` with shape ``(*,)``."""
        log_diag = self.scale_tril.diagonal(dim1=-2, dim2=-1).log()
        if self.shared:
            return log_diag.sum(-1) * self.loc.shape[-1]
        return log_diag.sum((-2, -1))

    def log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        z = self._whiten(value - self.loc)
        n = self.loc.shape[-2] * self.loc.shape[-1]
        return (
            -0.5 * z.pow(2).sum((-2, -1)) - self._half_log_det() - 0.5 * n * math.log(2 * math.pi)
        )

    def entropy(self) -> Tensor:
        n = self.loc.shape[-2] * self.loc.shape[-1]
        return self._half_log_det() + 0.5 * n * (1.0 + math.log(2 * math.pi))

    def expand(
        self, batch_shape: Sequence[int], _instance: object = None
    ) -> MultivariateNormalColumns:
        batch_shape = torch.Size(batch_shape)
        cov_tail = self.covariance_matrix.shape[len(self.batch_shape) :]
        return MultivariateNormalColumns(
            self.loc.expand(batch_shape + self.event_shape),
            self.covariance_matrix.expand(batch_shape + cov_tail),
            layer=self.layer,
            jitter_scale=self.jitter_scale,
            validate_args=False,
        )


class MarginalNormal(Normal):
    """Independent normals given by their ``loc`` and ``variance`` (``scale = √variance``).

    The output distribution of a GP layer on its marginal-only path: ``variance`` is
    returned as given (no square root and square), and a zero variance (a point the
    data pin down exactly) is allowed. ``log_prob`` refuses a target whose shape would
    broadcast against the batch (a ``(B,)`` target for ``(B, 1)`` values), as the
    stochastic output layers' distributions do.

    Example:
        >>> d = MarginalNormal(torch.zeros(2, 1), torch.tensor([[4.0], [0.0]]))
        >>> d.variance.flatten().tolist(), d.stddev.flatten().tolist()
        ([4.0, 0.0], [2.0, 0.0])
    """

    def __init__(self, loc: Tensor, variance: Tensor) -> None:
        super().__init__(loc, variance.sqrt(), validate_args=False)
        self._variance = variance

    @property
    def variance(self) -> Tensor:
        return self._variance

    def log_prob(self, value: Tensor) -> Tensor:
        check_target_shape(self, value)
        return super().log_prob(value)

    def expand(self, batch_shape: Sequence[int], _instance: object = None) -> MarginalNormal:
        shape = torch.Size(batch_shape)
        return MarginalNormal(self.loc.expand(shape), self._variance.expand(shape))


class FrozenFunction:
    """The record behind a frozen GP function sample: the inputs it was evaluated at
    and the standard normal noise of its values there.

    A frozen function is one draw ``f = loc + L noise`` over every recorded input at
    once (``L`` the Cholesky factor of the joint covariance), so a row seen before
    (bitwise equal) gets the same value and new rows get that same function's values:
    their noise is appended, and the leading block of ``L`` (the earlier rows) does
    not change.

    Shape: inputs ``(*, R, D)``, noise ``(*, R, units)`` for ``R`` recorded rows; a
    call with other batch dimensions ``*``, ``D``, units, dtype or device starts over.
    """

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        """Forget the function (the next call draws a new one)."""
        self.inputs: Tensor | None = None
        self.noise: Tensor | None = None

    def _compatible(self, x: Tensor, units: int) -> bool:
        xs, noise = self.inputs, self.noise
        return (
            xs is not None
            and noise is not None
            and xs.shape[:-2] == x.shape[:-2]
            and xs.shape[-1] == x.shape[-1]
            and noise.shape[-1] == units
            and xs.dtype == x.dtype
            and xs.device == x.device
        )

    def locate(
        self, x: Tensor, units: int, noise: Callable[[torch.Size], Tensor] | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Every recorded input with ``x``'s rows in it (``x``'s own rows, so gradients
        reach ``x``), the noise of all of them, and the index of each row of ``x``.
        ``noise(shape)`` makes the standard normal noise of new rows (a layer passes its
        :meth:`~bayesian_layers.layers.base.BayesianLayer.noise`); default ``torch.randn``.

        Shape: ``x`` ``(*, B, D)`` -> ``(*, R, D)``, ``(*, R, units)``, ``(B,)``.
        """
        if not self._compatible(x, units):
            self.clear()
        b, x_d = x.shape[-2], x.detach()
        index = torch.full((b,), -1, dtype=torch.long, device=x.device)
        if self.inputs is not None and b > 0 and self.inputs.shape[-2] > 0:
            same = (x_d[..., :, None, :] == self.inputs[..., None, :, :]).all(-1)  # (*, B, R)
            same = same.reshape(-1, b, same.shape[-1]).all(0)  # (B, R): equal in every batch
            found = same.any(-1)
            index = torch.where(found, same.to(torch.int8).argmax(-1), index)
        new = (index < 0).nonzero().squeeze(-1)  # rows of x not seen before
        if self.inputs is None or self.noise is None or new.numel() > 0:
            start = 0 if self.inputs is None else self.inputs.shape[-2]
            rows = x_d.index_select(-2, new)  # (*, b_new, D)
            shape = rows.shape[:-1] + (units,)
            if noise is None:
                eps = torch.randn(shape, dtype=x.dtype, device=x.device)
            else:
                eps = noise(shape)
            self.inputs = rows if self.inputs is None else torch.cat([self.inputs, rows], -2)
            self.noise = eps if self.noise is None else torch.cat([self.noise, eps], -2)
            index[new] = torch.arange(start, start + new.numel(), device=x.device)
        xs = self.inputs.index_copy(-2, index, x)  # x's own rows, for their gradients
        return xs, self.noise, index
