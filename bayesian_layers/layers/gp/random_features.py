"""Random Fourier features: a GP layer as a Bayesian linear model on random cosines.

``M`` fixed draws from a stationary kernel's spectral density give features ``φ(x)``
with ``E[φ(x)ᵀ φ(x')] = k(x, x')`` (:mod:`.spectral`); a linear output layer on ``φ``
with weights ``w ~ N(0, I)`` is then a GP with (approximately) that kernel.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.lazy import LazyModuleMixin

from ..._checks import check_count, check_name, check_real
from ...initializers import TrainableInitializer
from ...random_variables.variable import RandomVariable
from ...regularizers import Regularizer
from ..base import BayesianLayer, as_tensor
from ..functional.linear import batched_linear
from ..outputs.distributions import Normal as CheckedNormal
from ._util import check_input_dtype, function_output
from .kernels import StationaryKernel
from .linalg import cholesky_with_jitter, jitter_reporter
from .spectral import (
    SPECTRAL_KERNELS,
    draw_fourier_prior,
    fourier_features,
    has_spectral_sampler,
    sample_spectral_frequencies,
)

# the spectral helpers lived here before :mod:`.spectral`; still importable from here
__all__ = [
    "RandomFourierFeatures",
    "sample_spectral_frequencies",
    "fourier_features",
    "has_spectral_sampler",
    "draw_fourier_prior",
]


class RandomFourierFeatures(LazyModuleMixin, BayesianLayer):
    r"""GP layer by random Fourier features: ``f(x) = W φ(x) + b`` with a posterior over ``W``.

    ``φ(x) = amplitude · √(2/M) · cos(ωᵀ (x/ℓ) + b_φ)``, ``M = num_features``, with
    frequencies ``ω`` (``(D, M)``) from the kernel's spectral density and phases
    ``b_φ ~ U(0, 2π)`` drawn once and kept as buffers. ``amplitude`` and ``ℓ`` are read
    from the kernel at every call (trainable there). Cost ``O(B·D·M + B·M·units)``
    per call (``posterior="laplace"`` adds ``O(M³)`` once per precision update).

    Two posteriors over the output weights ``W`` (``(units, M)``), prior ``N(0, I)``:

    * ``posterior="variational"`` (default; the paper's): mean-field normal ``q(W)``
      as in :class:`~bayesian_layers.layers.LinearReparameterization`, one whole draw
      per call (so the value is one coherent function sample), its KL in ``losses``.
      The returned distribution is the exact marginal ``N(Wμ φ + b, (σ_W²) φ²)``
      per point.
    * ``posterior="laplace"`` (SNGP, Liu et al. 2020): deterministic ``W`` trained
      normally (``losses`` holds the prior's ``½‖W‖²/prior_scale²``, i.e. MAP), and a
      precision matrix ``P = I/prior_scale² + Σ_n φ(x_n) φ(x_n)ᵀ`` (``(M, M)``, a
      buffer) that every training step adds its batch to: a call in training mode with
      gradients enabled, sampling and one function sample per call (see
      :meth:`is_training_step`; evaluation, ``torch.no_grad()``, ``bl.posterior_mean``,
      ``bl.vectorized_samples`` and ``bl.predict`` leave it alone). Call
      :meth:`reset_precision` at the start of each epoch, so that ``P`` comes from one
      pass over the data with the final weights (or at the start of one extra
      deterministic pass after training); :meth:`update_precision` adds features
      with per-example weights (e.g. ``p(1-p)`` for a logistic likelihood) after
      setting the attribute ``layer.accumulate_precision = False``. The value is the MAP
      output; the distribution is ``N(W φ + b, φᵀ P⁻¹ φ)`` per point (Gaussian
      likelihood with unit noise, standardised targets).

    The output is marked as a distribution over function values, so :func:`bl.predict
    <bayesian_layers.predict>` reports its variance as epistemic; with ``name=`` it
    reaches the tracers (``bl.tape``, ``bl.condition``) like ``bl.Normal(..., name=)``.

    Args:
        units: number of outputs.
        num_features: number of random features ``M``.
        in_features: input size ``D``; ``None`` reads it on the first call (a lazy
            buffer, as in ``nn.LazyBatchNorm1d``: deep-copy it after that call).
        kernel: ``"exponentiated_quadratic"`` (default), ``"matern12"``,
            ``"matern32"``, ``"matern52"``, ``"rational_quadratic"``, or an instance
            of those kernel classes (its hyperparameters are used and trained; a
            rational quadratic's ``alpha`` is read once, when frequencies are drawn).
        amplitude, length_scale: hyperparameters of a kernel given by name
            (``length_scale`` a scalar or ``(D,)``); default 1.
        posterior: ``"variational"`` or ``"laplace"`` (the attribute ``posterior_kind``;
            ``layer.posterior(name)`` is the posterior of a parameter, as on every layer).
        bias: whether to add a deterministic bias.
        weight_initializer, weight_regularizer: the variational posterior and its
            penalty (see :class:`~bayesian_layers.layers.LinearReparameterization`).
        prior_scale: prior standard deviation of ``W`` for ``"laplace"`` (finite, > 0).
        name: name of the returned random variable (for the tracers).
        device, dtype: factory arguments; inputs must have the layer's dtype (or
            autocast's, under autocast): other dtypes raise ``TypeError``.

    Shape:
        - Input: ``(*, D)`` tensor or random variable (its value is used; ``*`` may
          hold zero rows).
        - Output: :class:`~bayesian_layers.RandomVariable` ``(*, units)`` with a
          ``Normal`` distribution of batch shape ``(*, units)``.

    Example:
        >>> import torch
        >>> from bayesian_layers import layers
        >>> layer = layers.RandomFourierFeatures(2, num_features=64, kernel="matern32")
        >>> out = layer(torch.randn(5, 3))
        >>> out.shape, out.distribution.stddev.shape, len(layer.losses)
        (torch.Size([5, 2]), torch.Size([5, 2]), 1)
    """

    cls_to_become = None

    def __init__(
        self,
        units: int,
        num_features: int,
        *,
        in_features: int | None = None,
        kernel: str | StationaryKernel = "exponentiated_quadratic",
        amplitude: float | Tensor | None = None,
        length_scale: float | Tensor | None = None,
        posterior: str = "variational",
        bias: bool = True,
        weight_initializer: str | TrainableInitializer = "trainable_normal",
        weight_regularizer: str | Regularizer | None = "normal_kl_divergence",
        prior_scale: float = 1.0,
        name: str | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        units = check_count(owner, "units", units)  # python ints (numpy sizes come in)
        num_features = check_count(owner, "num_features", num_features)
        if in_features is not None:
            in_features = check_count(owner, "in_features", in_features)
        if posterior not in ("variational", "laplace"):
            raise ValueError(f"{owner} expected `posterior` 'variational' or 'laplace', "
                             f"got {posterior!r}")  # fmt: skip
        prior_scale = check_real(owner, "prior_scale", prior_scale, strict=True)
        if not isinstance(bias, bool):
            raise TypeError(f"{owner} expected `bias` to be a bool, got {bias!r}")
        self.name = check_name(owner, name)
        factory: dict[str, Any] = {"device": device, "dtype": dtype}
        if isinstance(kernel, str):
            if kernel not in SPECTRAL_KERNELS:
                raise ValueError(f"{owner} expected `kernel` in {sorted(SPECTRAL_KERNELS)} or a "
                                 f"kernel instance, got {kernel!r}")  # fmt: skip
            kernel = SPECTRAL_KERNELS[kernel](
                1.0 if amplitude is None else amplitude,
                1.0 if length_scale is None else length_scale,
                **factory,
            )
        elif isinstance(kernel, StationaryKernel):
            if type(kernel) not in SPECTRAL_KERNELS.values():
                sample_spectral_frequencies(kernel, 1, 1)  # raises the TypeError
            if amplitude is not None or length_scale is not None:
                raise ValueError(f"{owner}: give `amplitude`/`length_scale` to the kernel "
                                 "instance, not to the layer")  # fmt: skip
        else:
            raise TypeError(f"{owner} expected `kernel` to be a name or a StationaryKernel, "
                            f"got {type(kernel).__name__}")  # fmt: skip
        ls = kernel.length_scale
        if ls.dim() == 1:
            if in_features is not None and ls.shape[0] != in_features:
                raise ValueError(f"{owner} got {ls.shape[0]} length scales for in_features="
                                 f"{in_features}")  # fmt: skip
            in_features = ls.shape[0]
        self.kernel = kernel
        self.units, self.num_features, self.in_features = units, num_features, in_features
        self.posterior_kind = posterior  # `posterior(name)` is the base class's seam
        self.prior_scale = float(prior_scale)
        self.accumulate_precision = True
        self.use_bias = bool(bias)
        laplace = posterior == "laplace"
        self.add_param(
            "weight", (units, num_features),
            "trainable_deterministic" if laplace else weight_initializer,
            None if laplace else weight_regularizer, fan_in=num_features, **factory,
        )  # fmt: skip
        if self.use_bias:
            self.bias = nn.Parameter(torch.zeros(units, **factory))
        else:
            self.register_parameter("bias", None)
        self.frequencies: Tensor
        self.phases: Tensor
        if in_features is None:
            self.register_buffer("frequencies", nn.UninitializedBuffer(**factory))
        else:
            omega = sample_spectral_frequencies(kernel, in_features, num_features, **factory)
            self.register_buffer("frequencies", omega)  # (D, M)
        self.register_buffer("phases", 2 * math.pi * torch.rand(num_features, **factory))
        if laplace:
            self.precision: Tensor
            eye = torch.eye(num_features, **factory) / self.prior_scale**2
            self.register_buffer("precision", eye)
        self._chol_cache: tuple[tuple[Any, ...], Tensor] | None = None
        self._precision_version = 0

    def __setstate__(self, state: dict[str, Any]) -> None:
        if isinstance(state.get("posterior"), str):  # pickled before `posterior_kind`
            state["posterior_kind"] = state.pop("posterior")
        super().__setstate__(state)

    def extra_repr(self) -> str:
        text = (f"units={self.units}, num_features={self.num_features}, "
                f"in_features={self.in_features}, posterior={self.posterior_kind!r}")  # fmt: skip
        return text if self.name is None else f"{text}, name={self.name!r}"

    def initialize_parameters(self, x: object) -> None:  # type: ignore[override]
        """Draw the frequencies once the input size is known (first call)."""
        if isinstance(self.frequencies, nn.UninitializedBuffer):
            x = as_tensor(x, type(self).__name__)
            self.in_features = x.shape[-1]
            self.frequencies.materialize((self.in_features, self.num_features))
            with torch.no_grad():
                self.frequencies.copy_(sample_spectral_frequencies(
                    self.kernel, self.in_features, self.num_features,
                    dtype=self.frequencies.dtype, device=self.frequencies.device))  # fmt: skip

    # ------------------------------------------------------------ features
    def features(self, x: Tensor | RandomVariable) -> Tensor:
        """``φ(x)``: ``(*, D) -> (*, num_features)``."""
        x = as_tensor(x, type(self).__name__)
        check_input_dtype(type(self).__name__, x, self.phases.dtype)
        if self.in_features is None and not isinstance(self.frequencies, nn.UninitializedBuffer):
            self.in_features = self.frequencies.shape[0]  # loaded from a state dict
        if x.dim() == 0 or x.shape[-1] != self.in_features:
            raise ValueError(f"{type(self).__name__} expected a floating input of shape (*, "
                             f"{self.in_features}), got {x.dtype} {tuple(x.shape)}")  # fmt: skip
        kernel = self.kernel
        return fourier_features(
            x, self.frequencies, self.phases, kernel.amplitude, kernel.length_scale
        )  # (*, M)

    # ----------------------------------------------------------- laplace
    def reset_precision(self) -> None:
        """Set the precision back to the prior's ``I / prior_scale²`` (e.g. each epoch)."""
        self._require_laplace("reset_precision")
        with torch.no_grad():
            self.precision.copy_(
                torch.eye(self.num_features).to(self.precision) / self.prior_scale**2
            )
        self._precision_version += 1

    def update_precision(self, features: Tensor, weights: Tensor | None = None) -> None:
        """``P += Σ_n w_n φ_n φ_nᵀ`` for features ``(*, M)`` and optional weights ``(*,)``.

        Raises ``ValueError`` (and leaves ``P`` as it was) unless the features are finite
        and the weights finite and non-negative, so that ``P`` stays positive definite.
        """
        self._require_laplace("update_precision")
        phi = self._checked_features(features)
        w = None if weights is None else self._checked_weights(weights, phi.shape[0])
        with torch.no_grad():
            weighted = phi if w is None else phi * w.unsqueeze(-1)
            self.precision.add_(weighted.mT @ phi)
        self._precision_version += 1

    def _checked_features(self, features: Tensor) -> Tensor:
        where = f"{type(self).__name__}.update_precision"
        if not isinstance(features, Tensor) or features.shape[-1:] != (self.num_features,):
            got = getattr(features, "shape", type(features).__name__)
            raise ValueError(
                f"{where} expected `features` of shape (*, {self.num_features}), got {got}"
            )
        phi = features.detach().reshape(-1, self.num_features).to(self.precision)  # (N, M)
        if not bool(torch.isfinite(phi).all()):
            bad = int((~torch.isfinite(phi)).any(-1).sum())
            raise ValueError(f"{where} expected finite `features` (from finite inputs), got "
                             f"{bad} of {phi.shape[0]} rows with NaN or inf")  # fmt: skip
        return phi

    def _checked_weights(self, weights: Tensor, rows: int) -> Tensor:
        where = f"{type(self).__name__}.update_precision"
        w = torch.as_tensor(weights).detach().reshape(-1).to(self.precision)  # (N,)
        if w.shape[0] != rows:
            raise ValueError(f"{where} expected one weight per feature row ({rows}), got "
                             f"{tuple(torch.as_tensor(weights).shape)}")  # fmt: skip
        if not bool((torch.isfinite(w) & (w >= 0)).all()):
            raise ValueError(f"{where} expected finite non-negative `weights`, got {weights!r}")
        return w

    def _precision_key(self) -> tuple[Any, ...]:
        """What identifies the current ``P``: its updates here and loads into it (both bump
        ``_precision_version``), and its dtype and device (``.to()`` replaces the
        buffer). Python values only, so a compiled graph reads the cached factor."""
        p = self.precision
        return (self._precision_version, p.dtype, p.device)

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._precision_version += 1  # a loaded precision: the cached factor is stale

    def posterior_covariance_tril(self) -> Tensor:
        """Cholesky factor ``(M, M)`` of ``P`` (cached until the precision changes)."""
        self._require_laplace("posterior_covariance_tril")
        cache, key = self._chol_cache, self._precision_key()
        if cache is not None and cache[0] == key:
            return cache[1]
        report = jitter_reporter(
            self, "the Laplace precision", "a smaller prior_scale adds a larger ridge"
        )
        chol = cholesky_with_jitter(self.precision, layer=type(self).__name__, on_jitter=report)
        self._chol_cache = (key, chol)
        return chol

    def _require_laplace(self, what: str) -> None:
        if self.posterior_kind != "laplace":
            raise RuntimeError(f"{type(self).__name__}.{what} needs posterior='laplace'")

    # --------------------------------------------------------------- losses
    def kl_terms(self) -> dict[str, Tensor]:
        """Variational: the weight KL. Laplace: the prior penalty ``½‖W‖²/prior_scale²``."""
        if self.posterior_kind == "laplace":
            return {"weight": 0.5 * self.point("weight").square().sum() / self.prior_scale**2}
        return super().kl_terms()

    # -------------------------------------------------------------- forward
    def forward(self, x: Tensor | RandomVariable) -> RandomVariable:
        phi = self.features(x)  # (*, M)
        if self.posterior_kind == "laplace":
            dist, value = self._laplace_forward(phi)
        else:
            dist, value = self._variational_forward(phi)
        return function_output(dist, value, self.name)

    def _variational_forward(self, phi: Tensor) -> tuple[torch.distributions.Normal, Tensor]:
        loc, scale = self.posterior_loc_scale("weight")
        mean = F.linear(phi, loc, self.bias)
        if scale is None:  # a point estimate
            tiny = torch.zeros_like(mean).add_(torch.finfo(mean.dtype).tiny)
            return CheckedNormal(mean, tiny, validate_args=False), mean
        std = F.linear(phi.square(), scale.square()).clamp_min(torch.finfo(phi.dtype).tiny).sqrt()
        dist = CheckedNormal(mean, std, validate_args=False)
        if self.sampling == "mean":
            return dist, mean
        k = self.check_samples(phi)
        weight = self.sample_param("weight")
        value = F.linear(phi, weight, self.bias) if k == 1 else batched_linear(
            phi, weight, self.bias, k)  # fmt: skip
        return dist, value

    def is_training_step(self) -> bool:
        """Whether a call now adds its features to the Laplace precision: in training mode
        with ``accumulate_precision``, gradients enabled, sampling (not ``"mean"``) and one
        function sample per call. So evaluation, ``torch.no_grad()``, ``bl.posterior_mean``,
        ``bl.vectorized_samples`` and ``bl.predict`` leave the precision alone."""
        return (
            self.training
            and self.accumulate_precision
            and torch.is_grad_enabled()
            and self.sampling != "mean"
            and self.num_function_samples == 1
        )

    def _laplace_forward(self, phi: Tensor) -> tuple[torch.distributions.Normal, Tensor]:
        if self.is_training_step():
            self.update_precision(phi)  # checks first: NaN features raise, P unchanged
        mean = F.linear(phi, self.point("weight"), self.bias)  # (*, units)
        chol = self.posterior_covariance_tril()
        flat = phi.reshape(-1, self.num_features).to(chol)  # (N, M)
        a = torch.linalg.solve_triangular(chol, flat.mT, upper=False)  # (M, N)
        var = a.square().sum(0).clamp_min(torch.finfo(a.dtype).tiny)  # (N,)
        std = var.sqrt().to(mean).reshape(*phi.shape[:-1], 1).expand_as(mean)
        return CheckedNormal(mean, std, validate_args=False), mean
