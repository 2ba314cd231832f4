"""BatchEnsemble layers (Wen et al. 2020): one shared weight ``W`` and, per member ``m``,
point-estimate fast weights ``r_m``, ``s_m`` and bias ``b_m``; member ``m`` is the layer with
weight ``W ∘ (r_m s_mᵀ)``, the batch split across the members.

They are the rank-1 family of :mod:`.rank1` with point-estimate factors: no penalty by
default, and every call of a member is the same function. In
:func:`bayesian_layers.predict` the members are the function samples
(``num_samples`` a multiple of ``ensemble_size``).
"""

from __future__ import annotations

import torch

from ..initializers import TrainableDeterministic
from .rank1 import InitArg, RankOneConv2d, RankOneLinear, RegArg, SizeArg

__all__ = ["LinearBatchEnsemble", "Conv2dBatchEnsemble"]


class LinearBatchEnsemble(RankOneLinear):
    """BatchEnsemble dense layer (Wen et al. 2020): drop-in for ``nn.Linear``.

    Member ``m`` of ``E`` computes ``y = ((x ∘ s_m) Wᵀ) ∘ r_m + b_m`` (``nn.Linear`` with the
    weight ``W ∘ (r_m s_mᵀ)``) on rows ``[m N/E, (m+1) N/E)`` of a batch of ``N``; tile a
    batch ``E`` times to give every member the same examples. ``O(in + out)`` extra cost
    per example; ``E (in + 2 out)`` parameters beyond one ``nn.Linear``'s weight.

    Args:
        in_features, out_features, bias: as ``nn.Linear``.
        ensemble_size: ``E``, the number of members.
        r_initializer, s_initializer: the fast weights ``r`` ``(E, out)``, ``s`` ``(E, in)``:
            point estimates by default (a normal family makes them random: the rank-1
            Bayesian layer, :class:`~bayesian_layers.layers.rank1.LinearRank1`).
        r_regularizer, s_regularizer: penalties on them (default None).
        bias_initializer, bias_regularizer: the per-member bias ``(E, out)`` (zeros, none).
        factor_init_std: ``r`` and ``s`` start at ``1 + factor_init_std · ε``,
            ``ε ~ N(0, 1)`` (0.5: uncertainty-baselines' ``random_sign_init=-0.5``; the
            members then differ from the start); :meth:`from_torch` uses 0 (``r = s = 1``).
        device, dtype: factory arguments.

    Shape:
        - Input: ``(N, *, in_features)``, ``N`` divisible by ``ensemble_size`` (or
          ``(in_features,)`` when ``ensemble_size=1``).
        - Output: ``(N, *, out_features)``.

    Attributes:
        weight: the shared weight ``(out, in)``; r, s: ``(E, out)``, ``(E, in)``;
        bias: ``(E, out)`` (all ``nn.Parameter``).

    Example:
        >>> import torch, bayesian_layers as bl
        >>> from bayesian_layers.layers.batch_ensemble import LinearBatchEnsemble
        >>> layer = LinearBatchEnsemble(3, 2, ensemble_size=4)
        >>> x = torch.randn(5, 3)
        >>> out = layer(x.repeat(4, 1)).view(4, 5, 2)  # every member on the same batch
        >>> pred = bl.predict(layer, x, num_samples=4)  # sample m is member m
        >>> torch.allclose(pred.samples, out)
        True
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        ensemble_size: int = 4,
        r_initializer: InitArg = "ones",
        s_initializer: InitArg = "ones",
        r_regularizer: RegArg = None,
        s_regularizer: RegArg = None,
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


class Conv2dBatchEnsemble(RankOneConv2d):
    """BatchEnsemble 2-d convolution (Wen et al. 2020): drop-in for ``nn.Conv2d``.

    Member ``m`` computes ``conv(x ∘ s_m, W) ∘ r_m + b_m`` with ``s_m`` over the input and
    ``r_m`` over the output channels: ``nn.Conv2d`` with the weight
    ``W[o, i, :, :] r_m[o] s_m[i]``. Everything else as :class:`LinearBatchEnsemble`.

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
            padding_mode: as ``nn.Conv2d``.
        ensemble_size, r_initializer, s_initializer, r_regularizer, s_regularizer,
            bias_initializer, bias_regularizer, factor_init_std, device, dtype: as
            :class:`LinearBatchEnsemble` (``r`` ``(E, out_channels)``, ``s``
            ``(E, in_channels)``).

    Shape:
        - Input: ``(N, C_in, H, W)``, ``N`` divisible by ``ensemble_size`` (or
          ``(C_in, H, W)`` when ``ensemble_size=1``).
        - Output: ``(N, C_out, H_out, W_out)``.

    Example:
        >>> import torch
        >>> from bayesian_layers.layers.batch_ensemble import Conv2dBatchEnsemble
        >>> layer = Conv2dBatchEnsemble(3, 8, 3, stride=2, ensemble_size=2)
        >>> layer(torch.randn(4, 3, 9, 9)).shape
        torch.Size([4, 8, 4, 4])
    """

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
        r_initializer: InitArg = "ones",
        s_initializer: InitArg = "ones",
        r_regularizer: RegArg = None,
        s_regularizer: RegArg = None,
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
