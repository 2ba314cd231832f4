r"""The SNGP output layer: a Laplace random-feature GP over logits (Liu et al., 2020, §3.1).

:class:`SNGPHead` replaces a classifier's last ``nn.Linear``: its logits are
``g(h) = W φ(h) + b`` on ``M`` random Fourier features of the hidden representation
``h`` (an exponentiated-quadratic kernel with a fixed length scale), ``W`` trained as a
MAP point estimate, and a Laplace posterior over ``W`` whose precision
``P = I/s² + Σ_n φ(h_n) φ(h_n)ᵀ`` is summed over the training data
(:class:`~bayesian_layers.layers.RandomFourierFeatures` with ``posterior="laplace"``).
Each logit's predictive variance is ``φ(h)ᵀ P⁻¹ φ(h)``, small near the training data
and growing towards the prior's ``1`` away from it. :func:`mean_field_logits` turns
logits and variance into the mean-field prediction.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Normal

from ..._checks import check_count, check_name, check_real
from ...random_variables.variable import RandomVariable
from ..base import as_tensor
from ._util import check_input_dtype, function_output
from .random_features import RandomFourierFeatures

__all__ = ["SNGPHead", "mean_field_logits", "MEAN_FIELD_FACTOR"]

#: λ of the probit approximation ``E[sigmoid(z)] ≈ sigmoid(m / sqrt(1 + λ v))``.
MEAN_FIELD_FACTOR = math.pi / 8


def mean_field_logits(
    logits: Tensor | RandomVariable,
    variance: Tensor | None = None,
    *,
    mean_field_factor: float = MEAN_FIELD_FACTOR,
) -> Tensor:
    r"""The mean-field logits ``logits / sqrt(1 + λ · variance)`` (Liu et al. 2020, eq. 13).

    For a binary logit ``z ~ N(m, v)``, ``sigmoid(m / sqrt(1 + π v / 8))`` is the probit
    approximation of ``E[sigmoid(z)]`` (MacKay, 1992); applied to every logit before a
    softmax it is SNGP's cheap stand-in for Monte Carlo averaging over the logits.
    ``λ = 0`` gives the logits back; SNGP's image benchmarks tune ``λ`` on validation data.

    Args:
        logits: ``(*, C)`` logits, or the random variable an :class:`SNGPHead` returns
            (its value and its distribution's variance are used).
        variance: ``(*, C)`` or ``(*, 1)`` (anything that broadcasts to the logits),
            ``>= 0``; ``None`` only for a random-variable ``logits``.
        mean_field_factor: ``λ >= 0`` (default ``π/8``).

    Returns:
        ``(*, C)`` adjusted logits.

    Example:
        >>> import torch
        >>> mean_field_logits(torch.tensor([[2.0, -1.0]]), torch.tensor([[8 / torch.pi]]))
        tensor([[ 1.4142, -0.7071]])
    """
    owner = "mean_field_logits"
    factor = check_real(owner, "mean_field_factor", mean_field_factor)
    if isinstance(logits, RandomVariable):
        if variance is None:
            variance = logits.distribution.variance
        logits = logits.value
    if not isinstance(logits, Tensor) or not logits.is_floating_point():
        raise TypeError(f"{owner} expected floating `logits`, got {type(logits).__name__}")
    if variance is None:
        raise ValueError(f"{owner} needs a `variance` for tensor logits (or the random "
                         "variable an SNGPHead returns)")  # fmt: skip
    variance = as_tensor(variance, owner)
    try:  # to the logits' shape: a (B, 1, 1) variance must not make (B, B, C) logits
        fits = torch.broadcast_shapes(variance.shape, logits.shape) == logits.shape
    except RuntimeError:
        fits = False
    if not fits:
        shapes = f"{tuple(logits.shape)}, got {tuple(variance.shape)}"
        raise ValueError(f"{owner} expected a `variance` that broadcasts to the logits' {shapes}")
    if not bool((variance >= 0).all()):  # NaN fails too
        raise ValueError(f"{owner} expected a finite `variance` >= 0, got values outside")
    return logits / torch.sqrt(1.0 + factor * variance)


class _DeferredNormal(Normal):
    """``Normal(loc, scale)`` whose scale is computed on first use (a training step's
    predictive variance, which costs a Cholesky factor and is rarely read)."""

    def __init__(self, loc: Tensor, compute_scale: Callable[[], Tensor]) -> None:
        self.loc = loc
        self._compute_scale: Callable[[], Tensor] | None = compute_scale
        self._scale: Tensor | None = None
        torch.distributions.Distribution.__init__(self, loc.shape, validate_args=False)

    @property
    def scale(self) -> Tensor:  # type: ignore[override]
        if self._scale is None:
            assert self._compute_scale is not None
            self._scale, self._compute_scale = self._compute_scale(), None
        return self._scale

    def expand(self, batch_shape: Any, _instance: Any = None) -> Normal:
        shape = torch.Size(batch_shape)
        return Normal(self.loc.expand(shape), self.scale.expand(shape), validate_args=False)


class SNGPHead(nn.Module):
    r"""SNGP's Gaussian-process output layer: logits and their Laplace predictive variance.

    ``h ↦ g(h) = W φ(h) + b`` with ``φ(h) = √(2/M) cos(ω h / ℓ + b_φ)``, ``ω ~ N(0, I)``
    and ``b_φ ~ U(0, 2π)`` drawn once (an exponentiated-quadratic kernel with the fixed
    length scale ``ℓ``, not trained, as in SNGP), ``W`` (``(C, M)``) a trained point
    estimate, and the Laplace precision ``P = I/s² + Σ_n φ_n φ_nᵀ`` (``(M, M)``) that every
    training step adds its batch to (the Gaussian-likelihood form Edward2 uses by default;
    :meth:`update_precision` takes per-example weights for another likelihood). The
    output is a random variable whose value is the MAP logits and whose distribution is
    ``N(g(h), φᵀ P⁻¹ φ)`` per logit (one variance per example, shared by the classes).
    Predict with :func:`mean_field_logits` (``head.mean_field_logits(out)`` uses the
    head's ``λ``) or by sampling the distribution.

    Training: call :meth:`reset_precision` at the start of every epoch, so that ``P``
    sums one pass over the data under the final weights (Liu et al., Algorithm 1). A
    training step is a call in training mode with gradients enabled (see
    :meth:`RandomFourierFeatures.is_training_step
    <bayesian_layers.layers.RandomFourierFeatures.is_training_step>`); its variance is
    computed only when read (it needs a Cholesky factor of ``P``, ``O(M³)``), so a
    training loop that reads only the logits pays ``O(B·D·M + B·M²)`` per step.
    ``bl.losses`` holds the prior penalty ``½‖W‖²/s²`` (MAP; divide by the number of
    training examples, as for every loss term).

    Args:
        in_features: ``D``, the size of the hidden representation.
        num_classes: ``C``, the number of logits.
        num_features: ``M``, random features (SNGP: 1024).
        length_scale: ``ℓ > 0`` of the kernel (fixed).
        prior_scale: ``s > 0``, the prior standard deviation of ``W`` (``1/s²`` is
            Edward2's ridge penalty).
        normalize_input: apply ``nn.LayerNorm(D)`` to ``h`` first (Edward2's
            ``gp_input_normalization``).
        bias: a trained output bias.
        mean_field_factor: ``λ >= 0`` used by :meth:`mean_field_logits` (``π/8``).
        name: name of the returned random variable (for the tracers).
        device, dtype: factory arguments.

    Attributes:
        gp: the :class:`~bayesian_layers.layers.RandomFourierFeatures` layer (Laplace).
        input_norm: the ``nn.LayerNorm`` or ``None``.

    Shape:
        - Input: ``(*, D)``.
        - Output: :class:`~bayesian_layers.RandomVariable` ``(*, C)`` with a ``Normal``
          distribution of batch shape ``(*, C)``.

    Example:
        >>> import torch
        >>> head = SNGPHead(16, 3, num_features=64)
        >>> out = head(torch.randn(5, 16))  # a training step: P gains 5 rows
        >>> head.eval()  # doctest: +ELLIPSIS
        SNGPHead(...)
        >>> out = head(torch.randn(5, 16))
        >>> out.shape, out.distribution.variance.shape, head.mean_field_logits(out).shape
        (torch.Size([5, 3]), torch.Size([5, 3]), torch.Size([5, 3]))
    """

    #: its forward draws nothing (the output is a distribution over function values,
    #: the same at every call): :func:`bayesian_layers.predict` runs it once, not K times
    stochastic_forward: ClassVar[bool] = False

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        *,
        num_features: int = 1024,
        length_scale: float = 1.0,
        prior_scale: float = 1.0,
        normalize_input: bool = False,
        bias: bool = True,
        mean_field_factor: float = MEAN_FIELD_FACTOR,
        name: str | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        self.in_features = check_count(owner, "in_features", in_features)
        self.num_classes = check_count(owner, "num_classes", num_classes)
        num_features = check_count(owner, "num_features", num_features)
        length_scale = check_real(owner, "length_scale", length_scale, strict=True)
        prior_scale = check_real(owner, "prior_scale", prior_scale, strict=True)
        self.mean_field_factor = check_real(owner, "mean_field_factor", mean_field_factor)
        for flag, value in (("normalize_input", normalize_input), ("bias", bias)):
            if not isinstance(value, bool):
                raise TypeError(f"{owner} expected `{flag}` to be a bool, got {value!r}")
        check_name(owner, name)
        factory: dict[str, Any] = {"device": device, "dtype": dtype}
        self.input_norm = nn.LayerNorm(in_features, **factory) if normalize_input else None
        self.gp = RandomFourierFeatures(
            num_classes, num_features, in_features=in_features, length_scale=length_scale,
            posterior="laplace", prior_scale=prior_scale, bias=bias, name=name, **factory,
        )  # fmt: skip
        self.gp.kernel.requires_grad_(False)  # a fixed kernel, as in SNGP

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, num_classes={self.num_classes}, "
                f"mean_field_factor={self.mean_field_factor:.4g}")  # fmt: skip

    @property
    def precision(self) -> Tensor:
        """The Laplace precision ``P`` (``(M, M)`` buffer of :attr:`gp`)."""
        return self.gp.precision

    def reset_precision(self) -> None:
        """``P ← I/s²``: call at the start of every training epoch."""
        self.gp.reset_precision()

    def update_precision(self, features: Tensor, weights: Tensor | None = None) -> None:
        """``P += Σ_n w_n φ_n φ_nᵀ`` (see :meth:`RandomFourierFeatures.update_precision
        <bayesian_layers.layers.RandomFourierFeatures.update_precision>`); ``features``
        from :meth:`features`."""
        self.gp.update_precision(features, weights)

    def features(self, x: Tensor | RandomVariable) -> Tensor:
        """``φ(h)``: ``(*, D) -> (*, M)`` (after the layer norm, if any)."""
        owner = type(self).__name__
        x = as_tensor(x, owner)
        check_input_dtype(owner, x, self.gp.phases.dtype)
        if x.dim() == 0 or x.shape[-1] != self.in_features:
            raise ValueError(f"{owner} expected input of shape (*, {self.in_features}), got "
                             f"{tuple(x.shape)}")  # fmt: skip
        if self.input_norm is not None:
            x = self.input_norm(x)
        return self.gp.features(x)

    def mean_field_logits(self, out: RandomVariable) -> Tensor:
        """:func:`mean_field_logits` of this head's output with the head's ``λ``."""
        return mean_field_logits(out, mean_field_factor=self.mean_field_factor)

    def forward(self, x: Tensor | RandomVariable) -> RandomVariable:
        gp = self.gp
        phi = self.features(x)  # (*, M)
        if gp.is_training_step():
            try:  # checks first: NaN features raise, P unchanged
                gp.update_precision(phi)
            except ValueError as error:
                raise ValueError(f"{type(self).__name__}: {error}") from None
            mean = F.linear(phi, gp.point("weight"), gp.bias)  # (*, C)
            dist: Normal = _DeferredNormal(mean, lambda: self._stddev(phi, mean))
        else:
            mean = F.linear(phi, gp.point("weight"), gp.bias)  # (*, C)
            dist = Normal(mean, self._stddev(phi, mean), validate_args=False)
        return function_output(dist, mean, gp.name)

    def _stddev(self, phi: Tensor, mean: Tensor) -> Tensor:
        """``sqrt(φᵀ P⁻¹ φ)`` per row, expanded over the classes: ``(*, C)``."""
        chol = self.gp.posterior_covariance_tril()  # (M, M)
        flat = phi.reshape(-1, phi.shape[-1]).to(chol)  # (N, M)
        a = torch.linalg.solve_triangular(chol, flat.mT, upper=False)  # (M, N)
        var = a.square().sum(0).clamp_min(torch.finfo(a.dtype).tiny)  # (N,)
        return var.sqrt().to(mean).reshape(*phi.shape[:-1], 1).expand_as(mean)
