"""Exact Gaussian-process layer (paper §2.2): a distribution over functions whose
output is the prior, or the posterior given conditioning data, at the inputs."""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Distribution

from ... import tracing as _tracing
from ..._function_space import mark_function_space
from ...random_variable import RandomVariable
from ..base import BayesianLayer, as_tensor
from ._util import check_input_dtype
from .distribution import FrozenFunction, MarginalNormal, MultivariateNormalColumns
from .iterative import gaussian_log_marginal_likelihood_cg
from .kernel_base import Kernel, inverse_softplus
from .kernels import ExponentiatedQuadratic
from .linalg import (
    JitterWarning,
    add_to_diagonal,
    cholesky_with_jitter,
    dense_matrix,
    full_precision,
    gaussian_log_marginal_likelihood,
)
from .means import ZeroMean

__all__ = ["GaussianProcess"]

Fn = Callable[..., Tensor]

#: Budget in bytes for the ``N × rows`` temporaries of one chunk of marginals.
MARGINAL_CHUNK_BYTES = 32 * 2**20


def _identity(value: Tensor) -> Tensor:
    return value


def _is_transformed(t: Tensor) -> bool:
    """Whether ``t`` is a ``torch.func`` (functorch) wrapped tensor."""
    return torch._C._functorch.is_functorch_wrapped_tensor(t)


