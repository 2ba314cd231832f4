"""Numerics shared by the Gaussian-process layers: a Cholesky factorisation that
retries with growing jitter and fails with a clear message, the exact log marginal
likelihood with a closed-form gradient, and full precision under autocast."""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

__all__ = [
    "NotPositiveDefiniteError",
    "JitterWarning",
    "dense_matrix",
    "cholesky_with_jitter",
    "default_jitter",
    "gaussian_log_marginal_likelihood",
    "full_precision",
    "add_to_diagonal",
]


def full_precision(device: torch.device) -> contextlib.AbstractContextManager:
    """Autocast off for ``device`` while it is on (a no-op context otherwise).

    Kernel matrices and their Cholesky factors need float32 at least: under bfloat16
    autocast a kernel's matrix product rounds distances to 3 significant digits, and
    the marginals of a GP layer came out wrong by about 0.1 on a unit prior. The GP
    layers compute inside this context, in their parameters' dtype, and return that
    dtype (as autocast does for ``softmax`` and losses).
    """
    if torch.is_autocast_enabled(device.type):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


def add_to_diagonal(matrix: Tensor, value: Tensor | float) -> Tensor:
    """``matrix + value · I`` for ``(*, N, N)`` matrices, as a copy with the diagonal
    added in place (no ``N × N`` identity; differentiable in both arguments)."""
    out = matrix.clone()
    out.diagonal(dim1=-2, dim2=-1).add_(value)
    return out


class NotPositiveDefiniteError(torch.linalg.LinAlgError, ValueError):
    """A kernel matrix stayed non-positive-definite after every jitter retry.

    Subclasses both :class:`torch.linalg.LinAlgError` and :class:`ValueError`, so
    either ``except`` clause catches it. Attributes: ``layer`` (who asked),
    ``min_eigenvalue`` (smallest eigenvalue of the matrix before jitter, over the
    batch) and ``jitter`` (the largest jitter tried).
    """

    def __init__(self, message: str, *, layer: str, min_eigenvalue: float, jitter: float):
        super().__init__(message)
        self.layer = layer
        self.min_eigenvalue = min_eigenvalue
        self.jitter = jitter


class JitterWarning(UserWarning):
    """A kernel matrix was factorised only after jitter was added to its diagonal."""


def jitter_reporter(owner: object, matrix: str, hint: str) -> Callable[[float], None]:
    """An ``on_jitter`` callback for :func:`cholesky_with_jitter` that warns once per ``owner``.

    The warning (a :class:`JitterWarning`) names the layer, the ``matrix`` that needed
    jitter, the relative jitter kept and a ``hint`` on how to avoid it; later calls
    of the same layer stay silent (the flag lives in ``owner.__dict__``).
    """

    def report(jitter: float) -> None:
        if owner.__dict__.get("_jitter_reported", False):
            return
        owner.__dict__["_jitter_reported"] = True
        warnings.warn(
            f"{type(owner).__name__}: {matrix} needed jitter {jitter:.1e} x mean diagonal "
            f"to be positive definite (reported once per layer); {hint}",
            JitterWarning,
            stacklevel=4,
        )

    return report


def dense_matrix(matrix: Any, *, owner: str, what: str) -> Tensor:
    """``matrix`` as a dense tensor: lazy tensors (GPyTorch's ``LazyEvaluatedKernelTensor``,
    linear operators) are evaluated with ``.to_dense()`` or ``.evaluate()``.

    Raises:
        TypeError: ``matrix`` is neither a tensor nor a lazy tensor; the message names
            ``owner`` and ``what`` (e.g. ``"covariance_fn"``).

    Example:
        >>> class Lazy:
        ...     def to_dense(self):
        ...         return torch.eye(2)
        >>> dense_matrix(Lazy(), owner="Demo", what="covariance_fn").shape
        torch.Size([2, 2])
    """
    if isinstance(matrix, Tensor):
        return matrix
    for method in ("to_dense", "evaluate"):
        fn = getattr(matrix, method, None)
        out = fn() if callable(fn) else None
        if isinstance(out, Tensor):
            return out
    raise TypeError(
        f"{owner} expected {what} to return a Tensor (or a lazy tensor with .to_dense() or "
        f".evaluate()), got {type(matrix).__name__}"
    )


def default_jitter(dtype: torch.dtype) -> float:
    """First jitter tried, relative to the mean diagonal: 1e-10 in float64, 1e-6 otherwise."""
    return 1e-10 if dtype == torch.float64 else 1e-6


