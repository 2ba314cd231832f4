"""The member template: an ensemble of rank-1 perturbations of one shared weight, the
members splitting the batch (rank-1 Bayesian layers, Dusenberry et al. 2020; BatchEnsemble,
Wen et al. 2020).

Member ``m`` of ``E`` computes with the effective weight ``W ∘ (r_m s_mᵀ)``, without ever
forming it::

    y = ((x ∘ s_m) Wᵀ) ∘ r_m + b_m

for a dense op (a convolution scales its input and output channels the same way). The
extra cost over the deterministic op is ``O(in + out)`` per example. The rows of the batch
are split into ``E`` contiguous blocks, block ``m`` going to member ``m`` (Edward2's
``DenseRank1``: tile a batch ``E`` times to give every member the same examples).

This is not an :class:`~bayesian_layers.layers.estimators.Estimator`: an estimator says
how a pass integrates over a random *weight* ``q(W)``; here the weight is a point estimate
and the randomness lives in new parameters (``r``, ``s`` and the per-member bias, each with
a leading member dimension), so the family declares other parameters and another forward.
What it shares with the template is the seam: every factor is a parameter declared with
``add_param`` and drawn with ``sample_param``, so the sampling modes, frozen function
samples, tracing, noise hooks, ``state_dict`` and ``losses`` work unchanged.

Function samples. In ``"sample"`` mode each call draws the factors once per member (one
whole draw of ``r_m``, ``s_m``, ``b_m`` shared by the member's block): every member is one
function sample, as reparameterization's. Inside
:func:`bayesian_layers.vectorized_samples` with ``K`` samples (``K`` a multiple of ``E``),
the input carries the ``K`` samples folded into its first dimension and sample ``k`` is
computed by member ``k mod E`` with its own draw; so ``bl.predict(model, x, K)`` treats
the members as function samples (``K = E``: sample ``k`` is member ``k``), whatever
chunks of a multiple of ``E`` samples it calls the model with.

Losses. The posterior of the factors is the mixture ``q(r) = (1/E) Σ_m q_m(r)``; its
penalty is the average of the members' terms, ``(1/E) Σ_m KL(q_m || p)``, the bound on the
mixture's KL by convexity, which matches a likelihood averaged over the members' blocks.
"""

from __future__ import annotations

from numbers import Real
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import Tensor

from ...initializers import TrainableInitializer
from ...regularizers import NormalKLDivergence, Regularizer, get_regularizer
from .._util import check_features
from ..base import BayesianLayer

if TYPE_CHECKING:
    from .op import WeightOp

__all__ = ["FactorNormalKLDivergence", "MemberEnsemble", "rank1_output", "FACTORS"]

#: the member-indexed parameters: output factor, input factor, bias.
FACTORS = ("r", "s", "bias")


class FactorNormalKLDivergence(NormalKLDivergence):
    """``KL(q || N(loc, scale))`` with the prior centred on 1: the default prior of the
    rank-1 factors, whose neutral value is 1 (the shared weight unchanged).

    Args:
        loc: prior mean (default 1).
        scale: prior standard deviation, > 0 (default 1).
        scale_factor: multiplies the result.

    Example:
        >>> from torch.distributions import Normal
        >>> float(FactorNormalKLDivergence()(Normal(torch.ones(3), torch.ones(3))))
        0.0
    """

    def __init__(
        self, loc: float | Tensor = 1.0, scale: float | Tensor = 1.0, scale_factor: float = 1.0
    ) -> None:
        super().__init__(loc, scale, scale_factor)


def _along(v: Tensor, dim: int, channel_dim: int) -> Tensor:
    """``v`` ``(G, C)`` viewed to broadcast against a ``(G, n, ...)`` tensor of ``dim`` dims
    whose channels are on ``channel_dim`` of the ungrouped ``(N, ...)`` tensor."""
    shape = [1] * dim
    shape[0] = v.shape[0]
    shape[channel_dim % (dim - 1) + 1] = v.shape[1]
    return v.view(shape)


