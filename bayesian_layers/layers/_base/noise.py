"""Where a layer's randomness is made: :meth:`NoiseSource.noise` and its hooks (private;
the methods are public on :class:`~bayesian_layers.layers.base.BayesianLayer`)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from ...initializers import TrainableInitializer
from .._util import rademacher
from . import compiled_rng

if TYPE_CHECKING:
    from ..base import BayesianLayer

__all__ = ["NoiseHook", "NoiseSource"]

#: ``hook(layer, name, kind, shape, make) -> Tensor | None``; see
#: :meth:`BayesianLayer.register_noise_hook`.
NoiseHook = Callable[["BayesianLayer", str, str, torch.Size, Callable[[torch.Size], Tensor]], Any]


def _normal_maker(like: Tensor) -> Callable[[torch.Size], Tensor]:
    if compiled_rng.routes(like):  # inductor's CPU randn is ~5x slower than eager's
        return lambda shape: compiled_rng.normal(shape, like)

    def make(shape: torch.Size) -> Tensor:
        return torch.randn(shape, dtype=like.dtype, device=like.device)

    return make


def _uniform_maker(like: Tensor) -> Callable[[torch.Size], Tensor]:
    if compiled_rng.routes(like):
        return lambda shape: compiled_rng.uniform(shape, like)

    def make(shape: torch.Size) -> Tensor:
        return torch.rand(shape, dtype=like.dtype, device=like.device)

    return make


def _sign_maker(like: Tensor) -> Callable[[torch.Size], Tensor]:
    def make(shape: torch.Size) -> Tensor:
        return rademacher(shape, like)  # routes compiled CPU draws itself

    return make


def _parameter_maker(
    owner: NoiseSource, init: TrainableInitializer, name: str, like: Tensor
) -> Callable[[torch.Size], Tensor]:
    if init.is_deterministic:
        raise ValueError(
            f"{type(owner).__name__}.noise: {name!r} is a point estimate, it has no "
            "noise of kind 'parameter'"
        )
    if compiled_rng.routes(like):

        def routed(shape: torch.Size) -> Tensor:
            # the family's own noise code, its randn/rand drawn by the eager generator
            with compiled_rng.eager_generator():
                return cast(Tensor, init.noise(shape, like))

        return routed

    def make(shape: torch.Size) -> Tensor:
        return cast(Tensor, init.noise(shape, like))  # a random family's noise

    return make


class NoiseSource(nn.Module):
    """The noise of every draw of a layer, and the hooks that may replace it."""

    _inits: dict[str, TrainableInitializer]
    _noise_hooks: OrderedDict[int, NoiseHook]

    def noise(
        self, name: str, shape: Sequence[int], like: Tensor, *, kind: str = "normal"
    ) -> Tensor:
        """Standard noise for a draw: the one place where this layer's randomness is made.

        Every estimator asks for its noise here, so a noise hook
        (:meth:`register_noise_hook`) sees all of it: tensor parallelism draws the
        noise of the whole weight and keeps its shard, a test substitutes fixed noise.
        Inside ``torch.compile`` on CPU the draw is made by torch's eager generator
        through an opaque op (inductor's own CPU random kernels are ~5x slower); the
        law is the same, the numbers for a seed may come in another order.

        Args:
            name: what the noise is for: a random parameter's name (``"weight"``), or
                a name of the estimator's own (``"weight_sign_in"``, ``"output"``).
            shape: the noise's shape (a leading K in vectorised mode included).
            like: a tensor whose dtype and device the noise takes.
            kind: ``"normal"`` (standard normal), ``"sign"`` (Rademacher ±1),
                ``"uniform"`` (on ``[0, 1)``, e.g. a dropout mask), or
                ``"parameter"`` (the noise of ``name``'s posterior family, e.g.
                standard normal for a normal posterior).

        Returns:
            A tensor of ``shape``: the first hook's answer that is not ``None``, else
            a fresh draw.
        """
        shape = torch.Size(shape)
        if kind == "normal":
            make = _normal_maker(like)
        elif kind == "sign":
            make = _sign_maker(like)
        elif kind == "uniform":
            make = _uniform_maker(like)
        elif kind == "parameter":
            make = _parameter_maker(self, self._inits[name], name, like)
        else:
            raise ValueError(
                f"{type(self).__name__}.noise expected `kind` in ('normal', 'sign', "
                f"'uniform', 'parameter'), got {kind!r}"
            )
        for hook in self._noise_hooks.values():
            value = hook(cast("BayesianLayer", self), name, kind, shape, make)
            if value is not None:
                return value
        return make(shape)

    @property
    def has_noise_hooks(self) -> bool:
        """Whether a noise hook is registered (a layer with a fused fast path for its
        noise, such as :class:`~bayesian_layers.layers.MCDropout`, takes it otherwise)."""
        return bool(self._noise_hooks)

    def register_noise_hook(self, hook: NoiseHook) -> RemovableHandle:
        """Register ``hook(layer, name, kind, shape, make) -> Tensor | None``, called
        by :meth:`noise` for every draw of this layer (in registration order).

        ``make(shape)`` draws default noise of the requested kind for any shape (a
        tensor-parallel hook calls it with the full shape and slices its shard);
        return ``None`` to leave the draw to the next hook or the default.

        Returns:
            a handle whose ``remove()`` unregisters the hook.

        Example:
            >>> import torch, bayesian_layers as bl
            >>> layer = bl.layers.LinearReparameterization(3, 2)
            >>> zeros = lambda layer, name, kind, shape, make: torch.zeros(shape)
            >>> handle = layer.register_noise_hook(zeros)
            >>> x = torch.randn(4, 3)
            >>> torch.equal(layer(x), layer(x))  # the posterior means, as with zero noise
            True
            >>> handle.remove()
        """
        handle = RemovableHandle(self._noise_hooks)
        self._noise_hooks[handle.id] = hook
        return handle
