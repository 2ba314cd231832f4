"""Bayesian convolutions: drop-in replacements for ``nn.Conv{1,2,3}d`` and
``nn.ConvTranspose{1,2,3}d``.

Each takes the torch layer's arguments, in its order (``in_channels,
out_channels, kernel_size, stride, padding, dilation, groups, bias,
padding_mode``; transposed: ``..., padding, output_padding, groups, bias,
dilation, padding_mode``), mirrors its attributes and ``extra_repr``, and adds the
keyword-only initializers and regularizers of the dense layers. The estimators:

* ``*Reparameterization``: one whole weight draw ``W ~ N(μ, σ²)`` per call,
  shared by the batch.
* ``*Flipout`` (Wen et al. 2018): ``conv(x, μ) + conv(x ∘ s_in, σ ∘ ε) ∘ s_out``
  with one ``ε`` per call and random signs of the input's and the output's shape
  (independent per example, channel *and* position, as in Wen et al.'s
  convolutional Flipout): each output element has the whole-draw marginal
  ``N(conv(x, μ), conv(x², σ²))``, while examples (and positions) see
  pseudo-independent weights. Two convolutions per call.
* ``Conv2dLocalReparameterization`` (Kingma et al. 2015):
  ``conv(x, μ) + sqrt(conv(x², σ²)) ∘ ε``, an independent draw per output element.

In ``"frozen"`` sampling mode every estimator draws one whole weight, so the
frozen function is one function; ``"mean"`` runs the torch convolution on the
posterior means. With K function samples at once, K weight draws run as one
grouped convolution (``groups = K * groups``).
"""

from __future__ import annotations

from torch import nn

from .conv_base import BayesianConv, BayesianConvTranspose
from .estimators import FLIPOUT, LOCAL_REPARAMETERIZATION, REPARAMETERIZATION
from .registry import converts

__all__ = [
    "Conv1dReparameterization",
    "Conv2dReparameterization",
    "Conv3dReparameterization",
    "Conv1dFlipout",
    "Conv2dFlipout",
    "Conv3dFlipout",
    "Conv2dLocalReparameterization",
    "ConvTranspose1dReparameterization",
    "ConvTranspose2dReparameterization",
    "ConvTranspose3dReparameterization",
    "ConvTranspose1dFlipout",
    "ConvTranspose2dFlipout",
    "ConvTranspose3dFlipout",
]


# ============================================================== convolutions
@converts(nn.Conv2d, "reparameterization")
class Conv2dReparameterization(BayesianConv):
    """2-d convolution with a weight posterior, one whole weight draw per call.

    Drop-in for ``nn.Conv2d``: ``y = conv2d(x, W) + b`` with ``W ~ q(W)`` drawn
    afresh at every call (training and evaluation alike) and shared by the batch.

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
            bias, padding_mode: as ``nn.Conv2d`` (``padding`` may be ``"same"`` or
            ``"valid"``; ``padding_mode`` ``"zeros"``, ``"reflect"``,
            ``"replicate"`` or ``"circular"``).
        weight_initializer, bias_initializer, weight_regularizer, bias_regularizer,
            device, dtype: as :class:`~bayesian_layers.layers.LinearReparameterization`
            (weight posterior a trainable normal, KL to ``N(0, 1)``, a
            deterministic zeros bias by default).

    Shape:
        - Input: ``(N, C_in, H, W)`` or ``(C_in, H, W)``.
        - Output: ``(N, C_out, H_out, W_out)`` or ``(C_out, H_out, W_out)``, as ``nn.Conv2d``.

    Attributes:
        weight: a :class:`~bayesian_layers.RandomVariable` of shape
            ``(C_out, C_in / groups, *kernel_size)``: ``.distribution`` is ``q(W)``,
            the value the latest draw.
        weight_loc, weight_rho: the trainable posterior mean and pre-softplus scale.
        losses: ``[KL(q(W) || p(W))]`` (closed form), plus the bias term if any.

    Example:
        >>> import torch
        >>> from bayesian_layers.layers.conv import Conv2dReparameterization
        >>> layer = Conv2dReparameterization(3, 8, 3, padding="same")
        >>> layer(torch.randn(2, 3, 16, 16)).shape
        torch.Size([2, 8, 16, 16])
        >>> layer.extra_repr()
        '3, 8, kernel_size=(3, 3), stride=(1, 1), padding=same'
    """

    _dims, _torch_class, estimator = 2, nn.Conv2d, REPARAMETERIZATION


