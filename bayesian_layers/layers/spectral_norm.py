r"""Spectral normalisation with a norm bound (SNGP; Liu et al., 2020, §3.2).

:func:`spectral_normalization` registers :class:`SpectralNormalization` as a
``torch.nn.utils.parametrize`` parametrization of a layer's weight, so that the layer
computes with

.. math:: W_\text{eff} = W \cdot \min\bigl(1,\ c / \hat\sigma(W)\bigr)
          = W \cdot \frac{c}{\max(\hat\sigma(W),\, c)}

where :math:`\hat\sigma(W) = u^\top W v` is a power-iteration estimate of the largest
singular value and :math:`c` the norm bound. Unlike ``torch.nn.utils.parametrizations
.spectral_norm`` (which divides by :math:`\hat\sigma` always, so the norm is exactly 1),
a weight whose estimated norm is already at most :math:`c` is left exactly as it is: SNGP
needs the hidden map to be bi-Lipschitz (distance preserving), not normalised.

A function rather than a wrapper module, as torch's own ``spectral_norm``,
``weight_norm`` and ``orthogonal``: the layer keeps its class (an ``nn.Linear`` stays an
``nn.Linear``, so ``isinstance``, ``in_features``, hooks, ``bl.to_bayesian`` and torch's
init and tensor-parallel utilities see it as before), and its state dict has torch's
parametrization layout (``parametrizations.weight.original`` and
``parametrizations.weight.0.u`` / ``.v``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.conv import _ConvTransposeNd
from torch.nn.parameter import is_lazy
from torch.nn.utils import parametrize

from .._checks import check_count, check_real

__all__ = [
    "SpectralNormalization",
    "spectral_normalization",
    "is_spectral_normalized",
    "power_iteration",
]

#: power iterations run once when the parametrization is registered (as torch does)
WARMUP_ITERATIONS = 15


def power_iteration(
    matrix: Tensor, u: Tensor, num_iterations: int = 1, *, eps: float = 1e-12
) -> tuple[Tensor, Tensor, Tensor]:
    r"""Power iteration for the largest singular value of ``matrix``.

    Each step is :math:`v \leftarrow W^\top u / \lVert W^\top u\rVert`,
    :math:`u \leftarrow W v / \lVert W v\rVert`; the estimate is
    :math:`\hat\sigma = u^\top W v = \lVert W v\rVert \le \sigma_\max`. Its relative error
    falls like :math:`(\sigma_2/\sigma_1)^{2k}` after :math:`k` steps. Pure: no state,
    no gradient tracking of its own (call it under ``torch.no_grad()`` for the update).

    Args:
        matrix: ``W``, shape ``(m, n)``.
        u: the current left singular vector estimate, shape ``(m,)`` (unit norm).
        num_iterations: ``k >= 1``.
        eps: floor of the norms (a zero matrix gives zero vectors, not NaN).

    Returns:
        ``(u, v, sigma)``: shapes ``(m,)``, ``(n,)``, ``()``.

    Example:
        >>> import torch
        >>> w = torch.diag(torch.tensor([3.0, 1.0]))
        >>> u, v, sigma = power_iteration(w, torch.tensor([0.6, 0.8]), 20)
        >>> round(float(sigma), 4)
        3.0
    """
    v = u.new_zeros(matrix.shape[1])
    for _ in range(num_iterations):
        v = F.normalize(matrix.mT @ u, dim=0, eps=eps)  # (n,)
        u = F.normalize(matrix @ v, dim=0, eps=eps)  # (m,)
    return u, v, torch.dot(u, matrix @ v)


class SpectralNormalization(nn.Module):
    r"""Parametrization ``W ↦ W · c / max(σ̂(W), c)``: the weight's spectral norm bounded by ``c``.

    Registered on a layer by :func:`spectral_normalization` (``torch.nn.utils.parametrize``);
    not called directly. The weight is read as the matrix ``(W.shape[dim], rest)``: rows
    the output units (``dim=0``: ``nn.Linear``, ``nn.Conv{1,2,3}d``; ``dim=1`` for
    transposed convolutions). For a convolution this is the reshaped kernel matrix
    ``(out_channels, in_channels/groups · k₁ · k₂ ...)``, as in torch and in Miyato et al.
    (2018), not the operator norm of the convolution on a given input size (Edward2's
    ``SpectralNormalizationConv2D``; that one depends on the input's spatial size).

    In training mode each call runs ``num_power_iterations`` steps of
    :func:`power_iteration` from the stored ``u`` and writes ``u``, ``v`` back (buffers,
    so they are in the state dict and follow ``.to()``); in evaluation mode ``u``, ``v``
    are read only. The gradient flows through ``σ̂ = uᵀ W v`` with ``u``, ``v`` held
    fixed, as in Miyato et al. Since ``σ̂ ≤ σ_max``, the bound holds once the estimate
    has converged (a few training steps from the warm start); a weight with
    ``σ̂ ≤ c`` is returned unchanged (multiplied by exactly 1).

    Args:
        weight: the weight to normalise (for the sizes of ``u``, ``v`` and their warm
            start: ``WARMUP_ITERATIONS`` power iterations from a random ``u``).
        norm_bound: ``c > 0``, the bound on the spectral norm (SNGP's default 0.95).
        num_power_iterations: power iterations per training call (``>= 1``).
        dim: the output dimension of the weight.
        eps: floor of the norms in the power iteration.

    Attributes:
        u: ``(W.shape[dim],)`` buffer, the left singular vector estimate.
        v: ``(numel / W.shape[dim],)`` buffer, the right singular vector estimate.

    Example:
        >>> import torch
        >>> layer = spectral_normalization(torch.nn.Linear(4, 3), norm_bound=0.5)
        >>> sn = layer.parametrizations.weight[0]
        >>> sn.u.shape, sn.v.shape, sn.norm_bound
        (torch.Size([3]), torch.Size([4]), 0.5)
    """

    def __init__(
        self,
        weight: Tensor,
        *,
        norm_bound: float = 0.95,
        num_power_iterations: int = 1,
        dim: int = 0,
        eps: float = 1e-12,
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        self.norm_bound = check_real(owner, "norm_bound", norm_bound, strict=True)
        self.num_power_iterations = check_count(owner, "num_power_iterations", num_power_iterations)
        self.eps = check_real(owner, "eps", eps, strict=True)
        if not isinstance(weight, Tensor) or weight.dim() < 2 or not weight.is_floating_point():
            got = f"{weight.dtype} {tuple(weight.shape)}" if isinstance(weight, Tensor) else weight
            raise ValueError(f"{owner} expected a floating weight with at least 2 dims, got {got}")
        rank = weight.dim()
        if isinstance(dim, bool) or not isinstance(dim, int) or not -rank <= dim < rank:
            raise ValueError(f"{owner} expected `dim` in [-{weight.dim()}, {weight.dim()}) for "
                             f"a weight of shape {tuple(weight.shape)}, got {dim!r}")  # fmt: skip
        self.dim = dim % weight.dim()
        with torch.no_grad():
            matrix = self.matrix(weight.detach())  # (m, n)
            u0 = F.normalize(torch.randn_like(matrix[:, 0]), dim=0, eps=self.eps)
            u, v, _ = power_iteration(matrix, u0, WARMUP_ITERATIONS, eps=self.eps)
        self.u: Tensor
        self.v: Tensor
        self.register_buffer("u", u)  # (m,)
        self.register_buffer("v", v)  # (n,)

    def extra_repr(self) -> str:
        return (f"norm_bound={self.norm_bound}, num_power_iterations="
                f"{self.num_power_iterations}, dim={self.dim}")  # fmt: skip

    def matrix(self, weight: Tensor) -> Tensor:
        """The weight as the matrix ``(W.shape[dim], rest)`` whose norm is bounded."""
        w = weight if self.dim == 0 else weight.movedim(self.dim, 0)
        return w.reshape(w.shape[0], -1)  # (m, n)

    def spectral_norm_estimate(self, weight: Tensor) -> Tensor:
        """``σ̂ = uᵀ W v`` from the stored ``u``, ``v`` (no update): a scalar tensor."""
        return torch.dot(self.u, self.matrix(weight) @ self.v)

    def forward(self, weight: Tensor) -> Tensor:
        matrix = self.matrix(weight)  # (m, n)
        if self.training:
            with torch.no_grad():
                u, v, _ = power_iteration(
                    matrix.detach(), self.u, self.num_power_iterations, eps=self.eps
                )
                self.u.copy_(u)
                self.v.copy_(v)
        # clones: the buffers may be updated in place before backward runs
        u = self.u.clone(memory_format=torch.contiguous_format)
        v = self.v.clone(memory_format=torch.contiguous_format)
        sigma = torch.dot(u, matrix @ v)  # σ̂ = uᵀ W v, gradient through W only
        c = self.norm_bound
        # W itself (not W·c/c, which rounds) when σ̂ <= c; the clamp keeps 1/σ̂ finite there
        return torch.where(sigma > c, weight * (c / sigma.clamp_min(c)), weight)

    def right_inverse(self, value: Tensor) -> Tensor:
        """Assigning a weight stores it as the unnormalised original."""
        return value


def is_spectral_normalized(module: nn.Module, name: str = "weight") -> bool:
    """Whether :func:`spectral_normalization` was applied to ``module.<name>``.

    Example:
        >>> import torch
        >>> is_spectral_normalized(spectral_normalization(torch.nn.Linear(2, 2)))
        True
    """
    if not parametrize.is_parametrized(module, name):
        return False
    chain = module.parametrizations[name]  # type: ignore[index]
    return any(isinstance(p, SpectralNormalization) for p in chain)


def spectral_normalization(
    module: nn.Module,
    *,
    norm_bound: float = 0.95,
    num_power_iterations: int = 1,
    name: str = "weight",
    dim: int | None = None,
    eps: float = 1e-12,
) -> nn.Module:
    r"""Bound the spectral norm of ``module``'s weight by ``c``, in place; returns ``module``.

    Registers :class:`SpectralNormalization` on ``module.<name>`` with
    ``torch.nn.utils.parametrize``: the layer then computes with
    ``W · c / max(σ̂(W), c)``, the power iteration advances in training mode, and the
    trainable parameter becomes ``module.parametrizations.<name>.original``. Works for
    any layer with a floating weight of at least 2 dims (``nn.Linear``,
    ``nn.Conv{1,2,3}d``, ``nn.ConvTranspose{1,2,3}d``, ``nn.Bilinear``, ...), in the
    state dict (``u``, ``v`` are buffers) and under ``torch.compile``.

    Args:
        module: the layer.
        norm_bound: ``c > 0`` (SNGP: 0.95; Liu et al. try 0.95 to 6 on CIFAR).
        num_power_iterations: power iterations per training call (``>= 1``).
        name: the parameter to normalise.
        dim: the output dimension of the weight; ``None``: 1 for transposed
            convolutions, else 0.
        eps: floor of the norms in the power iteration.

    Raises:
        TypeError: ``module`` is not a module, or ``module.<name>`` is not a parameter
            (a Bayesian layer's random weight).
        ValueError: no such parameter, an uninitialized lazy one, fewer than 2 dims, a
            second spectral normalisation of the same weight, or a bad hyperparameter.

    Example:
        >>> import torch
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> layer = spectral_normalization(torch.nn.Linear(8, 8), norm_bound=0.5)
        >>> with torch.no_grad():
        ...     layer.weight = 3 * torch.eye(8)  # stored as the original
        ...     for _ in range(3):
        ...         _ = layer(torch.randn(2, 8))  # training calls: power iteration
        ...     print(round(float(torch.linalg.matrix_norm(layer.weight, 2)), 4))
        0.5
    """
    owner = "spectral_normalization"
    if not isinstance(module, nn.Module):
        raise TypeError(f"{owner} expected an nn.Module, got {type(module).__name__}")
    if not isinstance(name, str):
        raise TypeError(f"{owner} expected `name` to be a str, got {name!r}")
    layer = type(module).__name__
    if parametrize.is_parametrized(module, name):
        if is_spectral_normalized(module, name):
            raise ValueError(f"{owner}: {layer}.{name} is already spectral-normalized")
        weight = getattr(module, name)
    else:
        weight = module._parameters.get(name) if name in module._parameters else None
        if weight is None:
            found = getattr(module, name, None)
            if found is not None and not isinstance(found, nn.Parameter):
                raise TypeError(f"{owner} expected {layer}.{name} to be an nn.Parameter (a "
                                f"deterministic weight), got {type(found).__name__}")  # fmt: skip
            raise ValueError(f"{owner}: {layer} has no parameter {name!r}")
    if is_lazy(weight):
        raise ValueError(f"{owner}: {layer}.{name} is not initialized yet (a lazy layer): "
                         "call the model once on an input first")  # fmt: skip
    if dim is None:
        dim = 1 if isinstance(module, _ConvTransposeNd) else 0
    if weight.dim() < 2:
        raise ValueError(f"{owner} expected {layer}.{name} with at least 2 dims, got shape "
                         f"{tuple(weight.shape)}")  # fmt: skip
    parametrization = SpectralNormalization(
        weight.detach(), norm_bound=norm_bound, num_power_iterations=num_power_iterations,
        dim=dim, eps=eps,
    )  # fmt: skip
    parametrize.register_parametrization(module, name, parametrization)
    return module
