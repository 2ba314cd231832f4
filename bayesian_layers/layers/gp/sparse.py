"""Sparse variational Gaussian-process layer (Titsias 2009; Hensman et al. 2013).

``SparseGaussianProcess(units, num_inducing)`` is the GP counterpart of
``nn.Linear(in_features, units)``: ``units`` independent functions with one shared
kernel, each summarised by ``M = num_inducing`` inducing outputs ``u = f(Z)`` at
learned inducing inputs ``Z``. The layer returns the marginal predictive
distribution at every input as a :class:`~bayesian_layers.RandomVariable` whose
value is a reparameterised sample, so stacking layers in ``nn.Sequential`` gives
the doubly stochastic deep GP of Salimbeni & Deisenroth (2017). The math lives in
:mod:`bayesian_layers.layers.gp.sparse_variational`; whitened (the default), a call is one
kernel evaluation ``k(Z, [Z; X])``, one fused marginals function (Cholesky, one
triangular inverse, matrix products, closed-form backward) and the mean function.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.lazy import LazyModuleMixin

from ..._checks import check_count, check_name, check_real, inverse_softplus
from ...random_variables.variable import RandomVariable
from ..base import BayesianLayer, as_tensor
from ._util import check_input_dtype, function_output
from .distribution import MarginalNormal
from .inducing import check_inducing_inputs, inducing_rows, linear_mean_init, zeros_or_lazy
from .kernels import ExponentiatedQuadratic, StationaryKernel
from .linalg import add_to_diagonal, cholesky_with_jitter, full_precision, jitter_reporter
from .pathwise import frozen_draws, prior_paths
from .sparse_variational import (
    pathwise_conditional,
    svgp_kl,
    svgp_predictive_moments,
    whitened_kl,
    whitened_predictive_moments,
)

__all__ = ["SparseGaussianProcess"]


class SparseGaussianProcess(LazyModuleMixin, BayesianLayer):
    r"""Sparse variational GP layer: ``units`` functions of the input, ``M`` inducing points.

    Each output unit ``f_k = m_k + g_k`` has a mean function ``m_k`` and a GP
    ``g_k ~ GP(0, k)`` (one kernel shared by the units). With inducing inputs
    ``Z`` (``(M, D)``, trainable) and ``L = chol(K_ZZ + jitter·I)``, the inducing
    outputs are ``u_k = L v_k`` and, whitened (the default), ``q(v_k) = N(m_k,
    S_k S_kᵀ)`` with a full lower-triangular ``S_k`` (positive diagonal through a
    softplus); the prior is ``p(v_k) = N(0, I)``. ``whiten=False`` parameterises
    ``q(u_k)`` directly against ``p(u_k) = N(0, K_ZZ)``.

    A call returns, for every input row, the marginal ``q(f(x)) = N(μ(x), σ²(x))``
    with ``μ = m(x) + K_xZ K_ZZ⁻¹ E[u]`` and ``σ² = k(x, x) - q_xx + s_xx``, together
    with one reparameterised sample of it (independent across rows) as the value.
    **Cost O(B·M² + M³) per call** (times ``units`` for the ``S_k`` terms); the
    ``B × B`` covariance is never formed. A :class:`~bayesian_layers.RandomVariable`
    input is consumed as its value (its sample), which makes a stack of these
    layers a doubly stochastic deep GP. The output is marked as a distribution over
    function values, so :func:`bl.predict <bayesian_layers.predict>` reports its
    variance as epistemic; with ``name=`` it reaches the tracers (``bl.tape``,
    ``bl.condition``) like ``bl.Normal(..., name=)``.

    **Sampling modes.** ``"sample"`` (default): the value holds an independent draw of
    each marginal (rows are not one function; the noise from :meth:`noise`, name
    ``"function"``). ``"mean"`` (:func:`bl.posterior_mean
    <bayesian_layers.posterior_mean>`): the value is ``μ``. ``"frozen"``
    (:func:`bl.frozen_sample <bayesian_layers.frozen_sample>`): the value is one
    function sample kept until :func:`bl.resample <bayesian_layers.resample>`, drawn
    by pathwise conditioning (Wilson et al. 2020): ``f(x) = m(x) + f₀(x) + K_xZ
    K_ZZ⁻¹ (u - f₀(Z))`` with ``u ~ q(u)`` and ``f₀`` a prior draw from
    ``num_prior_features`` random Fourier features of the kernel. So ``f(x)`` depends
    on ``x`` alone (batch order, duplicates, batch size and repeated calls do not
    change it) and, over resamples, has exactly the mean and covariance of ``q(f)``
    (the random-feature prior is Gaussian only as ``num_prior_features`` grows). This
    needs a kernel with a spectral sampler (``ExponentiatedQuadratic``, ``Matern12/32/52``,
    ``RationalQuadratic``); for any other kernel ``f₀ = 0``: ``f(x) = m(x) + E[f(x) |
    u]``, still one function but without the conditional variance ``k(x, x) -
    K_xZ K_ZZ⁻¹ K_Zx``. In :func:`bl.vectorized_samples
    <bayesian_layers.vectorized_samples>` frozen mode keeps ``K`` such functions.
    A frozen call costs ``O(M³ + B·M·(D + U) + (B + M)·L·(D + U))`` more, ``L =
    num_prior_features``.

    ``layer.losses`` is ``[Σ_k KL(q(u_k) ‖ p(u_k))]`` in closed form (``O(U·M²)``
    whitened, ``O(U·M³)`` otherwise); with the ELBO convention
    ``loss = nll_mean + sum(bl.losses(model)) / N``. For regression,
    :class:`~bayesian_layers.layers.GaussianLikelihood` holds the learnable observation
    noise: ``lik.expected_log_likelihood(f, y)`` is the ELBO's data term in closed form and
    ``lik(f)`` the predictive distribution of ``y``.

    **Mean function.** The default ``mean_fn="linear"`` is a trainable affine map
    ``W x + b`` initialised, on the first call, to the identity when ``D == units``,
    to the projection onto the top ``units`` principal directions of the first batch
    when ``units < D``, and to the identity padded with zeros when ``units > D``
    (Salimbeni & Deisenroth 2017). Inner layers of a deep GP then start as (near)
    identity maps plus a GP residual; with zero means a stack collapses to the
    constant predictor. ``mean_fn="zeros"`` (or ``layers.ZeroMean()``) asks for the
    zero mean; any callable ``(N, D) -> (N, units)`` or ``(N, 1)`` is accepted.

    Args:
        units: number of output functions.
        num_inducing: number of inducing points ``M`` (>= 1).
        in_features: input dimension ``D``; ``None`` reads it on the first call
            (a lazy module: its uninitialised parameters are materialised in place,
            so an optimizer built before the first call still sees them).
        mean_fn: ``"linear"`` (default, see above), ``"zeros"`` or a callable.
        covariance_fn: the kernel, a callable ``(N, D), (M, D) -> (N, M)``;
            default ``ExponentiatedQuadratic()``. Its ``diag(x)`` is used when present.
        inducing_inputs: ``(M, D)`` initial ``Z``; default: ``M`` rows of the first
            batch (a random subset; jittered copies when the batch is smaller).
        whiten: use the whitened parameterisation (recommended).
        inducing_scale_init: initial diagonal of ``S_k`` (whitened: ``1`` starts
            ``q`` at the prior; small values start the layer nearly deterministic).
        jitter: added to the diagonal of ``K_ZZ`` always (``cholesky_with_jitter``
            adds more only if the factorisation fails).
        kl_scale_factor: multiplies the KL in ``losses`` (finite, >= 0).
        num_prior_features: random Fourier features ``L`` of the prior draw in
            ``"frozen"`` mode (see above).
        name: name of the returned random variable (for the tracers).
        device, dtype: factory arguments; inputs must have the layer's dtype (or
            autocast's, under autocast): other dtypes raise ``TypeError``.

    Shape:
        - Input: ``(*, D)`` tensor or random variable (``*`` may hold zero rows).
        - Output: a :class:`~bayesian_layers.RandomVariable` of shape ``(*, units)``;
          ``.distribution`` is ``Normal(μ, σ)`` with batch shape ``(*, units)``.

    Attributes:
        inducing_inputs: ``(M, D)`` parameter ``Z``.
        inducing_loc: ``(units, M)`` parameter ``m``.
        inducing_scale_tril: ``(units, M, M)`` lower factor ``S`` (property), from
            the parameters ``inducing_scale_offdiag`` and ``inducing_scale_rho``.
        mean_weight, mean_bias: ``(units, D)``, ``(units,)`` with the default mean.

    Example:
        >>> import torch, bayesian_layers as bl
        >>> from bayesian_layers import layers
        >>> model = torch.nn.Sequential(
        ...     layers.SparseGaussianProcess(4, num_inducing=8),
        ...     layers.SparseGaussianProcess(1, num_inducing=8))
        >>> out = model(torch.randn(16, 3))
        >>> out.shape, out.distribution.variance.shape, len(bl.losses(model))
        (torch.Size([16, 1]), torch.Size([16, 1]), 2)
    """

    cls_to_become = None

    def __init__(
        self,
        units: int,
        num_inducing: int,
        *,
        in_features: int | None = None,
        mean_fn: str | Callable[[Tensor], Tensor] = "linear",
        covariance_fn: Callable[..., Tensor] | None = None,
        inducing_inputs: Tensor | None = None,
        whiten: bool = True,
        inducing_scale_init: float = 1.0,
        jitter: float = 1e-6,
        kl_scale_factor: float = 1.0,
        num_prior_features: int = 1024,
        name: str | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        self.units: int = check_count(owner, "units", units)
        self.num_inducing: int = check_count(owner, "num_inducing", num_inducing)
        if in_features is not None:
            in_features = check_count(owner, "in_features", in_features)
        factory: dict[str, Any] = {"device": device, "dtype": dtype}
        if inducing_inputs is not None:
            in_features = check_inducing_inputs(owner, inducing_inputs, num_inducing, in_features)
        inducing_scale_init = check_real(
            owner, "inducing_scale_init", inducing_scale_init, strict=True
        )
        self.jitter = check_real(owner, "jitter", jitter)
        self.kl_scale_factor = check_real(owner, "kl_scale_factor", kl_scale_factor)
        self.num_prior_features = check_count(owner, "num_prior_features", num_prior_features)
        if not isinstance(whiten, bool):
            raise TypeError(f"{owner} expected `whiten` to be a bool, got {whiten!r}")
        self.name = check_name(owner, name)
        if isinstance(mean_fn, str):
            if mean_fn not in ("linear", "zeros"):
                raise ValueError(f"{owner} expected `mean_fn` 'linear', 'zeros' or a callable, "
                                 f"got {mean_fn!r}")  # fmt: skip
        elif not callable(mean_fn):
            raise TypeError(f"{owner} expected a callable `mean_fn`, got {type(mean_fn).__name__}")
        if covariance_fn is None:
            covariance_fn = ExponentiatedQuadratic(**factory)
        elif not callable(covariance_fn):
            raise TypeError(
                f"{owner} expected a callable `covariance_fn`, got {type(covariance_fn).__name__}"
            )
        self.in_features = in_features
        self.whiten = whiten
        self.covariance_fn = covariance_fn
        self.mean_fn = mean_fn
        u, m = self.units, self.num_inducing
        self.inducing_loc = nn.Parameter(torch.zeros(u, m, **factory))
        self.inducing_scale_offdiag = nn.Parameter(torch.zeros(u, m, m, **factory))
        rho = inverse_softplus(torch.tensor(float(inducing_scale_init), dtype=torch.float64))
        self.inducing_scale_rho = nn.Parameter(torch.full((u, m), float(rho), **factory))
        self.inducing_inputs = zeros_or_lazy((m, in_features), **factory)
        if mean_fn == "linear":
            self.mean_weight = zeros_or_lazy((u, in_features), **factory)
            self.mean_bias = nn.Parameter(torch.zeros(u, **factory))
        self._inducing_from_data = inducing_inputs is None
        self.initialized: Tensor
        self.register_buffer("initialized", torch.tensor(False, device=device))
        if inducing_inputs is not None:
            with torch.no_grad():
                self.inducing_inputs.copy_(inducing_inputs)

    def extra_repr(self) -> str:
        text = (f"units={self.units}, num_inducing={self.num_inducing}, "
                f"in_features={self.in_features}, whiten={self.whiten}")  # fmt: skip
        return text if self.name is None else f"{text}, name={self.name!r}"

    # -------------------------------------------------------------- building
    def initialize_parameters(self, x: object) -> None:  # type: ignore[override]
        """Materialise the lazy parameters from the first input's last dimension."""
        if not isinstance(self.inducing_inputs, nn.UninitializedParameter):
            self.in_features = self.inducing_inputs.shape[-1]  # given, or loaded
        x = self._check_input(x, check_dim=self.in_features is not None)
        d = x.shape[-1]
        self.in_features = d
        for name, rows in (("inducing_inputs", self.num_inducing), ("mean_weight", self.units)):
            param = getattr(self, name, None)
            if isinstance(param, nn.UninitializedParameter):
                param.materialize((rows, d))

    def _data_init(self, x: Tensor) -> None:
        """First-call initialisation: ``Z`` from the batch, the mean's identity/PCA map.
        A batch with NaN or inf raises ``ValueError`` before anything changes."""
        if not bool(torch.isfinite(x).all()):
            raise ValueError(
                f"{type(self).__name__} expected a finite first batch `x` (it initialises the "
                f"inducing inputs and the mean function), got NaN or inf in {tuple(x.shape)}"
            )
        with torch.no_grad():
            x = x.detach().to(self.inducing_loc.dtype)
            if self._inducing_from_data:
                self.inducing_inputs.copy_(inducing_rows(x, self.num_inducing))
            if self.mean_fn == "linear":
                self.mean_weight.copy_(linear_mean_init(x, self.units))
            self.initialized.fill_(True)

    # ------------------------------------------------------------- posterior
    @property
    def inducing_scale_tril(self) -> Tensor:
        """``(units, M, M)`` lower-triangular ``S`` with a positive diagonal."""
        diag = F.softplus(self.inducing_scale_rho)  # (U, M)
        return torch.tril(self.inducing_scale_offdiag, -1) + torch.diag_embed(diag)

    def chol_kzz(self) -> Tensor:
        """``(M, M)`` Cholesky factor of ``K_ZZ + jitter·I`` (retried with more jitter)."""
        z = self.inducing_inputs
        with full_precision(z.device):
            return self._chol(self.covariance_fn(z, z))

    @property
    def _on_jitter(self) -> Callable[[float], None]:
        """Warns once per layer when ``K_ZZ + jitter·I`` needed more jitter."""
        hint = "raise `jitter` or move inducing inputs that coincide apart"
        return jitter_reporter(self, "K_ZZ + jitter I", hint)

    def _chol(self, kzz: Tensor) -> Tensor:
        if self.jitter:
            kzz = add_to_diagonal(kzz, self.jitter)
        return cholesky_with_jitter(kzz, layer=type(self).__name__, on_jitter=self._on_jitter)

    def kl_terms(self) -> dict[str, Tensor]:
        """``{"inducing": Σ_units KL(q(u) ‖ p(u))}``, closed form, times ``kl_scale_factor``
        (``losses`` is its one value)."""
        if self.whiten:  # from the parts of S: no (U, M, M) assembly
            diag = F.softplus(self.inducing_scale_rho)
            kl = whitened_kl(self.inducing_loc, self.inducing_scale_offdiag, diag)
        else:
            kl = svgp_kl(self.inducing_loc, self.inducing_scale_tril, self.chol_kzz())
        return {"inducing": kl * self.kl_scale_factor if self.kl_scale_factor != 1.0 else kl}

    # --------------------------------------------------------------- forward
    def _check_input(self, x: object, check_dim: bool = True) -> Tensor:
        owner = type(self).__name__
        x = as_tensor(x, owner)
        check_input_dtype(owner, x, self.inducing_loc.dtype)
        if x.dim() == 0:
            raise ValueError(f"{owner} expected an input of shape (*, D), got a scalar")
        if check_dim and x.shape[-1] != self.in_features:
            raise ValueError(
                f"{owner} expected input of shape (*, {self.in_features}) to match its "
                f"inducing inputs ({self.num_inducing}, {self.in_features}), got {tuple(x.shape)}"
            )
        return x

    def _kxx_diag(self, x: Tensor) -> Tensor:
        diag = getattr(self.covariance_fn, "diag", None)
        if callable(diag):
            return diag(x)
        return self.covariance_fn(x.unsqueeze(-2), x.unsqueeze(-2))[..., 0, 0]  # (N,)

    def _mean(self, x: Tensor) -> Tensor:
        if self.mean_fn == "linear":
            return F.linear(x, self.mean_weight, self.mean_bias)
        if self.mean_fn == "zeros":
            return x.new_zeros(())
        out = self.mean_fn(x)  # type: ignore[operator]
        if out.shape[-1] not in (1, self.units) or out.shape[:-1] != x.shape[:-1]:
            raise ValueError(
                f"{type(self).__name__}: mean_fn returned shape {tuple(out.shape)}, "
                f"expected ({x.shape[0]}, {self.units}) or ({x.shape[0]}, 1)"
            )
        return out

    def predictive_moments(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Marginal mean and variance ``(N, units)`` of ``q(f(x))`` at ``x`` ``(N, D)``.

        Computed in the parameters' dtype (``x`` is cast to it), with autocast off.
        """
        z = self.inducing_inputs
        with full_precision(z.device):
            return self._predictive_moments(x.to(z.dtype), z)

    def _predictive_moments(self, x: Tensor, z: Tensor) -> tuple[Tensor, Tensor]:
        if isinstance(self.covariance_fn, StationaryKernel):  # one call: k(Z, [Z; X])
            k = self.covariance_fn(z, torch.cat([z, x]))  # (M, M + N)
            kzz, kzx = k.split([z.shape[0], x.shape[0]], dim=-1)  # one cat in backward
        else:  # e.g. WhiteNoise tells k(Z, Z) from k(Z, X) by identity
            kzz, kzx = self.covariance_fn(z, z), self.covariance_fn(z, x)  # (M, M), (M, N)
        kxx, loc = self._kxx_diag(x), self.inducing_loc
        if self.whiten:
            off, diag = self.inducing_scale_offdiag, F.softplus(self.inducing_scale_rho)
            mean, var = whitened_predictive_moments(
                kxx,
                kzz,
                kzx,
                loc,
                off,
                diag,
                jitter=self.jitter,
                layer=type(self).__name__,
                on_jitter=self._on_jitter,
            )
        else:
            chol, scale = self._chol(kzz), self.inducing_scale_tril
            mean, var = svgp_predictive_moments(kxx, kzx, chol, loc, scale, whiten=False)
        return mean + self._mean(x), var.clamp_min(torch.finfo(var.dtype).eps)

    def forward(self, x: Tensor | RandomVariable) -> RandomVariable:
        x = self._check_input(x)
        lead, flat = x.shape[:-1], x.reshape(-1, x.shape[-1])  # (N, D)
        if flat.shape[0] == 0:  # an empty batch: an empty result, no initialisation
            empty = self.inducing_loc.new_zeros(*lead, self.units)
            return function_output(MarginalNormal(empty, empty + 1.0), empty, self.name)
        if not bool(self.initialized):
            self._data_init(flat)
        mean, var = self.predictive_moments(flat)  # (N, U) each
        if self.sampling == "mean":
            value = mean
        elif self.sampling == "frozen":
            value = self._frozen_function(flat)
        else:
            value = torch.addcmul(mean, var.sqrt(), self.noise("function", mean.shape, mean))
        mean, var = mean.reshape(*lead, self.units), var.reshape(*lead, self.units)
        value = value.reshape(*lead, self.units)
        return function_output(MarginalNormal(mean, var), value, self.name)

    # ------------------------------------------------------ frozen function
    def _frozen_function(self, x: Tensor) -> Tensor:
        """``(N, U)`` values at ``x`` ``(N, D)`` (``N = K·B``, sample-major) of the frozen
        functions ``f = m(x) + f₀(x) + K_xZ K_ZZ⁻¹ (u - f₀(Z) - √jitter·ε)``."""
        k = self.check_samples(x)
        z = self.inducing_inputs
        with full_precision(z.device):
            x = x.to(z.dtype)
            # kept until resample; the K functions of a vectorised call (bl.predict) apart
            # from the one function of plain calls, so that neither replaces the other
            store = self.frozen_state.setdefault("functions" if k == 1 else "functions@K", {})
            draws = frozen_draws(
                store,
                self.covariance_fn,
                k,
                self.units,
                self.num_inducing,
                self.num_prior_features,
                like=z,
                noise=functools.partial(self.noise, like=z),
            )
            xk = x.reshape(k, -1, x.shape[-1])  # (K, B, D)
            prior_x, prior_z = prior_paths(self.covariance_fn, xk, z, draws, self.units)
            if self.jitter:
                prior_z = prior_z + math.sqrt(self.jitter) * draws["jitter"]
            chol = self.chol_kzz()  # (M, M)
            u = self.inducing_loc + (self.inducing_scale_tril @ draws["u"].unsqueeze(-1))[..., 0]
            white = u.mT  # (K, M, U): v = L⁻¹ u; whitened, q is over v already
            if not self.whiten:
                white = torch.linalg.solve_triangular(chol, white, upper=False)
            kxz = self.covariance_fn(x, z).reshape(k, -1, z.shape[0])  # (K, B, M)
            f = pathwise_conditional(kxz, chol, white, prior_x, prior_z)  # (K, B, U)
            return f.reshape(x.shape[0], self.units) + self._mean(x)
