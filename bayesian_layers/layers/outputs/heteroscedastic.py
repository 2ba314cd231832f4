"""Heteroscedastic classification outputs (Collier et al., 2021, "Correlated
input-dependent label noise in large-scale image classification"; Edward2's
``MCSoftmaxDenseFA`` / ``MCSigmoidDenseFA``): :class:`HeteroscedasticCategorical`
and :class:`HeteroscedasticBernoulli`.

The logits are Gaussian with an input-dependent low-rank-plus-diagonal covariance,

    u ~ N(μ(h), Σ(h)),   Σ(h) = V(h) V(h)ᵀ + diag(d(h)²),

drawn as ``u = μ + V ε_R + d ∘ ε_C`` with ``ε_R ~ N(0, I_R)``, ``ε_C ~ N(0, I_C)``, and
the predictive probability is the Monte Carlo mean of the squashed, tempered draws,

    p(y | h) ≈ (1/S) Σ_s softmax(u_s / τ)_y           (sigmoid for the multilabel layer).

The layer returns this predictive as a :class:`~bayesian_layers.RandomVariable` (a
``Categorical`` / independent ``Bernoulli`` over ``log p``), so ``rv.log_prob(y)`` is the
training loss's ``log`` of the MC-averaged probability (computed with ``logsumexp`` over
the samples), and ``rv.distribution.probs`` the averaged probabilities.

The pure math (noise passed in, gradcheck-able) is :func:`low_rank_logit_samples`,
:func:`mc_log_mean_softmax` and :func:`mc_mean_sigmoid_logits`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributions as td
from torch import Tensor, nn

from ..._checks import check_count, check_real
from ...random_variables.variable import RandomVariable
from . import distributions as od
from .base import StochasticOutput

__all__ = [
    "HeteroscedasticCategorical",
    "HeteroscedasticBernoulli",
    "low_rank_logit_samples",
    "mc_log_mean_softmax",
    "mc_mean_sigmoid_logits",
]


def low_rank_logit_samples(
    loc: Tensor, factor: Tensor, diag_scale: Tensor, noise_factor: Tensor, noise_diag: Tensor
) -> Tensor:
    """Draws ``u = μ + V ε_R + d ∘ ε_C`` of ``N(μ, V Vᵀ + diag(d²))``, noise given.

    Args:
        loc: ``μ``, ``(*, C)``.
        factor: ``V``, ``(*, C, R)`` (``R = 0``: diagonal noise only).
        diag_scale: ``d``, ``(*, C)``, the standard deviations of the independent part.
        noise_factor: ``ε_R``, ``(S, *, R)`` standard normals.
        noise_diag: ``ε_C``, ``(S, *, C)`` standard normals.

    Returns:
        ``(S, *, C)`` logit draws.

    Example:
        >>> loc, d = torch.zeros(4, 3), torch.ones(4, 3)
        >>> V = torch.zeros(4, 3, 2)
        >>> low_rank_logit_samples(loc, V, d, torch.randn(5, 4, 2), torch.ones(5, 4, 3)).shape
        torch.Size([5, 4, 3])
    """
    # one (S, R) @ (R, C) product per example; a broadcast matmul would copy V S times
    low_rank = torch.einsum("...cr,s...r->s...c", factor, noise_factor)  # (S, *, C)
    return loc + low_rank + diag_scale * noise_diag


def mc_log_mean_softmax(samples: Tensor, temperature: float = 1.0) -> Tensor:
    """``log((1/S) Σ_s softmax(u_s / τ))``, by ``logsumexp`` over the samples.

    Args:
        samples: ``(S, *, C)`` logit draws ``u_s``.
        temperature: ``τ > 0``.

    Returns:
        ``(*, C)`` log-probabilities (they sum to one in probability space).

    Example:
        >>> u = torch.tensor([[[0.0, 0.0]], [[0.0, math.log(3.0)]]])  # (S=2, 1, C=2)
        >>> mc_log_mean_softmax(u).exp()  # mean of (1/2, 1/2) and (1/4, 3/4)
        tensor([[0.3750, 0.6250]])
    """
    scaled = samples / temperature
    # log_softmax by hand: on CPU, torch's kernel is ~3x slower over a short class dim;
    # the shift by the (constant) max changes no value and no gradient
    shifted = scaled - scaled.detach().amax(dim=-1, keepdim=True)
    log_probs = shifted - shifted.exp().sum(dim=-1, keepdim=True).log()  # (S, *, C)
    return torch.logsumexp(log_probs, dim=0) - math.log(samples.shape[0])


def mc_mean_sigmoid_logits(samples: Tensor, temperature: float = 1.0) -> Tensor:
    """The logit ``log p - log(1 - p)`` of ``p = (1/S) Σ_s sigmoid(u_s / τ)``.

    ``log p`` and ``log(1 - p)`` each come from a ``logsumexp`` of ``logsigmoid(±u_s / τ)``,
    so neither underflows when ``p`` is near 0 or 1.

    Args:
        samples: ``(S, *, C)`` logit draws ``u_s``.
        temperature: ``τ > 0``.

    Returns:
        ``(*, C)`` logits of the mean probabilities (``sigmoid`` of them gives ``p``).

    Example:
        >>> u = torch.tensor([[0.0], [math.log(3.0)]])  # sigmoids 1/2 and 3/4
        >>> torch.sigmoid(mc_mean_sigmoid_logits(u))
        tensor([0.6250])
    """
    scaled = samples / temperature
    log_p = torch.logsumexp(torch.nn.functional.logsigmoid(scaled), dim=0)
    log_q = torch.logsumexp(torch.nn.functional.logsigmoid(-scaled), dim=0)
    return log_p - log_q  # the log S terms cancel


class _Heteroscedastic(StochasticOutput):
    """The shared part: projection layout, noise, sample count, temperature."""

    param_names = ("loc", "factor", "diag_scale")
    positive = frozenset({"diag_scale"})
    _generator: torch.Generator | None = None

    def __init__(
        self,
        units: int,
        *,
        num_factors: int = 10,
        temperature: float = 1.0,
        num_mc_samples: int = 1000,
        parameter_efficient: bool = False,
        in_features: int | None = None,
        event_dims: int | None = None,
        min_scale: float = 1e-3,
        name: str | None = None,
        validate_args: bool | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        owner = type(self).__name__
        if units is None:
            raise ValueError(
                f"{owner} expected `units` (the number of classes) to be an int >= 1, got None: "
                "its noise is projected from the input, so it needs a projection"
            )
        check_count(owner, "units", units)
        if isinstance(num_factors, bool) or not isinstance(num_factors, int):
            raise TypeError(f"{owner} expected `num_factors` to be an int, got {num_factors!r}")
        if num_factors < 0:
            raise ValueError(f"{owner} expected `num_factors` >= 0, got {num_factors}")
        if not isinstance(parameter_efficient, bool):
            raise TypeError(
                f"{owner} expected `parameter_efficient` to be a bool, got {parameter_efficient!r}"
            )
        self.num_factors = num_factors
        self.parameter_efficient = parameter_efficient
        self.temperature = check_real(owner, "temperature", temperature, strict=True)
        self.num_mc_samples = check_count(owner, "num_mc_samples", num_mc_samples)
        super().__init__(
            units,
            in_features=in_features,
            event_dims=event_dims,
            min_scale=min_scale,
            name=name,
            validate_args=validate_args,
            device=device,
            dtype=dtype,
        )
        if parameter_efficient:
            factory: dict[str, Any] = {"device": device, "dtype": dtype}
            self.shared_loadings = nn.Parameter(torch.empty(units, num_factors, **factory))
            nn.init.xavier_uniform_(self.shared_loadings)  # Edward2: glorot for (R -> C)

    # ---------------------------------------------------------------- layout
    def _num_outputs(self, units: int) -> int:
        return units * (3 if self.parameter_efficient else self.num_factors + 2)

    def _split(self, raw: Tensor) -> dict[str, Tensor]:
        c, r = self.units, self.num_factors
        assert c is not None
        if self.parameter_efficient:
            loc, row_scale, diag = raw.split([c, c, c], dim=-1)  # 3 × (*, C)
            factor = row_scale.unsqueeze(-1) * self.shared_loadings  # (*, C, R)
            return {"loc": loc, "factor": factor, "diag_scale": diag}
        loc, flat, diag = raw.split([c, c * r, c], dim=-1)  # (*, C), (*, C R), (*, C)
        return {"loc": loc, "factor": flat.unflatten(-1, (c, r)), "diag_scale": diag}

    # ----------------------------------------------------------------- noise
    def _noise(self, loc: Tensor, num_samples: int) -> tuple[Tensor, Tensor]:
        """``ε_R`` ``(S, *, R)`` then ``ε_C`` ``(S, *, C)``, in this order, from the
        generator of the call (or torch's global one)."""
        batch = loc.shape[:-1]
        like: dict[str, Any] = {"dtype": loc.dtype, "device": loc.device}
        gen = self._generator
        eps_r = torch.randn((num_samples, *batch, self.num_factors), generator=gen, **like)
        eps_c = torch.randn((num_samples, *batch, loc.shape[-1]), generator=gen, **like)
        return eps_r, eps_c

    def _params(self, x: Any) -> dict[str, Tensor]:
        x = self._check_input(x)
        assert self.projection is not None
        raw = self._split(self.projection(x))
        raw = {
            k: v.float() if v.dtype in (torch.float16, torch.bfloat16) else v
            for k, v in raw.items()
        }
        raw["diag_scale"] = self.constrain_positive(raw["diag_scale"])
        return raw

    def logit_distribution(self, x: Tensor) -> td.LowRankMultivariateNormal:
        """The Gaussian over the (untempered) logits: ``N(μ(x), V Vᵀ + diag(d²))``.

        Shape: input ``(*, D)``; batch ``(*)``, event ``(C,)``.
        """
        p = self._params(x)
        return td.LowRankMultivariateNormal(
            p["loc"], p["factor"], p["diag_scale"] ** 2, validate_args=self.validate_args
        )

    def logit_samples(
        self,
        x: Tensor,
        num_samples: int | None = None,
        *,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """``(S, *, C)`` draws of the untempered logits ``u`` for input ``(*, D)``, with the
        noise the forward pass uses (``S = num_mc_samples`` by default)."""
        owner = type(self).__name__
        n = (
            self.num_mc_samples
            if num_samples is None
            else check_count(owner, "num_samples", num_samples)
        )
        p = self._params(x)
        with self._using(generator):
            eps_r, eps_c = self._noise(p["loc"], n)
        return low_rank_logit_samples(p["loc"], p["factor"], p["diag_scale"], eps_r, eps_c)

    @contextmanager
    def _using(self, generator: torch.Generator | None) -> Iterator[None]:
        """Draws the noise of the calls inside from ``generator`` (``None``: torch's)."""
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(
                f"{type(self).__name__} expected `generator` to be a torch.Generator or None, "
                f"got {type(generator).__name__}"
            )
        self._generator = generator
        try:
            yield
        finally:
            del self._generator  # back to the class default, None

    # --------------------------------------------------------------- forward
    def forward(  # type: ignore[override]
        self, x: Tensor | RandomVariable, *, generator: torch.Generator | None = None
    ) -> RandomVariable:
        """The predictive random variable; ``generator`` draws the logit noise (a fixed
        seed gives a reproducible call, in training and evaluation alike)."""
        if generator is None:
            return super().forward(x)
        with self._using(generator):
            return super().forward(x)

    def _log_mean_probs(self, params: dict[str, Tensor]) -> Tensor:
        eps_r, eps_c = self._noise(params["loc"], self.num_mc_samples)
        u = low_rank_logit_samples(
            params["loc"], params["factor"], params["diag_scale"], eps_r, eps_c
        )  # (S, *, C)
        return self._squash(u)

    def _squash(self, samples: Tensor) -> Tensor:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return (
            f"num_factors={self.num_factors}, parameter_efficient={self.parameter_efficient}, "
            f"temperature={self.temperature:g}, "
            f"num_mc_samples={self.num_mc_samples}, " + super().extra_repr()
        )


class HeteroscedasticCategorical(_Heteroscedastic):
    """Categorical output over ``C`` classes with correlated, input-dependent logit noise
    (Collier et al., 2021; Edward2's ``MCSoftmaxDenseFA``).

    ``μ = W_μ h + b_μ``, ``V = reshape(W_V h + b_V, (C, R))``, ``d = softplus(W_d h + b_d) +
    min_scale``; ``p = (1/S) Σ_s softmax((μ + V ε_R,s + d ∘ ε_C,s) / τ)`` with fresh
    noise at every call (training and evaluation; pass ``generator=`` to fix it). The
    value is a class drawn from ``p``; ``log_prob(y) = log p_y`` is the loss
    ``-log of the MC mean probability``. Cost per call: time ``O(S B C R)``, memory
    ``O(S B (C + R))`` for ``B`` examples.

    Args:
        units: ``C``, the number of classes (labels), through a trainable projection.
        in_features: the input's last dimension ``D``, if known (else lazy).
        num_factors: ``R >= 0``, the rank of ``V`` (0: diagonal noise only).
        temperature: ``τ > 0``; the draws are divided by it before squashing.
        num_mc_samples: ``S``, logit draws per example and call (Edward2's default, 1000).
        parameter_efficient: ``V(h) = diag(s(h)) A`` with ``s(h)`` projected (``C``) and
            ``A`` one trainable ``(C, R)`` matrix, ``shared_loadings`` (Edward2's variant,
            without the bias its dense ``A`` adds, which would shift the noise's mean):
            ``D·3C + C·R`` weights instead of ``D·C(R + 2)``.
        min_scale, event_dims, name, validate_args, device, dtype: as every
            stochastic output (:class:`.StochasticOutput`).
    Shape:
        - Input: ``(*, D)``; projection to ``[μ (C) | V (C·R, row c holds V[c, :]) |
          d_raw (C)]``, or ``[μ | s | d_raw]`` (each ``C``) when ``parameter_efficient``.
        - Value: ``(*)`` class indices (``sample()``, no gradient); ``log_prob``: ``(*)``.

    Example:
        >>> import torch
        >>> from bayesian_layers.layers.outputs.heteroscedastic import (
        ...     HeteroscedasticCategorical)
        >>> layer = HeteroscedasticCategorical(10, in_features=32, num_factors=4)
        >>> rv = layer(torch.randn(8, 32))
        >>> loss = -rv.log_prob(torch.randint(0, 10, (8,))).mean()
        >>> rv.shape, rv.distribution.probs.shape, loss.shape
        (torch.Size([8]), torch.Size([8, 10]), torch.Size([]))
    """

    consumes_last_dim = True

    def _squash(self, samples: Tensor) -> Tensor:
        return mc_log_mean_softmax(samples, self.temperature)

    def _distribution(
        self, params: dict[str, Tensor], validate_args: bool | None
    ) -> td.Distribution:
        return od.Categorical(logits=self._log_mean_probs(params), validate_args=validate_args)


class HeteroscedasticBernoulli(_Heteroscedastic):
    """Independent Bernoulli outputs over ``C`` labels (multilabel, or ``C = 1`` binary)
    with correlated, input-dependent logit noise (Edward2's ``MCSigmoidDenseFA``).

    As :class:`HeteroscedasticCategorical` with ``p_c = (1/S) Σ_s sigmoid(u_s,c / τ)``
    per label; ``log_prob(y) = Σ_c [y_c log p_c + (1 - y_c) log(1 - p_c)]``. Each ``p_c``
    depends on the marginal ``N(μ_c, Σ_cc)`` only; the correlations shape the draws
    (shared noise across labels), not the loss.

    Args:
        units: ``C``, the number of classes (labels), through a trainable projection.
        in_features: the input's last dimension ``D``, if known (else lazy).
        num_factors: ``R >= 0``, the rank of ``V`` (0: diagonal noise only).
        temperature: ``τ > 0``; the draws are divided by it before squashing.
        num_mc_samples: ``S``, logit draws per example and call (Edward2's default, 1000).
        parameter_efficient: ``V(h) = diag(s(h)) A`` with ``s(h)`` projected (``C``) and
            ``A`` one trainable ``(C, R)`` matrix, ``shared_loadings`` (Edward2's variant,
            without the bias its dense ``A`` adds, which would shift the noise's mean):
            ``D·3C + C·R`` weights instead of ``D·C(R + 2)``.
        min_scale, event_dims, name, validate_args, device, dtype: as every
            stochastic output (:class:`.StochasticOutput`).
    Shape:
        - Input: ``(*, D)``; projection layout as :class:`HeteroscedasticCategorical`.
        - Value: ``(*, C)`` floats in {0, 1} (``sample()``); event the last ``event_dims``
          (default 1) dims; ``log_prob``: ``(*)``.

    Example:
        >>> import torch
        >>> from bayesian_layers.layers.outputs.heteroscedastic import HeteroscedasticBernoulli
        >>> rv = HeteroscedasticBernoulli(3, in_features=5, num_factors=2)(torch.randn(4, 5))
        >>> rv.shape, rv.log_prob(torch.ones(4, 3)).shape
        (torch.Size([4, 3]), torch.Size([4]))
    """

    def _squash(self, samples: Tensor) -> Tensor:
        return mc_mean_sigmoid_logits(samples, self.temperature)

    def _distribution(
        self, params: dict[str, Tensor], validate_args: bool | None
    ) -> td.Distribution:
        return od.Bernoulli(logits=self._log_mean_probs(params), validate_args=validate_args)
