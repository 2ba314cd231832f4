"""Reversible layers: RealNVP, MaskedAutoregressiveFlow, Permute, InvertibleConv1x1.

:class:`MADE` (their autoregressive network, :mod:`.made`) and :class:`ActNorm`
(:mod:`.actnorm`) live in their own files and are re-exported here.

All follow the protocol of :mod:`bayesian_layers.layers.reversible.base`: tensor in,
tensor out; random variable in, transformed random variable out.

Network convention (``RealNVP`` and ``MaskedAutoregressiveFlow``): for a
transformed part of ``d`` features, ``network(x_cond)`` returns either
``(..., d, 2)`` (``[..., 0]`` the shift, ``[..., 1]`` the raw log-scale; what
:class:`MADE` with ``units=2`` gives) or ``(..., 2 * d)`` (first ``d`` the shift,
last ``d`` the raw log-scale; what an MLP gives). The raw log-scale ``r`` is
stabilised as ``log_scale = c * tanh(r / c)`` with ``c = log_scale_bound``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..._checks import check_count, check_real
from ..base import parameter_dtype
from ._util import call_naming, check_real_input
from .actnorm import ActNorm
from .base import ReversibleLayer
from .made import MADE

__all__ = [
    "MADE",
    "RealNVP",
    "MaskedAutoregressiveFlow",
    "ActNorm",
    "Permute",
    "InvertibleConv1x1",
]


def _shift_and_log_scale(
    layer: nn.Module, out: Tensor, d: int, bound: float, cond_dim: int
) -> tuple[Tensor, Tensor]:
    """Split a network output into shift and stabilised log-scale (module docstring)."""
    if out.dim() == cond_dim + 1 and out.shape[-2:] == (d, 2):
        shift, raw = out[..., 0], out[..., 1]
    elif out.dim() == cond_dim and out.shape[-1] == 2 * d:
        shift, raw = out[..., :d], out[..., d:]
    else:
        raise ValueError(
            f"{type(layer).__name__} expected `network` to return shape (..., {d}, 2) or "
            f"(..., {2 * d}), got {tuple(out.shape)}"
        )
    return shift, bound * torch.tanh(raw / bound)


class RealNVP(ReversibleLayer):
    """Affine coupling layer (Dinh et al., 2017).

    The last dim is split at ``D // 2`` into ``x1 = x[..., :D//2]`` and
    ``x2 = x[..., D//2:]``. With ``flip=False`` ``x1`` is kept and conditions
    ``y2 = x2 * exp(s(x1)) + t(x1)``; with ``flip=True`` the roles swap. ``network``
    follows the module's convention (``MADE`` needs equal halves: even ``D``).
    ``log_det_jacobian(x) = sum(s)``; ``log_det_jacobian_from_output(y)`` is the same
    sum read on the output (its conditioning part is the input's).

    Args:
        network: maps the conditioning part to shift and raw log-scale.
        flip: condition on the second half instead of the first.
        log_scale_bound: ``c`` of ``log_scale = c * tanh(raw / c)``.

    Shape:
        ``(..., D)`` to ``(..., D)``; event dim 1.

    Example:
        >>> import torch
        >>> layer = RealNVP(MADE(hidden_dims=[8]))
        >>> x = torch.randn(5, 4)
        >>> torch.allclose(layer.reverse(layer(x)), x, atol=1e-6)
        True
    """

    event_dim = 1

    def __init__(
        self, network: nn.Module, *, flip: bool = False, log_scale_bound: float = 3.0
    ) -> None:
        super().__init__()
        if not callable(network):
            raise TypeError(f"RealNVP expected `network` a module, got {type(network).__name__}")
        self.network = network
        self.flip = flip
        self.log_scale_bound = check_real(
            type(self).__name__, "log_scale_bound", log_scale_bound, strict=True
        )

    def _split(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = check_real_input(self, x, 1, dtype=parameter_dtype(self.network))
        if x.shape[-1] < 2:
            raise ValueError(f"RealNVP expected at least 2 features, got shape {tuple(x.shape)}")
        k = x.shape[-1] // 2
        a, b = x[..., :k], x[..., k:]
        return (b, a) if self.flip else (a, b)  # (conditioning, transformed)

    def _join(self, cond: Tensor, trans: Tensor) -> Tensor:
        return torch.cat([trans, cond] if self.flip else [cond, trans], dim=-1)

    def _params(self, cond: Tensor, d: int) -> tuple[Tensor, Tensor]:
        out = call_naming(type(self).__name__, self.network, cond)
        return _shift_and_log_scale(self, out, d, self.log_scale_bound, cond.dim())

    def forward(self, x: Tensor) -> Tensor:
        cond, trans = self._split(x)
        shift, log_scale = self._params(cond, trans.shape[-1])
        return self._join(cond, trans * torch.exp(log_scale) + shift)

    def reverse(self, y: Tensor) -> Tensor:
        return self.reverse_and_log_det(y)[0]

    def log_det_jacobian(self, x: Tensor) -> Tensor:
        cond, trans = self._split(x)
        return self._params(cond, trans.shape[-1])[1].sum(-1)

    def log_det_jacobian_from_output(self, y: Tensor) -> Tensor:
        """``log |det dy/dx|`` from the output ``y``: one network pass.

        The conditioning part passes through unchanged and alone sets the log-scale,
        so this is ``log_det_jacobian`` read on ``y``.
        """
        return self.log_det_jacobian(y)

    def reverse_and_log_det(self, y: Tensor) -> tuple[Tensor, Tensor]:
        """``(reverse(y), log_det_jacobian(reverse(y)))`` from one network pass."""
        cond, trans = self._split(y)
        shift, log_scale = self._params(cond, trans.shape[-1])
        return self._join(cond, (trans - shift) * torch.exp(-log_scale)), log_scale.sum(-1)

    def extra_repr(self) -> str:
        return f"flip={self.flip}, log_scale_bound={self.log_scale_bound}"


class MaskedAutoregressiveFlow(ReversibleLayer):
    """Affine autoregressive flow (Papamakarios et al., 2017): fast density.

    Data ``y`` from base ``x`` by ``y_i = x_i * exp(s_i(y_<i)) + t_i(y_<i)`` with an
    autoregressive ``network`` (a :class:`MADE` with ``units=2``; any order) read
    on the *output*. So ``reverse`` (data to base) and the log-density take one
    network pass, and ``forward`` (sampling) takes ``D`` sequential passes.
    ``log_det_jacobian_from_output(y) = sum_i s_i(y_<i)`` lets a transformed
    random variable's ``log_prob`` skip the sequential pass.

    Args:
        network: autoregressive map from ``y`` to shift and raw log-scale (module convention).
        log_scale_bound: ``c`` of ``log_scale = c * tanh(raw / c)``.

    Shape:
        ``(..., D)`` to ``(..., D)``; event dim 1.

    Example:
        >>> import torch
        >>> flow = MaskedAutoregressiveFlow(MADE(hidden_dims=[8]))
        >>> y = torch.randn(5, 3)
        >>> torch.allclose(flow(flow.reverse(y)), y, atol=1e-5)
        True
    """

    event_dim = 1

    def __init__(self, network: nn.Module, *, log_scale_bound: float = 3.0) -> None:
        super().__init__()
        if not callable(network):
            raise TypeError(
                "MaskedAutoregressiveFlow expected `network` a module, "
                f"got {type(network).__name__}"
            )
        self.network = network
        self.log_scale_bound = check_real(
            type(self).__name__, "log_scale_bound", log_scale_bound, strict=True
        )

    def _params(self, y: Tensor) -> tuple[Tensor, Tensor]:
        y = check_real_input(self, y, 1, dtype=parameter_dtype(self.network))
        return _shift_and_log_scale(
            self,
            call_naming(type(self).__name__, self.network, y),
            y.shape[-1],
            self.log_scale_bound,
            y.dim(),
        )

    def forward(self, x: Tensor) -> Tensor:
        x = check_real_input(self, x, 1, dtype=parameter_dtype(self.network))
        y = torch.zeros_like(x)
        for _ in range(x.shape[-1]):  # entry i is final after i + 1 passes
            shift, log_scale = self._params(y)
            y = x * torch.exp(log_scale) + shift
        return y

    def reverse(self, y: Tensor) -> Tensor:
        return self.reverse_and_log_det(y)[0]

    def log_det_jacobian(self, x: Tensor) -> Tensor:
        return self.log_det_jacobian_from_output(self.forward(x))

    def log_det_jacobian_from_output(self, y: Tensor) -> Tensor:
        """``log |det dy/dx|`` from the output ``y``: one network pass."""
        return self._params(y)[1].sum(-1)

    def reverse_and_log_det(self, y: Tensor) -> tuple[Tensor, Tensor]:
        """``(reverse(y), log_det_jacobian(reverse(y)))`` from one network pass."""
        shift, log_scale = self._params(y)
        return (y - shift) * torch.exp(-log_scale), log_scale.sum(-1)

    def extra_repr(self) -> str:
        return f"log_scale_bound={self.log_scale_bound}"


_REPR_MAX = 8  # a longer permutation is shown as its first three entries and its last


def _permutation(owner: str, permutation: object, seed: int) -> Tensor:
    """A permutation of ``range(D)`` as a long tensor, or a random one for an int ``D``."""
    if isinstance(permutation, int) and not isinstance(permutation, bool):
        if permutation < 1:
            raise ValueError(
                f"{owner} expected `permutation` to be a positive size or a permutation, "
                f"got {permutation}"
            )
        return torch.randperm(permutation, generator=torch.Generator().manual_seed(seed))
    try:
        perm = torch.as_tensor(permutation)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(
            f"{owner} expected `permutation` to be an int or a sequence of ints, "
            f"got {permutation!r}"
        ) from None
    if perm.dtype == torch.bool or perm.is_floating_point() or perm.is_complex():
        raise TypeError(f"{owner} expected `permutation` of ints, got dtype {perm.dtype}")
    perm = perm.to(torch.long).flatten()
    if perm.numel() == 0 or not torch.equal(perm.sort().values, torch.arange(perm.numel())):
        raise ValueError(
            f"{owner} expected `permutation` to be a permutation of range(D), D >= 1, "
            f"got {perm.tolist()}"
        )
    return perm


class Permute(ReversibleLayer):
    """Fixed permutation of the last dim: ``y[..., i] = x[..., permutation[i]]``.

    Args:
        permutation: a permutation of ``range(D)``, or an int ``D`` for a random
            permutation drawn with ``seed``.
        seed: seed of the random permutation.

    Shape:
        ``(..., D)`` to ``(..., D)``; event dim 1; ``log_det_jacobian`` is zero.

    Example:
        >>> import torch
        >>> Permute([2, 0, 1])
        Permute(permutation=[2, 0, 1])
        >>> Permute([2, 0, 1])(torch.tensor([10.0, 20.0, 30.0]))
        tensor([30., 10., 20.])
    """

    event_dim = 1

    def __init__(self, permutation: Sequence[int] | Tensor | int, *, seed: int = 0) -> None:
        super().__init__()
        perm = _permutation(type(self).__name__, permutation, seed)
        self.permutation: Tensor
        self.inverse_permutation: Tensor
        self.register_buffer("permutation", perm)
        self.register_buffer("inverse_permutation", torch.argsort(perm))

    def extra_repr(self) -> str:
        perm = self.permutation.tolist()
        if len(perm) <= _REPR_MAX:
            return f"permutation={perm}"
        head = ", ".join(str(i) for i in perm[:3])
        return f"permutation=[{head}, ..., {perm[-1]}], D={len(perm)}"

    def _check(self, x: Tensor) -> Tensor:
        x = check_real_input(self, x, 1)
        if x.shape[-1] != self.permutation.numel():
            raise ValueError(
                f"Permute expected `input` of shape (..., {self.permutation.numel()}), "
                f"got {tuple(x.shape)}"
            )
        return x

    def forward(self, x: Tensor) -> Tensor:
        return self._check(x)[..., self.permutation]

    def reverse(self, y: Tensor) -> Tensor:
        return self._check(y)[..., self.inverse_permutation]

    def log_det_jacobian(self, x: Tensor) -> Tensor:
        return self._check(x).new_zeros(x.shape[:-1])


class InvertibleConv1x1(ReversibleLayer):
    """Invertible 1x1 convolution over channels (Glow; Kingma & Dhariwal, 2018).

    ``y[..., :, h, w] = W @ x[..., :, h, w]`` with ``W`` initialised to a random
    rotation. ``log_det_jacobian = H * W * log|det W|`` (``torch.linalg.slogdet``).

    Args:
        num_channels: ``C``.
        seed: seed of the initial rotation.

    Shape:
        ``(..., C, H, W)`` to ``(..., C, H, W)``; event dims 3.

    Example:
        >>> import torch
        >>> layer = InvertibleConv1x1(3)
        >>> x = torch.randn(2, 3, 4, 4)
        >>> torch.allclose(layer.reverse(layer(x)), x, atol=1e-5)
        True
    """

    event_dim = 3

    def __init__(self, num_channels: int, *, seed: int = 0) -> None:
        super().__init__()
        self.num_channels = check_count("InvertibleConv1x1", "num_channels", num_channels)
        gen = torch.Generator().manual_seed(seed)
        q, _ = torch.linalg.qr(torch.randn(num_channels, num_channels, generator=gen))
        self.weight = nn.Parameter(q.to(torch.get_default_dtype()))

    def _check(self, x: Tensor) -> Tensor:
        x = check_real_input(self, x, 3, dtype=self.weight.dtype)
        if x.shape[-3] != self.num_channels:
            raise ValueError(
                f"InvertibleConv1x1 expected {self.num_channels} channels at dim -3, "
                f"got shape {tuple(x.shape)}"
            )
        return x

    def forward(self, x: Tensor) -> Tensor:
        return torch.einsum("ck,...khw->...chw", self.weight, self._check(x))

    def reverse(self, y: Tensor) -> Tensor:
        return torch.einsum("ck,...khw->...chw", torch.linalg.inv(self.weight), self._check(y))

    def log_det_jacobian(self, x: Tensor) -> Tensor:
        x = self._check(x)
        logdet = torch.linalg.slogdet(self.weight)[1] * (x.shape[-1] * x.shape[-2])
        return logdet.expand(x.shape[:-3])

    def extra_repr(self) -> str:
        return f"num_channels={self.num_channels}"
