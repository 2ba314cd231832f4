"""Base class of covariance functions (kernels), their sums and products, and the
stable distance helpers the concrete kernels share (``layers/kernels.py``)."""

from __future__ import annotations

import functools
import numbers
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from .linalg import full_precision

__all__ = [
    "Kernel",
    "SumKernel",
    "ProductKernel",
    "inverse_softplus",
    "squared_distance",
    "exponentiated_quadratic",
    "distance",
]

_SOFTPLUS_THRESHOLD = 20.0  # torch's default: softplus(x) = x above it


def inverse_softplus(value: Tensor) -> Tensor:
    """``raw`` with ``softplus(raw) == value`` (to rounding) for positive ``value``."""
    return torch.where(value > _SOFTPLUS_THRESHOLD, value, torch.expm1(value).log())


def _centred(x1: Tensor, x2: Tensor) -> tuple[Tensor, Tensor]:
    shift = x1.detach().mean(dim=-2, keepdim=True)  # (*, 1, D); distances do not move
    return x1 - shift, x2 - shift


def _half_sq_norms(a: Tensor, b: Tensor) -> Tensor:
    """``-½|a_i|² - ½|b_j|²`` as ``(*, N, M)``."""
    return (-0.5 * a.pow(2).sum(-1))[..., :, None] + (-0.5 * b.pow(2).sum(-1))[..., None, :]


