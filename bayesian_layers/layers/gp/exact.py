"""Exact Gaussian-process layer (paper §2.2): a distribution over functions whose
output is the prior, or the posterior given conditioning data, at the inputs."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.distributions import Distribution

from ..._checks import check_name
from ...random_variables.variable import RandomVariable
from ..base import as_tensor
from ._exact_posterior import ExactPosterior
from ._util import check_input_dtype, function_output
from .distribution import FrozenFunction, MarginalNormal, MultivariateNormalColumns
from .linalg import full_precision

__all__ = ["GaussianProcess"]

Fn = Callable[..., Tensor]

#: Budget in bytes for the ``N × rows`` temporaries of one chunk of marginals.
MARGINAL_CHUNK_BYTES = 32 * 2**20


class GaussianProcess(ExactPosterior):
    r"""Exact Gaussian process over ``units`` independent output functions.

    Each unit ``f_u ~ GP(m_u, k)`` shares the covariance function ``k`` and is
    observed with Gaussian noise of variance ``observation_noise``. Called on
    inputs ``X`` it returns a :class:`~bayesian_layers.RandomVariable` over the
    function values ``f(X)``: the prior ``N(m(X), k(X, X))`` without conditioning
    data, otherwise the posterior predictive

    .. math::
        \mu = m(X) + K_{X c} (K_{cc} + \sigma^2 I)^{-1} (Y_c - m(X_c)),\quad
        \Sigma = K_{XX} - K_{Xc} (K_{cc} + \sigma^2 I)^{-1} K_{cX}

    (noise-free function values, as scikit-learn's ``GaussianProcessRegressor.predict``).
    Its distribution is joint over the batch (one multivariate normal per unit,
    :class:`MultivariateNormalColumns`). No regularizer: ``losses`` is empty. Fit
    hyperparameters by maximising :meth:`log_marginal_likelihood` (type-II maximum
    likelihood).

    A distribution over functions, it is a :class:`BayesianLayer` and follows the
    sampling modes (:func:`bayesian_layers.posterior_mean`,
    :func:`bayesian_layers.frozen_sample`, :func:`bayesian_layers.vectorized_samples`):

    - ``"sample"`` (default): the value is one draw, jointly over the batch; its
      standard normal noise is drawn during the call, by :meth:`noise` under the
      name ``"function"`` (so ``torch.manual_seed`` before the call, or a noise
      hook, fixes it) and the product with the Cholesky factor of the
      ``B × B`` covariance is computed when the value is first read;
    - ``"mean"``: the value is the posterior mean function at ``X``;
    - ``"frozen"``: one function until :func:`bayesian_layers.resample`: the value
      at inputs seen before is the same, at new inputs it is that function's value
      (drawn jointly with every input seen since the last resample, so a frozen
      call costs O((R + B)³) for ``R`` recorded rows);
    - K at once: inputs ``(K * B, D)`` hold K folded copies, read as K independent
      functions of ``B`` rows; the output distribution is then the per-row marginal
      :class:`MarginalNormal` of the ``K * B`` rows (inputs ``(K * S, B, D)`` keep
      the joint distribution of each of the ``K * S`` input sets).

    ``joint_over_batch = True`` (class attribute) says that the output at one row
    depends on the others through one joint draw; while ``marginal_samples`` is
    true (``bl.predict`` sets it, except in ``"frozen"`` mode) each row is drawn
    from its own marginal instead, in O(N² B) without the ``B × B`` covariance.
    The output random variable is marked as a distribution over function values
    (``bl.predict`` reports its variance as epistemic) and carries ``name``, under
    which the tracers (:func:`bayesian_layers.condition`, :func:`bayesian_layers.tape`)
    see it.

    Cost: O(N³) for the Cholesky factor of the ``N × N`` conditioning matrix
    (cached while no gradient is recorded and the parameters are unchanged),
    plus O(N² B + N B²) per call for ``B`` inputs (and O(B³) when the value is
    read); O(N²) memory. :meth:`predictive_moments` gives the marginals alone in
    O(N² B) time and O(N · chunk) memory.

    Args:
        units: number of output functions.
        mean_fn: callable ``(*, B, D) -> (*, B, units)`` or ``(*, B, 1)``; default
            a fresh :class:`ZeroMean`.
        covariance_fn: callable ``(x1 (*, N, D), x2 (*, M, D)) -> (*, N, M)``, e.g.
            a :class:`Kernel` or a dense wrapper of another library's kernel;
            default a fresh :class:`ExponentiatedQuadratic`. The rule for noise
            terms: covariances of a set with itself (``K_cc``, ``K_XX``) are
            ``covariance_fn(X, X)`` with one tensor for both arguments, so a
            :class:`WhiteNoise` term adds its variance there (to the training
            covariance like ``observation_noise``, and to the predictive covariance
            of new observations, as scikit-learn's ``WhiteKernel``); the
            cross-covariance ``K_Xc`` is always called with two distinct tensors,
            so it never holds white noise, even for ``gp(gp.conditional_inputs)``.
        conditional_inputs: ``(N, D)`` observed inputs, or ``None`` for the prior.
        conditional_outputs: ``(N, units)`` (or ``(N,)`` when ``units == 1``)
            observed outputs.
        observation_noise: noise *variance* ``σ² > 0`` added to ``K_cc``;
            trainable (stored as ``observation_noise_rho``, softplus) unless
            ``trainable_noise=False``. The default 1e-6 suits near-noiseless data;
            raise it (or learn it) for noisy data.
        trainable_noise: learn ``observation_noise`` with the other parameters.
        trainable_conditioning: make the conditioning data ``nn.Parameter``s.
        solver: how :meth:`log_marginal_likelihood` handles ``K_cc + σ² I``:
            ``"cholesky"`` (exact; O(N³)) or ``"cg"`` (stochastic estimate by
            preconditioned conjugate gradients and Lanczos quadrature,
            :func:`~bayesian_layers.layers.gp.iterative.gaussian_log_marginal_likelihood_cg`;
            O(J N² t) for J iterations and t probes, for large N). Predictions always
            use the (cached) Cholesky factor.
        solver_options: keyword arguments of the ``"cg"`` solver (``num_probes``,
            ``max_iterations``, ``tolerance``, ``preconditioner_rank``).
        name: name of the output random variable (for :func:`bayesian_layers.condition`,
            :func:`bayesian_layers.tape` and log joints); ``None``: unnamed.
        device, dtype: where and in which dtype to create parameters and data.

    Shape:
        - Input: ``(B, D)`` or ``(*, B, D)``, a tensor or a ``RandomVariable``, in the
          layer's dtype (another dtype is a ``TypeError``), or in autocast's dtype while
          autocast is on: the layer then computes and returns its own dtype. ``B = 0``
          gives an empty output. Conditioning data are cast to the layer's dtype.
        - Output value and mean: ``(*, B, units)``; ``distribution.covariance_matrix``
          ``(*, B, B)`` (shared by the units).

    Example:
        >>> import torch, bayesian_layers as bl
        >>> x = torch.linspace(0, 1, 8, dtype=torch.float64)[:, None]
        >>> gp = bl.layers.GaussianProcess(
        ...     1, conditional_inputs=x, conditional_outputs=torch.sin(6 * x),
        ...     observation_noise=1e-4, dtype=torch.float64)
        >>> f = gp(torch.rand(5, 1, dtype=torch.float64))
        >>> f.shape, f.distribution.covariance_matrix.shape
        (torch.Size([5, 1]), torch.Size([5, 5]))
        >>> gp.log_marginal_likelihood().shape
        torch.Size([])
    """

    #: The output at one input row depends on the other rows (one joint draw).
    joint_over_batch = True

    def __init__(
        self,
        units: int,
        *,
        mean_fn: Fn | None = None,
        covariance_fn: Fn | None = None,
        conditional_inputs: Tensor | None = None,
        conditional_outputs: Tensor | None = None,
        observation_noise: float | Tensor = 1e-6,
        trainable_noise: bool = True,
        trainable_conditioning: bool = False,
        solver: str = "cholesky",
        solver_options: dict[str, Any] | None = None,
        name: str | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        name = check_name("GaussianProcess", name)
        super().__init__(
            units,
            mean_fn=mean_fn,
            covariance_fn=covariance_fn,
            observation_noise=observation_noise,
            trainable_noise=trainable_noise,
            trainable_conditioning=trainable_conditioning,
            solver=solver,
            solver_options=solver_options,
            device=device,
            dtype=dtype,
        )
        self.name = name
        self.marginal_samples = False
        if (conditional_inputs is None) != (conditional_outputs is None):
            raise ValueError(
                "GaussianProcess expected both conditional_inputs and conditional_outputs "
                "or neither"
            )
        if conditional_inputs is not None and conditional_outputs is not None:
            self.condition_on(conditional_inputs, conditional_outputs)

    def kl_terms(self) -> dict[str, Tensor]:
        """Regularizer terms: none (type-II maximum likelihood needs no penalty)."""
        return {}

    # ------------------------------------------------------------- math
    def _check_inputs(self, x: Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(
                f"GaussianProcess expected input of shape (*, B, D), got {tuple(x.shape)}"
            )
        xc = self.conditional_inputs
        if xc is not None and x.shape[-1] != xc.shape[-1]:
            raise ValueError(
                f"GaussianProcess expected input of shape (*, B, {xc.shape[-1]}) like its "
                f"conditional_inputs, got {tuple(x.shape)}"
            )

    # ------------------------------------------------------------- marginals
    def predictive_moments(self, inputs: Tensor | RandomVariable) -> tuple[Tensor, Tensor]:
        """Marginal mean and variance ``(*, B, units)`` of the output at ``inputs`` ``(*, B, D)``.

        The diagonal of what :meth:`forward` returns, without the ``B × B`` covariance:
        O(N² B) time and O(N · chunk) memory (rows in chunks of at most
        :data:`MARGINAL_CHUNK_BYTES` of temporaries). Computed in the layer's dtype
        (floating inputs are cast to it) with autocast off.

        Example:
            >>> x = torch.linspace(0, 1, 6, dtype=torch.float64)[:, None]
            >>> gp = GaussianProcess(1, conditional_inputs=x, conditional_outputs=x.sin(),
            ...                      observation_noise=1e-4, dtype=torch.float64)
            >>> mean, var = gp.predictive_moments(torch.rand(4, 1, dtype=torch.float64))
            >>> mean.shape, bool((var >= 0).all())
            (torch.Size([4, 1]), True)
        """
        x = self._prepare(inputs)
        with full_precision(x.device):
            return self._marginals(x, MARGINAL_CHUNK_BYTES)

    # ------------------------------------------------------------- output
    def forward(self, inputs: Tensor | RandomVariable) -> RandomVariable:
        x = self._prepare(inputs)
        with full_precision(x.device):  # in the layer's dtype, whatever autocast says
            dist, value = self._output(x)
        return function_output(dist, value, self.name)

    def _prepare(self, inputs: Tensor | RandomVariable) -> Tensor:
        """Validated input in the layer's dtype: the input must be in that dtype, or in
        autocast's dtype while autocast is on (the rule of every GP layer)."""
        x = as_tensor(inputs, type(self).__name__)
        dtype = self.observation_noise_rho.dtype
        check_input_dtype(type(self).__name__, x, dtype)
        self._check_inputs(x)
        if x.device.type != "meta" and not bool(torch.isfinite(x).all()):
            raise ValueError(
                f"GaussianProcess expected finite inputs, got {int(x.isnan().sum())} NaN and "
                f"{int(x.isinf().sum())} infinite entries in shape {tuple(x.shape)}"
            )
        return x.to(dtype)

    def _output(self, x: Tensor) -> tuple[Distribution, Tensor | Callable[[], Tensor]]:
        """``(distribution, value)`` under the sampling mode; a callable value is computed
        when first read (the product with the ``B × B`` Cholesky factor)."""
        k = self.num_function_samples
        if k > 1:
            self.check_samples(x)
        folded = k > 1 and x.dim() == 2  # (K * B, D): K independent functions of B rows
        if self.marginal_samples and self.sampling != "frozen":
            return self._marginal_output(x, k)
        xg = x.unflatten(0, (k, -1)) if folded else x  # (K, B, D) or as given
        dist: Distribution
        if self.sampling == "frozen":
            dist, draw = self._frozen_output(xg)
        else:
            loc, cov = self._joint(xg)
            dist = self._columns(loc, cov, xg)
            if self.sampling == "mean":
                draw = loc
            else:  # the noise now (the seed in force at the call fixes the draw)
                eps = self.noise("function", loc.shape, loc)
                if not folded:
                    return dist, functools.partial(dist.transform, eps)
                draw = dist.transform(eps)
        if folded:  # per-row marginals of the K independent blocks, rows folded back
            dist = MarginalNormal(dist.loc.flatten(0, 1), dist.variance.flatten(0, 1))
            draw = draw.flatten(0, 1)
        return dist, draw

    def _marginal_output(self, x: Tensor, k: int) -> tuple[Distribution, Tensor]:
        """Each row drawn from its own marginal (``marginal_samples``): O(N² B), no B × B."""
        rows = x.shape[0] // k
        copies = x.unflatten(0, (k, rows))  # (K, B, ...)
        if k > 1 and bool((copies == copies[:1]).all()):  # one input: compute once
            mean, var = self._marginals(x[:rows], MARGINAL_CHUNK_BYTES)
            mean = mean.expand(k, *mean.shape).flatten(0, 1)
            var = var.expand(k, *var.shape).flatten(0, 1)
        else:
            mean, var = self._marginals(x, MARGINAL_CHUNK_BYTES)
        dist = MarginalNormal(mean, var)
        if self.sampling == "mean":
            return dist, mean
        return dist, mean + var.sqrt() * self.noise("function", mean.shape, mean)

    def _frozen_output(self, x: Tensor) -> tuple[MultivariateNormalColumns, Tensor]:
        """The frozen function at ``x`` (one draw over every input it has seen)."""
        store = self.frozen_state  # the layer's, or the frozen_sample context's own
        frozen = store.get("function")
        if not isinstance(frozen, FrozenFunction):
            frozen = store["function"] = FrozenFunction()
        xs, eps, index = frozen.locate(
            x, self.units, functools.partial(self.noise, "function", like=x)
        )
        loc, cov = self._joint(xs)  # (*, R, units), (*, R, R)
        draw = self._columns(loc, cov, xs).transform(eps)
        cov = cov.index_select(-2, index).index_select(-1, index)  # (*, B, B)
        dist = self._columns(loc.index_select(-2, index), cov, x)
        return dist, draw.index_select(-2, index)

    def _columns(self, loc: Tensor, cov: Tensor, x: Tensor) -> MultivariateNormalColumns:
        """The joint output distribution at ``x`` ``(*, B, D)``. A jitter its Cholesky factor
        needs is relative to the prior variance ``k(x_i, x_i)``: the posterior covariance
        ``K_XX - K_Xc (K_cc + σ² I)⁻¹ K_cX`` is rounded on that scale (float32: ~1e-7 of
        it), which can exceed its own diagonal where the data pin the function down."""
        scale = functools.partial(self._prior_scale, x)  # read only if a jitter is needed
        return MultivariateNormalColumns(loc, cov, layer=type(self).__name__, jitter_scale=scale)

    def _prior_scale(self, x: Tensor) -> Tensor:
        """Mean prior variance ``mean_i k(x_i, x_i)`` of each input set, ``(*,)``."""
        with full_precision(x.device):
            return self._kernel_diag(x).detach().abs().mean(-1)

    def extra_repr(self) -> str:
        n = 0 if self.conditional_inputs is None else self.conditional_inputs.shape[0]
        named = "" if self.name is None else f", name={self.name!r}"
        return f"units={self.units}, num_conditioning={n}{named}"
