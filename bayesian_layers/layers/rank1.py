"""Rank-1 Bayesian layers (Dusenberry et al. 2020): one shared point-estimate weight ``W``
and, per ensemble member ``m``, random rank-1 factors with the effective weight
``W ∘ (r_m s_mᵀ)``; the batch is split across the members.

The family bases :class:`RankOneLinear` and :class:`RankOneConv2d` hold torch's arguments,
the shared weight and ``from_torch``; the factors, the batch split and the penalties come
from :mod:`.estimators.rank1`. :mod:`.batch_ensemble` gives the same bases point-estimate
factors (BatchEnsemble, Wen et al. 2020).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..initializers import TrainableDeterministic, TrainableInitializer
from ..regularizers import Regularizer
from ._util import check_features
from .conv_base import BayesianConv, ConvOp
from .estimators import REPARAMETERIZATION
from .estimators.rank1 import FactorNormalKLDivergence, MemberEnsemble
from .linear import LINEAR

__all__ = ["RankOneLinear", "RankOneConv2d", "LinearRank1", "Conv2dRank1"]

InitArg = str | TrainableInitializer
RegArg = str | Regularizer | type[Regularizer] | None
SizeArg = int | tuple[int, ...]


class RankOneLinear(MemberEnsemble):
    """Base of the dense rank-1 / BatchEnsemble layers: ``nn.Linear``'s arguments, a shared
    point-estimate ``weight`` ``(out, in)`` (started as ``nn.Linear``'s), the members'
    factors; a public class sets the defaults and ``_from_torch_factor_std``."""

    _from_torch_factor_std: ClassVar[float] = 0.0

    def _setup(self, in_features: int, out_features: int, bias: bool, **members: Any) -> None:
        name = type(self).__name__
        self.in_features = check_features(name, "in_features", in_features)
        self.out_features = check_features(name, "out_features", out_features)
        factory = {"device": members["device"], "dtype": members["dtype"]}
        self.add_param("weight", (out_features, in_features), TrainableDeterministic(), None,
                       **factory)  # fmt: skip
        self.add_members(members.pop("ensemble_size"), out_features, in_features, bias, **members)

    @classmethod
    def from_torch(
        cls, module: nn.Linear, *, ensemble_size: int = 4, factor_init_std: float | None = None,
        **kwargs: Any,
    ) -> RankOneLinear:  # fmt: skip
        """A layer whose shared weight is ``module``'s, every member's bias ``module``'s
        bias, and ``r``, ``s`` (their means) ``1 + factor_init_std · ε`` (default: the
        class's ``_from_torch_factor_std``).

        Keyword arguments go to the constructor.

        Example:
            >>> from bayesian_layers.layers.batch_ensemble import LinearBatchEnsemble
            >>> torch_layer = torch.nn.Linear(3, 2)
            >>> layer = LinearBatchEnsemble.from_torch(torch_layer, ensemble_size=2)
            >>> x = torch.randn(4, 3)
            >>> torch.allclose(layer(x), torch_layer(x))  # r = s = 1: the torch layer
            True
        """
        if not isinstance(module, nn.Linear):
            raise TypeError(f"{cls.__name__}.from_torch expected nn.Linear, got {type(module)}")
        factory: Any = cls  # the public subclasses take nn.Linear's arguments
        layer = factory(
            module.in_features, module.out_features, module.bias is not None,
            ensemble_size=ensemble_size, factor_init_std=None, device=module.weight.device,
            dtype=module.weight.dtype, **kwargs,
        )  # fmt: skip
        layer.load_point_estimates({"weight": module.weight, "bias": module.bias})
        std = cls._from_torch_factor_std if factor_init_std is None else factor_init_std
        layer.reset_factors(std)
        return layer

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.use_bias}, ensemble_size={self.ensemble_size}"
        )

    def forward(self, x: Tensor) -> Tensor:
        name, e = type(self).__name__, self.ensemble_size
        x = self.check_input(x)
        if x.dim() == 0 or x.shape[-1] != self.in_features:
            raise ValueError(
                f"{name} expected input of shape (N, *, {self.in_features}), got {tuple(x.shape)}"
            )
        if x.dim() == 1:
            if e > 1 or self.num_function_samples > 1:
                raise ValueError(
                    f"{name} expected a batched input (N, *, {self.in_features}) to split "
                    f"across its ensemble_size={e} members, got {tuple(x.shape)}"
                )
            return self.member_output(x.unsqueeze(0), LINEAR, -1).squeeze(0)
        return self.member_output(x, LINEAR, -1)


class RankOneConv2d(MemberEnsemble, BayesianConv):
    """Base of the 2-d convolutional rank-1 / BatchEnsemble layers: ``nn.Conv2d``'s
    arguments and attributes, a shared point-estimate ``weight`` (started as
    ``nn.Conv2d``'s), the members' factors over the input and output channels."""

    _dims, _torch_class = 2, nn.Conv2d
    estimator = REPARAMETERIZATION  # of the (point-estimate) shared weight: never drawn
    whole_weights = True  # one grouped convolution: no transposed convolution in backward
    _from_torch_factor_std: ClassVar[float] = 0.0

    def _setup_members(self, bias: bool, **members: Any) -> None:
        e = members.pop("ensemble_size")
        self.add_members(e, self.out_channels, self.in_channels, bias, **members)

    @classmethod
    def from_torch(
        cls, module: nn.Module, *, ensemble_size: int = 4, factor_init_std: float | None = None,
        **kwargs: Any,
    ) -> RankOneConv2d:  # fmt: skip
        """As :meth:`RankOneLinear.from_torch`, for ``nn.Conv2d`` (its hyperparameters too).

        Example:
            >>> from bayesian_layers.layers.batch_ensemble import Conv2dBatchEnsemble
            >>> conv = torch.nn.Conv2d(3, 4, 3, padding=1)
            >>> layer = Conv2dBatchEnsemble.from_torch(conv, ensemble_size=2)
            >>> x = torch.randn(2, 3, 5, 5)
            >>> torch.allclose(layer(x), conv(x), atol=1e-6)
            True
        """
        layer = super().from_torch(
            module, ensemble_size=ensemble_size, factor_init_std=None, **kwargs
        )
        std = cls._from_torch_factor_std if factor_init_std is None else factor_init_std
        layer.reset_factors(std)
        return layer  # type: ignore[return-value]

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, ensemble_size={self.ensemble_size}"

    def forward(self, x: Tensor) -> Tensor:
        name, e = type(self).__name__, self.ensemble_size
        if isinstance(x, Tensor) and x.dim() == 3 and e > 1:
            raise ValueError(
                f"{name} expected a batched input (N, {self.in_channels}, H, W) to split "
                f"across its ensemble_size={e} members, got {tuple(x.shape)}"
            )
        x, unbatched = self._check_input(x)
        y = self.member_output(x, ConvOp(self._spec), 1)
        return y.squeeze(0) if unbatched else y


class LinearRank1(RankOneLinear):
    """Rank-1 Bayesian dense layer (Dusenberry et al. 2020): drop-in for ``nn.Linear``.

    Member ``m`` of ``E`` computes ``y = ((x ∘ s_m) Wᵀ) ∘ r_m + b_m``, i.e. ``nn.Linear``
    with the weight ``W ∘ (r_m s_mᵀ)``, at ``O(in + out)`` extra cost per example. ``W`` is a
    point estimate; ``r_m ~ N(μ_r,m, σ_r,m²)`` and ``s_m ~ N(μ_s,m, σ_s,m²)`` (the posterior
    over the factors is the mixture of the ``E`` members' normals), drawn once per member
    and call. Rows ``[m N/E, (m+1) N/E)`` of a batch of ``N`` go to member ``m`` (tile a
    batch ``E`` times to give every member the same examples). ``layer.losses``: per
    factor, the members' average ``(1/E) Σ_m KL(q_m || p)``. In
    :func:`bayesian_layers.predict` each member is a function sample.

    Args:
        in_features, out_features, bias: as ``nn.Linear``.
        ensemble_size: ``E``, the number of members (mixture components).
        r_initializer, s_initializer: posteriors of the output factors ``r`` ``(E, out)``
            and input factors ``s`` ``(E, in)``: normal (default ``"trainable_normal"``,
            scale 0.01) or deterministic.
        r_regularizer, s_regularizer: their priors: default ``N(1, 1)``
            (:class:`~bayesian_layers.layers.estimators.rank1.FactorNormalKLDivergence`,
            closed form); a Cauchy prior with
            ``MonteCarloKLDivergence(torch.distributions.Cauchy(1.0, 0.1))``; None: no term.
        bias_initializer, bias_regularizer: the per-member bias ``(E, out)`` (default a
            point estimate at zeros, no penalty).
        factor_init_std: the means of ``r`` and ``s`` start at ``1 + factor_init_std · ε``,
            ``ε ~ N(0, 1)`` (0.5: uncertainty-baselines' ``random_sign_init=-0.5``); None
            keeps the initializer's start.
        device, dtype: factory arguments.

    Shape:
        - Input: ``(N, *, in_features)``, ``N`` divisible by ``ensemble_size`` (or
          ``(in_features,)`` when ``ensemble_size=1``).
        - Output: ``(N, *, out_features)``.

    Attributes:
        weight: the shared weight ``(out, in)`` (an ``nn.Parameter``).
        r, s: :class:`~bayesian_layers.RandomVariable` factors (``r_loc``, ``r_rho``, ...).
        bias: ``(E, out)``.

    Example:
        >>> import torch, bayesian_layers as bl
        >>> from bayesian_layers.layers.rank1 import LinearRank1
        >>> layer = LinearRank1(3, 2, ensemble_size=4)
        >>> layer(torch.randn(8, 3)).shape
        torch.Size([8, 2])
        >>> bl.predict(layer, torch.randn(5, 3), num_samples=4).samples.shape
        torch.Size([4, 5, 2])
    """

    _from_torch_factor_std = 0.1

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        ensemble_size: int = 4,
        r_initializer: InitArg = "trainable_normal",
        s_initializer: InitArg = "trainable_normal",
        r_regularizer: RegArg = FactorNormalKLDivergence,
        s_regularizer: RegArg = FactorNormalKLDivergence,
        bias_initializer: InitArg = "zeros",
        bias_regularizer: RegArg = None,
        factor_init_std: float | None = 0.5,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self._setup(
            in_features, out_features, bias, ensemble_size=ensemble_size,
            r_initializer=r_initializer, s_initializer=s_initializer,
            r_regularizer=r_regularizer, s_regularizer=s_regularizer,
            bias_initializer=bias_initializer, bias_regularizer=bias_regularizer,
            factor_init_std=factor_init_std, device=device, dtype=dtype,
        )  # fmt: skip


class Conv2dRank1(RankOneConv2d):
    """Rank-1 Bayesian 2-d convolution (Dusenberry et al. 2020): drop-in for ``nn.Conv2d``.

    Member ``m`` computes ``conv(x ∘ s_m, W) ∘ r_m + b_m`` with ``s_m`` over the input
    channels and ``r_m`` over the output channels: ``nn.Conv2d`` with the weight
    ``W[o, i, :, :] r_m[o] s_m[i]``. Everything else as :class:`LinearRank1`.

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
            padding_mode: as ``nn.Conv2d``.
        ensemble_size, r_initializer, s_initializer, r_regularizer, s_regularizer,
            bias_initializer, bias_regularizer, factor_init_std, device, dtype: as
            :class:`LinearRank1` (``r`` ``(E, out_channels)``, ``s`` ``(E, in_channels)``).

    Shape:
        - Input: ``(N, C_in, H, W)``, ``N`` divisible by ``ensemble_size`` (or
          ``(C_in, H, W)`` when ``ensemble_size=1``).
        - Output: ``(N, C_out, H_out, W_out)``.

    Example:
        >>> import torch
        >>> from bayesian_layers.layers.rank1 import Conv2dRank1
        >>> Conv2dRank1(3, 8, 3, padding=1, ensemble_size=2)(torch.randn(4, 3, 6, 6)).shape
        torch.Size([4, 8, 6, 6])
    """

    _from_torch_factor_std = 0.1

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: SizeArg,
        stride: SizeArg = 1,
        padding: str | SizeArg = 0,
        dilation: SizeArg = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        *,
        ensemble_size: int = 4,
        r_initializer: InitArg = "trainable_normal",
        s_initializer: InitArg = "trainable_normal",
        r_regularizer: RegArg = FactorNormalKLDivergence,
        s_regularizer: RegArg = FactorNormalKLDivergence,
        bias_initializer: InitArg = "zeros",
        bias_regularizer: RegArg = None,
        factor_init_std: float | None = 0.5,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(
            in_channels, out_channels, kernel_size, stride, padding, dilation, groups, False,
            padding_mode, weight_initializer=TrainableDeterministic(), weight_regularizer=None,
            device=device, dtype=dtype,
        )  # fmt: skip
        self._setup_members(
            bias, ensemble_size=ensemble_size, r_initializer=r_initializer,
            s_initializer=s_initializer, r_regularizer=r_regularizer,
            s_regularizer=s_regularizer, bias_initializer=bias_initializer,
            bias_regularizer=bias_regularizer, factor_init_std=factor_init_std,
            device=device, dtype=dtype,
        )  # fmt: skip
