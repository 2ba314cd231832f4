"""The LoRA adapter module: a frozen base layer plus a low-rank update whose down
projection ``A`` may be a random variable (Bayesian LoRA, Wang et al. 2024 "BLoB").

Part of :mod:`bayesian_layers.adapters`.
"""

from __future__ import annotations

import math
from typing import Any, cast

import torch
from torch import Tensor, nn

from .._checks import check_count, check_real
from ..initializers import TrainableNormal
from ..layers.base import BayesianLayer
from ..layers.linear import (
    LinearFlipout,
    LinearLocalReparameterization,
    LinearReparameterization,
)
from ..layers.rank1 import LinearRank1
from ..regularizers import NormalKLDivergence

__all__ = ["LoRALinear", "POSTERIORS", "base_features", "is_conv1d"]

#: ``posterior=`` of :class:`LoRALinear` and :func:`~bayesian_layers.adapters.lora`: the
#: class of the down projection ``A`` (``None``: a point estimate, plain LoRA).
POSTERIORS: dict[str | None, type[nn.Module] | None] = {
    None: None,
    "laplace": None,  # a point estimate now; bl.laplace.fit(..., subset="lora") later
    "flipout": LinearFlipout,
    "reparameterization": LinearReparameterization,
    "local_reparameterization": LinearLocalReparameterization,
    "rank1": LinearRank1,
}


def is_conv1d(module: nn.Module) -> bool:
    """Whether ``module`` is a GPT-2 style ``Conv1D`` (``y = x W + b``, ``W`` ``(in, out)``)
    of ``transformers`` (checked by name: nothing is imported)."""
    cls = type(module)
    return cls.__name__ == "Conv1D" and cls.__module__.startswith("transformers")


