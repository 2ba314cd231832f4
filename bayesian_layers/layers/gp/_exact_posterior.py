"""The exact Gaussian-process posterior: conditioning data, the cached Cholesky factor,
joint and marginal posterior moments and the log marginal likelihood.

:class:`ExactPosterior` is the abstract base of :class:`~.exact.GaussianProcess`, which
adds the layer's input checks, sampling modes and output random variable. Subclasses
read the posterior through its two protected methods ``_joint(x)`` and
``_marginals(x, chunk_bytes)`` (validated inputs in the layer's dtype, autocast off).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..._checks import inverse_softplus
from ..base import BayesianLayer
from .iterative import gaussian_log_marginal_likelihood_cg
from .kernels import ExponentiatedQuadratic, Kernel
from .linalg import (
    JitterWarning,
    add_to_diagonal,
    cholesky_with_jitter,
    dense_matrix,
    full_precision,
    gaussian_log_marginal_likelihood,
)
from .means import ZeroMean

__all__ = ["ExactPosterior"]

Fn = Callable[..., Tensor]


def _is_transformed(t: Tensor) -> bool:
    """Whether ``t`` is a ``torch.func`` (functorch) wrapped tensor."""
    return torch._C._functorch.is_functorch_wrapped_tensor(t)


class ExactPosterior(BayesianLayer):
    r"""Abstract base: the posterior of ``units`` independent GPs ``f_u ~ GP(m_u, k)``
    given noisy observations ``(X_c, Y_c)`` (see :class:`~.exact.GaussianProcess` for the
    math and the arguments). Holds the conditioning data (:meth:`condition_on`), the
    observation noise, the Cholesky factor of ``K_cc + σ² I`` (cached while no gradient
    is recorded and the parameters are unchanged) and :meth:`log_marginal_likelihood`.
    """

    def __init__(
        self,
        units: int,
        *,
        mean_fn: Fn | None = None,
        covariance_fn: Fn | None = None,
        observation_noise: float | Tensor = 1e-6,
        trainable_noise: bool = True,
        trainable_conditioning: bool = False,
        solver: str = "cholesky",
        solver_options: dict[str, Any] | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
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

    # ------------------------------------------------------------- data
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
        if any(t is not None and t.is_inference() for t in tensors):
            return None  # inference tensors (made in torch.inference_mode) have no version
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

    def _marginals(self, x: Tensor, chunk_bytes: int) -> tuple[Tensor, Tensor]:
        """Marginal mean and variance ``(*, B, units)`` at validated ``x`` ``(*, B, D)``, rows
        in chunks of at most ``chunk_bytes`` of ``N × rows`` temporaries."""
        mean = self._mean(x)  # (*, B, units) or (*, B, 1)
        var = self._kernel_diag(x)  # (*, B)
        if self.conditional_inputs is not None:
            chol, alpha = self._factor()
            n = chol.shape[-1]
            rows = max(1, chunk_bytes // max(1, 2 * n * chol.element_size()))
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