@converts(nn.Conv1d, "reparameterization")
class Conv1dReparameterization(BayesianConv):
    """1-d :class:`Conv2dReparameterization`: drop-in for ``nn.Conv1d``.

    Shape:
        - Input: ``(N, C_in, L)`` or ``(C_in, L)``.
        - Output: ``(N, C_out, L_out)`` or ``(C_out, L_out)``.

    Example:
        >>> import torch
        >>> from bayesian_layers.layers.conv import Conv1dReparameterization
        >>> Conv1dReparameterization(4, 6, 5, stride=2)(torch.randn(3, 4, 20)).shape
        torch.Size([3, 6, 8])
    """

    _dims, _torch_class, estimator = 1, nn.Conv1d, REPARAMETERIZATION


@converts(nn.Conv3d, "reparameterization")
class Conv3dReparameterization(BayesianConv):
    """3-d :class:`Conv2dReparameterization`: drop-in for ``nn.Conv3d``.

    Shape:
        - Input: ``(N, C_in, D, H, W)`` or ``(C_in, D, H, W)``.
        - Output: ``(N, C_out, D_out, H_out, W_out)`` or ``(C_out, D_out, H_out, W_out)``.

    Example:
        >>> import torch
        >>> from bayesian_layers.layers.conv import Conv3dReparameterization
        >>> Conv3dReparameterization(2, 4, 3)(torch.randn(1, 2, 5, 6, 7)).shape
        torch.Size([1, 4, 3, 4, 5])
    """

    _dims, _torch_class, estimator = 3, nn.Conv3d, REPARAMETERIZATION


@converts(nn.Conv2d, "flipout")
class Conv2dFlipout(BayesianConv):
    """2-d convolution with the Flipout estimator (Wen et al. 2018).

    Same constructor as :class:`Conv2dReparameterization` (the weight posterior
    must be normal). Returns ``conv(x, μ) + b + conv(x ∘ s_in, σ ∘ ε) ∘ s_out``
    with one ``ε ~ N(0, I)`` per call and random signs ``s_in``, ``s_out`` of the
    input's and the output's shape (per example, channel and position). A random
    bias gets one draw per call. About twice the cost of ``nn.Conv2d``.

    Shape:
        - Input: ``(N, C_in, H, W)`` or ``(C_in, H, W)``.
        - Output: ``(N, C_out, H_out, W_out)`` or ``(C_out, H_out, W_out)``.

    Example:
        >>> import torch
        >>> from bayesian_layers.layers.conv import Conv2dFlipout
        >>> Conv2dFlipout(3, 8, 3, stride=2, padding=1)(torch.randn(2, 3, 16, 16)).shape
        torch.Size([2, 8, 8, 8])
    """

    _dims, _torch_class, estimator = 2, nn.Conv2d, FLIPOUT


@converts(nn.Conv1d, "flipout")
class Conv1dFlipout(BayesianConv):
    """1-d :class:`Conv2dFlipout`: drop-in for ``nn.Conv1d``.

    Shape:
        - Input: ``(N, C_in, L)`` or ``(C_in, L)``.
        - Output: ``(N, C_out, L_out)`` or ``(C_out, L_out)``.

    Example:
        >>> import torch
        >>> from bayesian_layers.layers.conv import Conv1dFlipout
        >>> Conv1dFlipout(4, 6, 3, padding_mode="circular", padding=1)(torch.randn(4, 10)).shape
        torch.Size([6, 10])
    """

    _dims, _torch_class, estimator = 1, nn.Conv1d, FLIPOUT


