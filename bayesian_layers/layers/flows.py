"""Reversible layers: MADE, RealNVP, MaskedAutoregressiveFlow, ActNorm, Permute, InvertibleConv1x1.

All follow the protocol of :mod:`bayesian_layers.layers.reversible`: tensor in,
tensor out; random variable in, transformed random variable out.

Network convention (``RealNVP`` and ``MaskedAutoregressiveFlow``): for a
transformed part of ``d`` features, ``network(x_cond)`` returns either
``(..., d, 2)`` (``[..., 0]`` the shift, ``[..., 1]`` the raw log-scale; what
:class:`MADE` with ``units=2`` gives) or ``(..., 2 * d)`` (first ``d`` the shift,
last ``d`` the raw log-scale; what an MLP gives). The raw log-scale ``r`` is
stabilised as ``log_scale = c * tanh(r / c)`` with ``c = log_scale_bound``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn.modules.lazy import LazyModuleMixin
from torch.nn.parameter import UninitializedParameter

from .made import MADE
from .reversible import ReversibleLayer, _call_naming, _check_real, _is_lazy, _param_dtype

__all__ = [
    "MADE",
    "RealNVP",
    "MaskedAutoregressiveFlow",
    "ActNorm",
    "Permute",
    "InvertibleConv1x1",
]


def _check_bound(owner: str, bound: object) -> float:
    if isinstance(bound, bool) or not isinstance(bound, (int, float)) or not 0 < bound < math.inf:
        raise ValueError(
            f"{owner} expected `log_scale_bound` to be a finite positive number, got {bound!r}"
        )
    return float(bound)


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
        self.log_scale_bound = _check_bound(type(self).__name__, log_scale_bound)

    def _split(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = _check_real(self, x, 1, dtype=_param_dtype(self.network))
        if x.shape[-1] < 2:
            raise ValueError(f"RealNVP expected at least 2 features, got shape {tuple(x.shape)}")
        k = x.shape[-1] // 2
        a, b = x[..., :k], x[..., k:]
        return (b, a) if self.flip else (a, b)  # (conditioning, transformed)

    def _join(self, cond: Tensor, trans: Tensor) -> Tensor:
        return torch.cat([trans, cond] if self.flip else [cond, trans], dim=-1)

    def _params(self, cond: Tensor, d: int) -> tuple[Tensor, Tensor]:
        out = _call_naming(type(self).__name__, self.network, cond)
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
        self.log_scale_bound = _check_bound(type(self).__name__, log_scale_bound)

    def _params(self, y: Tensor) -> tuple[Tensor, Tensor]:
        y = _check_real(self, y, 1, dtype=_param_dtype(self.network))
        return _shift_and_log_scale(
            self,
            _call_naming(type(self).__name__, self.network, y),
            y.shape[-1],
            self.log_scale_bound,
            y.dim(),
        )

    def forward(self, x: Tensor) -> Tensor:
        x = _check_real(self, x, 1, dtype=_param_dtype(self.network))
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


def _check_eps(owner: str, eps: object) -> float:
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < math.inf:
        raise ValueError(f"{owner} expected `eps` to be a finite positive number, got {eps!r}")
    return float(eps)


class ActNorm(LazyModuleMixin, ReversibleLayer):
    """Per-channel affine map with data-dependent initialisation (Kingma & Dhariwal, 2018).

    ``y = x * exp(log_scale) + shift`` per channel: the last dim of vectors
    ``(B, D)``, dim ``-3`` of images ``(B, C, H, W)`` (inputs with 4 or more dims).
    The first ``forward`` sets ``shift`` and ``log_scale`` so that its output has
    zero mean and unit variance per channel (a single value per channel sets only
    the shift); the ``initialized`` buffer records it (saved in ``state_dict``). That
    first batch must be non-empty and finite: otherwise a ``ValueError`` and the
    layer stays uninitialised. A ``reverse`` before any ``forward`` (as in
    ``Reverse(ActNorm(C))``) keeps the current parameters and ends the
    initialisation phase, so a later ``forward`` from ``log_prob`` never
    re-initialises. Without ``num_features`` the parameters are torch's lazy
    parameters until the first ``forward`` (sized, typed and placed like its input),
    so an optimizer built first trains them and a checkpoint loads into a fresh twin.

    Args:
        num_features: channels ``C``; read on the first call when ``None``.
        eps: added to the standard deviation at initialisation (finite, > 0).

    Shape:
        ``(..., C)`` or ``(..., C, H, W)`` (4 or more dims) to the same shape; event
        dims 1 or 3.

    Example:
        >>> import torch
        >>> layer = ActNorm()
        >>> y = layer(torch.randn(64, 3) * 5 + 2)
        >>> m, s = y.mean(0), y.std(0, unbiased=False)
        >>> bool(m.abs().max() < 1e-5), bool((s - 1).abs().max() < 1e-4)
        (True, True)
    """

    def __init__(self, num_features: int | None = None, *, eps: float = 1e-6) -> None:
        super().__init__()
        owner = type(self).__name__
        if num_features is not None and (
            isinstance(num_features, bool) or not isinstance(num_features, int) or num_features < 1
        ):
            raise ValueError(
                f"{owner} expected `num_features` to be a positive int or None, "
                f"got {num_features!r}"
            )
        self.eps = _check_eps(owner, eps)
        self.num_features = num_features
        self.shift = UninitializedParameter()
        self.log_scale = UninitializedParameter()
        self.initialized: Tensor
        self.register_buffer("initialized", torch.tensor(False))
        if num_features is not None:
            self._make(num_features, torch.device("cpu"), torch.get_default_dtype())

    def _make(self, c: int, device: torch.device, dtype: torch.dtype) -> None:
        with torch.no_grad():
            for p in (self.shift, self.log_scale):
                p.materialize((c,), device=device, dtype=dtype)
                p.zero_()
        self.num_features = c

    def event_dim_for(self, x: Tensor) -> int:
        return 3 if x.dim() >= 4 else 1

    def _channel_dim(self, x: Tensor) -> int:
        return -self.event_dim_for(x)

    def _view(self, p: Tensor, x: Tensor) -> Tensor:
        return p.view(-1, 1, 1) if self.event_dim_for(x) == 3 else p

    def _check(self, x: Tensor) -> Tensor:
        """A floating input in the parameters' dtype with ``num_features`` channels."""
        dtype = None if _is_lazy(self.shift) else self.shift.dtype
        x = _check_real(self, x, 1, dtype=dtype)
        c = x.shape[self._channel_dim(x)]
        expected = self.num_features
        if (expected is None and c < 1) or (expected is not None and c != expected):
            raise ValueError(
                f"{type(self).__name__} expected `input` with {expected or 'at least 1'} "
                f"channels at dim {self._channel_dim(x)}, got shape {tuple(x.shape)}"
            )
        return x

    def _params(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = self._check(x)
        if _is_lazy(self.shift):
            raise RuntimeError("ActNorm: call forward once (data-dependent init) before reverse")
        return self._view(self.shift, x), self._view(self.log_scale, x)

    def _check_first_batch(self, x: Tensor) -> Tensor:
        """The batch that sets the parameters: checked before any state changes."""
        x = self._check(x)
        owner = type(self).__name__
        if x.device.type == "meta":  # shapes only: no values to check
            return x
        if x.numel() == 0:
            raise ValueError(
                f"{owner} expected a non-empty first `input` (it sets the data-dependent "
                f"initialisation), got shape {tuple(x.shape)}"
            )
        if not bool(torch.isfinite(x).all()):
            raise ValueError(
                f"{owner} expected a finite first `input` (it sets the data-dependent "
                f"initialisation), got {int((~torch.isfinite(x)).sum())} non-finite value(s)"
            )
        return x

    def initialize_parameters(self, x: Tensor) -> None:  # type: ignore[override]
        """Size the lazy parameters from the first input (lazy hook); state unchanged
        when the batch is bad."""
        if _is_lazy(self.shift) and not torch.compiler.is_compiling():
            x = self._check_first_batch(x)
            self._make(x.shape[self._channel_dim(x)], x.device, x.dtype)

    def _lazy_load_hook(  # type: ignore[override]
        self, state_dict: dict[str, Tensor], prefix: str, *args: object
    ) -> None:
        super()._lazy_load_hook(state_dict, prefix, *args)
        if self.num_features is None and not _is_lazy(self.shift):
            self.num_features = self.shift.shape[0]

    @torch.no_grad()
    def _initialize(self, x: Tensor) -> None:
        x = self._check_first_batch(x)
        if _is_lazy(self.shift):  # called without the hook (e.g. `layer.forward(x)`)
            self._make(x.shape[self._channel_dim(x)], x.device, x.dtype)
        cdim = x.dim() + self._channel_dim(x)
        flat = x.detach().movedim(cdim, -1).reshape(-1, x.shape[cdim])
        mean = flat.mean(0)
        std = flat.std(0, unbiased=False) + self.eps if flat.shape[0] > 1 else torch.ones_like(mean)
        self.log_scale.copy_(-torch.log(std))
        self.shift.copy_(-mean / std)
        self.initialized.fill_(True)

    def forward(self, x: Tensor) -> Tensor:
        if torch.compiler.is_compiling():
            # a data-dependent branch cannot be compiled: initialise with one eager call
            torch._assert_async(self.initialized, "ActNorm: call it once before compiling")
        elif not bool(self.initialized):
            self._initialize(x)
        shift, log_scale = self._params(x)
        return x * torch.exp(log_scale) + shift

    def reverse(self, y: Tensor) -> Tensor:
        shift, log_scale = self._params(y)
        self.initialized.fill_(True)  # reverse first: keep the current parameters
        return (y - shift) * torch.exp(-log_scale)

    def log_det_jacobian(self, x: Tensor) -> Tensor:
        _, log_scale = self._params(x)
        ed = self.event_dim_for(x)
        per_example = log_scale.sum() * (x.shape[-1] * x.shape[-2] if ed == 3 else 1)
        return per_example.expand(x.shape[: x.dim() - ed])

    @property
    def defers_value(self) -> bool:
        return bool(self.initialized)  # the first forward pass initialises from data

    def extra_repr(self) -> str:
        return f"num_features={self.num_features}, eps={self.eps:g}"


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
        x = _check_real(self, x, 1)
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
    """

    event_dim = 3

    def __init__(self, num_channels: int, *, seed: int = 0) -> None:
        super().__init__()
        if isinstance(num_channels, bool) or not isinstance(num_channels, int) or num_channels < 1:
            raise ValueError(
                f"InvertibleConv1x1 expected `num_channels` a positive int, got {num_channels!r}"
            )
        self.num_channels = num_channels
        gen = torch.Generator().manual_seed(seed)
        q, _ = torch.linalg.qr(torch.randn(num_channels, num_channels, generator=gen))
        self.weight = nn.Parameter(q.to(torch.get_default_dtype()))

    def _check(self, x: Tensor) -> Tensor:
        x = _check_real(self, x, 3, dtype=self.weight.dtype)
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