class GaussianProcess(BayesianLayer):
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
      standard normal noise is drawn during the call (so ``torch.manual_seed``
      before the call fixes it) and the product with the Cholesky factor of the
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
        super().__init__()
        if name is not None and not isinstance(name, str):
            raise TypeError(f"GaussianProcess expected `name` to be a str or None, got {name!r}")
        self.name = name
        self.marginal_samples = False
        self._jitter_reported = False
        if not isinstance(units, int) or isinstance(units, bool) or units < 1:
            raise ValueError(f"GaussianProcess expected a positive int `units`, got {units!r}")
        for arg, fn in (("mean_fn", mean_fn), ("covariance_fn", covariance_fn)):
            if fn is not None and not callable(fn):
                raise TypeError(f"GaussianProcess expected a callable {arg}, got {type(fn)}")
        if solver not in ("cholesky", "cg"):
            raise ValueError(f"GaussianProcess expected solver 'cholesky' or 'cg', got {solver!r}")
        self.units = units
        self.solver = solver
        self.solver_options = dict(solver_options or {})
        allowed = {"num_probes", "max_iterations", "tolerance", "preconditioner_rank"}
        if not set(self.solver_options) <= allowed:
            raise ValueError(
                f"GaussianProcess expected solver_options among {sorted(allowed)}, "
                f"got {sorted(self.solver_options)}"
            )
        dtype = dtype or torch.get_default_dtype()
        self.mean_fn = mean_fn if mean_fn is not None else ZeroMean()
        if covariance_fn is None:
            covariance_fn = ExponentiatedQuadratic(device=device, dtype=dtype)
        self.covariance_fn = covariance_fn
        noise = torch.as_tensor(observation_noise, device=device, dtype=dtype).detach().clone()
        if noise.dim() != 0 or not bool(torch.isfinite(noise) & (noise > 0)):
            raise ValueError(
                f"GaussianProcess expected a positive scalar observation_noise (a variance), "
                f"got {observation_noise}"
            )
        rho = inverse_softplus(noise)
        if trainable_noise:
            self.observation_noise_rho = nn.Parameter(rho)
        else:
            self.register_buffer("observation_noise_rho", rho)
        self.trainable_conditioning = trainable_conditioning
        self.conditional_inputs: Tensor | None
        self.conditional_outputs: Tensor | None
        self.register_buffer("conditional_inputs", None)
        self.register_buffer("conditional_outputs", None)
        self._cache: tuple[tuple[Any, ...], tuple[Tensor, Tensor]] | None = None
        if (conditional_inputs is None) != (conditional_outputs is None):
            raise ValueError(
                "GaussianProcess expected both conditional_inputs and conditional_outputs "
                "or neither"
            )
        if conditional_inputs is not None and conditional_outputs is not None:
            self.condition_on(conditional_inputs, conditional_outputs)

    def __getstate__(self) -> dict[str, Any]:
        # conditioning data may hold a graph (features in front), which copies refuse
        state = super().__getstate__()
        state["_buffers"] = {
            k: v.detach() if isinstance(v, Tensor) else v for k, v in self._buffers.items()
        }
        return state

    @property
    def observation_noise(self) -> Tensor:
        """Positive scalar tensor: the observation noise variance ``σ²``."""
        return F.softplus(self.observation_noise_rho)

    @property
    def losses(self) -> list[Tensor]:
        """Regularizer terms: none (type-II maximum likelihood needs no penalty)."""
        return []

    # ------------------------------------------------------------- data
    def condition_on(self, conditional_inputs: Tensor, conditional_outputs: Tensor) -> None:
        """Set (or replace) the conditioning data ``(N, D)`` inputs and ``(N, units)`` outputs.

        The tensors keep their autograd graph (stored as copies, cast to the layer's
        dtype): condition on ``features(x)`` and the gradient of
        :meth:`log_marginal_likelihood` reaches the feature network. Such a graph
        serves one backward pass, so condition again at every training step. With
        ``trainable_conditioning=True`` they become leaf parameters instead.
        """
        xc, yc = conditional_inputs, conditional_outputs
        for name, t in (("conditional_inputs", xc), ("conditional_outputs", yc)):
            if not isinstance(t, Tensor) or not t.is_floating_point():
                raise TypeError(f"GaussianProcess expected a floating Tensor {name}, got {type(t)}")
        if yc.dim() == 1 and self.units == 1:
            yc = yc[:, None]
        if xc.dim() != 2:
            raise ValueError(
                "GaussianProcess expected conditional_inputs of shape (N, D), "
                f"got {tuple(xc.shape)}"
            )
        if yc.dim() != 2 or yc.shape[1] != self.units:
            raise ValueError(
                f"GaussianProcess expected conditional_outputs of shape (N, {self.units}), "
                f"got {tuple(conditional_outputs.shape)}"
            )
        if xc.shape[0] != yc.shape[0]:
            raise ValueError(
                f"GaussianProcess expected conditional_inputs and conditional_outputs of the same "
                f"length N, got {xc.shape[0]} inputs and {yc.shape[0]} outputs"
            )
        for name, t in (("conditional_inputs", xc), ("conditional_outputs", yc)):
            if t.device.type != "meta" and not bool(torch.isfinite(t).all()):
                nans, infs = int(t.isnan().sum()), int(t.isinf().sum())
                raise ValueError(
                    f"GaussianProcess expected finite {name}, got {nans} NaN and {infs} "
                    f"infinite entries in shape {tuple(t.shape)}"
                )
        dtype = self.observation_noise_rho.dtype
        xc = xc.to(dtype=dtype, copy=True)  # keeps the graph: features in front can learn
        yc = yc.to(dtype=dtype, copy=True)
        for name, t in (("conditional_inputs", xc), ("conditional_outputs", yc)):
            if self.trainable_conditioning:
                setattr(self, name, nn.Parameter(t.detach()))  # replaces a buffer of that name
            else:
                self._parameters.pop(name, None)
                self.register_buffer(name, t)
        self._cache = None

    def _load_from_state_dict(
        self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any
    ) -> None:
        # a layer built without data accepts a checkpoint's conditioning data
        xc, yc = (
            state_dict.get(prefix + "conditional_inputs"),
            state_dict.get(prefix + "conditional_outputs"),
        )
        if self.conditional_inputs is None and xc is not None and yc is not None:
            self.condition_on(xc, yc)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

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

    def _mean(self, x: Tensor) -> Tensor:
        m = self.mean_fn(x)
        if not isinstance(m, Tensor) or m.shape[-1] not in (1, self.units) or m.dim() < 2:
            got = tuple(m.shape) if isinstance(m, Tensor) else type(m).__name__
            raise ValueError(
                f"GaussianProcess expected mean_fn to return (*, B, {self.units}) or (*, B, 1), "
                f"got {got}"
            )
        return m

    def _cache_key(self) -> tuple[Any, ...] | None:
        tensors = [self.conditional_inputs, self.conditional_outputs, self.observation_noise_rho]
        for fn in (self.mean_fn, self.covariance_fn):
            if not isinstance(fn, nn.Module):
                return None  # an opaque callable may hold state we cannot see: never cache
            tensors.extend(fn.parameters())
            tensors.extend(fn.buffers())
        if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
            return None  # a cached factor would carry a stale (or freed) autograd graph
        if any(t is not None and _is_transformed(t) for t in tensors):
            return None  # torch.func's wrapped tensors have no storage (and change per call)
        return tuple(
            (t.data_ptr(), t._version, t.dtype, t.device, tuple(t.shape))
            for t in tensors
            if t is not None
        ) + (id(self.mean_fn), id(self.covariance_fn))

    def _covariance(self, x1: Tensor, x2: Tensor) -> Tensor:
        """``covariance_fn(x1, x2)`` as a dense tensor (lazy tensors are evaluated)."""
        return dense_matrix(
            self.covariance_fn(x1, x2), owner="GaussianProcess", what="covariance_fn"
        )

    def _report_jitter(self, jitter: float) -> None:
        """Warn (once per layer) that ``K_cc + σ² I`` needed jitter to factorise."""
        if self._jitter_reported:
            return
        self._jitter_reported = True
        warnings.warn(
            f"GaussianProcess: the conditioning matrix K_cc + noise I needed jitter "
            f"{jitter:.1e} x mean diagonal to be positive definite (reported once per "
            f"layer); raise observation_noise or remove duplicate inputs",
            JitterWarning,
            stacklevel=4,
        )

    def _cross(self, x: Tensor) -> Tensor:
        """``K_Xc`` ``(*, B, N)``: the cross-covariance of ``x`` and the conditioning inputs."""
        xc = self.conditional_inputs
        assert xc is not None
        if x is xc:  # a cross-covariance: never the self-covariance of one tensor
            x = x.view_as(x)
        return self._covariance(x, xc)

    def _kernel_diag(self, x: Tensor) -> Tensor:
        """``k(x_i, x_i)`` ``(*, B)`` in O(B D) for a :class:`Kernel` (its ``diag``)."""
        if isinstance(self.covariance_fn, Kernel):
            out = self.covariance_fn.diag(x)
        else:
            rows = x.unsqueeze(-2)  # (*, B, 1, D): B one-row sets
            out = self._covariance(rows, rows)[..., 0, 0]
        if not isinstance(out, Tensor) or out.shape != x.shape[:-1]:
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(
                f"GaussianProcess expected the diagonal of covariance_fn(x, x) of shape "
                f"{tuple(x.shape[:-1])}, got {got}"
            )
        return out

    def _kernel_matrix(self) -> Tensor:
        """``K_cc``, shape ``(N, N)``."""
        xc = self.conditional_inputs
        assert xc is not None
        kcc = self._covariance(xc, xc)  # (N, N)
        n = xc.shape[0]
        if kcc.shape != (n, n):
            raise ValueError(
                f"GaussianProcess expected covariance_fn(x, x) of shape ({n}, {n}), "
                f"got {tuple(kcc.shape)}"
            )
        return kcc

    def _conditioning_matrix(self) -> Tensor:
        """``K_cc + σ² I``, shape ``(N, N)``."""
        kcc = self._kernel_matrix()
        return add_to_diagonal(kcc, self.observation_noise.to(kcc.dtype))

    def _factor(self) -> tuple[Tensor, Tensor]:
        """Cholesky factor ``L`` of ``K_cc + σ² I`` and ``α = (K_cc + σ² I)⁻¹ (Y_c - m(X_c))``."""
        key = self._cache_key()
        if key is not None and self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        xc, yc = self.conditional_inputs, self.conditional_outputs
        assert xc is not None and yc is not None
        chol = cholesky_with_jitter(
            self._conditioning_matrix(), layer="GaussianProcess", on_jitter=self._report_jitter
        )
        resid = yc - self._mean(xc)  # (N, units)
        alpha = torch.cholesky_solve(resid, chol)  # (N, units)
        result = (chol, alpha)
        self._cache = (key, result) if key is not None else None
        return result

    def log_marginal_likelihood(self) -> Tensor:
        r"""``log p(Y_c | X_c)`` summed over units: a scalar to maximise (type-II ML).

        ``-½ Σ_u r_uᵀ (K_cc + σ² I)⁻¹ r_u - units · ½ log|K_cc + σ² I| - units · N/2 · log 2π``
        with ``r = Y_c - m(X_c)``, as scikit-learn's ``log_marginal_likelihood`` for
        multi-output ``y``. Computed with autocast off, in the layer's dtype.
        """
        xc, yc = self.conditional_inputs, self.conditional_outputs
        if xc is None or yc is None:
            raise ValueError("GaussianProcess.log_marginal_likelihood needs conditioning data")
        with full_precision(xc.device):
            return self._log_marginal_likelihood(xc, yc)

    def _log_marginal_likelihood(self, xc: Tensor, yc: Tensor) -> Tensor:
        resid = yc - self._mean(xc)  # (N, units)
        key = self._cache_key()
        if key is not None and self._cache is not None and self._cache[0] == key:
            chol, alpha = self._cache[1]  # no gradient needed: reuse the factor
            n = chol.shape[-1]
            half_log_det = chol.diagonal().log().sum()
            quad = (resid * alpha).sum()
            return -0.5 * quad - self.units * (half_log_det + 0.5 * n * math.log(2 * math.pi))
        kcc = self._kernel_matrix()  # (N, N)
        noise = self.observation_noise.to(kcc.dtype)
        if self.solver == "cg":
            return gaussian_log_marginal_likelihood_cg(
                kcc, noise, resid, layer="GaussianProcess", **self.solver_options
            )
        return gaussian_log_marginal_likelihood(
            kcc, resid, layer="GaussianProcess", noise=noise, on_jitter=self._report_jitter
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
            return self._marginals(x)

    def _marginals(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mean = self._mean(x)  # (*, B, units) or (*, B, 1)
        var = self._kernel_diag(x)  # (*, B)
        if self.conditional_inputs is not None:
            chol, alpha = self._factor()
            n = chol.shape[-1]
            rows = max(1, MARGINAL_CHUNK_BYTES // max(1, 2 * n * chol.element_size()))
            shifts, reductions = [], []
            for part in x.split(rows, dim=-2):
                kxc = self._cross(part)  # (*, b, N)
                shifts.append(kxc @ alpha)  # (*, b, units)
                v = torch.linalg.solve_triangular(chol, kxc.mT, upper=False)  # (*, N, b)
                reductions.append(v.square().sum(-2))  # (*, b)
            mean = mean + torch.cat(shifts, -2)
            var = var - torch.cat(reductions, -1)
        dtype = torch.result_type(mean, var)
        shape = var.shape + (self.units,)
        var = var.clamp_min(0.0).to(dtype)[..., None].expand(shape)
        return mean.to(dtype).expand(shape), var

    # ------------------------------------------------------------- output
    def forward(self, inputs: Tensor | RandomVariable) -> RandomVariable:
        x = self._prepare(inputs)
        with full_precision(x.device):  # in the layer's dtype, whatever autocast says
            dist, value, deferred = self._output(x)
        if _tracing._active and _tracing.is_tracing():
            rv = _tracing.variable(dist, name=self.name, value=value())
        elif deferred:
            rv = RandomVariable.deferred(dist, value, name=self.name)
        else:
            rv = RandomVariable(dist, value=value(), name=self.name)
        return mark_function_space(rv)

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

    def _output(self, x: Tensor) -> tuple[Distribution, Callable[[], Tensor], bool]:
        """``(distribution, value thunk, whether to defer it)`` under the sampling mode."""
        k = self.num_function_samples
        if k > 1:
            self._check_samples(x)
        folded = k > 1 and x.dim() == 2  # (K * B, D): K independent functions of B rows
        if self.marginal_samples and self.sampling != "frozen":
            return self._marginal_output(x, k)
        xg = x.unflatten(0, (k, -1)) if folded else x  # (K, B, D) or as given
        dist: Distribution
        if self.sampling == "frozen":
            dist, draw = self._frozen_output(xg)
        else:
            loc, cov = self._joint(xg)
            dist = MultivariateNormalColumns(loc, cov, layer=type(self).__name__)
            if self.sampling == "mean":
                draw = loc
            else:  # the noise now (the seed in force at the call fixes the draw)
                eps = torch.randn_like(loc)
                if not folded:
                    return dist, functools.partial(dist.transform, eps), True
                draw = dist.transform(eps)
        if folded:  # per-row marginals of the K independent blocks, rows folded back
            dist = MarginalNormal(dist.loc.flatten(0, 1), dist.variance.flatten(0, 1))
            draw = draw.flatten(0, 1)
        return dist, functools.partial(_identity, draw), False

    def _marginal_output(
        self, x: Tensor, k: int
    ) -> tuple[Distribution, Callable[[], Tensor], bool]:
        """Each row drawn from its own marginal (``marginal_samples``): O(N² B), no B × B."""
        rows = x.shape[0] // k
        copies = x.unflatten(0, (k, rows))  # (K, B, ...)
        if k > 1 and bool((copies == copies[:1]).all()):
            mean, var = self._marginals(x[:rows])  # the K copies are one input: compute once
            mean = mean.expand(k, *mean.shape).flatten(0, 1)
            var = var.expand(k, *var.shape).flatten(0, 1)
        else:
            mean, var = self._marginals(x)
        dist = MarginalNormal(mean, var)
        if self.sampling == "mean":
            return dist, functools.partial(_identity, mean), False
        draw = mean + var.sqrt() * torch.randn_like(mean)
        return dist, functools.partial(_identity, draw), False

    def _frozen_output(self, x: Tensor) -> tuple[MultivariateNormalColumns, Tensor]:
        """The frozen function at ``x`` (one draw over every input it has seen)."""
        store = self._frozen_noise  # the layer's, or the frozen_sample context's own
        frozen = store.get("function")
        if not isinstance(frozen, FrozenFunction):
            frozen = store["function"] = FrozenFunction()
        xs, eps, index = frozen.locate(x, self.units)
        loc, cov = self._joint(xs)  # (*, R, units), (*, R, R)
        draw = MultivariateNormalColumns(loc, cov, layer=type(self).__name__).transform(eps)
        cov = cov.index_select(-2, index).index_select(-1, index)  # (*, B, B)
        dist = MultivariateNormalColumns(
            loc.index_select(-2, index), cov, layer=type(self).__name__
        )
        return dist, draw.index_select(-2, index)

    def _joint(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Posterior mean ``(*, B, units)`` and covariance ``(*, B, B)`` at ``x`` ``(*, B, D)``."""
        b = x.shape[-2]
        mean = self._mean(x)  # (*, B, units) or (*, B, 1)
        kxx = self._covariance(x, x)  # (*, B, B)
        if kxx.shape[-2:] != (b, b):
            raise ValueError(
                f"GaussianProcess expected covariance_fn(x, x) of shape (*, {b}, {b}), "
                f"got {tuple(kxx.shape)}"
            )
        if self.conditional_inputs is not None:
            chol, alpha = self._factor()
            kxc = self._cross(x)  # (*, B, N)
            mean = mean + kxc @ alpha  # (*, B, units)
            v = torch.linalg.solve_triangular(chol, kxc.mT, upper=False)  # (*, N, B)
            kxx = kxx - v.mT @ v
        mean = mean.to(torch.result_type(mean, kxx)).expand(kxx.shape[:-2] + (b, self.units))
        return mean, kxx

    def extra_repr(self) -> str:
        n = 0 if self.conditional_inputs is None else self.conditional_inputs.shape[0]
        named = "" if self.name is None else f", name={self.name!r}"
        return f"units={self.units}, num_conditioning={n}{named}"