@converts(nn.Conv3d, "flipout")
class Conv3dFlipout(BayesianConv):
    """3-d :class:`Conv2dFlipout`: drop-in for ``nn.Conv3d``.

    Shape:
        - Input: ``(N, C_in, D, H, W)`` or ``(C_in, D, H, W)``.
        - Output: ``(N, C_out, D_out, H_out, W_out)`` or ``(C_out, D_out, H_out, W_out)``.

    Example:
        >>> import torch
        >>> from bayesian_layers.layers.conv import Conv3dFlipout
        >>> Conv3dFlipout(2, 4, 3, groups=2)(torch.randn(1, 2, 5, 6, 7)).shape
        torch.Size([1, 4, 3, 4, 5])
    """

    _dims, _torch_class, estimator = 3, nn.Conv3d, FLIPOUT


@converts(nn.Conv2d, "local_reparameterization")
class Conv2dLocalReparameterization(BayesianConv):
    """2-d convolution with the local reparameterization estimator (Kingma et al. 2015).

    Same constructor as :class:`Conv2dReparameterization` (weight and bias
    posteriors must be normal or deterministic). Samples every output element
    ``y ~ N(conv(x, μ) + μ_b, conv(x², σ²) + σ_b²)`` independently: the lowest
    gradient variance, at twice the cost of ``nn.Conv2d``. Note that outputs at
    neighbouring positions, which share weights under a whole draw, come out
    independent. It never draws a whole weight: ``layer.weight``'s value is the
    posterior mean, except in ``"frozen"`` mode, which draws one whole weight.

    Shape:
        - Input: ``(N, C_in, H, W)`` or ``(C_in, H, W)``.
        - Output: ``(N, C_out, H_out, W_out)`` or ``(C_out, H_out, W_out)``.

    Example:
        >>> import torch
        >>> from bayesian_layers.layers.conv import Conv2dLocalReparameterization
        >>> Conv2dLocalReparameterization(3, 8, 3)(torch.randn(2, 3, 16, 16)).shape
        torch.Size([2, 8, 14, 14])
    """

    _dims, _torch_class, estimator = 2, nn.Conv2d, LOCAL_REPARAMETERIZATION


# ==================================================== transposed convolutions
@converts(nn.ConvTranspose2d, "reparameterization")
class ConvTranspose2dReparameterization(BayesianConvTranspose):
    """2-d transposed convolution with a weight posterior, one whole weight draw per call.

    Drop-in for ``nn.ConvTranspose2d``, including the call's ``output_size=``.

    Args:
        in_channels, out_channels, kernel_size, stride, padding, output_padding, groups,
            bias, dilation, padding_mode: as ``nn.ConvTranspose2d`` (integer padding;
            ``padding_mode`` must be ``"zeros"``).
        weight_initializer, bias_initializer, weight_regularizer, bias_regularizer,
            device, dtype: as :class:`Conv2dReparameterization`.

    Shape:
        - Input: ``(N, C_in, H, W)`` or ``(C_in, H, W)``.
        - Output: ``(N, C_out, H_out, W_out)`` or ``(C_out, H_out, W_out)``, as
          ``nn.ConvTranspose2d``. The weight has shape ``(C_in, C_out / groups, *kernel_size)``.

    Example:
        >>> import torch
        >>> from bayesian_layers.layers.conv import ConvTranspose2dReparameterization
        >>> up = ConvTranspose2dReparameterization(8, 3, 3, stride=2, padding=1)
        >>> up(torch.randn(2, 8, 8, 8)).shape
        torch.Size([2, 3, 15, 15])
        >>> up(torch.randn(2, 8, 8, 8), output_size=(16, 16)).shape
        torch.Size([2, 3, 16, 16])
    """

    _dims, _torch_class, estimator = 2, nn.ConvTranspose2d, REPARAMETERIZATION


@converts(nn.ConvTranspose1d, "reparameterization")
class ConvTranspose1dReparameterization(BayesianConvTranspose):
    """1-d :class:`ConvTranspose2dReparameterization`: drop-in for ``nn.ConvTranspose1d``.

    Shape:
        - Input: ``(N, C_in, L)`` or ``(C_in, L)``.
        - Output: ``(N, C_out, L_out)`` or ``(C_out, L_out)``.

    Example:
        >>> import torch
        >>> from bayesian_layers.layers.conv import ConvTranspose1dReparameterization
        >>> ConvTranspose1dReparameterization(4, 2, 4, stride=2)(torch.randn(3, 4, 10)).shape
        torch.Size([3, 2, 22])
    """

    _dims, _torch_class, estimator = 1, nn.ConvTranspose1d, REPARAMETERIZATION


