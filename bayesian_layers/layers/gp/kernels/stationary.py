r"""Stationary covariance functions: ``k(x, x')`` a function of ``x - x'``.

Conventions follow scikit-learn and TensorFlow Probability: ``amplitude`` is a
standard deviation (the kernel scales by ``amplitude²``), ``length_scale`` divides
the inputs (one per input dimension for ARD). All positive hyperparameters are
trainable, stored as ``<name>_rho`` with ``<name> = softplus(<name>_rho)``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ._base import Kernel, constant_diag
from ._distance import distance, exponentiated_quadratic, squared_distance

__all__ = [
    "StationaryKernel",
    "ExponentiatedQuadratic",
    "Matern12",
    "Matern32",
    "Matern52",
    "RationalQuadratic",
    "Periodic",
]


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
        return constant_diag(self.amplitude.pow(2), x)

    def extra_repr(self) -> str:
        return f"amplitude={self.amplitude.tolist()}, length_scale={self.length_scale.tolist()}"


class ExponentiatedQuadratic(StationaryKernel):
    r"""Squared-exponential (RBF) kernel ``amplitude² · exp(-r² / 2)``.

    ``r = ‖(x - x')/length_scale‖``; scikit-learn's ``C(amplitude²) * RBF(length_scale)``.
    Cost O(N M D) time via one matrix product; forward and backward are fused
    (:func:`~bayesian_layers.layers.gp.kernels.exponentiated_quadratic`; first-order
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
        return constant_diag(self.amplitude.pow(2), x)