def rank1_output(
    op: WeightOp,
    x: Tensor,
    weight: Tensor,
    r: Tensor,
    s: Tensor,
    bias: Tensor | None,
    channel_dim: int = -1,
    *,
    whole_weights: bool = False,
    groups: int = 1,
) -> Tensor:
    """``op(x ∘ s_g, W) ∘ r_g + b_g`` for block ``g`` of the rows of ``x``: each block with
    the effective weight ``W ∘ (r_g s_gᵀ)`` (pure; gradcheck-able).

    Exact for an op linear in its weight whose weight is ``(out, in / groups, *kernel)``
    and whose input and output carry channels on ``channel_dim`` (dense: the last dim; a
    convolution: dim 1). Two equal forms: the factor form above (``O(in + out)`` extra per
    example, but its backward needs the input gradient of the op to reach ``s``), or with
    ``whole_weights`` the ``G`` effective weights ``W ∘ (r_g s_gᵀ)`` formed once
    (``O(G · |W|)`` extra per call) and applied with ``op.batched`` (one grouped
    convolution); the latter is faster for convolutions on CPU whenever the input needs no
    gradient (the first layer), as no transposed convolution runs in the backward pass.

    Args:
        op: the family's deterministic op, called with ``bias=None``.
        x: ``(N, ...)``, ``N`` a multiple of ``G``; rows ``[g N/G, (g+1) N/G)`` are block ``g``.
        weight: the shared weight.
        r: ``(G, out)`` output factors; s: ``(G, in)`` input factors; bias: ``(G, out)`` or None.
        channel_dim: the channel dim of ``x`` and of the output.
        whole_weights: form the effective weights (see above).
        groups: the op's channel groups (``whole_weights`` only).

    Returns:
        ``(N, ...)``: the op's output.

    Example:
        >>> import torch.nn.functional as F
        >>> from bayesian_layers.layers.linear import LINEAR
        >>> x, w = torch.randn(4, 3), torch.randn(5, 3)
        >>> y = rank1_output(LINEAR, x, w, torch.ones(2, 5), torch.ones(2, 3), None)
        >>> torch.allclose(y, F.linear(x, w))
        True
    """
    g, n = r.shape[0], x.shape[0]
    if whole_weights:
        out = weight.shape[0]
        s_of = s.reshape(g, groups, -1)[:, torch.arange(out, device=s.device) // (out // groups)]
        trailing = (1,) * (weight.dim() - 2)
        rs = r.view(g, out, 1, *trailing) * s_of.view(g, out, -1, *trailing)  # (G, out, in/gr, 1..)
        return op.batched(x, weight * rs, bias, g)
    xg = x.reshape(g, n // g, *x.shape[1:])  # (G, N/G, ...)
    xs = (xg * _along(s.to(x.dtype), xg.dim(), channel_dim)).flatten(0, 1)
    y = op(xs, weight, None)
    yg = y.reshape(g, n // g, *y.shape[1:])  # (G, N/G, ..., out)
    r = _along(r.to(y.dtype), yg.dim(), channel_dim)
    if bias is None:
        return (yg * r).flatten(0, 1)
    b = _along(bias.to(y.dtype), yg.dim(), channel_dim)
    return torch.addcmul(b, yg, r).flatten(0, 1)


class MemberEnsemble(BayesianLayer):
    """Mixin of the rank-1 / BatchEnsemble families: declares the member-indexed factors,
    splits the batch, and averages the members' penalties (see the module docstring).

    A family base declares its shared point-estimate ``weight`` (and ``use_bias``), calls
    :meth:`add_members`, and in ``forward`` returns :meth:`member_output`.

    Attributes:
        ensemble_size: ``E``, the number of members.
        members_as_samples: class flag read by :func:`bayesian_layers.predict`: each
            member is a function sample, so ``num_samples`` must be a multiple of ``E``.
    """

    members_as_samples: ClassVar[bool] = True
    #: form the members' effective weights when they are no larger than the input
    #: (convolutions: see :func:`rank1_output`)
    whole_weights: ClassVar[bool] = False
    ensemble_size: int

    def add_members(
        self,
        ensemble_size: int,
        out_size: int,
        in_size: int,
        bias: bool,
        *,
        r_initializer: str | TrainableInitializer,
        s_initializer: str | TrainableInitializer,
        r_regularizer: str | Regularizer | type[Regularizer] | None,
        s_regularizer: str | Regularizer | type[Regularizer] | None,
        bias_initializer: str | TrainableInitializer,
        bias_regularizer: str | Regularizer | type[Regularizer] | None,
        factor_init_std: float | None,
        device: torch.device | str | None,
        dtype: torch.dtype | None,
    ) -> None:
        """Declare ``r`` ``(E, out)``, ``s`` ``(E, in)`` and (with ``bias``) ``bias``
        ``(E, out)``; start the factors' means (or values) at ``1 + factor_init_std · ε``."""
        name = type(self).__name__
        self.ensemble_size = check_features(name, "ensemble_size", ensemble_size)
        e = self.ensemble_size

        def reg(spec: str | Regularizer | type[Regularizer] | None, arg: str) -> Regularizer | None:
            return get_regularizer(spec, owner=f"{name}({arg})")  # type: ignore[arg-type]

        r_reg, s_reg = reg(r_regularizer, "r_regularizer"), reg(s_regularizer, "s_regularizer")
        self.add_param("r", (e, out_size), r_initializer, r_reg, device=device, dtype=dtype)
        self.add_param("s", (e, in_size), s_initializer, s_reg, device=device, dtype=dtype)
        self.use_bias = bool(bias)
        if self.use_bias:
            b_reg = reg(bias_regularizer, "bias_regularizer")
            self.add_param(
                "bias", (e, out_size), bias_initializer, b_reg, device=device, dtype=dtype
            )
        else:
            self.register_parameter("bias", None)
        for n in FACTORS[: 3 if self.use_bias else 2]:
            init = self.parameter_spec(n).initializer
            if not (init.is_normal or init.is_deterministic):
                raise ValueError(
                    f"{name} needs a normal (or deterministic) {n} posterior, got "
                    f"{type(init).__name__}"
                )
        if factor_init_std is not None:
            self.reset_factors(factor_init_std)

    def reset_factors(self, std: float = 0.0) -> None:
        """Set the means (or values) of ``r`` and ``s`` to ``1 + std · ε``, ``ε ~ N(0, 1)``
        (``std = 0``: every member is the shared weight); their scales are kept."""
        if isinstance(std, bool) or not isinstance(std, Real) or not std >= 0:
            raise ValueError(
                f"{type(self).__name__} expected `factor_init_std` >= 0 or None, got {std!r}"
            )
        with torch.no_grad():
            for n in ("r", "s"):
                p = self.point(n)
                if p.device.type == "meta":
                    continue
                if std > 0:
                    p.normal_(1.0, std)
                else:
                    p.fill_(1.0)

    def member_values(self, name: str, k: int) -> Tensor:
        """``name``'s value per block of rows: ``(E, d)`` (``k = 1``: block ``m`` is member
        ``m``), or ``(K, d)`` for ``K`` function samples, sample ``j`` taking member
        ``j mod E`` from its own draw."""
        v = self.sample_param(name)  # (E, d), or (K, E, d) when K samples are drawn
        if k == 1:
            return v
        member = torch.arange(k, device=v.device) % self.ensemble_size
        if v.dim() == 2:  # a point estimate or the mean: shared by the samples
            return v.index_select(0, member)
        return v[torch.arange(k, device=v.device), member]

    def member_output(self, x: Tensor, op: WeightOp, channel_dim: int) -> Tensor:
        """The output of every member on its block of ``x`` (batched, ``(N, ...)``).

        Raises:
            ValueError: ``N`` not a multiple of ``ensemble_size`` (of ``K`` with ``K``
                function samples), or ``K`` not a multiple of ``ensemble_size``.
        """
        name, e = type(self).__name__, self.ensemble_size
        k = self.check_samples(x)
        if k > 1 and k % e:
            raise ValueError(
                f"{name} is drawing {k} function samples at once, each computed by one of its "
                f"ensemble_size={e} members; expected a number of samples that is a multiple "
                f"of {e}, got {k}"
            )
        if k == 1 and x.shape[0] % e:
            raise ValueError(
                f"{name} splits the batch across its ensemble_size={e} members and expected "
                f"a batch size (first dim) divisible by {e}, got input of shape "
                f"{tuple(x.shape)}; tile the batch {e} times to give every member the same "
                "examples"
            )
        r, s = self.member_values("r", k), self.member_values("s", k)
        b = self.member_values("bias", k) if self.use_bias else None
        w = self.point("weight")
        whole = self.whole_weights and 0 < r.shape[0] * w.numel() <= x.numel()
        groups = getattr(self, "groups", 1)
        return rank1_output(op, x, w, r, s, b, channel_dim, whole_weights=whole, groups=groups)

    def kl_terms(self) -> dict[str, Tensor]:
        """The penalty of each member-indexed parameter: the average over the members,
        ``(1/E) Σ_m KL(q_m || p)`` (see the module docstring).

        Example:
            >>> from bayesian_layers.layers.rank1 import LinearRank1
            >>> sorted(LinearRank1(3, 2, ensemble_size=2).kl_terms())
            ['r', 's']
        """
        terms = super().kl_terms()
        e = self.ensemble_size
        return {n: t / e if n in FACTORS and e > 1 else t for n, t in terms.items()}
