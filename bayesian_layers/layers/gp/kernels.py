r"""Covariance functions for the Gaussian-process layers.

Conventions follow scikit-learn and TensorFlow Probability: ``amplitude`` is a
standard deviation (the kernel scales by ``amplitude²``), ``length_scale`` divides
the inputs (one per input dimension for ARD), ``variance`` multiplies directly.
All positive hyperparameters are trainable, stored as ``<name>_rho`` with
``<name> = softplus(<name>_rho)``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .kernel_base import (
    Kernel,
    ProductKernel,
    SumKernel,
    distance,
    exponentiated_quadratic,
    squared_distance,
)

__all__ = [
    "Kernel",
    "SumKernel",
    "ProductKernel",
    "StationaryKernel",
    "ExponentiatedQuadratic",
    "Matern12",
    "Matern32",
    "Matern52",
    "RationalQuadratic",
    "Periodic",
    "LinearKernel",
    "WhiteNoise",
    "ConstantKernel",
]


def _constant_diag(value: Tensor, x: Tensor) -> Tensor:
    """``(*, N)`` diagonal of a kernel whose every ``k(x_i, x_i)`` is the scalar ``value``."""
    return value.expand(x.shape[:-1]).to(torch.result_type(x, value))


class StationaryKernel(Kernel):
    r"""``k(x, x') = amplitude² · f(r)`` with ``r = ‖(x - x')/length_scale‖``.

    Base of :class:`ExponentiatedQuadratic`, the Matérn kernels and
    :class:`RationalQuadratic`; the random-feature layers read ``amplitude`` and
    ``length_scale`` from it for spectral sampling.

    Args:
        amplitude: positive scalar; the marginal standard deviation of ``f(x)``.
        length_scale: positive scalar, or a 1-d tensor with one entry per input
            dimension (automatic relevance determination).
        device, dtype: where and in which dtype to create the parameters.
    """

    def __init__(
        self,
        amplitude: float | Tensor = 1.0,
        length_scale: float | Tensor = 1.0,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self._add_positive("amplitude", amplitude, scalar=True, device=device, dtype=dtype)
        self._add_positive("length_scale", length_scale, device=device, dtype=dtype)

    @property
    def amplitude(self) -> Tensor:
        """Positive scalar tensor: the marginal standard deviation."""
        return self._positive("amplitude")

    @property
    def length_scale(self) -> Tensor:
        """Positive tensor, ``()`` or ``(D,)``."""
        return self._positive("length_scale")

    def _check_dim(self, x: Tensor) -> None:
        rho: Tensor = self.length_scale_rho  # type: ignore[assignment]
        if rho.dim() == 1 and rho.shape[0] != x.shape[-1]:
            raise ValueError(
                f"{type(self).__name__} has {rho.shape[0]} length scales (ARD) but got inputs "
                f"with D = {x.shape[-1]} (shape {tuple(x.shape)})"
            )

    def _checked_length_scale(self, x: Tensor) -> Tensor:
        self._check_dim(x)
        return self.length_scale

    def _scaled(self, x: Tensor) -> Tensor:
        return x / self._checked_length_scale(x)

    def _diag(self, x: Tensor) -> Tensor:
        self._check_dim(x)
        return _constant_diag(self.amplitude.pow(2), x)

    def extra_repr(self) -> str:
        return f"amplitude={self.amplitude.tolist()}, length_scale={self.length_scale.tolist()}"


class ExponentiatedQuadratic(StationaryKernel):
    r"""Squared-exponential (RBF) kernel ``amplitude² · exp(-r² / 2)``.

    ``r = ‖(x - x')/length_scale‖``; scikit-learn's ``C(amplitude²) * RBF(length_scale)``.
    Cost O(N M D) time via one matrix product; forward and backward are fused
    (:func:`~bayesian_layers.layers.gp.kernel_base.exponentiated_quadratic`; first-order
    gradients only).

    Example:
        >>> k = ExponentiatedQuadratic(amplitude=2.0, length_scale=torch.tensor([1.0, 3.0]))
        >>> x = torch.randn(4, 2)
        >>> k(x).shape, torch.allclose(k(x).diagonal(), torch.full((4,), 4.0))
        (torch.Size([4, 4]), True)
    """

    def _matrix(self, x1: Tensor, x2: Tensor) -> Tensor:
        ls = self._checked_length_scale(x1)
        return exponentiated_quadratic(x1, x2, self.amplitude, ls)


class Matern12(StationaryKernel):
    r"""Matérn-1/2 (exponential) kernel ``amplitude² · exp(-r)``.

    ``r = ‖(x - x')/length_scale‖``; scikit-learn's ``Matern(nu=0.5)``. Distances
    are computed directly (exact zeros; zero gradient at ``r = 0``).

    Example:
        >>> Matern12(length_scale=2.0)(torch.zeros(1, 1), torch.ones(1, 1) * 2).item()
        0.36787...
    """

    def _matrix(self, x1: Tensor, x2: Tensor) -> Tensor:
        r = distance(self._scaled(x1), self._scaled(x2))
        return self.amplitude.pow(2) * torch.exp(-r)


class Matern32(StationaryKernel):
    r"""Matérn-3/2 kernel ``amplitude² · (1 + √3 r) · exp(-√3 r)``; ``Matern(nu=1.5)``.

    Example:
        >>> k = Matern32(amplitude=1.5, length_scale=0.5)
        >>> k(torch.randn(3, 2), torch.randn(4, 2)).shape
        torch.Size([3, 4])
    """

    def _matrix(self, x1: Tensor, x2: Tensor) -> Tensor:
        r = math.sqrt(3.0) * distance(self._scaled(x1), self._scaled(x2))
        return self.amplitude.pow(2) * (1.0 + r) * torch.exp(-r)


class Matern52(StationaryKernel):
    r"""Matérn-5/2 kernel ``amplitude² · (1 + √5 r + 5r²/3) · exp(-√5 r)``; ``Matern(nu=2.5)``.

    Example:
        >>> k = Matern52(length_scale=torch.ones(3))
        >>> k(torch.randn(2, 5, 3)).shape  # batched
        torch.Size([2, 5, 5])
    """

    def _matrix(self, x1: Tensor, x2: Tensor) -> Tensor:
        r = math.sqrt(5.0) * distance(self._scaled(x1), self._scaled(x2))
        return self.amplitude.pow(2) * (1.0 + r + r.pow(2) / 3.0) * torch.exp(-r)


class RationalQuadratic(StationaryKernel):
    r"""Rational quadratic kernel ``amplitude² · (1 + r² / (2 alpha))^(-alpha)``.

    A scale mixture of exponentiated quadratics (``alpha → ∞`` recovers it);
    scikit-learn's ``C(amplitude²) * RationalQuadratic(length_scale, alpha)``.

    Args:
        amplitude, length_scale: as :class:`StationaryKernel`.
        alpha: positive scalar, the scale-mixture shape.

    Example:
        >>> k = RationalQuadratic(amplitude=1.0, length_scale=1.0, alpha=2.0)
        >>> round(k(torch.zeros(1, 1), torch.ones(1, 1)).item(), 4)  # (1 + 1/4)^-2
        0.64
    """

    def __init__(
        self,
        amplitude: float | Tensor = 1.0,
        length_scale: float | Tensor = 1.0,
        alpha: float | Tensor = 1.0,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(amplitude, length_scale, device=device, dtype=dtype)
        self._add_positive("alpha", alpha, scalar=True, device=device, dtype=dtype)

    @property
    def alpha(self) -> Tensor:
        """Positive scalar tensor."""
        return self._positive("alpha")

    def _matrix(self, x1: Tensor, x2: Tensor) -> Tensor:
        sq = squared_distance(self._scaled(x1), self._scaled(x2))
        alpha = self.alpha
        return self.amplitude.pow(2) * torch.pow(1.0 + sq / (2.0 * alpha), -alpha)


class Periodic(Kernel):
    r"""Exp-sine-squared kernel ``amplitude² · exp(-2 sin²(π ‖x - x'‖ / period) / length_scale²)``.

    scikit-learn's ``C(amplitude²) * ExpSineSquared(length_scale, periodicity=period)``;
    the distance is between unscaled inputs. Positive semi-definite for 1-d inputs
    (as scikit-learn's); with several input dimensions it can be indefinite.

    Args:
        amplitude: positive scalar, the marginal standard deviation.
        length_scale: positive scalar, smoothness within one period.
        period: positive scalar, in input units.
        device, dtype: where and in which dtype to create the parameters.

    Example:
        >>> k = Periodic(period=1.0)
        >>> x = torch.tensor([[0.0], [1.0], [0.5]])
        >>> k(x)[0].tolist()[:2]  # a whole period apart: full correlation
        [1.0, 1.0]
    """

    def __init__(
        self,
        amplitude: float | Tensor = 1.0,
        length_scale: float | Tensor = 1.0,
        period: float | Tensor = 1.0,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        values = {"amplitude": amplitude, "length_scale": length_scale, "period": period}
        for name, value in values.items():
            self._add_positive(name, value, scalar=True, device=device, dtype=dtype)

    @property
    def amplitude(self) -> Tensor:
        """Positive scalar tensor."""
        return self._positive("amplitude")

    @property
    def length_scale(self) -> Tensor:
        """Positive scalar tensor."""
        return self._positive("length_scale")

    @property
    def period(self) -> Tensor:
        """Positive scalar tensor."""
        return self._positive("period")

    def _matrix(self, x1: Tensor, x2: Tensor) -> Tensor:
        s = torch.sin(math.pi * distance(x1, x2) / self.period)
        return self.amplitude.pow(2) * torch.exp(-2.0 * s.pow(2) / self.length_scale.pow(2))

    def _diag(self, x: Tensor) -> Tensor:
        return _constant_diag(self.amplitude.pow(2), x)


class LinearKernel(Kernel):
    r"""Linear (dot-product) kernel ``variance · (x - shift) · (x' - shift)``.

    A Bayesian linear function through ``shift``; add a :class:`ConstantKernel` for
    an offset (scikit-learn's ``DotProduct(sigma_0)`` is
    ``LinearKernel(1.0) + ConstantKernel(sigma_0²)``).

    Args:
        variance: positive scalar, the prior variance of the slope.
        shift: real scalar or ``(D,)`` tensor (trainable, unconstrained).
        device, dtype: where and in which dtype to create the parameters.

    Example:
        >>> k = LinearKernel(variance=2.0, shift=1.0)
        >>> k(torch.tensor([[3.0]]), torch.tensor([[2.0]])).item()  # 2 * 2 * 1
        4.0
    """

    def __init__(
        self,
        variance: float | Tensor = 1.0,
        shift: float | Tensor = 0.0,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self._add_positive("variance", variance, scalar=True, device=device, dtype=dtype)
        shift_t = torch.as_tensor(shift, device=device, dtype=dtype or torch.get_default_dtype())
        if shift_t.dim() > 1:
            raise ValueError(
                f"LinearKernel expected shift scalar or 1-d, got {tuple(shift_t.shape)}"
            )
        self.shift = nn.Parameter(shift_t.clone())

    @property
    def variance(self) -> Tensor:
        """Positive scalar tensor."""
        return self._positive("variance")

    def _shifted(self, x: Tensor) -> Tensor:
        if self.shift.dim() == 1 and self.shift.shape[0] != x.shape[-1]:
            raise ValueError(
                f"LinearKernel has {self.shift.shape[0]} shifts but got inputs with "
                f"D = {x.shape[-1]} (shape {tuple(x.shape)})"
            )
        return x - self.shift

    def _matrix(self, x1: Tensor, x2: Tensor) -> Tensor:
        return self.variance * (self._shifted(x1) @ self._shifted(x2).mT)

    def _diag(self, x: Tensor) -> Tensor:
        return self.variance * self._shifted(x).pow(2).sum(-1)


class WhiteNoise(Kernel):
    r"""Independent noise ``variance · [x = x']``.

    Equality is decided by ``match``: ``"object"`` (default; as scikit-learn's
    ``WhiteKernel`` and GPflow's ``White``) adds ``variance · I`` only to
    ``k(x)`` / ``k(x, x)`` called with the *same tensor object* and gives zeros
    between different tensors, so it models per-observation noise even when two
    inputs coincide; ``"value"`` compares rows exactly (bitwise equal values),
    the literal ``[x = x']``. :class:`GaussianProcess` relies on the first: it calls
    ``k(X, X)`` with one tensor for the covariance of a set with itself (white noise
    added) and two distinct tensors for a cross-covariance (none), so which tensor
    object a user passes never changes the model.

    Args:
        variance: positive scalar noise variance.
        match: ``"object"`` or ``"value"``.
        device, dtype: where and in which dtype to create the parameters.

    Example:
        >>> k = WhiteNoise(0.5)
        >>> x = torch.zeros(2, 1)
        >>> k(x).tolist(), k(x, x.clone()).tolist()
        ([[0.5, 0.0], [0.0, 0.5]], [[0.0, 0.0], [0.0, 0.0]])
    """

    def __init__(
        self,
        variance: float | Tensor = 1.0,
        *,
        match: str = "object",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if match not in ("object", "value"):
            raise ValueError(f"WhiteNoise expected match 'object' or 'value', got {match!r}")
        self.match = match
        self._add_positive("variance", variance, scalar=True, device=device, dtype=dtype)

    @property
    def variance(self) -> Tensor:
        """Positive scalar tensor."""
        return self._positive("variance")

    def _matrix(self, x1: Tensor, x2: Tensor) -> Tensor:
        var = self.variance
        dtype = torch.result_type(x1, var)
        batch = torch.broadcast_shapes(x1.shape[:-2], x2.shape[:-2])
        n, m = x1.shape[-2], x2.shape[-2]
        if x1 is x2:
            eye = torch.eye(n, dtype=dtype, device=x1.device)
            return (var * eye).expand(*batch, n, m)
        if self.match == "value":
            same = (x1[..., :, None, :] == x2[..., None, :, :]).all(-1)  # (*, N, M)
            return (var * same.to(dtype)).expand(*batch, n, m)
        return (var * torch.zeros((), dtype=dtype, device=x1.device)).expand(*batch, n, m)

    def _diag(self, x: Tensor) -> Tensor:
        return _constant_diag(self.variance, x)

    def extra_repr(self) -> str:
        return f"variance={self.variance.item():.4g}, match={self.match!r}"


class ConstantKernel(Kernel):
    r"""Constant kernel ``k(x, x') = variance`` (a random offset); ``c * k`` builds one.

    Args:
        variance: positive scalar; scikit-learn's ``ConstantKernel(constant_value)``.
        device, dtype: where and in which dtype to create the parameters.

    Example:
        >>> (ConstantKernel(2.0) * Matern12())(torch.zeros(1, 1)).item()
        2.0
    """

    def __init__(
        self,
        variance: float | Tensor = 1.0,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self._add_positive("variance", variance, scalar=True, device=device, dtype=dtype)

    @property
    def variance(self) -> Tensor:
        """Positive scalar tensor."""
        return self._positive("variance")

    def _matrix(self, x1: Tensor, x2: Tensor) -> Tensor:
        var = self.variance
        batch = torch.broadcast_shapes(x1.shape[:-2], x2.shape[:-2])
        return var.to(torch.result_type(x1, var)).expand(*batch, x1.shape[-2], x2.shape[-2])

    def _diag(self, x: Tensor) -> Tensor:
        return _constant_diag(self.variance, x)
