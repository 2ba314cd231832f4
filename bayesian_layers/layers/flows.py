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

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .reversible import ReversibleLayer, _check_real

__all__ = [
    "MADE",
    "RealNVP",
    "MaskedAutoregressiveFlow",
    "ActNorm",
    "Permute",
    "InvertibleConv1x1",
]

_ORDERS = ("left-to-right", "right-to-left", "random")


class MADE(nn.Module):
    """Masked autoencoder for distribution estimation (Germain et al., 2015).

    A masked MLP whose output for input dimension ``i`` depends only on the inputs
    before ``i`` in the chosen ``order``. The input size is read on the first call
    (Figure 8's ``MADE(hidden_dims=[512, 512])``) unless ``input_dim`` is given;
    create optimizers after that first call. Masks are buffers.

    Args:
        units: outputs per input dimension (2: a shift and a log-scale).
        hidden_dims: widths of the hidden layers.
        order: ``"left-to-right"``, ``"right-to-left"`` or ``"random"``.
        activation: a module class (``nn.ReLU``) or a tensor function.
        input_dim: the input size, to build the layers now.
        seed: seed of the ``"random"`` order.

    Shape:
        input ``(..., D)``; output ``(..., D, units)``.

    Example:
        >>> import torch
        >>> made = MADE(units=2, hidden_dims=[8, 8])
        >>> made(torch.randn(4, 3)).shape
        torch.Size([4, 3, 2])
    """

    def __init__(
        self,
        units: int = 2,
        hidden_dims: Sequence[int] = (64, 64),
        order: str = "left-to-right",
        activation: type[nn.Module] | Callable[[Tensor], Tensor] = nn.ReLU,
        *,
        input_dim: int | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if not isinstance(units, int) or units < 1:
            raise ValueError(f"MADE expected `units` a positive int, got {units!r}")
        hidden_dims = [int(h) for h in hidden_dims]
        if any(h < 1 for h in hidden_dims):
            raise ValueError(f"MADE expected positive `hidden_dims`, got {hidden_dims}")
        if order not in _ORDERS:
            raise ValueError(f"MADE expected `order` one of {_ORDERS}, got {order!r}")
        self.units = units
        self.hidden_dims = hidden_dims
        self.order = order
        self.seed = seed
        self.activation: Callable[[Tensor], Tensor] = (
            activation() if isinstance(activation, type) else activation
        )
        self.input_dim: int | None = None
        self.layers = nn.ModuleList()
        if input_dim is not None:
            self._build(int(input_dim), torch.device("cpu"), torch.get_default_dtype())

    def input_order(self, input_dim: int) -> Tensor:
        """Degrees (1..D) of the input dimensions: input ``i`` is the ``degree[i]``-th in order."""
        if self.order == "left-to-right":
            return torch.arange(1, input_dim + 1)
        if self.order == "right-to-left":
            return torch.arange(input_dim, 0, -1)
        gen = torch.Generator().manual_seed(self.seed)
        return torch.randperm(input_dim, generator=gen) + 1

    def _build(self, d: int, device: torch.device, dtype: torch.dtype) -> None:
        self.input_dim = d
        degrees = [self.input_order(d)]
        for h in self.hidden_dims:
            degrees.append(torch.arange(h) % max(1, d - 1) + 1)
        sizes = [d, *self.hidden_dims]
        for k, h in enumerate(self.hidden_dims):
            mask = (degrees[k + 1][:, None] >= degrees[k][None, :]).to(dtype)
            self.layers.append(nn.Linear(sizes[k], h, device=device, dtype=dtype))
            self.register_buffer(f"mask_{k}", mask.to(device))
        out_deg = degrees[0].repeat_interleave(self.units)
        mask = (out_deg[:, None] > degrees[-1][None, :]).to(dtype)
        self.layers.append(nn.Linear(sizes[-1], d * self.units, device=device, dtype=dtype))
        self.register_buffer(f"mask_{len(self.hidden_dims)}", mask.to(device))

    def forward(self, x: Tensor) -> Tensor:
        x = _check_real(self, x, 1)
        d = x.shape[-1]
        if self.input_dim is None:
            self._build(d, x.device, x.dtype)
        elif d != self.input_dim:
            raise ValueError(
                f"MADE expected input of last dim {self.input_dim}, got shape {tuple(x.shape)}"
            )
        h = x
        for k, linear in enumerate(self.layers):
            mask: Tensor = getattr(self, f"mask_{k}")
            assert isinstance(linear, nn.Linear)
            h = F.linear(h, linear.weight * mask, linear.bias)
            if k < len(self.layers) - 1:
                h = self.activation(h)
        return h.reshape(*x.shape[:-1], d, self.units)

    def extra_repr(self) -> str:
        return f"units={self.units}, hidden_dims={self.hidden_dims}, order={self.order!r}"


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
        if log_scale_bound <= 0:
            raise ValueError(f"RealNVP expected `log_scale_bound` > 0, got {log_scale_bound}")
        self.network = network
        self.flip = flip
        self.log_scale_bound = float(log_scale_bound)

    def _split(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = _check_real(self, x, 1)
        if x.shape[-1] < 2:
            raise ValueError(f"RealNVP expected at least 2 features, got shape {tuple(x.shape)}")
        k = x.shape[-1] // 2
        a, b = x[..., :k], x[..., k:]
        return (b, a) if self.flip else (a, b)  # (conditioning, transformed)

    def _join(self, cond: Tensor, trans: Tensor) -> Tensor:
        return torch.cat([trans, cond] if self.flip else [cond, trans], dim=-1)

    def _params(self, cond: Tensor, d: int) -> tuple[Tensor, Tensor]:
        return _shift_and_log_scale(self, self.network(cond), d, self.log_scale_bound, cond.dim())

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
        if log_scale_bound <= 0:
            raise ValueError(
                f"MaskedAutoregressiveFlow expected `log_scale_bound` > 0, got {log_scale_bound}"
            )
        self.network = network
        self.log_scale_bound = float(log_scale_bound)

    def _params(self, y: Tensor) -> tuple[Tensor, Tensor]:
        y = _check_real(self, y, 1)
        return _shift_and_log_scale(
            self, self.network(y), y.shape[-1], self.log_scale_bound, y.dim()
        )

    def forward(self, x: Tensor) -> Tensor:
        x = _check_real(self, x, 1)
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


class ActNorm(ReversibleLayer):
    """Per-channel affine map with data-dependent initialisation (Kingma & Dhariwal, 2018).

    ``y = x * exp(log_scale) + shift`` per channel: the last dim of vectors
    ``(B, D)``, dim ``-3`` of images ``(B, C, H, W)`` (inputs with 4 or more dims).
    The first ``forward`` sets ``shift`` and ``log_scale`` so that its output has
    zero mean and unit variance per channel (a single value per channel sets only
    the shift); the ``initialized`` buffer records it (saved in ``state_dict``). A
    ``reverse`` before any ``forward`` (as in ``Reverse(ActNorm(C))``) keeps the
    current parameters and ends the initialisation phase, so a later ``forward``
    from ``log_prob`` never re-initialises. Parameters are created then when ``num_features`` is
    not given.

    Args:
        num_features: channels; read on the first call when ``None``.
        eps: added to the standard deviation at initialisation.

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
        self.num_features = num_features
        self.eps = eps
        self.shift: nn.Parameter | None
        self.log_scale: nn.Parameter | None
        self.register_parameter("shift", None)
        self.register_parameter("log_scale", None)
        self.initialized: Tensor
        self.register_buffer("initialized", torch.tensor(False))
        if num_features is not None:
            self._make(num_features, torch.device("cpu"), torch.get_default_dtype())

    def _make(self, c: int, device: torch.device, dtype: torch.dtype) -> None:
        self.num_features = c
        self.shift = nn.Parameter(torch.zeros(c, device=device, dtype=dtype))
        self.log_scale = nn.Parameter(torch.zeros(c, device=device, dtype=dtype))

    def event_dim_for(self, x: Tensor) -> int:
        return 3 if x.dim() >= 4 else 1

    def _channel_dim(self, x: Tensor) -> int:
        return -self.event_dim_for(x)

    def _view(self, p: Tensor, x: Tensor) -> Tensor:
        return p.view(-1, 1, 1) if self.event_dim_for(x) == 3 else p

    def _params(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = _check_real(self, x, 1)
        c = x.shape[self._channel_dim(x)]
        if self.shift is None or self.log_scale is None:
            raise RuntimeError("ActNorm: call forward once (data-dependent init) before reverse")
        if c != self.num_features:
            raise ValueError(
                f"ActNorm expected {self.num_features} channels at dim {self._channel_dim(x)}, "
                f"got shape {tuple(x.shape)}"
            )
        return self._view(self.shift, x), self._view(self.log_scale, x)

    @torch.no_grad()
    def _initialize(self, x: Tensor) -> None:
        cdim = x.dim() + self._channel_dim(x)
        if self.shift is None:
            self._make(x.shape[cdim], x.device, x.dtype)
        assert self.shift is not None and self.log_scale is not None
        flat = x.detach().movedim(cdim, -1).reshape(-1, x.shape[cdim])
        mean = flat.mean(0)
        std = flat.std(0, unbiased=False) + self.eps if flat.shape[0] > 1 else torch.ones_like(mean)
        self.log_scale.copy_(-torch.log(std))
        self.shift.copy_(-mean / std)
        self.initialized.fill_(True)

    def forward(self, x: Tensor) -> Tensor:
        x = _check_real(self, x, 1)
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
        return f"num_features={self.num_features}"


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
        if isinstance(permutation, int):
            if permutation < 1:
                raise ValueError(f"Permute expected a positive size, got {permutation}")
            perm = torch.randperm(permutation, generator=torch.Generator().manual_seed(seed))
        else:
            perm = torch.as_tensor(permutation, dtype=torch.long).flatten()
            if not torch.equal(perm.sort().values, torch.arange(perm.numel())):
                raise ValueError(
                    f"Permute expected a permutation of range({perm.numel()}), got {perm.tolist()}"
                )
        self.permutation: Tensor
        self.inverse_permutation: Tensor
        self.register_buffer("permutation", perm)
        self.register_buffer("inverse_permutation", torch.argsort(perm))

    def _check(self, x: Tensor) -> Tensor:
        x = _check_real(self, x, 1)
        if x.shape[-1] != self.permutation.numel():
            raise ValueError(
                f"Permute expected last dim {self.permutation.numel()}, got shape {tuple(x.shape)}"
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
        if not isinstance(num_channels, int) or num_channels < 1:
            raise ValueError(
                f"InvertibleConv1x1 expected `num_channels` a positive int, got {num_channels!r}"
            )
        self.num_channels = num_channels
        gen = torch.Generator().manual_seed(seed)
        q, _ = torch.linalg.qr(torch.randn(num_channels, num_channels, generator=gen))
        self.weight = nn.Parameter(q.to(torch.get_default_dtype()))

    def _check(self, x: Tensor) -> Tensor:
        x = _check_real(self, x, 3)
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