def cholesky_with_jitter(
    matrix: Tensor,
    *,
    layer: str,
    max_tries: int = 4,
    initial_jitter: float | None = None,
    growth: float = 10.0,
    on_jitter: Callable[[float], None] | None = None,
    scale: Tensor | Callable[[], Tensor] | None = None,
) -> Tensor:
    r"""Lower Cholesky factor of a symmetric positive-definite (batch of) matrix.

    The factorisation is tried first as given. Every batch element that fails is
    retried with ``jitter_k · scale · I`` added, where ``jitter_k = initial_jitter ·
    growth^k`` for ``k = 0, ..., max_tries - 1`` and ``scale`` is ``mean(|diag|)``
    unless given (so the jitter is relative to the scale of the matrix, or of the
    computation that rounded it). Elements that succeed are never
    jittered. When the last try still fails, a :class:`NotPositiveDefiniteError`
    names ``layer`` and the smallest eigenvalue. Differentiable (through
    :func:`torch.linalg.cholesky_ex`); works in any floating dtype.

    Args:
        matrix: ``(*, N, N)`` symmetric matrices.
        layer: name of the caller, used in error messages.
        max_tries: number of jittered retries after the plain attempt (≥ 0).
        initial_jitter: first relative jitter; default :func:`default_jitter`.
        growth: factor between consecutive jitters (> 1).
        on_jitter: called with the largest relative jitter that was kept, when one
            was needed (the GP layers warn with it, once per layer).
        scale: ``(*,)`` (or broadcasting) scale the jitter is relative to, or a function
            returning it (called only when a jitter is needed); default the mean
            absolute diagonal of each matrix. A difference ``A - B`` of two large
            matrices (a posterior covariance) has rounding errors on the scale of ``A``,
            not of its own, possibly much smaller, diagonal: pass ``A``'s.

    Returns:
        ``(*, N, N)`` lower-triangular factors ``L`` with ``L Lᵀ ≈ matrix``.

    Raises:
        ValueError: bad shape or arguments, or a matrix with NaN/inf entries.
        NotPositiveDefiniteError: no jitter up to the largest made it succeed.

    Example:
        >>> a = torch.ones(3, 3, dtype=torch.float64)  # rank one
        >>> L = cholesky_with_jitter(a, layer="Demo")
        >>> bool(torch.allclose(L @ L.mT, a, atol=1e-8))
        True
    """
    if matrix.dim() < 2 or matrix.shape[-1] != matrix.shape[-2]:
        raise ValueError(
            f"{layer}: cholesky_with_jitter expected square matrices of shape (*, N, N), "
            f"got {tuple(matrix.shape)}"
        )
    if max_tries < 0:
        raise ValueError(f"{layer}: cholesky_with_jitter expected max_tries >= 0, got {max_tries}")
    if growth <= 1.0:
        raise ValueError(f"{layer}: cholesky_with_jitter expected growth > 1, got {growth}")
    if initial_jitter is None:
        initial_jitter = default_jitter(matrix.dtype)
    elif not initial_jitter > 0:
        raise ValueError(
            f"{layer}: cholesky_with_jitter expected initial_jitter > 0, got {initial_jitter}"
        )
    factor, info = torch.linalg.cholesky_ex(matrix)
    if not bool((info != 0).any()):
        return factor
    if not bool(torch.isfinite(matrix).all()):
        raise ValueError(f"{layer}: the kernel matrix has NaN or infinite entries")
    n = matrix.shape[-1]
    eye = torch.eye(n, dtype=matrix.dtype, device=matrix.device)
    # (*,) scale of each matrix: mean absolute diagonal (1 where the diagonal is all zero)
    relative_to = "mean diagonal" if scale is None else "the given scale"
    if scale is None:
        scale = matrix.detach().diagonal(dim1=-2, dim2=-1).abs().mean(-1)
    else:
        scale = scale() if callable(scale) else scale
        scale = scale.detach().to(matrix).abs().expand(matrix.shape[:-2])
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    jitter = initial_jitter
    level = torch.zeros_like(scale)  # (*,) jitter kept by each matrix, 0 where none needed
    for _ in range(max_tries):
        level = torch.where(info != 0, jitter * scale, level)
        factor, info = torch.linalg.cholesky_ex(matrix + level[..., None, None] * eye)
        if not bool((info != 0).any()):
            if on_jitter is not None:
                on_jitter(jitter)
            return factor
        jitter *= growth
    largest = jitter / growth if max_tries > 0 else 0.0
    min_eig = float(torch.linalg.eigvalsh(matrix.detach().to(torch.float64)).min())
    hint = "raise the observation noise" + (
        "" if matrix.dtype == torch.float64 else " or use float64 (dtype=torch.float64)"
    )
    raise NotPositiveDefiniteError(
        f"{layer}: the kernel matrix of size {n} is not positive definite (smallest "
        f"eigenvalue {min_eig:.3e}) even with jitter {largest:.1e} x {relative_to} added "
        f"after {max_tries} tries; check the kernel hyperparameters and duplicate inputs, "
        f"or {hint}",
        layer=layer,
        min_eigenvalue=min_eig,
        jitter=largest,
    )


