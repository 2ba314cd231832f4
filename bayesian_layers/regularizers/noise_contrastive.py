"""The noise-contrastive prior (Hafner et al., 2019): a wide output prior at perturbed inputs.

Weight priors say little about what a network predicts away from its data. A
noise-contrastive prior (NCP) states it in data space instead: at inputs moved off
the data by noise, ``x̃ = x + σ_x ε``, the output should follow a wide prior
``N(μ_y, σ_y²)``. The penalty is the paper's ``KL(p_prior(ỹ | x̃) || q(ỹ | x̃))`` (prior
first: mass-covering, so a predictive narrower than the prior costs a lot and a wider
one little), added to the data term of the loss.

Why a call and not a layer side effect: the penalty needs the network's *input* and
an extra forward pass of the whole model at ``x̃``; ``bl.losses`` terms describe the
current weight distribution alone, computed on demand from any module (never from a
batch), so an output layer cannot hold it without storing the last batch (stale, and
invisible to the training loop's cost). ``ncp(model, x)`` makes the extra pass explicit.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.distributions as td
from torch import Tensor, nn
from torch.distributions import constraints

from ..initializers import check_non_negative
from ..random_variables.variable import RandomVariable
from .base import _float_buffer, _positive_buffer

__all__ = ["NoiseContrastivePrior"]

_REDUCTIONS = ("mean", "sum")


def _strip_independent(d: td.Distribution) -> td.Distribution:
    while isinstance(d, td.Independent):
        d = d.base_dist
    return d


def _is_real(support: Any) -> bool:
    """Whether ``support`` is the real line, through independent/mixture wrappers."""
    while hasattr(support, "base_constraint"):
        support = support.base_constraint
    return type(support) is type(constraints.real)


class NoiseContrastivePrior(nn.Module):
    """``KL(N(μ_y, σ_y²) || q(ỹ | x̃))`` at ``x̃ = x + σ_x ε``, ``ε ~ N(0, I)``.

    ``ncp(model, x)`` perturbs the batch, runs ``model`` on it, and compares the
    returned output distribution (a stochastic output layer's random variable, such as
    ``layers.Normal``'s) with the output prior, elementwise over the value's elements:

    - closed form where torch registers ``KL(Normal || family)`` (Normal, Laplace,
      Gumbel, ...) and the family has no event dimensions of its own;
    - otherwise a Monte Carlo estimate over ``num_samples`` prior draws ``y``:
      ``mean(log p(y) - log q(y))`` (StudentT, mixtures, multivariate normals).

    The output family must live on the real line (a normal prior against a positive or
    discrete family has infinite KL: ``TypeError``). With ``reduction="mean"`` the sum
    over elements is divided by the number of input rows, ``x.shape[:-1].numel()``, as
    ``rv.log_prob(y).mean()`` averages, so ``nll_mean + ncp(model, x)`` weighs the two
    per example as the paper does (its ``γ`` is ``scale_factor``). Add it to the loss
    beside ``bl.losses`` (ELBO per example: ``nll_mean + ncp(model, x) +
    sum(bl.losses(model)) / N``).

    For a Bayesian network each call draws one function, so the penalty is an unbiased
    estimate of ``E_w[KL(p || q_w)]``, which bounds ``KL(p || E_w q_w)`` (the predictive)
    from above by convexity; the paper's BBB variant puts the prior on the
    distribution of the mean instead.

    Args:
        input_noise: ``σ_x``, the standard deviation of the input noise, > 0 (a number,
            or a tensor broadcastable to the input, e.g. one per feature ``(F,)``).
        output_loc: ``μ_y``, the prior mean (broadcastable to the output value).
        output_scale: ``σ_y``, the prior standard deviation, > 0 (wide: larger than the
            data noise).
        center_at_target: centre the prior on the batch's targets (the paper's choice
            for regression): ``output_loc`` is then ignored and ``target`` required.
        reduction: ``"mean"`` (per input row, see above) or ``"sum"``.
        num_samples: prior draws for the Monte Carlo estimate.
        scale_factor: multiplies the result (``γ`` in the paper).

    Shape:
        - ``x``: ``(*, F)``, the model's input.
        - ``target``: the output value's shape (only with ``center_at_target``).
        - Output: a scalar.

    Example:
        >>> import torch, bayesian_layers as bl
        >>> model = torch.nn.Sequential(torch.nn.Linear(1, 8), torch.nn.Tanh(),
        ...                             bl.layers.Normal(units=1, in_features=8))
        >>> ncp = NoiseContrastivePrior(input_noise=0.5, output_scale=1.0)
        >>> x, y = torch.randn(16, 1), torch.randn(16, 1)
        >>> loss = -model(x).log_prob(y).mean() + ncp(model, x)
        >>> loss.backward()
        >>> loss.shape
        torch.Size([])
    """

    input_noise: Tensor
    output_loc: Tensor
    output_scale: Tensor

    def __init__(
        self,
        input_noise: float | Tensor = 0.5,
        output_loc: float | Tensor = 0.0,
        output_scale: float | Tensor = 1.0,
        *,
        center_at_target: bool = False,
        reduction: str = "mean",
        num_samples: int = 32,
        scale_factor: float = 1.0,
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        self.register_buffer("input_noise", _positive_buffer(owner, "input_noise", input_noise))
        self.register_buffer("output_loc", _float_buffer(owner, "output_loc", output_loc))
        self.register_buffer("output_scale", _positive_buffer(owner, "output_scale", output_scale))
        if not isinstance(center_at_target, bool):
            raise TypeError(
                f"{owner} expected `center_at_target` to be a bool, got {center_at_target!r}"
            )
        if reduction not in _REDUCTIONS:
            raise ValueError(f"{owner} expected `reduction` in {_REDUCTIONS}, got {reduction!r}")
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(
                f"{owner} expected `num_samples` to be an int >= 1, got {num_samples!r}"
            )
        self.center_at_target = center_at_target
        self.reduction = reduction
        self.num_samples = num_samples
        self.scale_factor = check_non_negative(owner, "scale_factor", scale_factor)

    # ----------------------------------------------------------------- input
    def _check_input(self, x: Any) -> Tensor:
        owner = type(self).__name__
        if isinstance(x, RandomVariable):
            x = x.value
        if not isinstance(x, Tensor):
            raise TypeError(f"{owner} expected `x` to be a tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"{owner} expected `x` of a floating-point dtype, got {x.dtype}")
        if x.dim() == 0:
            raise ValueError(f"{owner} expected `x` of shape (*, features), got a scalar")
        try:
            fits = torch.broadcast_shapes(self.input_noise.shape, x.shape) == x.shape
        except RuntimeError:
            fits = False
        if not fits:
            raise ValueError(
                f"{owner} expected `x` whose shape `input_noise` {tuple(self.input_noise.shape)} "
                f"broadcasts to, got {tuple(x.shape)}"
            )
        return x

    def perturb(self, x: Tensor, noise: Tensor | None = None) -> Tensor:
        """``x + input_noise * noise``; ``noise`` (standard normal, ``x``'s shape) is drawn
        when not given."""
        x = self._check_input(x)
        if noise is None:
            noise = torch.randn_like(x)
        elif not isinstance(noise, Tensor) or noise.shape != x.shape:
            got = tuple(noise.shape) if isinstance(noise, Tensor) else type(noise).__name__
            raise ValueError(
                f"{type(self).__name__} expected `noise` of the input's shape {tuple(x.shape)}, "
                f"got {got}"
            )
        return x + self.input_noise.to(x) * noise

    # ---------------------------------------------------------------- penalty
    def divergence(
        self, output: RandomVariable | td.Distribution, target: Tensor | None = None
    ) -> Tensor:
        """``KL(output prior || output)`` per independent element: the output family's
        batch shape (the value's shape for elementwise families; a multivariate family's
        event is one element).

        Args:
            output: the model's output at perturbed inputs (random variable or distribution).
            target: the prior's mean when ``center_at_target``.
        """
        owner = type(self).__name__
        q = output.distribution if isinstance(output, RandomVariable) else output
        if not isinstance(q, td.Distribution):
            raise TypeError(
                f"{owner} expected the model to return a RandomVariable or Distribution (a "
                f"stochastic output layer such as layers.Normal), got {type(output).__name__}"
            )
        base = _strip_independent(q)
        support = base.support
        if support is None or support.is_discrete or not _is_real(support):
            raise TypeError(
                f"{owner} expected an output distribution over the real line (Normal, Laplace, "
                f"StudentT, MixtureNormal, ...), got {type(base).__name__} (support "
                f"{support}), whose KL from a normal prior is infinite"
            )
        shape = base.batch_shape + base.event_shape
        with torch.no_grad():
            ref = base.mean  # the output's dtype and device
        loc = self._prior_loc(target, shape).to(ref)
        prior = td.Normal(loc.expand(shape), self.output_scale.to(ref).expand(shape))
        event = len(base.event_shape)
        if not event:
            try:
                return td.kl_divergence(prior, base)
            except NotImplementedError:
                pass
        draws = prior.sample((self.num_samples,))  # (S, *batch, *event)
        log_p = prior.log_prob(draws)
        if event:
            log_p = log_p.sum(tuple(range(-event, 0)))
        return (log_p - base.log_prob(draws)).mean(0)  # (*batch)

    def _prior_loc(self, target: Tensor | None, shape: torch.Size) -> Tensor:
        owner = type(self).__name__
        if not self.center_at_target:
            if target is not None:
                raise ValueError(
                    f"{owner} got a `target` but center_at_target=False (the prior mean is "
                    "output_loc); pass center_at_target=True to centre the prior on targets"
                )
            loc = self.output_loc
        else:
            if not isinstance(target, Tensor):
                raise TypeError(
                    f"{owner} has center_at_target=True and expected a `target` tensor, got "
                    f"{type(target).__name__}"
                )
            loc = target
        try:
            fits = torch.broadcast_shapes(loc.shape, shape) == shape
        except RuntimeError:
            fits = False
        if not fits:
            what = "`target`" if self.center_at_target else "`output_loc`"
            raise ValueError(
                f"{owner} expected {what} broadcastable to the output's shape {tuple(shape)}, "
                f"got {tuple(loc.shape)}"
            )
        return loc

    def forward(
        self,
        model: Callable[[Tensor], Any],
        x: Tensor,
        target: Tensor | None = None,
        *,
        noise: Tensor | None = None,
    ) -> Tensor:
        """The scalar penalty ``scale_factor * reduce(KL(prior || model(x̃)))``.

        Args:
            model: maps the input to a random variable or distribution over outputs.
            x: the batch's inputs ``(*, F)``.
            target: the batch's targets, the prior's mean when ``center_at_target``.
            noise: standard normal noise of ``x``'s shape (drawn when omitted).
        """
        x_tilde = self.perturb(x, noise)
        kl = self.divergence(model(x_tilde), target)
        total = kl.sum()
        if self.reduction == "mean":
            rows = x.shape[:-1].numel()
            total = total / rows if rows else total
        return total if self.scale_factor == 1.0 else total * self.scale_factor

    def extra_repr(self) -> str:
        def show(t: Tensor) -> object:
            return t.tolist() if t.device.type != "meta" else "?"

        loc = "target" if self.center_at_target else show(self.output_loc)
        return (
            f"input_noise={show(self.input_noise)}, output_loc={loc}, "
            f"output_scale={show(self.output_scale)}, reduction={self.reduction!r}, "
            f"scale_factor={self.scale_factor}"
        )