def _distance_grads(h: Tensor, a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Gradients of ``Σ h_ij · (-½|a_i - b_j|²)`` in ``a`` and ``b`` (summed to their shapes)."""
    grad_a = h @ b - h.sum(-1, keepdim=True) * a  # (*, N, D)
    grad_b = h.mT @ a - h.sum(-2).unsqueeze(-1) * b  # (*, M, D)
    return grad_a.sum_to_size(a.shape), grad_b.sum_to_size(b.shape)


class _SquaredDistance(torch.autograd.Function):
    """``|a_i - b_j|²`` by one matrix product; backward by two (no broadcast reductions).

    In the ``setup_context`` form, so ``torch.func`` (grad, jacrev, vmap) applies."""

    generate_vmap_rule = True

    @staticmethod
    def forward(a: Tensor, b: Tensor) -> Tensor:  # type: ignore[override]
        neg_half = _half_sq_norms(a, b).add_(a @ b.mT)  # -½|a - b|²
        return neg_half.clamp_max_(0.0).mul_(-2.0)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Tensor, Tensor], output: Tensor) -> None:
        ctx.save_for_backward(*inputs)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor]:
        a, b = ctx.saved_tensors
        return _distance_grads(-2.0 * grad, a, b)


def _augmented(
    x1: Tensor, x2: Tensor, amp: Tensor, length_scale: Tensor | None
) -> tuple[Tensor, Tensor, Tensor]:
    """``[a, -½|a|² + log amp², 1]`` and ``[b, 1, -½|b|²]`` for ``a, b = x/ℓ - shift``,
    and the shift."""
    a, b = (x1, x2) if length_scale is None else (x1 / length_scale, x2 / length_scale)
    shift = a.mean(dim=-2, keepdim=True)  # (*, 1, D); distances do not move
    a, b = a - shift, b - shift
    log_amp2 = amp.log().mul(2.0)
    one_a, one_b = a.new_ones(a.shape[:-1] + (1,)), b.new_ones(b.shape[:-1] + (1,))
    norm_a = a.square().sum(-1, keepdim=True).mul(-0.5).add(log_amp2)
    norm_b = b.square().sum(-1, keepdim=True).mul(-0.5)
    a_aug = torch.cat([a, norm_a, one_a], -1)  # (*, N, D + 2)
    b_aug = torch.cat([b, one_b, norm_b], -1)  # (*, M, D + 2)
    return a_aug, b_aug, shift


class _ExponentiatedQuadratic(torch.autograd.Function):
    """``amp² · exp(-½|x1_i/ℓ - x2_j/ℓ|²)`` fused: one matrix product and two elementwise
    passes forward (the squared norms and ``log amp²`` ride in two extra columns of the
    product), one elementwise pass and two products back (the augmented inputs are
    rebuilt there, O((N + M) D)). In the ``setup_context`` form, so ``torch.func``
    (grad, jacrev, vmap) applies."""

    generate_vmap_rule = True

    @staticmethod
    def forward(  # type: ignore[override]
        x1: Tensor, x2: Tensor, amp: Tensor, length_scale: Tensor | None
    ) -> Tensor:
        a_aug, b_aug, _ = _augmented(x1, x2, amp, length_scale)
        log_amp2 = amp.log().mul(2.0)
        return (a_aug @ b_aug.mT).clamp_max_(log_amp2).exp_()  # log amp² - ½|a - b|² ≤ log amp²

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        x1, x2, amp, length_scale = inputs
        ctx.save_for_backward(x1, x2, amp, length_scale, output)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        x1, x2, amp, length_scale, out = ctx.saved_tensors
        a_aug, b_aug, shift = _augmented(x1, x2, amp, length_scale)
        d = a_aug.shape[-1] - 2
        h = grad * out  # (*, N, M)
        ha = h @ b_aug  # (*, N, D + 2): [h b, row sums of h, h norm_b]
        hb = h.mT @ a_aug  # (*, M, D + 2): [hᵀ a, hᵀ norm_a, column sums of h]
        a, b = a_aug[..., :d], b_aug[..., :d]
        grad_a = ha[..., :d] - ha[..., d : d + 1] * a  # ∂/∂a of Σ h (-½|a - b|²)
        grad_b = hb[..., :d] - hb[..., d + 1 :] * b
        grad_amp = (ha[..., d].sum() * 2.0 / amp).reshape(amp.shape)
        grad_x1, grad_x2, grad_ls = grad_a, grad_b, None
        if length_scale is not None:
            grad_x1, grad_x2 = grad_a / length_scale, grad_b / length_scale
            if ctx.needs_input_grad[3]:  # a = x1/ℓ - shift: ∂a/∂ℓ = -(a + shift)/ℓ
                per_dim = (grad_a * (a + shift)).flatten(0, -2).sum(0)
                per_dim = per_dim + (grad_b * (b + shift)).flatten(0, -2).sum(0)
                grad_ls = (-per_dim / length_scale).sum_to_size(length_scale.shape)
        return grad_x1, grad_x2, grad_amp, grad_ls


def squared_distance(x1: Tensor, x2: Tensor) -> Tensor:
    """Squared Euclidean distances ``(*, N, M)`` between rows of ``(*, N, D)`` and ``(*, M, D)``.

    Uses one matrix product (fast for large N, M) on inputs centred at the mean of
    ``x1`` (which removes most of the cancellation of the ``|a|² + |b|² - 2a·b``
    expansion), clamped at zero; a closed-form backward (first order only).
    """
    a, b = _centred(x1, x2)
    with full_precision(a.device):
        return _SquaredDistance.apply(a, b)


def exponentiated_quadratic(
    x1: Tensor, x2: Tensor, amplitude: Tensor, length_scale: Tensor | None = None
) -> Tensor:
    """``amplitude² · exp(-½|x1_i/ℓ - x2_j/ℓ|²)``, ``(*, N, M)``, fused forward and backward.

    ``length_scale`` ``ℓ`` is a scalar or ``(D,)`` tensor (``None``: 1). Inputs are
    centred at the mean of ``x1/ℓ`` (which removes most of the cancellation of the
    ``|a|² + |b|² - 2a·b`` expansion) and the exponent is clamped at ``log amplitude²``;
    first-order gradients only.

    Example:
        >>> x = torch.tensor([[0.0], [1.0]])
        >>> exponentiated_quadratic(x, x, torch.tensor(2.0))[0].tolist()  # 4 exp(-1/2)
        [4.0, 2.4261226654052734]
    """
    tensors = [x1, x2, amplitude] + ([] if length_scale is None else [length_scale])
    dtype = functools.reduce(torch.promote_types, (t.dtype for t in tensors))
    if any(t.dtype != dtype for t in tensors):
        x1, x2, amplitude = x1.to(dtype), x2.to(dtype), amplitude.to(dtype)
        length_scale = None if length_scale is None else length_scale.to(dtype)
    if x1.shape[:-2] != x2.shape[:-2]:  # broadcast the batch dimensions up front
        batch = torch.broadcast_shapes(x1.shape[:-2], x2.shape[:-2])
        x1, x2 = x1.expand(batch + x1.shape[-2:]), x2.expand(batch + x2.shape[-2:])
    with full_precision(x1.device):
        return _ExponentiatedQuadratic.apply(x1, x2, amplitude, length_scale)


def distance(x1: Tensor, x2: Tensor) -> Tensor:
    """Euclidean distances ``(*, N, M)`` computed directly from differences.

    Exact zero on coincident points (no ``sqrt`` of a rounding error), with a zero
    (sub)gradient there instead of the NaN of ``sqrt(0)``'s derivative.
    """
    return torch.cdist(x1, x2, compute_mode="donot_use_mm_for_euclid_dist")


def _positive_tensor(owner: str, name: str, value: Any, scalar: bool, **factory: Any) -> Tensor:
    if isinstance(value, Tensor):
        tensor = value.detach().to(**{k: v for k, v in factory.items() if v is not None})
    else:
        tensor = torch.as_tensor(value, **factory)
    if not tensor.is_floating_point():
        tensor = tensor.to(factory.get("dtype") or torch.get_default_dtype())
    if tensor.dim() > (0 if scalar else 1):
        expected = "a scalar" if scalar else "a scalar or 1-d"
        raise ValueError(f"{owner} expected {name} to be {expected}, got {tuple(tensor.shape)}")
    if tensor.device.type != "meta" and not bool((torch.isfinite(tensor) & (tensor > 0)).all()):
        raise ValueError(f"{owner} expected {name} > 0 (finite), got {value}")
    return tensor


class Kernel(nn.Module):
    r"""A covariance function ``k(x, x')``: an ``nn.Module`` with trainable hyperparameters.

    Positive hyperparameters ``h`` are stored unconstrained as ``h_rho``
    (``nn.Parameter``) with ``h = softplus(h_rho)`` read through a property, so any
    optimiser keeps them positive. Kernels compose: ``k1 + k2`` is a
    :class:`SumKernel`, ``k1 * k2`` a :class:`ProductKernel`, and a positive number
    ``c`` gives ``c * k`` (a product with a trainable ``ConstantKernel(c)``).

    Shape:
        - ``forward(x1, x2=None)``: ``x1`` ``(*, N, D)``, ``x2`` ``(*, M, D)`` (batch
          dimensions broadcast; ``None`` means ``x1``) -> ``(*, N, M)``.
        - ``diag(x)``: ``(*, N, D)`` -> ``(*, N)``, ``k(x_i, x_i)`` in O(N D).

    Subclasses implement ``_matrix(x1, x2)`` and ``_diag(x)`` on validated inputs.
    """

    def forward(self, x1: Tensor, x2: Tensor | None = None) -> Tensor:
        """Kernel matrix ``(*, N, M)`` between the rows of ``x1`` and of ``x2``."""
        self._check(x1, "x1")
        if x2 is None:
            x2 = x1
        elif x2 is not x1:
            self._check(x2, "x2")
            if x1.shape[-1] != x2.shape[-1]:
                raise ValueError(
                    f"{type(self).__name__} expected x1 (*, N, D) and x2 (*, M, D) with the same "
                    f"D, got {tuple(x1.shape)} and {tuple(x2.shape)}"
                )
        return self._matrix(x1, x2)

    def diag(self, x: Tensor) -> Tensor:
        """Diagonal ``k(x_i, x_i)`` of ``k(x, x)``, shape ``(*, N)``, in O(N D)."""
        self._check(x, "x")
        return self._diag(x)

    def _matrix(self, x1: Tensor, x2: Tensor) -> Tensor:
        raise NotImplementedError

    def _diag(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    # ------------------------------------------------------------ helpers
    def _check(self, x: Any, arg: str) -> None:
        if not isinstance(x, Tensor):
            raise TypeError(f"{type(self).__name__} expected {arg} to be a Tensor, got {type(x)}")
        if x.dim() < 2 or not x.is_floating_point():
            raise ValueError(
                f"{type(self).__name__} expected a floating {arg} of shape (*, N, D), "
                f"got {x.dtype} of shape {tuple(x.shape)}"
            )

    def _add_positive(self, name: str, value: Any, *, scalar: bool = False, **factory: Any) -> None:
        """Register ``{name}_rho`` holding ``inverse_softplus(value)``; ``value`` must be > 0."""
        tensor = _positive_tensor(type(self).__name__, name, value, scalar, **factory)
        self.register_parameter(f"{name}_rho", nn.Parameter(inverse_softplus(tensor)))

    def _positive(self, name: str) -> Tensor:
        return F.softplus(getattr(self, f"{name}_rho"))

    def _factory(self) -> dict[str, Any]:
        for p in self.parameters():
            return {"device": p.device, "dtype": p.dtype}
        return {}

    def _as_kernel(self, other: Any) -> Kernel | None:
        if isinstance(other, Kernel):
            return other
        if isinstance(other, numbers.Real) and not isinstance(other, bool):
            from .kernels import ConstantKernel

            return ConstantKernel(float(other), **self._factory())
        return None

    # ------------------------------------------------------------ algebra
    def __add__(self, other: Any) -> Kernel:
        kernel = self._as_kernel(other)
        if kernel is None:
            return NotImplemented
        return SumKernel(self, kernel)

    def __radd__(self, other: Any) -> Kernel:
        if isinstance(other, numbers.Real) and other == 0:  # sum([k1, k2, ...]) starts at 0
            return self
        kernel = self._as_kernel(other)
        if kernel is None:
            return NotImplemented
        return SumKernel(kernel, self)

    def __mul__(self, other: Any) -> Kernel:
        kernel = self._as_kernel(other)
        if kernel is None:
            return NotImplemented
        return ProductKernel(self, kernel)

    def __rmul__(self, other: Any) -> Kernel:
        kernel = self._as_kernel(other)
        if kernel is None:
            return NotImplemented
        return ProductKernel(kernel, self)


class _Combination(Kernel):
    _op = ""
    kernels: nn.ModuleList

    def __init__(self, *kernels: Kernel) -> None:
        super().__init__()
        flat: list[Kernel] = []
        for k in kernels:
            if not isinstance(k, Kernel):
                raise TypeError(f"{type(self).__name__} expected Kernel terms, got {type(k)}")
            flat.extend(k.terms() if isinstance(k, type(self)) else [k])
        if len(flat) < 2:
            raise ValueError(
                f"{type(self).__name__} expected at least two kernels, got {len(flat)}"
            )
        self.kernels = nn.ModuleList(flat)

    def terms(self) -> list[Kernel]:
        """The summands or factors, in order."""
        return [cast(Kernel, k) for k in self.kernels]

    def extra_repr(self) -> str:
        return f"{self._op!r} of {len(self.kernels)} kernels"


class SumKernel(_Combination):
    """``k(x, x') = Σ_i k_i(x, x')``; built by ``k1 + k2``.

    Args:
        *kernels: two or more :class:`Kernel` terms (nested sums are flattened).

    Example:
        >>> from bayesian_layers.layers import ExponentiatedQuadratic, WhiteNoise
        >>> k = ExponentiatedQuadratic() + WhiteNoise(0.1)
        >>> x = torch.randn(5, 2)
        >>> k(x).shape, k.diag(x).shape
        (torch.Size([5, 5]), torch.Size([5]))
    """

    _op = "+"

    def _matrix(self, x1: Tensor, x2: Tensor) -> Tensor:
        first, *rest = self.terms()
        out = first(x1, x2)
        for k in rest:
            out = out + k(x1, x2)
        return out

    def _diag(self, x: Tensor) -> Tensor:
        first, *rest = self.terms()
        out = first.diag(x)
        for k in rest:
            out = out + k.diag(x)
        return out


class ProductKernel(_Combination):
    """``k(x, x') = Π_i k_i(x, x')`` (elementwise); built by ``k1 * k2`` or ``c * k``.

    Args:
        *kernels: two or more :class:`Kernel` factors (nested products are flattened).

    Example:
        >>> from bayesian_layers.layers import ExponentiatedQuadratic, Periodic
        >>> k = Periodic(period=1.0) * ExponentiatedQuadratic(length_scale=10.0)
        >>> k(torch.zeros(1, 1), torch.ones(1, 1)).item() > 0.99
        True
    """

    _op = "*"

    def _matrix(self, x1: Tensor, x2: Tensor) -> Tensor:
        first, *rest = self.terms()
        out = first(x1, x2)
        for k in rest:
            out = out * k(x1, x2)
        return out

    def _diag(self, x: Tensor) -> Tensor:
        first, *rest = self.terms()
        out = first.diag(x)
        for k in rest:
            out = out * k.diag(x)
        return out