@converts(nn.ConvTranspose3d, "reparameterization")
class ConvTranspose3dReparameterization(BayesianConvTranspose):
    """3-d :class:`ConvTranspose2dReparameterization`: drop-in for ``nn.ConvTranspose3d``.

    Shape:
        - Input: ``(N, C_in, D, H, W)`` or ``(C_in, D, H, W)``.
        - Output: ``(N, C_out, D_out, H_out, W_out)`` or ``(C_out, D_out, H_out, W_out)``.

    Example:
        >>> import torch
        >>> from bayesian_layers.layers.conv import ConvTranspose3dReparameterization
        >>> ConvTranspose3dReparameterization(2, 4, 2, stride=2)(torch.randn(1, 2, 3, 3, 3)).shape
        torch.Size([1, 4, 6, 6, 6])
    """

    _dims, _torch_class, estimator = 3, nn.ConvTranspose3d, REPARAMETERIZATION


@converts(nn.ConvTranspose2d, "flipout")
class ConvTranspose2dFlipout(BayesianConvTranspose):
    """2-d transposed convolution with the Flipout estimator (Wen et al. 2018).

    Same constructor as :class:`ConvTranspose2dReparameterization` (the weight
    posterior must be normal); the estimator of :class:`Conv2dFlipout` with
    ``conv_transpose2d`` in place of ``conv2d``.

    Shape:
        - Input: ``(N, C_in, H, W)`` or ``(C_in, H, W)``.
        - Output: ``(N, C_out, H_out, W_out)`` or ``(C_out, H_out, W_out)``.

    Example:
        >>> import torch
        >>> from bayesian_layers.layers.conv import ConvTranspose2dFlipout
        >>> ConvTranspose2dFlipout(8, 3, 2, stride=2)(torch.randn(2, 8, 8, 8)).shape
        torch.Size([2, 3, 16, 16])
    """

    _dims, _torch_class, estimator = 2, nn.ConvTranspose2d, FLIPOUT


@converts(nn.ConvTranspose1d, "flipout")
class ConvTranspose1dFlipout(BayesianConvTranspose):
    """1-d :class:`ConvTranspose2dFlipout`: drop-in for ``nn.ConvTranspose1d``.

    Shape:
        - Input: ``(N, C_in, L)`` or ``(C_in, L)``.
        - Output: ``(N, C_out, L_out)`` or ``(C_out, L_out)``.

    Example:
        >>> import torch
        >>> from bayesian_layers.layers.conv import ConvTranspose1dFlipout
        >>> ConvTranspose1dFlipout(4, 2, 3, dilation=2)(torch.randn(3, 4, 10)).shape
        torch.Size([3, 2, 14])
    """

    _dims, _torch_class, estimator = 1, nn.ConvTranspose1d, FLIPOUT


@converts(nn.ConvTranspose3d, "flipout")
class ConvTranspose3dFlipout(BayesianConvTranspose):
    """3-d :class:`ConvTranspose2dFlipout`: drop-in for ``nn.ConvTranspose3d``.

    Shape:
        - Input: ``(N, C_in, D, H, W)`` or ``(C_in, D, H, W)``.
        - Output: ``(N, C_out, D_out, H_out, W_out)`` or ``(C_out, D_out, H_out, W_out)``.

    Example:
        >>> import torch
        >>> from bayesian_layers.layers.conv import ConvTranspose3dFlipout
        >>> ConvTranspose3dFlipout(2, 4, 3, padding=1)(torch.randn(1, 2, 3, 3, 3)).shape
        torch.Size([1, 4, 3, 3, 3])
    """

    _dims, _torch_class, estimator = 3, nn.ConvTranspose3d, FLIPOUT
