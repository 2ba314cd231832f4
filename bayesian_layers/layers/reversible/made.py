"""``MADE``: the masked autoregressive network of the reversible layers.

Its input size may be read on the first call (the paper's ``MADE(hidden_dims=[512,
512])``). The parameters then exist from construction as torch's lazy parameters
(``nn.UninitializedParameter``, as in ``nn.LazyLinear``) and are materialised in
place, so an optimizer built before the first call trains them and a checkpoint
loads into a freshly built twin.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.lazy import LazyModuleMixin

from ..._checks import check_count, is_lazy
from ._util import check_real_input

__all__ = ["MADE"]

ORDERS = ("left-to-right", "right-to-left", "random")


def _hidden_dims(owner: str, value: object) -> list[int]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise ValueError(
            f"{owner} expected `hidden_dims` to be a sequence of positive ints, got {value!r}"
        )
    if any(isinstance(h, bool) or not isinstance(h, int) or h < 1 for h in value):
        raise ValueError(
            f"{owner} expected `hidden_dims` to be a sequence of positive ints, got {list(value)}"
        )
    return [int(h) for h in value]


def _resolve_in_features(in_features: int | None, input_dim: int | None) -> int | None:
    if input_dim is None:
        return in_features
    if in_features is not None and in_features != input_dim:
        raise ValueError(
            f"MADE expected one of `in_features` and `input_dim` (deprecated), got "
            f"in_features={in_features!r} and input_dim={input_dim!r}"
        )
    warnings.warn(
        "MADE's `input_dim` is deprecated: pass `in_features`", DeprecationWarning, stacklevel=3
    )
    return input_dim


def _lazy_linear() -> nn.Module:
    """An ``nn.Linear`` with both sizes unknown; :class:`MADE` materialises it."""
    return nn.LazyLinear(0)  # out_features is set at materialisation as well


def _finish_lazy(module: nn.Module) -> None:
    """Turn a materialised ``nn.LazyLinear`` into a plain ``nn.Linear`` (torch's own path)."""
    if isinstance(module, LazyModuleMixin) and hasattr(module, "_initialize_hook"):
        module._infer_parameters(module, (None,))  # no-op initialisation, then unhook


class MADE(LazyModuleMixin, nn.Module):
    """Masked autoencoder for distribution estimation (Germain et al., 2015).

    A masked MLP whose output for input dimension ``i`` depends only on the inputs
    before ``i`` in the chosen ``order``. Without ``in_features`` the input size,
    dtype and device are read on the first call (Figure 8's
    ``MADE(hidden_dims=[512, 512])``); until then the parameters are torch's lazy
    parameters, so an optimizer built first still trains them. Masks are buffers.

    Args:
        units: outputs per input dimension (2: a shift and a log-scale).
        hidden_dims: widths of the hidden layers.
        order: ``"left-to-right"``, ``"right-to-left"`` or ``"random"``.
        activation: a module class (``nn.ReLU``) or a tensor function.
        in_features: the input size ``D``, to build the layers now.
        input_dim: deprecated spelling of ``in_features``.
        seed: seed of the ``"random"`` order.

    Shape:
        input ``(..., D)``; output ``(..., D, units)``.

    Example:
        >>> import torch
        >>> made = MADE(units=2, hidden_dims=[8, 8])
        >>> optimizer = torch.optim.Adam(made.parameters())  # before the first call
        >>> made(torch.randn(4, 3)).shape
        torch.Size([4, 3, 2])
        >>> made.in_features
        3
    """

    def __init__(
        self,
        units: int = 2,
        hidden_dims: Sequence[int] = (64, 64),
        order: str = "left-to-right",
        activation: type[nn.Module] | Callable[[Tensor], Tensor] = nn.ReLU,
        *,
        in_features: int | None = None,
        input_dim: int | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        self.units = check_count(owner, "units", units)
        self.hidden_dims = _hidden_dims(owner, hidden_dims)
        if not isinstance(order, str) or order not in ORDERS:
            raise ValueError(f"{owner} expected `order` one of {ORDERS}, got {order!r}")
        if not callable(activation):
            raise TypeError(f"{owner} expected `activation` to be callable, got {activation!r}")
        in_features = _resolve_in_features(in_features, input_dim)
        if in_features is not None:
            in_features = check_count(owner, "in_features", in_features)
        self.order = order
        self.seed = seed
        self.activation: Callable[[Tensor], Tensor] = (
            activation() if isinstance(activation, type) else activation
        )
        self.in_features: int | None = None
        self.layers = nn.ModuleList(_lazy_linear() for _ in range(len(self.hidden_dims) + 1))
        for k in range(len(self.layers)):
            self.register_buffer(f"mask_{k}", None)  # set with the sizes (deep-copyable)
        if in_features is not None:
            self._materialize(in_features, torch.device("cpu"), torch.get_default_dtype())

    def has_uninitialized_params(self) -> bool:  # type: ignore[override]
        """Whether the sizes are still to be read from the first input."""
        return self.in_features is None

    @property
    def input_dim(self) -> int | None:
        """Deprecated spelling of :attr:`in_features`."""
        return self.in_features

    def input_order(self, input_dim: int) -> Tensor:
        """Degrees (1..D) of the input dimensions: input ``i`` is the ``degree[i]``-th in order."""
        if self.order == "left-to-right":
            return torch.arange(1, input_dim + 1)
        if self.order == "right-to-left":
            return torch.arange(input_dim, 0, -1)
        gen = torch.Generator().manual_seed(self.seed)
        return torch.randperm(input_dim, generator=gen) + 1

    def _masks(self, d: int) -> list[Tensor]:
        """The connectivity masks ``(out, in)`` of every layer for input size ``d``."""
        degrees = [self.input_order(d)]
        degrees += [torch.arange(h) % max(1, d - 1) + 1 for h in self.hidden_dims]
        masks = [degrees[k + 1][:, None] >= degrees[k][None, :] for k in range(len(degrees) - 1)]
        out_deg = degrees[0].repeat_interleave(self.units)
        return [*masks, out_deg[:, None] > degrees[-1][None, :]]

    @torch.no_grad()
    def _materialize(
        self, d: int, device: torch.device, dtype: torch.dtype, *, init: bool = True
    ) -> None:
        """Give every lazy parameter and mask its shape for input size ``d``, in place."""
        sizes = [d, *self.hidden_dims, d * self.units]
        for k, (linear, mask) in enumerate(zip(self.layers, self._masks(d), strict=True)):
            assert isinstance(linear, nn.Linear)
            linear.in_features, linear.out_features = sizes[k], sizes[k + 1]
            # lazy parameters (UninitializedParameter) until now
            linear.weight.materialize((sizes[k + 1], sizes[k]), device=device, dtype=dtype)  # type: ignore[attr-defined]
            linear.bias.materialize((sizes[k + 1],), device=device, dtype=dtype)  # type: ignore[attr-defined]
            if init:
                linear.reset_parameters()  # torch's nn.Linear initialisation
            _finish_lazy(linear)
            setattr(self, f"mask_{k}", mask.to(device=device, dtype=dtype))
        self.in_features = d

    def initialize_parameters(self, x: Tensor) -> None:  # type: ignore[override]
        """Build the layers for the first input's size, dtype and device (lazy hook)."""
        if self.in_features is None:
            x = check_real_input(self, x, 1)
            if x.shape[-1] < 1:
                raise ValueError(
                    f"{type(self).__name__} expected `input` with at least one feature, "
                    f"got shape {tuple(x.shape)}"
                )
            self._materialize(x.shape[-1], x.device, x.dtype)

    def _lazy_load_hook(  # type: ignore[override]
        self, state_dict: dict[str, Tensor], prefix: str, *args: object
    ) -> None:
        """Loading into a twin not yet called: size it from the checkpoint first."""
        weight = state_dict.get(prefix + "layers.0.weight")
        if self.in_features is None and weight is not None and not is_lazy(weight):
            lazy = cast(Tensor, self.layers[0].weight)
            self._materialize(weight.shape[1], lazy.device, lazy.dtype, init=False)

    def forward(self, x: Tensor) -> Tensor:
        if self.in_features is None:  # called without the hook (e.g. `made.forward(x)`)
            self.initialize_parameters(x)
        first = self.layers[0]
        assert isinstance(first, nn.Linear)
        x = check_real_input(self, x, 1, dtype=first.weight.dtype)
        d = x.shape[-1]
        if d != self.in_features:
            raise ValueError(
                f"{type(self).__name__} expected `input` of shape (..., {self.in_features}), "
                f"got {tuple(x.shape)}"
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
        return (
            f"in_features={self.in_features}, units={self.units}, "
            f"hidden_dims={self.hidden_dims}, order={self.order!r}"
        )
