"""``ActNorm``: per-channel affine map with data-dependent initialisation (Glow).

Its channel count may be read on the first call: the parameters then exist from
construction as torch's lazy parameters, materialised in place, so an optimizer
built first trains them and a checkpoint loads into a freshly built twin.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn.modules.lazy import LazyModuleMixin
from torch.nn.parameter import UninitializedParameter

from ..._checks import check_optional_count, check_real, is_lazy
from ._util import check_real_input
from .base import ReversibleLayer

__all__ = ["ActNorm"]


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
        num_features = check_optional_count(owner, "num_features", num_features)
        self.eps = check_real(owner, "eps", eps, strict=True)
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
        dtype = None if is_lazy(self.shift) else self.shift.dtype
        x = check_real_input(self, x, 1, dtype=dtype)
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
        if is_lazy(self.shift):
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
        if is_lazy(self.shift) and not torch.compiler.is_compiling():
            x = self._check_first_batch(x)
            self._make(x.shape[self._channel_dim(x)], x.device, x.dtype)

    def _lazy_load_hook(  # type: ignore[override]
        self, state_dict: dict[str, Tensor], prefix: str, *args: object
    ) -> None:
        super()._lazy_load_hook(state_dict, prefix, *args)
        if self.num_features is None and not is_lazy(self.shift):
            self.num_features = self.shift.shape[0]

    @torch.no_grad()
    def _initialize(self, x: Tensor) -> None:
        x = self._check_first_batch(x)
        if is_lazy(self.shift):  # called without the hook (e.g. `layer.forward(x)`)
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