class _LogMarginalLikelihood(torch.autograd.Function):
    """Forward: one Cholesky. Backward: the closed form ``½(ααᵀ - U K⁻¹)``, one
    ``cholesky_inverse``; about 1 N³ flops in all instead of autograd through the
    factorisation and the solves (several N³). In the ``setup_context`` form (the
    factor and ``α`` are extra, non-differentiable outputs), so ``torch.func.grad`` and
    ``jacrev`` apply; no ``vmap`` (the jitter retries branch on the data)."""

    @staticmethod
    def forward(  # type: ignore[override]
        matrix: Tensor,
        noise: Tensor,
        residual: Tensor,
        layer: str,
        on_jitter: Callable[[float], None] | None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        matrix = add_to_diagonal(matrix, noise)  # K + σ² I
        chol = cholesky_with_jitter(matrix, layer=layer, on_jitter=on_jitter)
        alpha = torch.cholesky_solve(residual, chol)  # (N, U)
        n, units = residual.shape
        half_log_det = chol.diagonal().log().sum()
        quad = (residual * alpha).sum()
        value = -0.5 * quad - units * (half_log_det + 0.5 * n * math.log(2 * math.pi))
        return value, chol, alpha

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, ...]) -> None:
        _, chol, alpha = output
        ctx.mark_non_differentiable(chol, alpha)
        ctx.save_for_backward(chol, alpha)
        ctx.noise_shape = inputs[1].shape

    @staticmethod
    @once_differentiable
    def backward(
        ctx: Any, grad: Tensor, _grad_chol: Tensor | None, _grad_alpha: Tensor | None
    ) -> tuple[Tensor | None, Tensor | None, Tensor | None, None, None]:
        chol, alpha = ctx.saved_tensors
        grad_matrix = grad_noise = grad_residual = None
        if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
            # LAPACK potri, 2N³/3 flops: 2.3x faster than potrs on the identity (2N³) on
            # quiet cores at N = 1000 and 4000; slower than it only when many more threads
            # than cores are busy (about 2x with 8 busy processes on 2 cores)
            inverse = torch.cholesky_inverse(chol)  # (N, N)
            units = alpha.shape[-1]
            grad_matrix = torch.addmm(inverse, alpha, alpha.mT, beta=-units).mul_(0.5 * grad)
            grad_noise = grad_matrix.diagonal().sum().reshape(ctx.noise_shape)
        if ctx.needs_input_grad[2]:
            grad_residual = -grad * alpha
        return grad_matrix, grad_noise, grad_residual, None, None


def gaussian_log_marginal_likelihood(
    matrix: Tensor,
    residual: Tensor,
    *,
    layer: str,
    noise: Tensor | float = 0.0,
    on_jitter: Callable[[float], None] | None = None,
) -> Tensor:
    r"""``Σ_u log N(r_u | 0, K)`` for the columns ``r_u`` of ``residual``, with a fast gradient.

    ``K = matrix + noise · I``; adding the noise inside saves the autograd passes of an
    ``N × N`` sum (its gradient is the trace of the matrix gradient).

    ``-½ Σ_u r_uᵀ K⁻¹ r_u - U · ½ log|K| - U · N/2 · log 2π``. ``K`` is factorised with
    :func:`cholesky_with_jitter`; the gradient is the closed form
    ``∂/∂K = ½ (ααᵀ - U K⁻¹)``, ``∂/∂r = -α`` with ``α = K⁻¹ r`` (first order only).

    Args:
        matrix: ``(N, N)`` symmetric matrix (e.g. ``K_cc``).
        residual: ``(N, U)`` centred observations ``r``.
        layer: caller's name for error messages.
        noise: scalar (tensor) ``σ²`` added to the diagonal.
        on_jitter: as in :func:`cholesky_with_jitter`.

    Returns:
        A scalar tensor.

    Example:
        >>> k = torch.eye(2, dtype=torch.float64) * 2
        >>> r = torch.ones(2, 1, dtype=torch.float64)
        >>> v = gaussian_log_marginal_likelihood(k, r, layer="Demo")
        >>> bool(torch.isclose(v, torch.distributions.MultivariateNormal(
        ...     torch.zeros(2, dtype=torch.float64), k).log_prob(r[:, 0])))
        True
    """
    if matrix.dim() != 2 or residual.dim() != 2 or residual.shape[0] != matrix.shape[0]:
        raise ValueError(
            f"{layer}: gaussian_log_marginal_likelihood expected matrix (N, N) and residual "
            f"(N, U), got {tuple(matrix.shape)} and {tuple(residual.shape)}"
        )
    noise_t = torch.as_tensor(noise, dtype=matrix.dtype, device=matrix.device)
    with full_precision(matrix.device):
        value, _, _ = _LogMarginalLikelihood.apply(matrix, noise_t, residual, layer, on_jitter)
        return value