def base_features(module: nn.Module) -> tuple[int, int] | None:
    """``(in_features, out_features)`` of a layer LoRA can adapt, or ``None``."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if is_conv1d(module):
        w = cast(Tensor, module.weight)
        return int(w.shape[0]), int(w.shape[1])
    return None


class LoRALinear(nn.Module):
    r"""A frozen dense layer with a low-rank adapter: ``y = base(x) + s · B A x``.

    ``A`` ``(rank, in)`` projects down, ``B`` ``(out, rank)`` up, ``s = alpha / rank``
    (Hu et al. 2022). With a ``posterior``, ``A`` is a random variable with a
    mean-field normal posterior on the library's dense layer of that estimator
    (BLoB, Wang et al. 2024): ``q(A) = N(μ, σ²)``, prior ``N(0, prior_std²)``, and
    ``B`` is a point estimate started at zero, so the adapted model starts as the
    base model. Its KL term is in :func:`bayesian_layers.losses`; sampling modes,
    :func:`bayesian_layers.predict` and :func:`bayesian_layers.posterior_mean`
    apply as to any Bayesian layer. The base's parameters are frozen
    (``requires_grad=False``).

    Args:
        base: the layer to adapt: ``nn.Linear`` or a ``transformers`` GPT-2 ``Conv1D``.
        rank: the adapter's rank ``r``.
        alpha: the scaling numerator: ``s = alpha / rank``.
        posterior: ``"flipout"``, ``"reparameterization"``,
            ``"local_reparameterization"``, ``"rank1"`` (``A`` a
            :class:`~bayesian_layers.layers.LinearRank1`: an ensemble of rank-1
            members), or ``None``/``"laplace"``: ``A`` a point estimate (plain LoRA;
            ``"laplace"`` marks it for :func:`bayesian_layers.laplace.fit` with
            ``subset="lora"``).
        dropout: dropout probability on the adapter's input (0: none).
        prior_std: the prior standard deviation of ``A`` (random ``A`` only).
        init_std: the posterior standard deviation ``σ`` of ``A`` at the start;
            ``None`` (default): ``0.5 / sqrt(in_features)``, half the scale of LoRA's
            start of ``A`` (uniform on ``±1/sqrt(in_features)``). Much smaller values
            (1e-3) leave a short fine-tune at plain LoRA: ``σ`` hardly moves.
        **layer_kwargs: more arguments for ``A``'s layer class (e.g.
            ``ensemble_size`` for ``"rank1"``, ``weight_regularizer``).

    Shape: input ``(*, in_features)``, output ``(*, out_features)``.

    Attributes: ``base``, ``lora_A`` (``in -> rank``, no bias), ``lora_B``
    (``nn.Linear(rank, out, bias=False)``), ``lora_dropout``, ``scaling``.

    Example:
        >>> import torch, bayesian_layers as bl
        >>> layer = LoRALinear(torch.nn.Linear(8, 4), rank=2, posterior="flipout")
        >>> x = torch.randn(3, 8)
        >>> torch.equal(layer(x), layer.base(x))  # B starts at zero
        True
        >>> len(bl.losses(layer))  # the KL of A
        1
    """

    def __init__(
        self,
        base: nn.Module,
        rank: int = 8,
        alpha: float = 16.0,
        posterior: str | None = "flipout",
        dropout: float = 0.0,
        *,
        prior_std: float = 1.0,
        init_std: float | None = None,
        **layer_kwargs: Any,
    ) -> None:
        super().__init__()
        features = base_features(base)
        if features is None:
            raise TypeError(
                f"LoRALinear: base must be nn.Linear or a transformers Conv1D, "
                f"got {type(base).__name__}"
            )
        if posterior not in POSTERIORS:
            raise ValueError(
                f"LoRALinear: posterior must be one of {sorted(map(str, POSTERIORS))}, "
                f"got {posterior!r}"
            )
        owner = "LoRALinear"
        rank = check_count(owner, "rank", rank)
        alpha = check_real(owner, "alpha", alpha, strict=True)
        dropout = check_real(owner, "dropout", dropout)
        if dropout >= 1.0:
            raise ValueError(f"{owner} expected `dropout` < 1, got {dropout}")
        prior_std = check_real(owner, "prior_std", prior_std, strict=True)
        if init_std is None:
            init_std = 0.5 / math.sqrt(features[0])
        init_std = check_real(owner, "init_std", init_std, strict=True)
        self.in_features, self.out_features = features
        self.rank, self.alpha, self.posterior = rank, alpha, posterior
        self.scaling = alpha / rank
        for p in base.parameters():
            p.requires_grad_(False)
        self.base = base
        factory = {"device": base.weight.device, "dtype": base.weight.dtype}
        down = nn.Linear(self.in_features, rank, bias=False, **factory)  # LoRA's start of A
        cls = POSTERIORS[posterior]
        if cls is None:
            self.lora_A: nn.Module = down
        elif cls is LinearRank1:
            self.lora_A = LinearRank1.from_torch(down, **layer_kwargs)
        else:
            kwargs = {
                "weight_initializer": TrainableNormal(scale_init=init_std),
                "weight_regularizer": NormalKLDivergence(scale=prior_std),
                **layer_kwargs,
            }
            self.lora_A = cls.from_torch(down, **kwargs)  # type: ignore[attr-defined]
        self.lora_B = nn.Linear(rank, self.out_features, bias=False, **factory)
        nn.init.zeros_(self.lora_B.weight)
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    @property
    def weight(self) -> Tensor:
        """The base's weight (as stored: ``(in, out)`` for a ``Conv1D``)."""
        return cast(Tensor, self.base.weight)

    @property
    def bias(self) -> Tensor | None:
        """The base's bias."""
        return cast("Tensor | None", self.base.bias)

    def forward(self, x: Tensor) -> Tensor:
        update = self.lora_B(self.lora_A(self.lora_dropout(x)))
        return self.base(x) + self.scaling * update

    def mean_down(self) -> Tensor:
        """``E[A]`` under the posterior, ``(rank, in)`` (``A`` itself for plain LoRA).

        Raises:
            ValueError: for a ``"rank1"`` adapter (a mixture of members: no one ``A``).
        """
        a = self.lora_A
        if isinstance(a, LinearRank1):
            raise ValueError("LoRALinear: a rank-1 adapter is a mixture of members; no one A")
        if isinstance(a, BayesianLayer):
            return a.point("weight")
        return cast(Tensor, a.weight)

    def mean_up(self) -> Tensor:
        """``E[B]`` ``(out, rank)``: ``B`` itself, or its posterior mean once a Laplace fit
        (``subset="lora"``) made it random."""
        b = self.lora_B
        if isinstance(b, BayesianLayer):
            return b.point("weight")
        return cast(Tensor, b.weight)

    def delta_weight(self) -> Tensor:
        """The update ``s · E[B] E[A]`` in ``nn.Linear``'s layout ``(out, in)`` (the
        posterior-mean model's: ``A`` and ``B`` are independent under every posterior)."""
        return self.scaling * (self.mean_up() @ self.mean_down())

    @torch.no_grad()
    def merged(self) -> nn.Module:
        """The base layer with the posterior-mean update added to its weight (in place)."""
        weight = self.weight
        delta = self.delta_weight().to(weight.dtype)
        weight.add_(delta.T if is_conv1d(self.base) else delta)
        return self.base

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"rank={self.rank}, alpha={self.alpha:g}, posterior={self.posterior!r}"
        )
